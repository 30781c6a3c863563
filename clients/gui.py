"""``pychat gui``: the Tk desktop client, on the shared core (``Session`` + ``ChatState``).

Layout: rooms on the left (click one to join it, or type a new one), the log in the middle
(time, name, text; own lines, private lines, system lines and lines naming you each styled
apart), the members of your room on the right (click one to start ``/msg <uid> ``), the input
with Send below, and a status bar with the connection state and reconnect attempts. The title
shows your name and ID.

Threads (STYLE.md rule 10): the session's thread owns the socket and only puts events on a
queue; Tk's thread polls that queue with ``after()``, applies the events to its ``ChatState`` and
updates the widgets, a batch at a time. Sending only appends to the session's queue. So Tk
never waits on the network, and a flood of lines costs one widget update per poll, not one per
line; the log keeps at most ``log_limit`` lines (older ones are deleted in chunks).
"""

from __future__ import annotations

import queue
import sys
import tkinter as tk
from tkinter import ttk
from typing import TypedDict

from pychat.wire import replies
from pychat.wire.commands import LOBBY

from . import events
from .gui_probe import LagProbe, StateDump
from .options import client_parser, name_problem
from .session import Session
from .state import ERROR, OWN, PRIVATE, SYSTEM, ChatState, LogLine, clock_of

POLL_MS = 30            # how often Tk takes the session's events
MAX_EVENTS_PER_POLL = 5000
TRIM_SLACK = 100        # delete in chunks of at least this many lines
ROOMS_POLL_MS = 3000    # the room list is asked for again this often


class _TagStyle(TypedDict, total=False):
    """The options of ``Text.tag_configure`` the log's tags use."""
    foreground: str
    background: str
    font: tuple[str, int] | tuple[str, int, str]


class Gui:
    def __init__(self, root: tk.Tk, args):
        self.root = root
        self.args = args
        self.state = ChatState()
        self.events: queue.Queue = queue.Queue()
        self.session: Session | None = None
        self.need_name = True
        self.log_limit = args.log_limit
        self.lines_received = 0
        self.user_uids: list[str] = []
        self.room_names: list[str] = []
        self._build()
        self.lag = LagProbe(root)
        self.dump = StateDump.from_env(self)
        root.after(POLL_MS, self.poll)
        root.after(ROOMS_POLL_MS, self.poll_rooms)
        root.protocol("WM_DELETE_WINDOW", self.quit)
        name = args.name
        if name and name_problem(name):
            self.show(LogLine(clock_of(None), ERROR, "", name_problem(name)))
            name = ""
        if name:
            self.connect(name)
        else:
            self.ask_name("Type your name and press Enter")

    # ---- widgets ---------------------------------------------------------------------------------

    def _build(self) -> None:
        root = self.root
        root.title("PyChat")
        root.geometry(self.args.geometry)
        root.minsize(640, 360)
        root.columnconfigure(1, weight=1)
        root.rowconfigure(0, weight=1)

        left = ttk.Frame(root, padding=(6, 6, 0, 0))
        left.grid(row=0, column=0, sticky="ns")
        left.rowconfigure(1, weight=1)
        ttk.Label(left, text="Rooms").grid(row=0, column=0, columnspan=2, sticky="w")
        self.rooms = tk.Listbox(left, width=16, exportselection=False, activestyle="none")
        self.rooms.grid(row=1, column=0, columnspan=2, sticky="ns")
        self.rooms.bind("<ButtonRelease-1>", self.on_room_click)
        self.new_room = ttk.Entry(left, width=10)
        self.new_room.insert(0, "#")
        self.new_room.grid(row=2, column=0, sticky="we", pady=(4, 0))
        self.new_room.bind("<Return>", self.on_join_typed)
        ttk.Button(left, text="Join", width=5, command=self.on_join_typed).grid(
            row=2, column=1, pady=(4, 0))

        mid = ttk.Frame(root, padding=6)
        mid.grid(row=0, column=1, sticky="nsew")
        mid.columnconfigure(0, weight=1)
        mid.rowconfigure(0, weight=1)
        self.log = tk.Text(mid, wrap="word", state="disabled", width=60, height=20,
                           font=("DejaVu Sans Mono", 10), padx=4, pady=4)
        self.log.grid(row=0, column=0, sticky="nsew")
        bar = ttk.Scrollbar(mid, command=self.log.yview)
        bar.grid(row=0, column=1, sticky="ns")
        self.log.configure(yscrollcommand=bar.set)
        tag_styles: dict[str, _TagStyle] = {
            "time": {"foreground": "#808080"},
            "who": {"foreground": "#1f5fa8", "font": ("DejaVu Sans Mono", 10, "bold")},
            "ownwho": {"foreground": "#2e7d32", "font": ("DejaVu Sans Mono", 10, "bold")},
            "ownline": {},
            "private": {"foreground": "#7b1fa2", "background": "#f6edf9"},
            "system": {"foreground": "#757575", "font": ("DejaVu Sans Mono", 10, "italic")},
            "error": {"foreground": "#c62828"},
            "history": {"foreground": "#8d8d8d"},
            "mention": {"background": "#fff59d"},
        }
        for tag, opts in tag_styles.items():
            self.log.tag_configure(tag, **opts)
        self.log.tag_raise("mention")

        right = ttk.Frame(root, padding=(0, 6, 6, 0))
        right.grid(row=0, column=2, sticky="ns")
        right.rowconfigure(1, weight=1)
        self.users_label = ttk.Label(right, text="Users")
        self.users_label.grid(row=0, column=0, sticky="w")
        self.users = tk.Listbox(right, width=24, exportselection=False, activestyle="none")
        self.users.grid(row=1, column=0, sticky="ns")
        self.users.bind("<ButtonRelease-1>", self.on_user_click)

        bottom = ttk.Frame(root, padding=(6, 0, 6, 4))
        bottom.grid(row=1, column=0, columnspan=3, sticky="we")
        bottom.columnconfigure(1, weight=1)
        self.prompt_var = tk.StringVar(value="Name:")
        ttk.Label(bottom, textvariable=self.prompt_var, width=6).grid(row=0, column=0)
        self.entry = ttk.Entry(bottom)
        self.entry.grid(row=0, column=1, sticky="we", padx=4)
        self.entry.bind("<Return>", self.on_send)
        self.send_button = ttk.Button(bottom, text="Send", command=self.on_send)
        self.send_button.grid(row=0, column=2)
        self.status_var = tk.StringVar(value="starting")
        ttk.Label(root, textvariable=self.status_var, relief="sunken", anchor="w",
                  padding=(6, 1)).grid(row=2, column=0, columnspan=3, sticky="we")
        self.entry.focus_set()

    # ---- user actions ----------------------------------------------------------------------------

    def ask_name(self, why: str) -> None:
        self.need_name = True
        self.prompt_var.set("Name:")
        self.status_var.set(why)
        self.entry.focus_set()

    def connect(self, name: str) -> None:
        self.need_name = False
        self.prompt_var.set("Say:")
        self.session = Session(self.args.host, self.args.port, self.events.put, name=name,
                               room=self.args.room, history=self.args.history).start()

    def on_send(self, _event=None) -> str:
        text = self.entry.get().strip()
        if not text:
            return "break"
        self.entry.delete(0, "end")
        if self.need_name:
            problem = name_problem(text)
            if problem:
                self.show(LogLine(clock_of(None), ERROR, "", problem))
            elif self.session is None:
                self.connect(text)
            else:
                self.need_name = False
                self.prompt_var.set("Say:")
                self.session.set_name(text)
            return "break"
        if text.split()[0].lower() in ("/quit", "/exit"):
            self.quit()
            return "break"
        # need_name is cleared only by connect() (which starts a session) or once a session is
        # running, so past the name prompt there is always one
        session = self.session
        assert session is not None, "no session once the name is given"
        session.send(text, show=True)
        return "break"

    def on_user_click(self, event) -> None:
        i = self.users.nearest(event.y)
        if 0 <= i < len(self.user_uids):
            self.entry.delete(0, "end")
            self.entry.insert(0, f"/msg {self.user_uids[i]} ")
            self.entry.icursor("end")
            self.entry.focus_set()

    def on_room_click(self, event) -> None:
        i = self.rooms.nearest(event.y)
        if (0 <= i < len(self.room_names) and self.session
                and self.room_names[i] != self.state.room):
            self.session.send(f"/join {self.room_names[i]}")

    def on_join_typed(self, _event=None) -> None:
        room = self.new_room.get().strip()
        if self.session and len(room) > 1:
            self.session.send(f"/join {room if room.startswith('#') else '#' + room}")
            self.new_room.delete(0, "end")
            self.new_room.insert(0, "#")

    def quit(self) -> None:
        if self.session:
            self.session.close(timeout=1.0)
        self.root.destroy()

    # ---- events from the session -----------------------------------------------------------------

    def poll(self) -> None:
        """Take what the session's thread queued, apply it, update the widgets once."""
        lines: list[LogLine] = []
        users_before, rooms_before = (self.state.users, dict(self.state.names)), self.state.rooms
        try:
            for _ in range(MAX_EVENTS_PER_POLL):
                ev = self.events.get_nowait()
                line = self.state.apply(ev)
                if line is not None:
                    lines.append(line)
                self._note(ev)
        except queue.Empty:
            pass
        if lines:
            self.show(*lines)
            if any(ln.mention or (ln.kind == PRIVATE and ln.who.startswith("from ")
                                  and not ln.history) for ln in lines):
                self.root.bell()  # someone named you or wrote to you: a notification
        if (self.state.users, self.state.names) != users_before:
            self.refresh_users()
        if self.state.rooms != rooms_before:
            self.refresh_rooms()
        title = self.state.title()
        if self.root.title() != title:
            self.root.title(title)
        self.root.after(POLL_MS, self.poll)

    def _note(self, ev) -> None:
        if isinstance(ev, events.NameRefused):
            self.ask_name(f"{ev.reason}: type another name and press Enter")
        elif isinstance(ev, events.Status):
            text = ev.text if not ev.attempt else f"{ev.text} - reconnect attempts: {ev.attempt}"
            if not self.need_name:
                self.status_var.set(text)
            if ev.state == events.CONNECTED and self.session:
                self.session.send("/rooms")
            elif ev.state == events.CLOSED:
                self.prompt_var.set("Closed")
        elif isinstance(ev, replies.RoomChanged) and self.session:
            self.session.send("/rooms")  # ROOM: changed: the counts did too

    def poll_rooms(self) -> None:
        if self.session and self.session.state == events.CONNECTED:
            self.session.send("/rooms")
        self.root.after(ROOMS_POLL_MS, self.poll_rooms)

    # ---- widgets from the state ------------------------------------------------------------------

    def show(self, *lines: LogLine) -> None:
        log = self.log
        at_end = log.yview()[1] >= 0.999
        parts: list = []
        empty = log.index("end-1c") == "1.0"
        for ln in lines:
            self.lines_received += 1
            if parts or not empty:
                parts += ["\n", ()]
            parts += [f"{ln.clock} ", ("time",)]
            if ln.kind in (SYSTEM, ERROR):
                parts += [f"* {ln.text}", (ln.kind, "system")]
                continue
            line_tags: tuple[str, ...] = ("private",) if ln.kind == PRIVATE \
                else ("ownline",) if ln.kind == OWN else ()
            if ln.history:
                line_tags += ("history",)
            who_tag = "ownwho" if ln.kind == OWN else "who"
            parts += [ln.who, (who_tag,) + line_tags, ": ", line_tags,
                      ln.text, line_tags + (("mention",) if ln.mention else ())]
        log.configure(state="normal")
        log.insert("end", *parts)
        count = int(log.index("end-1c").split(".")[0])
        if count > self.log_limit + TRIM_SLACK or (count > self.log_limit and len(lines) < 5):
            log.delete("1.0", f"{count - self.log_limit + 1}.0")
        log.configure(state="disabled")
        if at_end:
            log.see("end")

    def refresh_users(self) -> None:
        rows = self.state.user_rows()
        self.user_uids = [uid for uid, _ in rows]
        self.users.delete(0, "end")
        for uid, label in rows:
            self.users.insert("end", label)
            if uid == self.state.uid:
                self.users.itemconfigure("end", foreground="#2e7d32")
        self.users_label.configure(text=f"Users in {self.state.room} ({len(rows)})")

    def refresh_rooms(self) -> None:
        rooms = dict(self.state.rooms)
        rooms.setdefault(LOBBY, 0)  # always a way back, even when nobody is there
        self.room_names = sorted(rooms)
        self.rooms.delete(0, "end")
        for room, n in sorted(rooms.items()):
            self.rooms.insert("end", f"{room} ({n})")
            if room == self.state.room:
                self.rooms.itemconfigure("end", background="#dbe9f7")


def main(argv: list[str] | None = None) -> int:
    args = client_parser("pychat gui", "The PyChat desktop client (Tk).").parse_args(argv)
    try:
        root = tk.Tk()
    except tk.TclError as e:
        print(f"pychat gui: cannot open a window: {e}", file=sys.stderr)
        return 1
    Gui(root, args)
    root.mainloop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
