"""`pychat gui` driven for real: a private Xvfb, xdotool typing and clicking, real servers.

What the widgets hold is read from the GUI's own state file (``PYCHAT_GUI_STATE_FILE``, see
``clients/gui_probe.py``): the window writes its title, log lines, user list (with each row's box
on the screen, which is where xdotool clicks), room list, input and status there a few times a
second, straight from the widgets. Every wait is for a condition on that file or on a line a peer
receives, with a timeout. Screenshots go to ``artifacts/``.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid

import pytest

from .procs import Proc, python_m
from .test_gui_xvfb import ARTIFACTS, needs_x, xvfb  # noqa: F401 (fixture)

pytestmark = [pytest.mark.e2e, needs_x]


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


@pytest.fixture
def gui(xvfb, serve, tmp_path, procs):  # noqa: F811
    made = []

    def start(*args: str) -> GuiProc:
        g = GuiProc(xvfb, serve, tmp_path, *args)
        procs.append(g.proc)
        made.append(g)
        return g

    return start


def peer(connect, port: int, name: str, room: str):
    c = connect(port)
    c.handshake()
    c.send(f"/nick {name}")
    c.expect(f"OK nick {name}")
    c.send(f"/join {room}")
    c.expect_prefix(f"ROOM:{room}")
    return c


def test_three_users_talk_click_a_user_to_message_switch_rooms(gui, serve, connect,
                                                               xvfb):  # noqa: F811
    room = f"#team-{uuid.uuid4().hex[:4]}"
    g = gui("--name", "alice", "--room", f"{room}-old")  # a fresh room: no one's history
    st = g.wait(lambda st: re.fullmatch(rf"PyChat - alice - ID \d{{6}} - {room}-old", st["title"]),
                "the title with name and ID")
    alice = re.search(r"ID (\d{6})", st["title"]).group(1)
    assert "connected to" in st["status"]

    g.type_line(f"/join {room}")
    g.wait(lambda st: st["title"].endswith(room), "the new room in the title")
    bob = peer(connect, serve, "bob", room)
    carol = peer(connect, serve, "carol", room)
    st = g.wait(lambda st: [r["text"] for r in st["users"]] == [
        f"alice ({alice})  (you)", f"bob ({bob.uid})", f"carol ({carol.uid})"], "three users")

    bob.send("morning all, the build is green again")
    carol.send("alice, can you review the reconnect patch?")
    g.log_has("carol: alice, can you review the reconnect patch?")
    g.type_line("on it, give me ten minutes")
    bob.expect(f"{alice}: on it, give me ten minutes")
    st = g.log_has("alice: on it, give me ten minutes")
    assert "alice: on it, give me ten minutes" in st["own"]
    assert st["mentions"] == ["alice, can you review the reconnect patch?"]
    assert re.search(r"^\d\d:\d\d:\d\d bob: morning all", "\n".join(st["log"]), re.M)

    g.click_row("users", r"^carol ")
    g.wait(lambda st: st["input"] == f"/msg {carol.uid} ", "the /msg prefix in the input")
    g.type_line("thanks for the ping")
    carol.expect(f"[Private] {alice}: thanks for the ping")
    bob.send("/msg alice lunch at noon?")
    st = g.log_has("from bob: lunch at noon?")
    assert "to carol: thanks for the ping" in st["private"]
    assert "from bob: lunch at noon?" in st["private"]
    carol.send("sure, merging after lunch")
    g.log_has("carol: sure, merging after lunch")
    xvfb.screenshot(os.path.join(ARTIFACTS, "gui-three-users.png"))

    # the room list: leave for the lobby, come back, and the room's history is shown on entry
    g.click_row("rooms", r"^#lobby ")
    g.wait(lambda st: st["title"].endswith("#lobby"), "the lobby")
    bob.expect(f"USERS:{bob.uid},{carol.uid}")
    g.click_row("rooms", rf"^{room} ")
    st = g.wait(lambda st: st["title"].endswith(room) and st["log"]
                and "morning all" in "\n".join(st["log"][st["log"].index(
                    next(l for l in reversed(st["log"]) if l.endswith(f"you are in {room}"))):]),
                "the room's history after entering it again")
    assert len(st["users"]) == 3


def test_no_name_asks_for_one_and_a_taken_name_asks_again(gui, serve, connect):
    dave = connect(serve)
    dave.handshake()
    dave.send("/nick dave")
    dave.expect("OK nick dave")
    g = gui()
    st = g.wait(lambda st: st["input_label"] == "Name:", "the name prompt")
    assert "name" in st["status"].lower()
    g.type_line("Dave")
    st = g.wait(lambda st: "taken" in st["status"], "the taken-name message")
    assert st["input_label"] == "Name:"
    assert any("name Dave is taken: choose another" in line for line in st["log"])
    g.type_line("dave2", enter=False)
    g.click_send()
    g.wait(lambda st: st["title"].startswith("PyChat - dave2 - ID "), "the new name in the title")
    assert g.state()["input_label"] == "Say:"
