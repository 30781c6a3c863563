"""`pychat console` in pipe mode logs in: ``--user`` with ``PYCHAT_PASSWORD``, ``--register``,
and the exit statuses of clients/console.py for a refused login (5) and for being put out by
the server (6), against a real ``pychat serve``."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from support.procs import ROOT

from .test_client_login import PASSWORD, make_account
from .test_console_pipe import STAMP, Piped, console_argv

pytestmark = pytest.mark.e2e


def run_login(port: int, stdin: str, *args: str, password: str | None = PASSWORD,
              timeout: float = 30) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYCHAT_PASSWORD"}
    if password is not None:
        env["PYCHAT_PASSWORD"] = password
    return subprocess.run(console_argv(port, *args), input=stdin, capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, env=env)


def watcher(connect, port: int):
    c = connect(port)
    c.handshake()
    return c


def test_user_logs_in_with_the_password_from_the_environment_and_chats(serve, connect):
    make_account(connect, serve, "ivy")
    w = watcher(connect, serve)
    done = run_login(serve, "hello as ivy\n", "--user", "ivy", "--history", "0")
    assert done.returncode == 0, done.stderr
    text = [line[11:] for line in done.stdout.splitlines()]
    assert "* you are logged in as ivy" in text
    assert "ivy: hello as ivy" in text
    assert text.index("* you are logged in as ivy") < text.index("ivy: hello as ivy")
    assert PASSWORD not in done.stdout + done.stderr
    line = w.expect(lambda ln: ln.endswith(": hello as ivy"))
    uid = line.split(":")[0]
    assert f"{uid}=ivy" in "".join(ln for ln in w.seen if ln.startswith(("NAMES:", "NAMED:")))


def test_a_refused_login_exits_5_and_sends_no_line(serve, connect):
    make_account(connect, serve, "jack")
    w = watcher(connect, serve)
    done = run_login(serve, "must not be sent\n", "--user", "jack",
                     password="not-the-password")
    assert done.returncode == 5, done.stderr
    assert "pychat console: login as jack refused: login failed" in done.stderr
    assert "! login failed" in done.stdout
    w.send("/ping after")
    w.expect("PONG after")
    assert not any("must not be sent" in line for line in w.seen)


def test_register_makes_the_account_then_the_name_is_its_own(serve, connect):
    done = run_login(serve, "first words\n", "--user", "kim", "--register", "--history", "0")
    assert done.returncode == 0, done.stderr
    assert re.search(rf"^{STAMP}\* account kim made: you are logged in as kim$", done.stdout,
                     re.M), done.stdout
    assert re.search(rf"^{STAMP}kim: first words$", done.stdout, re.M), done.stdout
    again = run_login(serve, "", "--user", "kim", "--register")
    assert again.returncode == 5, again.stderr
    assert "login as kim refused: name kim is registered" in again.stderr
    guest = run_login(serve, "", "--name", "kim", password=None)
    assert guest.returncode == 1, guest.stderr
    assert "name kim is registered: log in with --user kim" in guest.stderr
    back = run_login(serve, "", "--user", "kim")
    assert back.returncode == 0, back.stderr


def test_register_with_a_password_the_server_would_refuse_is_bad_usage(serve):
    done = run_login(serve, "", "--user", "lee", "--register", password="short")
    assert done.returncode == 2
    assert "invalid password: 8-256 characters" in done.stderr


def test_user_without_a_password_and_no_terminal_is_bad_usage(serve):
    done = run_login(serve, "hi\n", "--user", "mia", password=None)
    assert done.returncode == 2
    assert "--user needs its password in PYCHAT_PASSWORD" in done.stderr
    assert run_login(serve, "", "--register", password=None).returncode == 2


def test_an_operator_puts_the_console_out_and_it_exits_6(serve, connect, monkeypatch):
    monkeypatch.setenv("PYCHAT_PASSWORD", PASSWORD)  # (Piped's console takes our environment)
    make_account(connect, serve, "ned")
    admin = subprocess.run([sys.executable, "-m", "pychat", "admin", "op", "ned"],
                           capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert admin.returncode == 0, admin.stderr
    make_account(connect, serve, "olga")
    op = connect(serve)
    op.handshake()
    op.send(f"/login ned {PASSWORD}")
    op.expect("OK login ned")
    con = Piped(serve, "--user", "olga", "--history", "0")  # its stdin stays open
    try:
        con.wait_err("connected to")
        op.expect(lambda line: "=olga" in line and line.startswith(("NAMES:", "NAMED:")))
        op.send("/kick olga enough")
        status = con.wait(timeout=30)
    finally:
        con.kill()
    assert status == 6, con.stderr
    assert "pychat console: the server closed the connection: kicked: enough" in "".join(
        con.stderr)
    assert "! the server closed the connection: kicked: enough" in "".join(con.stdout)
    assert not any("reconnecting" in line for line in con.stderr)  # it did not come back
