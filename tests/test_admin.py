"""``pychat admin`` as an operator runs it: real processes on an accounts file in tmp_path.

The file is set up, and checked afterwards, through AccountStore in the test's own process,
which keeps it open throughout as a running router would: every change the admin process
commits must be seen by that open connection without reopening. Errors must be one line on
stderr and exit status 1, never a traceback.
"""

from __future__ import annotations

import hashlib
import json
import os
import pty
import re
import select
import sqlite3
import subprocess
import sys
import time

import pytest

from pychat.admin import build_parser as admin_parser
from pychat.cli import COMMANDS
from pychat.router.__main__ import build_parser as router_parser
from pychat.router.accounts import (
    FILENAME,
    SCHEMA_VERSION,
    SERVER,
    AccountStore,
    account_target,
    address_target,
)
from pychat.router.passwords import Passwords
from pychat.router.sqlite_history import SqliteHistory
from pychat.serve import build_parser as serve_parser
from pychat.wire.replies import format_time
from support.procs import ROOT, python_m

OLD = "old-password"
PEPPER = b"a pepper of at least sixteen bytes"
ISO = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"


def cheap(pepper: bytes = b"") -> Passwords:
    return Passwords(pepper, time_cost=1, memory_kib=8)


def admin(*argv: str, env: dict[str, str] | None = None, stdin: str = "",
          ) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k not in ("PYCHAT_PASSWORD",
                                                            "PYCHAT_PASSWORD_PEPPER_FILE")}
    full.update(env or {})
    # a session of its own: no controlling terminal, so nothing can prompt on the test's tty
    return subprocess.run(python_m("pychat", "admin", *argv), capture_output=True, text=True,
                          input=stdin, env=full, timeout=60, cwd=ROOT, start_new_session=True)


def failed(r: subprocess.CompletedProcess, pattern: str) -> None:
    """Exit status 1 and one line on stderr matching ``pattern``, no traceback."""
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("pychat admin: "), r.stderr
    assert re.search(pattern, lines[0]), lines[0]
    assert "Traceback" not in r.stderr


@pytest.fixture
def data(tmp_path) -> str:
    return str(tmp_path / "data")


@pytest.fixture
def store(data):
    """The accounts file with alice (an operator) and bob, held open as the router holds it."""
    s = AccountStore.in_folder(data).open()
    s.create("Alice", cheap().hash(OLD))
    s.create("bob", cheap().hash(OLD))
    s.set_operator("alice", True)
    yield s
    s.close()


# ---- op, deop, accounts --------------------------------------------------------------------------

def test_op_and_deop_count_at_once_in_an_open_store(store, data):
    r = admin("op", "BOB", "--data-dir", data)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "bob is an operator\n"
    assert store.get("bob").operator  # seen by the connection that stayed open
    r = admin("deop", "alice", "--data-dir", data)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "Alice is not an operator\n"
    assert not store.get("alice").operator


def test_an_unknown_account_is_an_error(store, data):
    for command in ("op", "deop", "delete", "reset-password"):
        r = admin(command, "nobody", "--data-dir", data, env={"PYCHAT_PASSWORD": "long-enough"})
        failed(r, r"no account 'nobody'")
    assert [a.name for a in store.accounts()] == ["Alice", "bob"]


def test_accounts_are_listed_as_text_and_as_json(store, data):
    r = admin("accounts", "--data-dir", data)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert [line.split() for line in lines] == [
        ["Alice", "operator", lines[0].split()[2]], ["bob", "-", lines[1].split()[2]]]
    assert all(re.fullmatch(ISO, line.split()[2]) for line in lines)
    r = admin("accounts", "--json", "--data-dir", data)
    assert r.returncode == 0, r.stderr
    listed = json.loads(r.stdout)
    assert [(a["name"], a["operator"]) for a in listed] == [("Alice", True), ("bob", False)]
    created = time.gmtime(store.get("alice").created)
    assert listed[0]["created"] == time.strftime("%Y-%m-%dT%H:%M:%SZ", created)
    assert all("hash" not in a for a in listed)
    assert "argon2" not in r.stdout


def test_the_data_folder_comes_from_pychat_data_dir_as_for_the_router(store, data, monkeypatch):
    r = admin("accounts", "--json", env={"PYCHAT_DATA_DIR": data})
    assert r.returncode == 0, r.stderr
    assert len(json.loads(r.stdout)) == 2
    for value in (data, None):  # the variable, then the default ($XDG_DATA_HOME/pychat)
        if value is None:
            monkeypatch.delenv("PYCHAT_DATA_DIR")
        else:
            monkeypatch.setenv("PYCHAT_DATA_DIR", value)
        ours = admin_parser().parse_args(["accounts"]).data_dir
        assert ours == router_parser().parse_args([]).data_dir
        assert ours == serve_parser().parse_args([]).data_dir
    parse = admin_parser().parse_args
    assert parse(["--data-dir", "x", "op", "alice"]).data_dir == "x"  # before the subcommand,
    assert parse(["op", "alice", "--data-dir", "y"]).data_dir == "y"  # after it,
    assert parse(["--data-dir", "x", "op", "alice", "--data-dir", "y"]).data_dir == "y"  # both
    assert "admin" in COMMANDS


def test_a_missing_file_is_reported_and_nothing_is_created(tmp_path):
    absent = tmp_path / "no" / "such"
    for argv in (["accounts"], ["bans", "--json"], ["op", "alice"], ["delete", "alice", "--yes"]):
        failed(admin(*argv, "--data-dir", str(absent)), rf"no accounts file in {absent}")
    assert not (tmp_path / "no").exists()


# ---- reset-password, delete ----------------------------------------------------------------------

def test_reset_password_from_the_environment_revokes_tokens(store, data):
    alice = store.get("alice")
    store.add_token(alice.id, "digest", time.time() + 3600)
    r = admin("reset-password", "alice", "--data-dir", data,
              env={"PYCHAT_PASSWORD": "brand-new-secret"})
    assert r.returncode == 0, r.stderr
    stored = store.get("alice").hash
    assert cheap().verify(stored, "brand-new-secret")
    assert not cheap().verify(stored, OLD)
    assert store.token_account("digest", time.time()) is None
    assert "brand-new-secret" not in r.stdout + r.stderr


@pytest.mark.parametrize("how", ["--pepper-file", "--password-pepper-file", "variable"])
def test_reset_password_hashes_with_the_routers_pepper(store, data, tmp_path, how):
    pepper_file = tmp_path / "pepper"
    pepper_file.write_bytes(PEPPER)
    env = {"PYCHAT_PASSWORD": "brand-new-secret"}
    argv = ["reset-password", "bob", "--data-dir", data]
    if how == "variable":
        env["PYCHAT_PASSWORD_PEPPER_FILE"] = str(pepper_file)
    else:
        argv += [how, str(pepper_file)]
    r = admin(*argv, env=env)
    assert r.returncode == 0, r.stderr
    stored = store.get("bob").hash
    assert cheap(PEPPER).verify(stored, "brand-new-secret")
    assert not cheap().verify(stored, "brand-new-secret")


def test_reset_password_refuses_what_register_refuses(store, data, tmp_path):
    before = store.get("alice").hash
    for bad in ("short", "has a space", "tab\there!", "del\x7fdel-del", "c1\x85c1-c1-c1"):
        r = admin("reset-password", "alice", "--data-dir", data, env={"PYCHAT_PASSWORD": bad})
        failed(r, r"invalid password.*nothing changed")
    short = tmp_path / "short-pepper"
    short.write_bytes(b"tiny")
    r = admin("reset-password", "alice", "--data-dir", data, "--pepper-file", str(short),
              env={"PYCHAT_PASSWORD": "long-enough"})
    failed(r, r"at least 16 bytes")
    assert store.get("alice").hash == before


def test_reset_password_without_a_password_or_a_terminal_says_so(store, data):
    before = store.get("alice").hash
    r = admin("reset-password", "alice", "--data-dir", data)  # no terminal, stdin empty
    failed(r, r"no password: set PYCHAT_PASSWORD or run it in a terminal")
    assert store.get("alice").hash == before


def on_terminal(argv: list[str], answers: list[tuple[str, str]],
                timeout: float = 30.0) -> tuple[int, str]:
    """Run ``pychat admin *argv`` on a pseudo-terminal of its own (its controlling terminal,
    where getpass asks); type each answer once the text before it has appeared. Returns the
    exit status and everything the terminal showed."""
    env = {k: v for k, v in os.environ.items() if k != "PYCHAT_PASSWORD"}
    pid, fd = pty.fork()
    if pid == 0:  # the child: exec at once
        try:
            os.chdir(ROOT)
            os.execve(sys.executable, python_m("pychat", "admin", *argv), env)
        finally:
            os._exit(127)
    shown = b""
    seen = 0  # where the next prompt is looked for
    deadline = time.monotonic() + timeout
    try:
        for prompt, answer in answers:
            while (at := shown.find(prompt.encode(), seen)) < 0:
                left = deadline - time.monotonic()
                assert left > 0, f"no {prompt!r} on the terminal: {shown!r}"
                if select.select([fd], [], [], left)[0]:
                    shown += os.read(fd, 4096)
            seen = at + len(prompt)
            os.write(fd, answer.encode() + b"\n")
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"it did not end: {shown!r}"
            if not select.select([fd], [], [], left)[0]:
                continue
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the child has gone and closed its side
                break
            if not chunk:
                break
            shown += chunk
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    return os.waitstatus_to_exitcode(status), shown.decode("utf-8", "replace")


def test_reset_password_asks_twice_on_the_terminal_without_echo(store, data):
    status, shown = on_terminal(["reset-password", "alice", "--data-dir", data],
                                [("new password: ", "typed-secret-1"),
                                 ("the same again: ", "typed-secret-1")])
    assert status == 0, shown
    assert "typed-secret-1" not in shown  # never echoed
    assert "Alice: password reset" in shown
    assert cheap().verify(store.get("alice").hash, "typed-secret-1")


def test_reset_password_changes_nothing_when_the_two_answers_differ(store, data):
    before = store.get("alice").hash
    status, shown = on_terminal(["reset-password", "alice", "--data-dir", data],
                                [("new password: ", "typed-secret-1"),
                                 ("the same again: ", "typed-secret-2")])
    assert status == 1, shown
    assert "the two passwords differ; nothing changed" in shown
    assert store.get("alice").hash == before


def test_delete_frees_the_name_and_leaves_the_history(store, data):
    history = SqliteHistory(data)
    history.open()
    history.append("#lobby", format_time(time.time()), "Alice: hello")
    history.close()
    with open(os.path.join(data, "history.sqlite3"), "rb") as f:
        digest = hashlib.sha256(f.read()).digest()
    alice = store.get("alice")
    store.set_owner("#ops", alice.id)
    store.ban(account_target(alice.id), "#x", 0, "", "bob")
    r = admin("delete", "ALICE", "--yes", "--data-dir", data)
    assert r.returncode == 0, r.stderr
    assert "Alice: deleted" in r.stdout
    assert store.get("alice") is None and store.room("#ops") == (None, "")
    assert store.bans(time.time()) == []
    assert store.create("alice", cheap().hash(OLD)) is not None  # free for anyone
    with open(os.path.join(data, "history.sqlite3"), "rb") as f:
        assert hashlib.sha256(f.read()).digest() == digest


def test_delete_asks_first(store, data):
    for answer in ("", "n\n", "no\n", "whatever\n"):
        r = admin("delete", "bob", "--data-dir", data, stdin=answer)
        assert r.returncode == 1 and "bob not deleted" in r.stderr, r.stderr
        assert store.get("bob") is not None
    r = admin("delete", "bob", "--data-dir", data, stdin="y\n")
    assert r.returncode == 0, r.stderr
    assert store.get("bob") is None


# ---- bans ----------------------------------------------------------------------------------------

def test_bans_are_listed_and_lifted(store, data):
    bob = store.get("bob")
    now = time.time()
    store.ban(account_target(bob.id), SERVER, 0, "spam and more", "Alice")
    store.ban(address_target("192.0.2.7"), "#ops", now + 3600, "", "Alice")
    store.ban(address_target("2001:db8::1"), SERVER, now + 3600, "flood", "Alice")
    store.ban(address_target("198.51.100.1"), SERVER, now - 1, "over", "Alice")  # ended
    r = admin("bans", "--data-dir", data)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 3
    assert re.fullmatch(r"account:bob +server +until unban +by Alice  reason: spam and more",
                        lines[0])
    assert re.fullmatch(rf"address:192\.0\.2\.7 +#ops +until {ISO} +by Alice", lines[1])
    assert lines[2].startswith("address:2001:db8::1 ")
    r = admin("bans", "--json", "--data-dir", data)
    assert r.returncode == 0, r.stderr
    listed = json.loads(r.stdout)
    assert [(b["target"], b["room"], b["reason"], b["by"]) for b in listed] == [
        ("account:bob", None, "spam and more", "Alice"), ("address:192.0.2.7", "#ops", "", "Alice"),
        ("address:2001:db8::1", None, "flood", "Alice")]
    assert listed[0]["until"] is None and re.fullmatch(ISO, listed[1]["until"])
    for target, shown in (("account:BOB", "account:bob"), ("192.0.2.7", "address:192.0.2.7"),
                          ("address:2001:DB8:0::1", "address:2001:db8::1")):
        r = admin("unban", target, "--data-dir", data)
        assert r.returncode == 0, r.stderr
        assert r.stdout == f"{shown}: 1 ban lifted\n"
    assert store.bans(time.time()) == []
    failed(admin("unban", "bob", "--data-dir", data), r"account:bob is not banned")
    failed(admin("unban", "account:nobody", "--data-dir", data), r"no account 'nobody'")
    failed(admin("unban", "address:not-an-ip", "--data-dir", data), r"not an IP address")


def test_unban_lifts_every_room_of_the_target(store, data):
    bob = store.get("bob")
    for room in (SERVER, "#a", "#b"):
        store.ban(account_target(bob.id), room, 0, "", "Alice")
    r = admin("unban", "bob", "--data-dir", data)
    assert r.returncode == 0 and r.stdout == "account:bob: 3 bans lifted\n", r.stderr
    assert store.bans(time.time()) == []


# ---- a file it cannot use ------------------------------------------------------------------------

def test_a_file_from_a_newer_pychat_is_refused_in_one_line(data):
    os.makedirs(data)
    db = sqlite3.connect(os.path.join(data, FILENAME))
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    for argv in (["accounts"], ["op", "alice"], ["unban", "1.2.3.4"]):
        failed(admin(*argv, "--data-dir", data), rf"schema version {SCHEMA_VERSION + 1}")


def test_a_damaged_file_is_refused_in_one_line(data):
    os.makedirs(data)
    with open(os.path.join(data, FILENAME), "wb") as f:
        f.write(b"this is not an SQLite file\n" * 100)
    failed(admin("accounts", "--data-dir", data), FILENAME)
