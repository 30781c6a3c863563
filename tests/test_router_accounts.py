"""Pure tier: accounts and moderation in router.state.RouterState, driven without sockets.

The state runs with an in-memory accounts store, cheap argon2 parameters (the real ones cost 20
ms a hash: tests/test_accounts_e2e.py uses them), ``InlineJobs`` (a job runs at submit, its answer
at the next end of turn, as the pool's would) and a wall clock the test moves (timed bans).
"""

from __future__ import annotations

import random

import pytest

from pychat.router.accounts import AccountStore
from pychat.router.history import MemoryHistory
from pychat.router.passwords import InlineJobs, Passwords
from pychat.router.state import RouterState, Throttle
from pychat.wire.bus import SessionSet
from pychat.wire.commands import AWAITED, Login, Password, Register
from tests.test_router_state import FakeClock, Net

PASSWORD = "correct-horse-9"


class Wall:
    def __init__(self) -> None:
        self.t = 1_800_000_000.0

    def __call__(self) -> float:
        return self.t


class AccountsNet(Net):
    def __init__(self, require_login: bool = False, jobs: InlineJobs | None = None,
                 offline_limit: int = 100):
        super().__init__()
        self.wall = Wall()
        self.mono = 1000.0
        self.store = AccountStore(None).open()
        self.state = RouterState(FakeClock(), MemoryHistory(), random.Random(1),
                                 accounts=self.store,
                                 passwords=Passwords(time_cost=1, memory_kib=8),
                                 jobs=jobs or InlineJobs(), wall=self.wall,
                                 monotonic=lambda: self.mono, require_login=require_login,
                                 offline_limit=offline_limit)

    def member(self, line: str = "", acc: str = "A") -> tuple[str, int]:
        key = self.open(acc)
        if line:
            self.cmd(key, line)
        self.lines(key)
        return key

    def account(self, name: str, acc: str = "A") -> tuple[str, int]:
        key = self.member(f"/nick {name}", acc)
        self.cmd(key, f"/register {PASSWORD}")
        assert self.lines(key)[0] == f"OK register {name}"
        return key


def test_every_awaited_command_gets_exactly_one_done_whatever_happens():
    """The client's connection handles nothing more until Done: an awaited command that got no
    Done would freeze it, one that got two would let a later command overtake."""
    net = AccountsNet(require_login=True)
    guest = net.member()
    cases = [
        (guest, Register(PASSWORD)),  # no name yet (and a guest: allowed)
        (guest, Password(PASSWORD, PASSWORD + "x")),  # refused by --require-login
        (guest, Login("nobody", PASSWORD)),  # unknown
    ]
    named = net.member("/nick alice")
    cases += [(named, Register(PASSWORD)), (named, Register(PASSWORD)),  # ok, then logged in
              (named, Password("wrong-password", "new-password")),
              (named, Password(PASSWORD, "new-password"))]
    for _ in range(7):
        cases.append((guest, Login("alice", "wrong-password")))  # into the throttle
    for key, cmd in cases:
        before = net.done[key]
        net.cmd(key, cmd)
        assert net.done[key] == before + 1, cmd
    assert {type(cmd) for _, cmd in cases} == set(AWAITED)


def test_a_full_job_queue_is_refused_not_queued():
    net = AccountsNet(jobs=InlineJobs(limit=0))
    key = net.member("/nick bob")
    net.cmd(key, f"/register {PASSWORD}")
    assert net.lines(key) == ["ERROR: the server is busy with other logins: try again"]
    assert net.done[key] == 1


def test_a_session_that_leaves_while_its_password_is_checked_gets_nothing():
    net = AccountsNet()
    net.account("carol")
    key = net.member()
    out = net.state.command(*key, Login("carol", PASSWORD))  # the job runs; its answer waits
    assert out == []
    net.close(key)  # gone before the end of the turn that drains the answer
    assert net.done[key] == 0 and net.lines(key) == []
    assert net.state.logins == {"carol": [net.state.by_conn[next(iter(net.state.by_conn))]]}


def test_a_timed_ban_ends_on_its_own():
    net = AccountsNet()
    op = net.account("op")
    net.store.set_operator("op", True)
    victim = net.account("dave")
    net.clear()
    net.cmd(op, "/ban dave 60 cool off")
    assert net.lines(op) == ["OK ban dave"]
    assert net.lines(victim) == ["BYE banned: cool off"]
    net.close(victim)
    again = net.member()
    net.cmd(again, f"/login dave {PASSWORD}")
    assert net.lines(again) == ["ERROR: banned: cool off"]
    net.close(again)
    net.wall.t += 60 * 60 + 1
    later = net.member()
    net.cmd(later, f"/login dave {PASSWORD}")
    assert net.lines(later)[0] == "OK login dave"


def test_a_resync_restores_a_login_only_with_its_seal():
    net = AccountsNet()
    key = net.account("erin")
    seal = net.sessions[key].seal
    assert len(seal) == 64 and net.sessions[key].account == "erin"
    uid = net.uid(key)
    fresh = AccountsNet()  # a restarted router: the same file, so the same key
    fresh.store = net.store
    fresh.state = RouterState(FakeClock(), MemoryHistory(), random.Random(2), accounts=net.store,
                              passwords=Passwords(time_cost=1, memory_kib=8), jobs=InlineJobs())
    out = fresh.state.sync(*key, uid, "erin", "#lobby", "127.0.0.1:5", "erin", seal)
    sess = [m for _, m in out if isinstance(m, SessionSet)]
    assert sess[-1].account == "erin" and sess[-1].name == "erin"
    # the same seal on another connection, or another acceptor, or a made-up one: a guest
    for acc, conn, forged in (("A", 99, seal), ("B", key[1], seal), ("A", 98, "0" * 64)):
        out = fresh.state.sync(acc, conn, "", "erin", "#lobby", "127.0.0.1:6", "erin", forged)
        sess = [m for _, m in out if isinstance(m, SessionSet)]
        assert sess[-1].account == "" and sess[-1].name == "", (acc, conn)
        errors = [m.text for _, m in out if hasattr(m, "code")]
        assert "your login could not be restored: log in again" in errors


def test_a_guest_name_registered_meanwhile_is_not_given_back_by_a_resync():
    net = AccountsNet()
    net.account("frank")
    out = net.state.sync("B", 1, "111111", "frank", "#lobby", "10.0.0.1:5")
    sess = [m for _, m in out if isinstance(m, SessionSet)]
    assert sess[-1].name == ""
    assert [m.text for _, m in out if hasattr(m, "code")] == ["name frank is registered"]


def test_the_offline_mailbox_is_bounded():
    net = AccountsNet(offline_limit=2)
    net.account("gina")
    sender = net.account("hank")
    gina = next(k for k, s in net.sessions.items() if s.account == "gina")
    net.cmd(gina, "/logout")
    net.clear()
    for i in range(3):
        net.cmd(sender, f"/msg gina note {i}")
    assert net.lines(sender) == ["[Private] To gina: note 0", "[Private] To gina: note 1",
                                 "ERROR: gina has 2 messages waiting: not sent"]


def test_kick_and_ban_refusals():
    net = AccountsNet()
    op = net.account("ivy")
    net.store.set_operator("ivy", True)
    other_op = net.account("jack")
    net.store.set_operator("jack", True)
    guest = net.member()
    net.clear()
    net.cmd(guest, "/kick ivy")
    assert net.lines(guest) == ["ERROR: not allowed: an operator cannot be kicked"]
    net.cmd(op, "/kick jack")
    assert net.lines(op) == ["ERROR: not allowed: an operator cannot be kicked"]
    net.cmd(op, "/ban jack")
    assert net.lines(op) == ["ERROR: not allowed: an operator cannot be banned"]
    net.cmd(op, "/ban ivy")
    assert net.lines(op) == ["ERROR: not allowed: you cannot ban yourself"]
    net.cmd(op, "/ban nobody-here")
    assert net.lines(op) == ["ERROR: no such user nobody-here"]
    net.cmd(op, "/unban 10.1.2.3")
    assert net.lines(op) == ["ERROR: no ban on 10.1.2.3"]
    net.cmd(guest, "/unban ivy")
    assert net.lines(guest)[0].startswith("ERROR: not allowed")
    assert net.lines(other_op) == []


def test_ownership_goes_to_the_first_account_in_and_never_to_the_lobby():
    net = AccountsNet()
    guest = net.member("/join #den")
    owner = net.account("kim")
    net.cmd(owner, "/join #den")
    assert net.store.room("#den")[0] is not None
    net.cmd(owner, "/topic ours")
    assert "TOPIC:#den ours" in net.lines(guest)
    net.cmd(owner, "/join #lobby")
    net.cmd(owner, "/topic lobby topic")
    assert net.lines(owner)[-1].startswith("ERROR: not allowed")
    assert net.store.room("#lobby")[0] is None


@pytest.mark.parametrize("free", [1, 5])
def test_throttle_waits_double_after_the_free_failures_and_forget(free):
    t = Throttle(free=free, longest=8.0, forget=100.0, keys=3)
    waits = []
    for _ in range(free + 5):
        t.failed("k", 10.0)
        waits.append(t.wait("k", 10.0))
    assert waits == [0.0] * (free - 1) + [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert t.wait("k", 10.0 + 101) == 0.0  # forgotten
    for key in "abcd":
        t.failed(key, 0.0)
    assert t.wait("a", 0.0) == 0.0 and len(t._state) == 3  # bounded: the oldest went
    t.succeeded("d")
    assert "d" not in t._state


def test_simultaneous_guesses_get_no_more_than_the_free_ones():
    """Guesses in flight count against the name before their results are known: 10 at once,
    from 10 addresses, get 5 checks; the others wait for the results ("try again in 1 s")."""
    net = AccountsNet()
    net.account("lena")
    keys = []
    for i in range(10):
        key = ("B", 100 + i)
        net.deliver(net.state.open(*key, f"10.0.0.{i}:5000"))
        keys.append(key)
    net.turn()
    net.clear()
    for key in keys:  # all in one turn: none of the checks has finished
        net.cmd(key, Login("lena", "guess-guess"), turn=False)
    throttled = [k for k in keys if net.lines(k) == [
        "ERROR: login failed: too many attempts, try again in 1 s"]]
    assert len(throttled) == 5 and net.state.jobs.running == 5
    net.turn()  # the checks finish: 5 failures, and the name waits from now on
    assert sum(net.lines(k) == ["ERROR: login failed"] for k in keys) == 5
    assert all(net.costs[k] > 0 for k in keys)  # every failed or throttled try slows its sender


def test_a_resume_is_not_held_up_by_its_name_s_failed_passwords():
    net = AccountsNet()
    owner = net.account("mia")
    net.cmd(owner, "/token")
    token = net.lines(owner)[0].split()[2]
    attacker = net.member()
    for _ in range(6):
        net.cmd(attacker, Login("mia", "guess-guess"))
    assert net.lines(attacker)[-1].startswith("ERROR: login failed: too many attempts")
    device = net.member()
    net.clear()
    net.cmd(device, f"/resume mia {token}")
    assert net.lines(device)[0] == "OK login mia"
    net.cmd(device, "/logout")
    guest = net.member()
    net.cmd(guest, f"/login mia {PASSWORD}")  # a password still waits, the owner's too
    assert net.lines(guest)[0].startswith("ERROR: login failed: too many attempts")
