"""The accounts file (router/accounts.py) and password hashing (router/passwords.py).

AccountStore is driven as the router and ``pychat admin`` drive it, on real SQLite files in
tmp_path (property tests use the in-memory store: hypothesis runs many examples per test).
The file is looked at with a separate sqlite3 connection where what is on disk matters: its
schema version, its journal mode, and its state after a writer was SIGKILLed. Passwords use
cheap argon2 parameters (one pass over 8 KiB): the hashing is argon2's, the tests check what
PyChat does around it.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pychat.router.accounts import (
    FILENAME,
    SCHEMA_VERSION,
    SERVER,
    AccountsError,
    AccountStore,
    account_target,
    address_target,
    fold,
)
from pychat.router.passwords import Passwords, token_digest
from pychat.wire.commands import PASSWORD_MAX as MAX_LENGTH
from pychat.wire.commands import PASSWORD_MIN as MIN_LENGTH
from pychat.wire.commands import password_problem
from support.procs import ROOT

HASH = "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo"  # a stand-in: never verified
PEPPER = b"0123456789abcdef-a-pepper"
names = st.from_regex(r"[A-Za-z0-9_-]{1,24}", fullmatch=True)  # wire.commands.NAME_RE


def cheap(pepper: bytes = b"") -> Passwords:
    return Passwords(pepper, time_cost=1, memory_kib=8)


@pytest.fixture
def folder(tmp_path) -> str:
    return str(tmp_path / "data")


@pytest.fixture
def stores(folder):
    """``stores()`` opens the accounts file in ``folder``; every one is closed at the end."""
    made: list[AccountStore] = []

    def make(**kw) -> AccountStore:
        s = AccountStore.in_folder(folder, **kw).open()
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


@pytest.fixture
def store(stores) -> AccountStore:
    return stores()


def on_disk(folder: str, sql: str) -> list[tuple]:
    db = sqlite3.connect(os.path.join(folder, FILENAME))
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


# ---- accounts ------------------------------------------------------------------------------------

def test_a_name_is_one_account_whatever_its_case(store):
    alice = store.create("Alice", HASH)
    assert alice is not None and alice.name == "Alice" and not alice.operator
    assert store.get("alice") == store.get("ALICE") == store.by_id(alice.id) == alice
    assert store.exists("aLiCe") and not store.exists("bob")
    assert store.create("alice", HASH) is None  # taken, in any case
    assert store.create("Alice", "another hash") is None
    assert [a.name for a in store.accounts()] == ["Alice"]
    assert store.get("alice").hash == HASH


@settings(max_examples=200, deadline=None)
@given(st.lists(names, max_size=12))
def test_create_takes_exactly_the_names_not_taken_ignoring_case(given_names):
    store = AccountStore(None).open()
    taken: dict[str, str] = {}
    for name in given_names:
        made = store.create(name, HASH)
        if fold(name) in taken:
            assert made is None
        else:
            assert made is not None and made.name == name
            taken[fold(name)] = name
        assert store.get(name.upper()).name == taken[fold(name)]
    assert sorted(a.name for a in store.accounts()) == sorted(taken.values())
    store.close()


def test_operator_flag_set_and_cleared_by_any_case(store):
    store.create("alice", HASH)
    assert store.set_operator("ALICE", True) and store.get("alice").operator
    assert store.set_operator("Alice", True)  # already one: still found
    assert store.set_operator("alice", False) and not store.get("alice").operator
    assert not store.set_operator("nobody", True)


def test_a_second_connection_sees_each_change_at_once(stores):
    """The router and ``pychat admin``: two connections to one file, neither reopened."""
    router, admin = stores(), stores()
    alice = router.create("alice", HASH)
    assert admin.set_operator("alice", True)
    assert router.get("alice").operator
    admin.ban(account_target(alice.id), SERVER, 0, "spam", "admin")
    assert router.banned([account_target(alice.id)], SERVER, time.time()) is not None


def test_accounts_survive_reopening_and_the_seal_key_stays(stores, folder):
    first = stores()
    first.create("alice", HASH)
    first.set_operator("alice", True)
    key = first.seal_key()
    assert len(key) == 32
    first.close()
    again = stores()
    assert again.get("ALICE").operator and again.get("alice").hash == HASH
    assert again.seal_key() == key
    assert AccountStore(None).open().seal_key() != key  # each file makes its own


# ---- resume tokens -------------------------------------------------------------------------------

def test_a_new_password_revokes_every_token_of_the_account(store):
    alice, bob = store.create("alice", HASH), store.create("bob", HASH)
    now = time.time()
    store.add_token(alice.id, "a1", now + 3600)
    store.add_token(alice.id, "a2", now + 3600)
    store.add_token(bob.id, "b1", now + 3600)
    assert store.token_account("a1", now) == alice.id
    store.set_hash(alice.id, "new hash")
    assert store.get("alice").hash == "new hash"
    assert store.token_account("a1", now) is None and store.token_account("a2", now) is None
    assert store.token_account("b1", now) == bob.id  # others' stay


def test_tokens_expire_and_can_be_dropped(store):
    alice = store.create("alice", HASH)
    now = time.time()
    store.add_token(alice.id, "t", now + 10)
    assert store.token_account("t", now + 5) == alice.id
    assert store.token_account("t", now + 11) is None
    assert store.token_account("unknown", now) is None
    store.add_token(alice.id, "u", now + 10)
    store.drop_token("u")
    assert store.token_account("u", now) is None


def test_adding_a_token_forgets_the_expired_ones(store, folder):
    alice = store.create("alice", HASH)
    store.add_token(alice.id, "old", time.time() - 1)
    store.add_token(alice.id, "new", time.time() + 60)
    assert on_disk(folder, "SELECT digest FROM tokens") == [("new",)]


# ---- bans ----------------------------------------------------------------------------------------

def test_server_and_room_bans_timed_and_until_unban(store):
    bob = store.create("bob", HASH)
    now = time.time()
    bob_t, ip_t = account_target(bob.id), address_target("192.0.2.7")
    store.ban(bob_t, SERVER, 0, "spam", "alice")  # until unban
    store.ban(ip_t, "#ops", now + 60, "flood", "carol")  # an hour... a minute, in #ops only
    ban = store.banned([ip_t, bob_t], SERVER, now + 10**6)
    assert ban is not None and (ban.reason, ban.by, ban.until) == ("spam", "alice", 0)
    assert store.banned([ip_t], SERVER, now) is None  # a room ban is not a server ban
    assert store.banned([bob_t], "#ops", now) is None  # and the reverse
    assert store.banned([ip_t], "#ops", now + 59).reason == "flood"
    assert store.banned([ip_t], "#ops", now + 60) is None  # over
    assert store.banned([], SERVER, now) is None
    shown = store.bans(now)
    assert [(b.target, b.room) for b in shown] == [("account:bob", SERVER),
                                                   ("address:192.0.2.7", "#ops")]
    assert [b.target for b in store.bans(now + 61)] == ["account:bob"]  # the ended one goes


def test_banning_again_replaces_and_unban_lifts_by_target(store):
    now = time.time()
    ip_t = address_target("2001:db8::1")
    store.ban(ip_t, SERVER, now + 60, "first", "a")
    store.ban(ip_t, SERVER, 0, "second", "b")
    assert [(b.reason, b.until) for b in store.bans(now)] == [("second", 0)]
    store.ban(ip_t, "#a", 0, "", "b")
    store.ban(ip_t, "#b", 0, "", "b")
    assert store.unban(ip_t, "#a") == 1
    assert {b.room for b in store.bans(now)} == {SERVER, "#b"}
    assert store.unban(ip_t) == 2
    assert store.bans(now) == [] and store.unban(ip_t) == 0


# ---- rooms and offline mail ----------------------------------------------------------------------

def test_room_owner_and_topic(store):
    alice, bob = store.create("alice", HASH), store.create("bob", HASH)
    assert store.room("#new") == (None, "")
    store.set_owner("#ops", alice.id)
    store.set_topic("#ops", "deploys only", "alice")
    assert store.room("#ops") == (alice.id, "deploys only")
    store.set_topic("#chat", "anything", "bob")  # a topic without an owner
    assert store.room("#chat") == (None, "anything")
    store.set_owner("#chat", bob.id)  # keeps its topic
    assert store.room("#chat") == (bob.id, "anything")


def test_offline_mail_is_bounded_and_delivered_up_to_an_id(store):
    alice = store.create("alice", HASH)
    kept = [store.keep_offline(alice.id, f"stamp{i}", "bob", f"line {i}", limit=3)
            for i in range(5)]
    assert kept == [True, True, True, False, False]  # refused past the limit, not dropped
    waiting = store.offline(alice.id)
    assert [text for _, _, _, text in waiting] == ["line 0", "line 1", "line 2"]
    assert waiting[0][1:3] == ("stamp0", "bob")
    store.delivered(alice.id, waiting[1][0])
    assert [text for _, _, _, text in store.offline(alice.id)] == ["line 2"]
    assert store.keep_offline(alice.id, "s", "bob", "line 5", limit=3)  # room again


def test_deleting_an_account_frees_its_name_and_drops_what_was_its(store, folder):
    alice, bob = store.create("alice", HASH), store.create("bob", HASH)
    now = time.time()
    store.add_token(alice.id, "t", now + 60)
    store.keep_offline(alice.id, "s", "bob", "hi", limit=10)
    store.keep_offline(bob.id, "s", "alice", "hi", limit=10)
    store.set_owner("#ops", alice.id)
    store.set_topic("#ops", "kept", "alice")
    store.ban(account_target(alice.id), SERVER, 0, "", "bob")
    store.ban(account_target(bob.id), "#x", 0, "", "alice")
    assert store.delete("ALICE")
    assert store.get("alice") is None and not store.delete("alice")
    assert store.token_account("t", now) is None
    assert store.room("#ops") == (None, "kept")
    assert [b.target for b in store.bans(now)] == ["account:bob"]  # bob's ban stays
    assert on_disk(folder, "SELECT account FROM offline") == [(bob.id,)]
    again = store.create("Alice", HASH)  # the name is free, and starts clean
    assert again is not None and again.id != alice.id and not again.operator
    assert store.banned([account_target(again.id)], SERVER, now) is None
    assert store.offline(again.id) == []


# ---- the file: versions, damage, a writer killed -------------------------------------------------

def test_a_fresh_file_has_the_current_schema_in_wal_mode(store, folder):
    assert store.version() == SCHEMA_VERSION
    assert on_disk(folder, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert on_disk(folder, "PRAGMA journal_mode") == [("wal",)]


def test_a_file_from_a_newer_pychat_is_refused_untouched(folder):
    os.makedirs(folder)
    path = os.path.join(folder, FILENAME)
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE future (x)")
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    with pytest.raises(AccountsError, match=f"schema version {SCHEMA_VERSION + 1}"):
        AccountStore(path).open()
    assert on_disk(folder, "SELECT name FROM sqlite_master") == [("future",)]
    assert on_disk(folder, "PRAGMA user_version") == [(SCHEMA_VERSION + 1,)]


@pytest.mark.parametrize("how", ["empty file", "empty database"])
def test_a_file_at_version_0_without_tables_is_migrated(folder, stores, how):
    os.makedirs(folder)
    path = os.path.join(folder, FILENAME)
    if how == "empty file":
        open(path, "wb").close()
    else:  # a real database whose only table is gone
        db = sqlite3.connect(path)
        db.execute("CREATE TABLE t (x)")
        db.execute("DROP TABLE t")
        db.commit()
        db.close()
        assert on_disk(folder, "PRAGMA user_version") == [(0,)]
    store = stores()
    assert store.version() == SCHEMA_VERSION
    assert store.create("alice", HASH) is not None
    tables = {r[0] for r in on_disk(folder, "SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"accounts", "tokens", "bans", "rooms", "offline", "meta"} <= tables


@pytest.mark.parametrize("garbage", [b"not a database at all\n" * 200,
                                     random.Random(13).randbytes(8192),
                                     b"SQLite format 3\x00" + b"\xff" * 4000],
                         ids=["text", "random bytes", "a header over garbage"])
def test_a_damaged_file_is_an_accounts_error_not_a_crash(folder, garbage):
    os.makedirs(folder)
    path = os.path.join(folder, FILENAME)
    with open(path, "wb") as f:
        f.write(garbage)
    with pytest.raises(AccountsError, match=FILENAME):
        AccountStore(path).open()


def test_a_folder_that_cannot_be_made_is_an_accounts_error(tmp_path):
    (tmp_path / "file").write_text("in the way")
    with pytest.raises(AccountsError, match="cannot create data folder"):
        AccountStore.in_folder(str(tmp_path / "file" / "data")).open()


WRITER = r"""
import sys, time
from pychat.router.accounts import SERVER, AccountStore, account_target
store = AccountStore.in_folder(sys.argv[1]).open()
i = int(sys.argv[2])
while True:
    name = f"user{i}"
    account = store.create(name, "$argon2id$" + "h" * 90)
    print(name, flush=True)  # after its commit
    store.add_token(account.id, f"token{i}", time.time() + 60)
    store.keep_offline(account.id, "stamp", "x", "y" * 200, limit=5)
    store.ban(account_target(account.id), SERVER, 0, "r", "x")
    store.set_operator(name, i % 2 == 0)
    i += 1
"""


def test_a_writer_killed_with_sigkill_leaves_every_commit_it_reported(folder):
    """Three rounds on one file: a child creates accounts (and writes four more transactions
    around each) until it is SIGKILLed after it reported N of them, most likely inside a
    transaction; the file then opens clean and holds every account the child printed (it
    prints each name after its commit), and at most the one it had no time to print."""
    reported: list[str] = []
    for after in (1, 37, 150):
        child = subprocess.Popen([sys.executable, "-c", WRITER, folder, str(len(reported))],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 cwd=ROOT)
        assert child.stdout is not None and child.stderr is not None
        try:
            for _ in range(after):
                line = child.stdout.readline()
                if not line:
                    child.wait(timeout=30)
                    pytest.fail(f"the writer ended early: {child.stderr.read()}")
                reported.append(line.strip())
        finally:
            child.send_signal(signal.SIGKILL)
            rest = child.stdout.read()  # printed before it died: committed too
            child.wait(timeout=30)
            child.stdout.close()
            child.stderr.close()
        assert child.returncode == -signal.SIGKILL
        reported += rest.split()
        assert on_disk(folder, "PRAGMA quick_check") == [("ok",)]
        store = AccountStore.in_folder(folder).open()
        try:
            held = {a.name for a in store.accounts()}
            assert set(reported) <= held
            assert len(held) - len(reported) <= 1  # at most the one it had not printed yet
        finally:
            store.close()
        reported = sorted(held, key=lambda n: int(n[4:]))  # the next child goes on from there
    assert on_disk(folder, "PRAGMA integrity_check") == [("ok",)]


# ---- passwords -----------------------------------------------------------------------------------

def test_verify_says_yes_to_the_password_and_no_to_anything_else():
    p = cheap()
    stored = p.hash("correct horse")
    assert stored.startswith("$argon2id$")
    assert p.verify(stored, "correct horse")
    assert not p.verify(stored, "correct horsE")
    assert not p.verify(stored, "")
    assert not p.verify("not a hash", "correct horse")
    assert not p.verify("", "correct horse")


def test_a_pepper_is_needed_to_verify_a_peppered_hash():
    peppered, plain, other = cheap(PEPPER), cheap(), cheap(b"another pepper, as long")
    stored = peppered.hash("correct horse")
    assert peppered.verify(stored, "correct horse")
    assert cheap(PEPPER).verify(stored, "correct horse")  # the same pepper, another instance
    assert not plain.verify(stored, "correct horse")
    assert not other.verify(stored, "correct horse")
    assert not peppered.verify(plain.hash("correct horse"), "correct horse")


def test_an_unknown_name_is_checked_against_a_dummy_and_fails():
    p = cheap()
    assert not p.verify(None, "anything at all")
    assert not p.verify(None, "not a password of anyone")  # the dummy's own text
    assert not p.verify(None, "")


def test_a_hash_made_with_other_costs_still_verifies():
    """argon2 writes its parameters into the hash: the router's costs can change."""
    stored = Passwords(time_cost=2, memory_kib=16).hash("correct horse")
    assert cheap().verify(stored, "correct horse")


@settings(max_examples=300, deadline=None)
@given(st.text(st.characters(blacklist_categories=()), max_size=MAX_LENGTH + 20))
def test_password_problem_is_exactly_the_documented_rule(password):
    ok = MIN_LENGTH <= len(password) <= MAX_LENGTH and not any(
        c.isspace() or ord(c) < 32 or 0x7f <= ord(c) < 0xa0 for c in password)
    problem = password_problem(password)
    assert (problem == "") == ok
    if not ok:
        assert problem.startswith("invalid password")


printable = st.characters(blacklist_categories=("Cc", "Zs", "Zl", "Zp"))


@settings(max_examples=60, deadline=None)
@given(st.text(printable, min_size=MIN_LENGTH, max_size=64), st.binary(max_size=40),
       st.text(printable, min_size=1, max_size=4))
def test_any_accepted_password_round_trips_with_and_without_pepper(password, pepper, extra):
    if password_problem(password):  # e.g. U+0085 and other spaces outside those categories
        return
    p = cheap(pepper)
    stored = p.hash(password)
    assert p.verify(stored, password)
    assert not p.verify(stored, password + extra)
    assert not p.verify(stored, password[:-1])


@given(st.text(max_size=100), st.text(max_size=100))
def test_a_token_digest_is_stable_hex_and_tells_tokens_apart(a, b):
    assert token_digest(a) == token_digest(a)
    assert len(token_digest(a)) == 64 and int(token_digest(a), 16) >= 0
    assert (token_digest(a) == token_digest(b)) == (a == b)
