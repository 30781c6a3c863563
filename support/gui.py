"""`pychat gui` driven for real, for tests and benchmarks: a process on an Xvfb display whose
widgets are read from its state file (``PYCHAT_GUI_STATE_FILE``, see ``clients/gui_probe.py``),
and a flooder that sends lines into a room at a steady rate.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
import uuid

from .procs import Proc, python_m


class GuiProc:
    """A `pychat gui` process on an Xvfb display, and what its widgets hold."""

    def __init__(self, x, port: int, tmp_path, *args: str):
        self.x = x
        self.state_file = str(tmp_path / f"gui-{uuid.uuid4().hex[:6]}.json")
        self.proc = Proc(python_m("pychat", "gui", "--port", str(port),
                                  "--geometry", "1024x768+0+0", *args),
                         env={"DISPLAY": x.display, "PYCHAT_GUI_STATE_FILE": self.state_file},
                         name="pychat gui")
        self.wid = x.find_window("PyChat")

    def state(self) -> dict:
        try:
            with open(self.state_file) as f:
                return json.load(f)
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def wait(self, pred, what: str, timeout: float = 20.0) -> dict:
        deadline = time.monotonic() + timeout
        st: dict = {}
        while time.monotonic() < deadline:
            if not self.proc.alive():
                raise RuntimeError("gui exited:\n" + "\n".join(self.proc.output[-30:]))
            st = self.state()
            if st and pred(st):
                return st
            time.sleep(0.05)  # the state file is rewritten every 150 ms: poll it
        raise TimeoutError(f"gui never showed {what}; last state: "
                           f"{ {k: v for k, v in st.items() if k != 'lag'} }")

    def log_has(self, text: str, timeout: float = 20.0) -> dict:
        return self.wait(lambda st: any(text in line for line in st["log"]), repr(text), timeout)

    def type_line(self, text: str, enter: bool = True) -> None:
        self.x.xdotool("windowfocus", "--sync", self.wid)
        self.x.xdotool("type", "--delay", "10", text)
        if enter:
            self.x.xdotool("key", "Return")

    def click_send(self) -> None:
        x, y, w, h = self.state()["send_screen"]
        self.x.xdotool("mousemove", "--sync", str(x + w // 2), str(y + h // 2), "click", "1")

    def click_row(self, listbox: str, pattern: str) -> None:
        st = self.wait(lambda st: any(re.search(pattern, r["text"]) and "screen" in r
                                      for r in st[listbox]), f"{listbox} row {pattern}")
        row = next(r for r in st[listbox] if re.search(pattern, r["text"]))
        x, y, w, h = row["screen"]
        self.x.xdotool("mousemove", "--sync", str(x + min(w, 40) // 2), str(y + h // 2),
                       "click", "1")


def flood(port: int, room: str, rate: int, seconds: float, stop: threading.Event) -> int:
    """Send ``rate`` lines/s into ``room`` for ``seconds``; read (and drop) what comes back."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(f"/join {room}\n".encode())

    def drain():
        try:
            while sock.recv(1 << 16):
                pass
        except OSError:
            pass

    threading.Thread(target=drain, daemon=True).start()
    sent, start = 0, time.perf_counter()
    step = 0.01
    while not stop.is_set() and sent < rate * seconds:
        due = int((time.perf_counter() - start) / step + 1) * rate * step
        batch = "".join(f"flood {sent + i} {'x' * 40}\n" for i in range(int(due) - sent))
        if batch:
            sock.sendall(batch.encode())
            sent = int(due)
        time.sleep(step)  # pacing the sender, not synchronising with anyone
    sock.sendall(b"/ping flood-done\n")
    return sent
