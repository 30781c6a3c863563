"""`pychat gui` driven for real: a private Xvfb, xdotool typing and clicking, real servers.

What the widgets hold is read from the GUI's own state file (``PYCHAT_GUI_STATE_FILE``, see
``clients/gui_probe.py``): the window writes its title, log lines, user list (with each row's box
on the screen, which is where xdotool clicks), room list, input and status there a few times a
second, straight from the widgets. Every wait is for a condition on that file or on a line a peer
receives, with a timeout. Screenshots go to ``artifacts/``.
"""

from __future__ import annotations

import os
import re
import uuid

import pytest

from support.gui import GuiProc
from support.xvfb import ARTIFACTS, needs_x

pytestmark = [pytest.mark.e2e, needs_x]


@pytest.fixture
def gui(xvfb, serve, tmp_path, procs):
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
                                                               xvfb):
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
                    next(ln for ln in reversed(st["log"]) if ln.endswith(f"you are in {room}"))):]),
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
