"""`pychat gui` logs in, driven for real under a private Xvfb with xdotool (as tests/test_gui.py):
the login dialog at start (a wrong password keeps it open with the server's refusal, the right
one closes it and the window says who is logged in), ``--user`` with ``PYCHAT_PASSWORD`` (no
dialog), the room's topic above the log and a kick in it, and a guest name that is an account's
opening the dialog. The dialog's widgets are read from the GUI's state file
(clients/gui_probe.py: the password field only as a length); screenshots go to ``artifacts/``.
"""

from __future__ import annotations

import json
import os
import re
import uuid

import pytest

from support.gui import GuiProc
from support.xvfb import ARTIFACTS, needs_x

from .test_client_login import PASSWORD, make_account

pytestmark = [pytest.mark.e2e, needs_x]


@pytest.fixture
def gui(xvfb, serve, tmp_path, procs):
    def start(*args: str) -> GuiProc:
        g = GuiProc(xvfb, serve, tmp_path, *args)
        procs.append(g.proc)
        return g

    return start


def click(g: GuiProc, box: list[int]) -> None:
    x, y, w, h = box
    g.x.xdotool("mousemove", "--sync", str(x + w // 2), str(y + h // 2), "click", "1")


def dialog(g: GuiProc, pred=lambda d: True, what: str = "the login dialog") -> dict:
    st = g.wait(lambda st: st.get("dialog") and st["dialog"]["grabbed"] and pred(st["dialog"]),
                what)
    return st["dialog"]


def type_into(g: GuiProc, box: list[int], text: str) -> None:
    """Click a field of the dialog (its window has the keyboard), then type."""
    g.x.xdotool("windowfocus", "--sync", g.x.find_window("^Log in$"))
    click(g, box)
    g.x.xdotool("type", "--delay", "10", text)


def logged_in_as(name: str):
    return lambda st: (st.get("dialog") is None and st["who"] == f"logged in as {name}"
                       and re.fullmatch(rf"PyChat - {name} \(logged in\) - ID \d{{6}} - #\S+",
                                        st["title"]) is not None)


def test_the_dialog_keeps_a_refused_password_out_and_the_right_one_logs_in(
        gui, serve, connect, monkeypatch):
    monkeypatch.delenv("PYCHAT_PASSWORD", raising=False)
    make_account(connect, serve, "alice")
    g = gui()
    d = dialog(g)
    assert (d["title"], d["name"], d["password_length"], d["message"]) == ("Log in", "", 0, "")
    assert d["focus"] == d["name_widget"]
    type_into(g, d["name_screen"], "alice")
    type_into(g, d["password_screen"], "wrong-pass-3")
    d = dialog(g, lambda d: d["name"] == "alice" and d["password_length"] == 12, "typed fields")
    click(g, d["login_screen"])
    d = dialog(g, lambda d: d["message"] == "login failed", "the refusal in the dialog")
    assert d["name"] == "alice" and d["password_length"] == 0  # cleared for another try
    assert d["focus"] == d["password_widget"] and d["login_enabled"]
    st = g.state()
    assert st["who"] == "guest" and "(logged in)" not in st["title"]
    xvfb_shot = g.x.screenshot(os.path.join(ARTIFACTS, "gui-login.png"))
    assert os.path.getsize(xvfb_shot) > 0

    g.x.xdotool("type", "--delay", "10", PASSWORD)  # the focus is in the password field
    g.x.xdotool("key", "Return")  # Enter submits: Log in, since a password is typed
    st = g.wait(logged_in_as("alice"), "alice logged in")
    assert st["account_button"] == "Log out" and st["input_label"] == "Say:"
    assert any(line.endswith("* you are logged in as alice") for line in st["log"])
    with open(g.state_file) as f:
        dumped = f.read()
    assert PASSWORD not in dumped and "wrong-pass-3" not in dumped
    uid = re.search(r"ID (\d{6})", st["title"]).group(1)

    bob = connect(serve)
    bob.handshake()
    bob.send("hi alice")
    g.log_has(f"{bob.uid}: hi alice")
    g.type_line("hello bob, logged in now")
    bob.expect(f"{uid}: hello bob, logged in now")
    assert bob.names.get(uid) == "alice" or any(f"{uid}=alice" in ln for ln in bob.seen)


def test_register_from_the_dialog_makes_the_account(gui, serve, connect, monkeypatch):
    monkeypatch.delenv("PYCHAT_PASSWORD", raising=False)
    g = gui()
    d = dialog(g)
    type_into(g, d["name_screen"], "newbie")
    type_into(g, d["password_screen"], "short")
    click(g, d["register_screen"])
    dialog(g, lambda d: d["message"].startswith("invalid password: 8-256 characters"),
           "the password refused before sending")
    d = dialog(g, lambda d: d["password_length"] == 0)
    type_into(g, d["password_screen"], "newbie-pass-1")
    click(g, d["register_screen"])
    st = g.wait(logged_in_as("newbie"), "newbie registered and logged in")
    assert any(line.endswith("* account newbie made: you are logged in as newbie")
               for line in st["log"])
    other = connect(serve)
    other.handshake()
    other.send("/login newbie newbie-pass-1")
    other.expect("OK login newbie")


def test_user_from_the_environment_logs_in_shows_the_topic_and_a_kick(gui, serve, connect,
                                                                      monkeypatch):
    room = f"#own-{uuid.uuid4().hex[:4]}"
    make_account(connect, serve, "owner")
    make_account(connect, serve, "gus")
    owner = connect(serve)
    owner.handshake()
    owner.send(f"/login owner {PASSWORD}")
    owner.expect("OK login owner")
    owner.send(f"/join {room}")  # the first account in a room owns it
    owner.expect_prefix(f"ROOM:{room}")
    owner.send("/topic release freeze until Friday")
    owner.expect(f"TOPIC:{room} release freeze until Friday")
    monkeypatch.setenv("PYCHAT_PASSWORD", PASSWORD)
    g = gui("--user", "gus", "--room", room)
    st = g.wait(lambda st: logged_in_as("gus")(st) and st["title"].endswith(room),
                "gus logged in, in the room")
    assert st.get("dialog") is None
    st = g.wait(lambda st: st["topic"] == "Topic: release freeze until Friday", "the topic")
    owner.send("/topic")  # (asking: no change) then a new one, pushed to the members
    owner.send("/topic freeze lifted")
    g.wait(lambda st: st["topic"] == "Topic: freeze lifted", "the new topic")
    owner.send("/kick gus not your room")
    g.log_has(f"you were kicked from {room}: not your room")
    g.wait(lambda st: st["title"].endswith("#lobby") and st["topic"] == "", "back in the lobby")


def test_a_guest_name_that_is_an_account_opens_the_dialog_with_it(gui, serve, connect,
                                                                 monkeypatch):
    monkeypatch.delenv("PYCHAT_PASSWORD", raising=False)
    make_account(connect, serve, "hal")
    g = gui("--name", "hal")
    d = dialog(g, lambda d: d["name"] == "hal" and "is an account" in d["message"],
               "the dialog, with the name")
    assert d["focus"] == d["password_widget"]
    type_into(g, d["password_screen"], PASSWORD)
    g.x.xdotool("key", "Return")
    g.wait(logged_in_as("hal"), "hal logged in")
    with open(g.state_file) as f:
        assert PASSWORD not in json.dumps(json.load(f))
