"""What the Tk client exposes about itself: event-loop lag, and its widgets' contents on request.

``LagProbe`` schedules itself with ``after(interval)`` and records how late each call came: that
lateness is the time Tk's thread was busy and could not answer the user. ``StateDump`` writes
the window's real widget contents (title, log lines, user list with each row's screen box, room
list, input, status, who we are, the topic, the login dialog's fields and buttons, the log's
file links and thumbnails, the transfer's progress, lag) as JSON
to a file, atomically, a few times a second; it runs only when ``PYCHAT_GUI_STATE_FILE`` names
that file. Tests read it to assert on what the widgets hold and to find where to click; nothing
in it is computed apart from the widgets. The password field's content is never written: only
its length.
"""

from __future__ import annotations

import json
import os
import time

STATE_FILE_ENV = "PYCHAT_GUI_STATE_FILE"


class LagProbe:
    def __init__(self, root, interval_ms: int = 50, keep: int = 400):
        self.root = root
        self.interval = interval_ms / 1000
        self.keep = keep
        self.samples: list[float] = []  # seconds late, most recent last
        self.worst = 0.0
        self._due = time.perf_counter() + self.interval
        root.after(interval_ms, self._tick)

    def _tick(self) -> None:
        now = time.perf_counter()
        late = max(0.0, now - self._due)
        self.samples.append(late)
        if len(self.samples) > self.keep:
            del self.samples[: len(self.samples) - self.keep]
        self.worst = max(self.worst, late)
        self._due = now + self.interval
        self.root.after(int(self.interval * 1000), self._tick)

    def summary(self) -> dict:
        s = sorted(self.samples)
        if not s:
            return {"samples": 0}
        return {"samples": len(s), "median_ms": round(s[len(s) // 2] * 1000, 1),
                "p99_ms": round(s[min(len(s) - 1, int(len(s) * 0.99))] * 1000, 1),
                "max_ms": round(s[-1] * 1000, 1), "worst_ms": round(self.worst * 1000, 1),
                "recent_ms": [round(x * 1000, 1) for x in self.samples]}

    def reset(self) -> None:
        self.samples.clear()
        self.worst = 0.0


def listbox_rows(lb) -> list[dict]:
    """Each row of a Listbox with its box on the screen (root coordinates), for clicking."""
    x0, y0 = lb.winfo_rootx(), lb.winfo_rooty()
    rows = []
    for i in range(lb.size()):
        box = lb.bbox(i)
        row = {"text": lb.get(i)}
        if box:
            x, y, w, h = box
            row["screen"] = [x0 + x, y0 + y, w, h]
        rows.append(row)
    return rows


def screen_box(widget) -> list[int]:
    """A widget's box on the screen (root coordinates): x, y, width, height."""
    return [widget.winfo_rootx(), widget.winfo_rooty(), widget.winfo_width(),
            widget.winfo_height()]


def dialog_state(dialog) -> dict | None:
    """The login dialog's widgets (None when it is not open); the password only as a length."""
    if dialog is None or not dialog.top.winfo_exists():
        return None
    return {
        "title": dialog.top.title(),
        "viewable": bool(dialog.top.winfo_viewable()),
        "grabbed": str(dialog.top.grab_current() or "") == str(dialog.top),
        "name": dialog.name_var.get(),
        "password_length": len(dialog.password_entry.get()),
        "message": dialog.message_var.get(),
        "login_enabled": not dialog.login_button.instate(["disabled"]),
        "focus": str(dialog.top.focus_get() or ""),
        "name_widget": str(dialog.name_entry),
        "password_widget": str(dialog.password_entry),
        "name_screen": screen_box(dialog.name_entry),
        "password_screen": screen_box(dialog.password_entry),
        "login_screen": screen_box(dialog.login_button),
        "register_screen": screen_box(dialog.register_button),
        "guest_screen": screen_box(dialog.guest_button),
    }


def thumbnails(text) -> list[dict]:
    """The images in the log: each one's size and box on the screen (None when scrolled out)."""
    out = []
    x0, y0 = text.winfo_rootx(), text.winfo_rooty()
    for name in text.image_names():
        index = text.index(name)
        image = text.image_cget(index, "image")
        box = text.bbox(index)
        out.append({"index": index, "tags": list(text.tag_names(index)),
                    "size": [int(text.tk.call("image", "width", image)),
                             int(text.tk.call("image", "height", image))],
                    "screen": [x0 + box[0], y0 + box[1], box[2], box[3]] if box else None})
    return out


def links(text) -> list[dict]:
    """The file links in the log: their text and box on the screen (None when scrolled out)."""
    out = []
    x0, y0 = text.winfo_rootx(), text.winfo_rooty()
    ranges = text.tag_ranges("link")
    for i in range(0, len(ranges), 2):
        words = text.get(ranges[i], ranges[i + 1])
        if not words:
            continue  # a thumbnail (an image, no text): in thumbnails
        box = text.bbox(ranges[i])
        out.append({"text": words, "screen": [x0 + box[0], y0 + box[1], box[2], box[3]]
                    if box else None})
    return out


def tagged_text(text, tag: str) -> list[str]:
    ranges = text.tag_ranges(tag)
    return [text.get(ranges[i], ranges[i + 1]) for i in range(0, len(ranges), 2)]


class StateDump:
    def __init__(self, gui, path: str, interval_ms: int = 150):
        self.gui = gui
        self.path = path
        self.interval_ms = interval_ms
        self.seq = 0
        gui.root.after(interval_ms, self._tick)

    @classmethod
    def from_env(cls, gui) -> StateDump | None:
        path = os.environ.get(STATE_FILE_ENV)
        return cls(gui, path) if path else None

    def snapshot(self) -> dict:
        g = self.gui
        self.seq += 1
        log = g.log.get("1.0", "end-1c").split("\n")
        return {
            "seq": self.seq,
            "pid": os.getpid(),
            "title": g.root.title(),
            "status": g.status_var.get(),
            "input_label": g.prompt_var.get(),
            "input": g.entry.get(),
            "focus": str(g.root.focus_get() or ""),
            "entry_widget": str(g.entry),
            "entry_screen": [g.entry.winfo_rootx(), g.entry.winfo_rooty(),
                             g.entry.winfo_width(), g.entry.winfo_height()],
            "send_screen": [g.send_button.winfo_rootx(), g.send_button.winfo_rooty(),
                            g.send_button.winfo_width(), g.send_button.winfo_height()],
            "log": log if log != [""] else [],
            "log_lines": int(g.log.index("end-1c").split(".")[0]) - (log == [""]),
            "log_limit": g.log_limit,
            "mentions": tagged_text(g.log, "mention"),
            "private": tagged_text(g.log, "private"),
            "own": tagged_text(g.log, "ownline"),
            "system": tagged_text(g.log, "system"),
            "users": listbox_rows(g.users),
            "rooms": listbox_rows(g.rooms),
            "who": g.who_var.get(),
            "topic": g.topic_var.get(),
            "account_button": g.account_button.cget("text"),
            "account_screen": screen_box(g.account_button),
            "dialog": dialog_state(g.dialog),
            "images": len(g.log.image_names()),
            "thumbnails": thumbnails(g.log),
            "links": links(g.log),
            "pillow": g.pillow is not None,
            "transfer": g.transfer_var.get(),
            "progress": float(g.progress["value"]),
            "send_file_screen": screen_box(g.file_button),
            "lines_received": g.lines_received,
            "lag": g.lag.summary(),
        }

    def _tick(self) -> None:
        try:
            data = json.dumps(self.snapshot())
            tmp = f"{self.path}.tmp"
            with open(tmp, "w") as f:
                f.write(data)
            os.replace(tmp, self.path)
        finally:
            self.gui.root.after(self.interval_ms, self._tick)
