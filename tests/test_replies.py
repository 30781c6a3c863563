"""Pure tier: wire.replies. Every server line kind in PROTOCOL.md is produced by a ``format_*``
function and read back by ``parse_server_line`` into the right event."""

from __future__ import annotations

import calendar
import re

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pychat.wire import replies as r
from pychat.wire.replies import (
    Bye,
    Chat,
    Error,
    HistoryStart,
    IdAssigned,
    Info,
    NameList,
    Ok,
    Pong,
    RoomChanged,
    RoomList,
    UserList,
    Welcome,
    parse_server_line,
)

STAMP = "2026-11-26T11:34:42.123Z"
ISO_MS_Z = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\Z")


# ---- format_time --------------------------------------------------------------------------------

def test_format_time_of_the_protocol_example():
    ts = calendar.timegm((2026, 11, 26, 11, 34, 42, 0, 0, 0)) + 0.123
    assert r.format_time(ts) == STAMP


@pytest.mark.parametrize("ts, expected", [
    (0.0, "1970-01-01T00:00:00.000Z"),
    (0.5, "1970-01-01T00:00:00.500Z"),
    (86399.875, "1970-01-01T23:59:59.875Z"),
    (1700000000.25, "2023-11-14T22:13:20.250Z"),
    (951782400.0, "2000-02-29T00:00:00.000Z"),  # leap day
    (1700000000.9999, "2023-11-14T22:13:20.999Z"),  # milliseconds truncated, never 1000
])
def test_format_time_known_values(ts, expected):
    assert r.format_time(ts) == expected


@settings(max_examples=200)
@given(st.floats(min_value=0, max_value=4_102_444_800, allow_nan=False))  # up to 2100
def test_format_time_is_always_iso8601_utc_with_milliseconds_and_z(ts):
    assert ISO_MS_Z.match(r.format_time(ts))


# ---- round trips: format, then parse ------------------------------------------------------------

def test_welcome():
    assert r.WELCOME == "Welcome to PyChat Server!"
    ev = parse_server_line(r.WELCOME)
    assert ev == Welcome(r.WELCOME)


def test_id():
    line = r.format_id("123456")
    assert line == "ID:123456"
    assert parse_server_line(line) == IdAssigned(line, "123456")


@pytest.mark.parametrize("uids", [[], ["123456"], ["123456", "654321", "100000"]])
def test_users(uids):
    line = r.format_users(uids)
    assert line == "USERS:" + ",".join(uids)
    assert parse_server_line(line) == UserList(line, tuple(uids))


@pytest.mark.parametrize("pairs", [[], [("123456", "alice")],
                                   [("123456", "a"), ("654321", "B-2_")]])
def test_names(pairs):
    line = r.format_names(pairs)
    assert line == "NAMES:" + ",".join(f"{u}={n}" for u, n in pairs)
    assert parse_server_line(line) == NameList(line, tuple(pairs))


def test_empty_names_line_is_exactly_names_colon():
    assert r.format_names([]) == "NAMES:"


@pytest.mark.parametrize("stamp", [None, STAMP])
def test_public_chat(stamp):
    line = r.format_public("123456", "hello: world")
    assert line == "123456: hello: world"
    sent = r.tagged(stamp, line) if stamp else line
    assert parse_server_line(sent) == Chat(sent, stamp, "123456", "hello: world")


@pytest.mark.parametrize("stamp", [None, STAMP])
def test_private_from(stamp):
    line = r.format_private_from("123456", "psst")
    assert line == "[Private] 123456: psst"
    sent = r.tagged(stamp, line) if stamp else line
    assert parse_server_line(sent) == Chat(sent, stamp, "123456", "psst", private=True)


@pytest.mark.parametrize("stamp", [None, STAMP])
def test_private_to_echo(stamp):
    line = r.format_private_to("654321", "psst")
    assert line == "[Private] To 654321: psst"
    sent = r.tagged(stamp, line) if stamp else line
    ev = parse_server_line(sent)
    assert isinstance(ev, Chat)
    assert (ev.time, ev.private, ev.to, ev.text) == (stamp, True, "654321", "psst")


def test_tag_format_matches_the_protocol_example():
    assert r.tagged(STAMP, "123456: hello") == "@time=2026-11-26T11:34:42.123Z 123456: hello"


def test_chat_text_that_looks_like_a_reply_stays_chat():
    for text in ("ERROR: fake", "USERS:1", "[Private] 111111: x", "BYE"):
        line = r.format_public("123456", text)
        assert parse_server_line(line) == Chat(line, None, "123456", text)


def test_room():
    line = r.format_room("#dev")
    assert line == "ROOM:#dev"
    assert parse_server_line(line) == RoomChanged(line, "#dev")


@pytest.mark.parametrize("counts", [[], [("#lobby", 3)], [("#a", 1), ("#lobby", 12)]])
def test_rooms(counts):
    line = r.format_rooms(counts)
    assert line == "ROOMS:" + ",".join(f"{n}={c}" for n, c in counts)
    assert parse_server_line(line) == RoomList(line, tuple(counts))


@pytest.mark.parametrize("k", [0, 1, 200])
def test_history_header(k):
    line = r.format_history_header(k)
    assert line == f"HISTORY:{k}"
    assert parse_server_line(line) == HistoryStart(line, k)


def test_history_lines_are_tagged_chat():
    line = r.tagged(STAMP, r.format_public("123456", "old news"))
    assert parse_server_line(line) == Chat(line, STAMP, "123456", "old news")


@pytest.mark.parametrize("token, line", [("", "PONG"), ("abc", "PONG abc"), ("a b", "PONG a b")])
def test_pong(token, line):
    assert r.format_pong(token) == line
    assert parse_server_line(line) == Pong(line, token)


def test_error():
    line = r.format_error("no such user 999999")
    assert line == "ERROR: no such user 999999"
    assert parse_server_line(line) == Error(line, "no such user 999999")


@pytest.mark.parametrize("what", ["nick alice", "cap time"])
def test_ok(what):
    line = f"OK {what}"
    assert parse_server_line(line) == Ok(line, what)


def test_bye():
    assert parse_server_line("BYE") == Bye("BYE")


def test_help_and_unknown_lines_are_info():
    for line in ("HELP: /rooms - rooms with members", "SOMETHING:new", "", "hello"):
        assert parse_server_line(line) == Info(line)


def test_only_chat_lines_take_the_time_tag_but_a_tagged_reply_still_parses():
    # the server never tags replies; a parser meeting one must not crash and must keep the body
    ev = parse_server_line(f"@time={STAMP} USERS:123456")
    assert isinstance(ev, UserList) and ev.uids == ("123456",)


# ---- never raises -------------------------------------------------------------------------------

_prefixes = st.sampled_from(["", "@time=", f"@time={STAMP} ", "ID:", "USERS:", "NAMES:", "ROOM:",
                             "ROOMS:", "HISTORY:", "ERROR:", "PONG", "OK ", "[Private] ",
                             "[Private] To ", "123456: "])


@settings(max_examples=500)
@given(st.one_of(st.text(), st.builds(lambda p, t: p + t, _prefixes, st.text(max_size=30))))
@example("ROOMS:#a=1,#b=x,=,,")
@example("HISTORY:-1")
@example("ROOMS:#a=٣")  # Arabic-Indic digit
@example("ROOMS:#a=²")  # isdigit() but not int()-able
@example("HISTORY:" + "9" * 5000)  # past int()'s digit limit
def test_parse_server_line_never_raises(line):
    ev = parse_server_line(line)
    assert ev.raw == line


def test_rooms_with_a_superscript_count_does_not_raise():
    assert isinstance(parse_server_line("ROOMS:#a=²"), RoomList)


def test_history_with_a_superscript_digit_does_not_raise():
    parse_server_line("HISTORY:²")


def test_history_with_a_huge_count_does_not_raise():
    parse_server_line("HISTORY:" + "9" * 5000)


def test_rooms_with_a_huge_count_does_not_raise():
    parse_server_line("ROOMS:#a=" + "9" * 5000)


# ---- tags and END (capabilities codes and end) ------------------------------------------------

def test_a_coded_error_line_parses_to_its_message_and_code():
    ev = r.parse_server_line("@code=name-taken ERROR: name bob is taken")
    assert isinstance(ev, r.Error) and (ev.message, ev.code) == ("name bob is taken", "name-taken")
    assert r.parse_server_line("ERROR: name bob is taken").code is None
    assert r.format_error("x", "usage") == "@code=usage ERROR: x"
    assert r.format_error("x") == "ERROR: x"


def test_several_tags_and_unknown_ones_are_read_as_ircv3_writes_them():
    ev = r.parse_server_line("@time=2026-11-26T11:34:42.123Z;msgid=7 123456: hi")
    assert isinstance(ev, r.Chat) and ev.time == "2026-11-26T11:34:42.123Z" and ev.text == "hi"


def test_end_lines():
    assert r.parse_server_line(r.format_end("users")) == r.End("END users", "users")
    assert isinstance(r.parse_server_line("END of the world"), r.Info)  # not an END line


@given(st.floats(min_value=0, max_value=4e9, allow_nan=False),
       st.lists(st.floats(min_value=-3, max_value=3, allow_nan=False), max_size=5))
def test_format_time_with_its_second_kept_is_strftime_s(ts, steps):
    """The prefix of the last second formatted is kept: every stamp is still exactly what
    strftime makes, whichever second came before."""
    import time as _time
    for t in [ts, *(max(0.0, ts + d) for d in steps)]:
        ms = int(round(t * 1000, 3))
        secs, ms = divmod(ms, 1000)
        want = _time.strftime("%Y-%m-%dT%H:%M:%S", _time.gmtime(secs)) + f".{ms:03d}Z"
        assert r.format_time(t) == want
