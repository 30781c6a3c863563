"""Pure tier: one client connection (acceptor/connection.py), with a fake clock and no sockets.

Each test plays the acceptor's part by hand: it passes ``now`` and the bus ticket (the batch that
routed commands travel in), says what the router has answered (``answered_up_to``), and reads
the actions that come back.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pychat.acceptor.connection import CUT, PAUSE, RESUME, Close, Connection, Route, Write
from pychat.acceptor.limits import Limits
from pychat.wire.commands import History, Join, Login, Nick, Say, Users

LIMITS = Limits()


def conn(ticket: int = 1, **limits) -> Connection:
    """A connection whose Open went in batch ``ticket`` (not answered yet)."""
    return Connection(replace(LIMITS, **limits), 0.0, ticket)


def writes(actions) -> list[str]:
    return [a.text for a in actions if isinstance(a, Write)]


def routed(actions) -> list:
    return [a.command for a in actions if isinstance(a, Route)]


# ---- framing ----------------------------------------------------------------------------------

def test_lines_become_commands_for_the_router_in_order():
    c = conn()
    acts = c.receive_data(b"hello\n/nick al\nagain\n", 0.1, 2, c.answered)
    assert acts == [Route(Say("hello")), Route(Nick("al")), Route(Say("again"))]


def test_a_heavy_command_waits_until_the_one_before_it_is_answered():
    """/nick, /join, /users, /rooms, /history: what they send grows with the data, so their
    cost must be known (charged) before the next one goes; chat lines go meanwhile."""
    c = conn(ticket=1)
    acts = c.receive_data(b"/join #x\n/history 5\nhello\n", 0.1, 2, 1)
    assert acts == [Route(Join("#x")), PAUSE]  # /history waits for the /join's answer
    assert c.awaits_answers and c.wake_at is None
    assert c.answered_up_to(2) == [] and c.wake_at == 0.0  # answered: a turn at once
    assert c.tick(0.2, 3, 2) == [Route(History(5)), Route(Say("hello")), RESUME]


def test_a_line_split_anywhere_is_one_line():
    c = conn()
    assert c.receive_data(b"hel", 0.1, 2, c.answered) == []
    assert c.receive_data(b"lo wor", 0.2, 2, c.answered) == []
    assert c.receive_data(b"ld\r\n", 0.3, 2, c.answered) == [Route(Say("hello world"))]


@settings(max_examples=200)
@given(st.lists(st.integers(1, 40), min_size=1, max_size=12))
def test_any_split_of_the_stream_gives_the_same_commands(cuts):
    data = b"one\n/msg al two\n//three\r\nfour \xc3\xa9\n"
    c = conn()
    c.receive_data(b"x\n", 0.0, 1, c.answered)  # strict lines from here on
    got = []
    at = 0
    for n in cuts:
        got += routed(c.receive_data(data[at:at + n], 0.1, 2, c.answered))
        at += n
    got += routed(c.receive_data(data[at:], 0.1, 2, c.answered))
    assert [getattr(x, "text", None) for x in got] == ["one", "two", "/three", "four é"]


def test_errors_are_lines_and_the_connection_goes_on():
    c = conn(ticket=1)
    c.answered_up_to(1)
    acts = c.receive_data(b"/nosuch\n/nick\n\xff\n" + b"x" * 5000 + b"\nok\n", 0.1, 2, c.answered)
    assert writes(acts) == ["ERROR: unknown command /nosuch", "ERROR: usage: /nick <name>",
                            "ERROR: invalid UTF-8", "ERROR: line too long (max 4096 bytes)"]
    assert routed(acts) == [Say("ok")]
    assert not any(isinstance(a, Close) for a in acts)


def test_a_line_from_a_message_transport_is_one_line_even_with_newlines_removed():
    c = conn()
    assert c.receive_line(b"hi there", 0.1, 2, c.answered) == [Route(Say("hi there"))]
    # held: batch 2 is not answered
    assert writes(c.receive_line(b"y" * 5000, 0.2, 2, c.answered)) == []
    assert writes(c.answered_up_to(2)) == ["ERROR: line too long (max 4096 bytes)"]


# ---- replies keep their place ---------------------------------------------------------------

def test_a_local_reply_waits_for_the_answers_to_the_commands_before_it():
    c = conn(ticket=1)
    acts = c.receive_data(b"/ping first\n", 0.1, 1, c.answered)  # before its own Open is answered
    assert acts == []
    assert c.held
    assert writes(c.answered_up_to(1)) == ["PONG first"]
    acts = c.receive_data(b"hello\n/ping second\n", 0.2, 2, c.answered)
    assert acts == [Route(Say("hello"))]  # the PONG waits for batch 2's results
    assert c.answered_up_to(1) == []
    assert writes(c.answered_up_to(2)) == ["PONG second"]
    # nothing routed before it is unanswered: at once
    assert writes(c.receive_data(b"/ping third\n", 0.3, 3, c.answered)) == ["PONG third"]


def test_replies_held_in_order_go_out_in_order_and_later_ones_wait_behind_them():
    c = conn(ticket=1)
    c.answered_up_to(1)
    c.receive_data(b"a\n/ping 1\n", 0.1, 2, c.answered)
    c.receive_data(b"b\n/ping 2\n/cap time\n", 0.2, 3, c.answered)
    assert writes(c.answered_up_to(2)) == ["PONG 1"]
    assert writes(c.answered_up_to(3)) == ["PONG 2", "OK cap time"]
    assert c.cap_time and not c.held


def test_a_command_after_a_held_reply_goes_in_a_later_batch_than_the_one_before_it():
    """The reply must reach the client before the second command's results, and answers come
    per batch: so the batch is cut between them."""
    c = conn(ticket=1)
    # all in the Open's batch, to begin with
    acts = c.receive_data(b"/nosuch\nhello\n/ping\nagain\n", 0.1, 1, c.answered)
    assert acts == [CUT, Route(Say("hello")), CUT, Route(Say("again"))]
    assert [t for t, _ in c.held] == [1, 2]
    assert writes(c.answered_up_to(1)) == ["ERROR: unknown command /nosuch"]
    assert writes(c.answered_up_to(2)) == ["PONG"]
    # batch 3 is not answered, but a later batch is being collected: no cut needed
    acts = c.receive_data(b"/ping\none more\n", 0.2, 4, c.answered)
    assert acts == [Route(Say("one more"))]


def test_a_connection_holding_nothing_learns_what_is_answered_with_its_next_call():
    """It holds nothing, so nobody tells it when its batches are answered: every call says."""
    c = conn(ticket=1)
    c.receive_data(b"/join #a\n", 0.1, 2, 1)
    c.receive_data(b"hi\n", 0.2, 3, 1)
    # batches 2 and 3 were answered meanwhile, unseen by it; an error comes: at once, not held
    assert writes(c.receive_data(b"/nosuch\nthere\n", 0.3, 4, 3)) == [
        "ERROR: unknown command /nosuch"]


def test_answered_may_skip_ahead():
    c = conn(ticket=1)
    c.receive_data(b"a\n/ping 1\n", 0.1, 2, c.answered)
    c.receive_data(b"b\n/ping 2\n", 0.2, 5, c.answered)
    assert writes(c.answered_up_to(7)) == ["PONG 1", "PONG 2"]


def test_help_and_unknown_capability():
    c = conn(ticket=1)
    c.answered_up_to(1)
    acts = c.receive_data(b"/help\n/cap colour\n", 0.1, 2, c.answered)
    text = writes(acts)
    assert text[0].startswith("HELP: ") and "/quit" in text[0]
    assert text[1] == "ERROR: unknown capability colour (known: time, codes, end, deltas)"


# ---- leaving ---------------------------------------------------------------------------------

def test_quit_says_bye_behind_earlier_results_then_closes_and_reads_no_more():
    c = conn(ticket=1)
    c.answered_up_to(1)
    acts = c.receive_data(b"last words\n/quit gone home\nnever read\n", 0.1, 2, c.answered)
    assert acts == [Route(Say("last words")), PAUSE]
    assert c.receive_data(b"more\n", 0.2, 2, c.answered) == []
    assert c.answered_up_to(2) == [Write("BYE"), Close("quit: gone home")]
    assert c.closed


def test_half_close_serves_the_last_piece_answers_everything_then_closes():
    c = conn(ticket=1)
    acts = c.receive_data(b"hello\n/users\nlast without newline", 0.1, 2, c.answered)
    assert routed(acts) == [Say("hello"), Users()]
    acts = c.receive_eof(0.2, 3, c.answered)
    assert routed(acts) == [Say("last without newline")]
    assert not any(isinstance(a, Close) for a in acts)  # not before the answers came
    assert c.answered_up_to(2) == []
    assert c.answered_up_to(3) == [Close("end of input")]


def test_half_close_with_nothing_pending_closes_once_the_open_is_answered():
    c = conn(ticket=4)
    assert c.receive_eof(0.1, 5, c.answered) == []
    assert c.answered_up_to(4) == [Close("end of input")]


def test_half_close_of_a_flooder_serves_every_line_first():
    c = conn(flood_burst=2, flood_rate=10.0)
    c.answered_up_to(1)
    acts = c.receive_data(b"".join(b"m%d\n" % i for i in range(5)), 0.0, 2, 1)
    assert routed(acts) == [Say("m0"), Say("m1")] and PAUSE in acts
    assert c.receive_eof(0.01, 2, c.answered) == []  # paused: the rest wait for their tokens
    got = []
    t = 0.0
    while not c.closed and t < 5:
        t = c.wake_at if c.wake_at is not None else t + 0.1
        got += c.tick(t, 3, c.answered)
        got += c.answered_up_to(3)
    assert routed(got) == [Say("m2"), Say("m3"), Say("m4")]
    assert got[-1] == Close("end of input") and RESUME not in got


# ---- the original client: no newline at all --------------------------------------------------

def test_a_piece_idle_for_half_a_second_is_a_line_until_the_first_newline():
    c = conn()
    assert c.receive_data(b"hello", 0.0, 2, c.answered) == []
    assert c.wake_at == pytest.approx(0.5)
    assert c.tick(0.4, 2, c.answered) == []
    assert c.tick(0.5, 2, c.answered) == [Route(Say("hello"))]
    assert c.receive_data(b"how ", 1.0, 2, c.answered) == []
    assert c.receive_data(b"are you", 1.3, 2, c.answered) == []  # within 0.5 s: the same piece
    assert c.wake_at == pytest.approx(1.8)
    assert c.tick(1.8, 2, c.answered) == [Route(Say("how are you"))]
    c.receive_data(b"now\n", 2.0, 2, c.answered)
    assert c.receive_data(b"strict", 2.1, 2, c.answered) == [] and c.wake_at is None
    assert c.tick(10.0, 2, c.answered) == []  # after a newline a piece waits for its newline


def test_the_piece_rule_can_be_turned_off():
    c = conn(piece_idle=0.0)
    c.receive_data(b"hello", 0.0, 2, c.answered)
    assert c.wake_at is None and c.tick(5.0, 2, c.answered) == []


# ---- flood and fairness ----------------------------------------------------------------------

def test_a_flooder_is_paused_at_an_empty_bucket_and_resumed_when_a_token_is_due():
    c = conn(flood_burst=3, flood_rate=10.0)
    acts = c.receive_data(b"".join(b"%d\n" % i for i in range(5)), 0.0, 2, 0)
    assert routed(acts) == [Say("0"), Say("1"), Say("2")]
    assert acts[-1] is PAUSE and c.wake_at == pytest.approx(0.1)
    assert c.receive_data(b"5\n", 0.05, 2, c.answered) == []  # read meanwhile: waits behind them
    acts = c.tick(0.1, 2, c.answered)
    assert routed(acts) == [Say("3")] and c.wake_at == pytest.approx(0.2)
    acts = []
    while c.wake_at is not None:  # each token when it is due
        acts += c.tick(c.wake_at, 2, c.answered)
    assert routed(acts) == [Say("4"), Say("5")] and acts[-1] is RESUME


def test_errors_and_local_commands_take_no_token():
    c = conn(flood_burst=1, flood_rate=1.0)
    c.answered_up_to(1)
    acts = c.receive_data(b"/ping\n" * 50 + b"/nosuch\n" * 50 + b"one\n", 0.0, 1, c.answered)
    assert routed(acts) == [Say("one")] and PAUSE not in acts


def test_a_turn_handles_at_most_lines_per_turn_then_yields():
    c = conn(lines_per_turn=4)
    acts = c.receive_data(b"/ping\n" * 10, 0.0, 2, c.answered)
    assert acts == [PAUSE] and c.wake_at == 0.0  # the rest in the next turn
    c.tick(0.0, 2, c.answered)
    acts = c.tick(0.0, 2, c.answered)
    assert acts == [RESUME]


# ---- deadlines --------------------------------------------------------------------------------

def test_idle_timeout_closes_with_an_error_line_at_once():
    c = conn(idle_timeout=10.0)
    assert c.tick(9.0, 2, c.answered) == []
    assert c.tick(10.5, 2, c.answered) == [Write("ERROR: idle timeout (nothing received in 10 s)"),
                               Close("idle timeout")]


def test_an_unfinished_line_is_closed_after_its_time_even_while_trickling():
    c = conn(partial_line_timeout=5.0)
    c.receive_data(b"x\n", 0.0, 2, c.answered)
    for t in range(1, 6):
        c.receive_data(b"y", float(t), 2, c.answered)
    acts = c.tick(6.5, 2, c.answered)
    assert acts == [Write("ERROR: line not finished in 5 s"), Close("unfinished line")]


def test_time_paused_by_the_flood_limit_is_not_the_clients_silence():
    c = conn(flood_burst=1, flood_rate=0.1, idle_timeout=5.0)
    c.receive_data(b"a\nb\n", 0.0, 2, c.answered)
    assert c.paused
    assert c.tick(7.0, 2, c.answered) == []  # 7 s paused by us: no idle timeout
    # the token: b goes, reading resumes, the idle clock restarts
    acts = c.tick(10.0, 2, c.answered)
    assert routed(acts) == [Say("b")] and RESUME in acts
    assert c.tick(14.0, 2, c.answered) == []
    assert Close("idle timeout") in c.tick(15.5, 2, c.answered)


# ---- capabilities: codes and end ---------------------------------------------------------------

def test_codes_tag_error_lines_and_only_for_a_client_that_asked():
    c = conn(ticket=1)
    c.answered_up_to(1)
    assert writes(c.receive_data(b"/nosuch\n", 0.1, 2, 1)) == ["ERROR: unknown command /nosuch"]
    assert writes(c.receive_data(b"/cap codes\n/nosuch\n/nick\n\xff\n", 0.2, 2, 1)) == [
        "OK cap codes", "@code=unknown-command ERROR: unknown command /nosuch",
        "@code=usage ERROR: usage: /nick <name>", "@code=invalid-utf8 ERROR: invalid UTF-8"]


def test_end_closes_the_reply_to_every_command_behind_its_results():
    c = conn(ticket=1)
    c.answered_up_to(1)
    acts = c.receive_data(b"/cap end\n/ping a\nhello\n/users\n/nosuch\n/help\n", 0.1, 2, 1)
    assert writes(acts) == ["OK cap end", "END cap", "PONG a", "END ping"]
    assert routed(acts) == [Say("hello"), Users()]  # text lines get no END
    held = [a.text for _, a in c.held if isinstance(a, Write)]
    assert held[:2] == ["END users", "ERROR: unknown command /nosuch"]
    assert held[2] == "END nosuch" and held[3].startswith("HELP: ") and held[-1] == "END help"
    assert writes(c.answered_up_to(2)) == held  # after the results of batch 2 (/users)


def test_end_of_quit_comes_before_the_close():
    c = conn(ticket=1)
    c.answered_up_to(1)
    c.receive_data(b"/cap end\n", 0.1, 2, 1)
    assert c.receive_data(b"/quit\n", 0.2, 2, 1) == [PAUSE, Write("BYE"), Write("END quit"),
                                                    Close("quit")]


def test_several_capabilities_at_once_and_an_unknown_one_grants_none():
    c = conn(ticket=1)
    c.answered_up_to(1)
    assert writes(c.receive_data(b"/cap time codes colour\n", 0.1, 2, 1)) == [
        "ERROR: unknown capability colour (known: time, codes, end, deltas)"]
    assert not (c.cap_time or c.cap_codes or c.cap_end)
    assert writes(c.receive_data(b"/cap TIME codes\n", 0.2, 2, 1)) == ["OK cap time codes"]
    assert c.cap_time and c.cap_codes and not c.cap_end


# ---- what a command made the server send is charged -------------------------------------------

def test_the_cost_the_router_reports_delays_the_next_command_by_its_tokens():
    c = conn(flood_burst=2, flood_rate=10.0, flood_bytes=1000)
    assert routed(c.receive_data(b"/history 200\n", 0.0, 2, 1)) == [History(200)]
    c.charge(10_500)  # the reply was 10.5 kB: 10 more tokens (the first was the command's)
    acts = c.receive_data(b"/history 200\n", 0.01, 3, 2)  # (its answer came with its cost)
    assert routed(acts) == [] and PAUSE in acts  # 1 - 10 + 0.1 refilled: in debt
    assert c.wake_at == pytest.approx(0.0 + (1 - (1 - 10)) / 10.0, abs=0.02)  # ~1 s
    assert routed(c.tick(c.wake_at, 3, 1)) == [History(200)]


def test_a_cost_under_flood_bytes_costs_nothing_more():
    c = conn(flood_burst=1, flood_rate=1.0, flood_bytes=65536)
    c.receive_data(b"hi\n", 0.0, 2, 1)
    c.charge(65535)
    assert c.bucket.tokens == 0.0


# ---- awaited commands (/login, /register, /password) ------------------------------------------

def test_lines_after_an_awaited_command_wait_for_its_done_and_its_end_comes_with_it():
    """The router answers a /login after hashing, in a later turn than its batch (after its
    ack): the lines behind it wait, unread by the router, until its Done; then END login, then
    they go in order."""
    c = conn(ticket=1)
    c.answered_up_to(1)
    c.receive_data(b"/cap end\n", 0.0, 2, 1)
    acts = c.receive_data(b"/login al password1\n/ping x\nhello\n", 0.1, 2, 1)
    assert acts == [Route(Login("al", "password1")), PAUSE]
    assert c.awaiting == "login"
    assert c.answered_up_to(2) == []  # its batch acknowledged: still waiting for Done
    assert c.tick(0.2, 3, 2) == []
    acts = c.finish("", 0.3, 3, 2)
    assert acts == [Write("END login"), Write("PONG x"), Write("END ping"), Route(Say("hello")),
                    RESUME]
    assert c.awaiting == "" and c.finish("", 0.4, 3, 2) == []  # a second Done: nothing


def test_an_awaited_command_the_router_never_finishes_is_told_and_the_rest_goes_on():
    c = conn(ticket=1)
    c.answered_up_to(1)
    c.receive_data(b"/cap codes\n", 0.0, 2, 1)
    c.receive_data(b"/login al password1\nhello\n", 0.1, 2, 1)
    acts = c.finish("not done, the server restarted: /login (try again)", 0.2, 3, 2)
    assert acts == [Write("@code=not-sent ERROR: not done, the server restarted: /login "
                          "(try again)"), Route(Say("hello")), RESUME]


def test_a_password_is_not_in_the_repr_of_its_command():
    assert "password1" not in repr(Login("al", "password1"))

