"""`pychat console` logs in on a real terminal (tmux, as tests/test_console_tmux.py drives it):
the password prompts echo no password (the pane never shows one), a refused password is asked
again, a name that is an account's asks for its password, typed ``/register``, ``/password``
and ``/login NAME`` ask for theirs (new ones twice), and Up never recalls a password."""

from __future__ import annotations

import re
import shutil
import time
import uuid

import pytest

from .test_client_login import PASSWORD, make_account
from .test_console_tmux import Tmux, console, terminal  # noqa: F401  (terminal: a fixture)

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(
    shutil.which("tmux") is None, reason="missing tmux (Debian: tmux; .ci/run installs it)")]


def no_password_env(command: list[str]) -> list[str]:
    """Whatever the test's environment holds, the console asks for the password."""
    return ["env", "-u", "PYCHAT_PASSWORD", *command]


def enter(t: Tmux, text: str) -> None:
    t.type(text)
    t.keys("Enter")


def assert_never_shown(t: Tmux, *secrets: str) -> None:
    screen = t.tmux("capture-pane", "-p", "-t", "main", "-S", "-200")  # the scrollback too
    for secret in secrets:
        assert secret not in screen, screen


def wait_gone(t: Tmux) -> None:
    deadline = time.monotonic() + 15
    while t.alive():
        assert time.monotonic() < deadline, t.screen()
        time.sleep(0.05)  # polling for the process to end


def test_user_is_asked_the_password_without_echo_again_when_wrong_then_chats(
        serve, connect, terminal):  # noqa: F811
    room = f"#login-{uuid.uuid4().hex[:4]}"
    make_account(connect, serve, "alice")
    bob = connect(serve)
    bob.handshake()
    bob.send(f"/join {room}")
    bob.expect_prefix(f"ROOM:{room}")
    t = terminal(no_password_env(console(serve, "--user", "alice", "--room", room)))
    t.wait(r"^Password for alice:\s*$")
    t.type("wrong-pass-7")
    t.wait(r"^Password for alice: \*{12}$")  # typed, shown as stars
    t.keys("Enter")
    t.wait(r"! login failed")
    t.wait(r"^Password for alice \(empty: choose a name\):\s*$")
    enter(t, PASSWORD)
    t.wait(r"\* you are logged in as alice")
    t.wait(rf"^\[{room}\] alice>")
    t.wait(rf"{room} \| alice \(logged in\) \| ID \d{{6}} \| ")  # the bottom bar (drawn after)
    assert_never_shown(t, "wrong-pass-7", PASSWORD)

    bob.send("welcome, alice")
    t.wait(r"\d{6}: welcome, alice$")
    enter(t, "thanks bob")
    uid = bob.expect(lambda ln: ln.endswith(": thanks bob")).split(":")[0]
    assert bob.names.get(uid) == "alice" or any(f"{uid}=alice" in ln for ln in bob.seen)
    # our own echo printed, and the prompt drawn again below it, before keys that redraw it
    t.wait(rf"alice: thanks bob$[\s\S]*^\[{room}\] alice>\s*$")
    t.keys("Up", "Up")  # the history holds the chat line, and no password before it
    t.type("~")  # typed after both Ups are handled: the prompt shows what they recalled
    t.wait(rf"^\[{room}\] alice> thanks bob~$")
    t.keys("C-u")
    enter(t, "/quit")
    wait_gone(t)


def test_a_registered_name_asks_its_password_and_register_asks_twice(serve, connect,
                                                                    terminal):  # noqa: F811
    make_account(connect, serve, "carol")
    t = terminal(no_password_env(console(serve, "--history", "0")))
    t.wait(r"^Your name:")
    enter(t, "carol")
    t.wait(r"^Password for carol \(empty: choose another name\):\s*$")
    enter(t, PASSWORD)
    t.wait(r"\* you are logged in as carol")
    enter(t, "/logout")
    t.wait(r"\* you are logged out: a guest, with no name")
    enter(t, "/nick dora")
    t.wait(r"\* you are now dora")
    enter(t, "/register")
    t.wait(r"^New password for dora:\s*$")
    enter(t, "dora-secret-1")
    t.wait(r"^Again:\s*$")
    enter(t, "dora-secret-2")  # not the same: asked again
    t.wait(r"! the passwords differ")
    t.wait(r"^New password for dora:\s*$")
    enter(t, "dora-secret-1")
    t.wait(r"^Again:\s*$")
    enter(t, "dora-secret-1")
    t.wait(r"\* account dora made: you are logged in as dora")
    t.wait(r"^\[#lobby\] dora>")
    assert_never_shown(t, PASSWORD, "dora-secret-1", "dora-secret-2")
    t.keys(*["Up"] * 6)  # back through the whole history: commands and a name, no password
    t.type("~")
    screen = t.wait(r"^\[#lobby\] dora> \S*~$")
    assert re.search(r"^\[#lobby\] dora> carol~$", screen, re.M)  # the oldest entry
    assert_never_shown(t, PASSWORD, "dora-secret")
    t.keys("C-u")
    enter(t, "/password")  # typed without passwords: asked for, without echo
    t.wait(r"^Current password:\s*$")
    enter(t, "dora-secret-1")
    t.wait(r"^New password:\s*$")
    enter(t, "dora-secret-3")
    t.wait(r"^Again:\s*$")
    enter(t, "dora-secret-3")
    t.wait(r"\* password changed")
    enter(t, "/logout")
    t.wait(r"\* you are logged out: a guest, with no name")
    enter(t, "/login dora")
    t.wait(r"^Password for dora:\s*$")
    enter(t, "dora-secret-3")
    t.wait(r"/login dora$[\s\S]*^\[.{8}\] \* you are logged in as dora$")
    t.wait(r"^\[#lobby\] dora>")
    assert_never_shown(t, PASSWORD, "dora-secret")
    other = connect(serve)  # the account is real, with its new password
    other.handshake()
    other.send("/login dora dora-secret-3")
    other.expect("OK login dora")
