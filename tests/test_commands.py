"""Pure tier: wire.commands.parse_line against every row of PROTOCOL.md Part 1 and Part 2.

A sanitized line is ignored (``None``), becomes one frozen ``Command``, or raises ``ClientError``
whose message is the text of the one ``ERROR:`` line sent back.
"""

from __future__ import annotations

import dataclasses
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pychat.wire import errors
from pychat.wire.commands import (
    BY_KIND,
    HISTORY_DEFAULT,
    HISTORY_MAX,
    LOBBY,
    LOCAL,
    ROUTED,
    ROUTER,
    TABLE,
    Cap,
    Command,
    Help,
    History,
    Join,
    Nick,
    Ping,
    Private,
    Quit,
    Rooms,
    Say,
    Users,
    end_word,
    handler_names,
    help_lines,
    parse_line,
    valid_name,
    word_of,
)
from pychat.wire.errors import ClientError, InvalidUTF8, LineTooLong
from pychat.wire.framing import LineBuffer, decode, sanitize

NAME_24 = "a" * 24
NAME_25 = "b" * 25
ROOM_32 = "#" + "r" * 32
ROOM_33 = "#" + "r" * 33

# (line, expected Command) -- every accepted form in PROTOCOL.md
OK_TABLE = [
    # Part 1
    ("hello", Say("hello")),
    ("hello world  with  spaces ", Say("hello world  with  spaces ")),
    ("  leading space is text", Say("  leading space is text")),
    ("tab\tinside", Say("tab\tinside")),
    ("a/b not a command", Say("a/b not a command")),
    ("/msg 123456 hi there", Private("123456", "hi there")),
    ("/msg alice hi", Private("alice", "hi")),
    ("/msg 123456   spaced  text", Private("123456", "spaced  text")),
    # Part 2
    ("//text", Say("/text")),
    ("//msg 123456 not private", Say("/msg 123456 not private")),
    ("//", Say("/")),
    ("/w 123456 whisper", Private("123456", "whisper")),
    ("/w Bob hi", Private("Bob", "hi")),
    ("/nick alice", Nick("alice")),
    ("/nick Al_ice-9", Nick("Al_ice-9")),
    (f"/nick {NAME_24}", Nick(NAME_24)),
    ("/nick x", Nick("x")),
    ("/users", Users()),
    ("/join #room", Join("#room")),
    ("/join #a_b-C9", Join("#a_b-c9")),
    (f"/join {ROOM_32}", Join(ROOM_32)),
    (f"/join {LOBBY}", Join("#lobby")),
    ("/rooms", Rooms()),
    ("/history", History(HISTORY_DEFAULT)),
    ("/history 5", History(5)),
    ("/history 0", History(0)),
    ("/history 200", History(200)),
    ("/history 201", History(HISTORY_MAX)),
    ("/history 500", History(200)),
    ("/history 007", History(7)),
    ("/cap time", Cap("time")),
    ("/cap time  CODES\tend", Cap("time codes end")),
    ("/cap TIME", Cap("time")),
    ("/ping", Ping("")),
    ("/ping abc123", Ping("abc123")),
    ("/ping two words", Ping("two words")),
    ("/help", Help()),
    ("/quit", Quit("")),
    ("/quit gone fishing", Quit("gone fishing")),
    ("/exit", Quit("")),
    # case-insensitive command words
    ("/MSG 123456 loud", Private("123456", "loud")),
    ("/Msg 123456 mixed", Private("123456", "mixed")),
    ("/W 123456 x", Private("123456", "x")),
    ("/NICK Alice", Nick("Alice")),
    ("/Users", Users()),
    ("/JOIN #Room", Join("#room")),
    ("/ROOMS", Rooms()),
    ("/HiStOrY 3", History(3)),
    ("/CAP time", Cap("time")),
    ("/PING tok", Ping("tok")),
    ("/HELP", Help()),
    ("/QUIT", Quit("")),
    ("/EXIT", Quit("")),
    # trailing white space and a tab after the command word
    ("/users   ", Users()),
    ("/nick alice  ", Nick("alice")),
    ("/msg\t123456 tabbed", Private("123456", "tabbed")),
    ("/nick\tbob", Nick("bob")),
]

USAGE_MSG = "usage: /msg <target> <text>"
USAGE_W = "usage: /w <target> <text>"

# (line, exact ERROR message)
ERROR_TABLE = [
    ("/msg", USAGE_MSG),
    ("/msg 123456", USAGE_MSG),
    ("/msg 123456   ", USAGE_MSG),
    ("/w", USAGE_W),
    ("/w bob", USAGE_W),
    ("/nick", "usage: /nick <name>"),
    ("/nick two words", "usage: /nick <name>"),
    ("/nick bad!name", "invalid name bad!name: 1-24 letters, digits, _ or -"),
    ("/nick héllo", "invalid name héllo: 1-24 letters, digits, _ or -"),
    (f"/nick {NAME_25}", f"invalid name {NAME_25}: 1-24 letters, digits, _ or -"),
    ("/users everyone", "usage: /users"),
    ("/join", "usage: /join <#room>"),
    ("/join lobby", "invalid room lobby: # and 1-32 letters, digits, _ or -"),
    ("/join #", "invalid room #: # and 1-32 letters, digits, _ or -"),
    ("/join #bad.room", "invalid room #bad.room: # and 1-32 letters, digits, _ or -"),
    (f"/join {ROOM_33}", f"invalid room {ROOM_33}: # and 1-32 letters, digits, _ or -"),
    ("/join #a #b", "usage: /join <#room>"),
    ("/rooms all", "usage: /rooms"),
    ("/history -1", "usage: /history [n]"),
    ("/history abc", "usage: /history [n]"),
    ("/history 1.5", "usage: /history [n]"),
    ("/history 5 6", "usage: /history [n]"),
    ("/history ５", "usage: /history [n]"),  # a full-width digit is not a number here
    ("/history ²", "usage: /history [n]"),
    ("/cap", "usage: /cap <capability>..."),
    ("/help me", "usage: /help"),
    ("/foo", "unknown command /foo"),
    ("/foo bar baz", "unknown command /foo"),
    ("/Foo", "unknown command /Foo"),
    ("/me waves", "unknown command /me"),
    ("/", "unknown command /"),
    ("/ leading space", "unknown command /"),
]

BLANK = ["", " ", "   ", "\t", " \t \t", "\u3000"]


def _id(v):
    return repr(v)[:40]


@pytest.mark.parametrize("line, expected", OK_TABLE, ids=_id)
def test_accepted_lines(line, expected):
    cmd = parse_line(line)
    assert cmd == expected
    assert type(cmd) is type(expected)


@pytest.mark.parametrize("line, message", ERROR_TABLE, ids=_id)
def test_error_lines(line, message):
    with pytest.raises(ClientError) as info:
        parse_line(line)
    assert info.value.message == message
    assert info.value.line() == f"ERROR: {message}"


@pytest.mark.parametrize("line", BLANK, ids=_id)
def test_blank_lines_are_ignored(line):
    assert parse_line(line) is None


def test_commands_are_frozen():
    cmd = parse_line("/nick alice")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cmd.name = "mallory"


def test_history_with_a_huge_number_is_capped_not_refused():
    assert parse_line("/history " + "9" * 5000) == History(HISTORY_MAX)


def test_history_with_a_long_but_convertible_number_is_capped():
    assert parse_line("/history " + "9" * 4000) == History(HISTORY_MAX)


def test_every_command_word_is_case_insensitive():
    for spec in TABLE:
        for word in spec.words:
            for variant in (word, word.upper(), word.capitalize()):
                try:
                    parse_line(f"/{variant}")
                except ClientError as e:
                    assert not e.message.startswith("unknown command"), variant


def test_help_lines_mention_every_command_word():
    text = "\n".join(help_lines())
    for spec in TABLE:
        for word in spec.words:
            assert re.search(rf"/{word}\b", text), word
    assert all(line.strip() for line in help_lines())
    assert "//text" in text


_EXAMPLE_ARGS = {"msg": "123456 hi", "w": "123456 hi", "nick": "bob", "join": "#x", "cap": "time",
                 "register": "password1", "login": "bob password1",
                 "password": "password1 password2", "resume": "bob tok", "kick": "bob",
                 "ban": "bob", "unban": "bob", "upload": "12 cat.png"}


def test_router_served_commands_are_the_routed_ones():
    for spec in TABLE:
        for word in spec.words:
            cmd = parse_line(f"/{word} {_EXAMPLE_ARGS.get(word, '')}".rstrip())
            assert (type(cmd) in ROUTED) == (spec.served_by == "router"), word
    assert Say in ROUTED  # plain text is routed too
    assert {cls.kind for cls in BY_KIND.values()} == set(BY_KIND)


# ---- properties ---------------------------------------------------------------------------------

_words = sorted({w for spec in TABLE for w in spec.words} | {"foo", "W", "NiCk", ""})
_command_like = st.builds(
    lambda word, sep, rest: f"/{word}{sep}{rest}",
    st.sampled_from(_words),
    st.sampled_from(["", " ", "\t", "  "]),
    st.one_of(st.text(max_size=40),
              st.from_regex(r"#?[A-Za-z0-9_\-]{0,40}", fullmatch=True),
              st.from_regex(r"-?[0-9]{0,6}", fullmatch=True)),
)


def _check_parse(line: str):
    try:
        cmd = parse_line(line)
    except ClientError as e:
        assert e.message and "\n" not in e.message
        return
    assert cmd is None or isinstance(cmd, Command)
    if cmd is None:
        assert line.strip() == ""
    elif isinstance(cmd, History):
        assert 0 <= cmd.count <= HISTORY_MAX
    elif isinstance(cmd, Nick):
        assert re.fullmatch(r"[A-Za-z0-9_-]{1,24}", cmd.name)
        assert not re.fullmatch(r"[uU]?[0-9]{6}", cmd.name)
    elif isinstance(cmd, Join):
        assert re.fullmatch(r"#[A-Za-z0-9_-]{1,32}", cmd.room)


@settings(max_examples=500)
@given(st.one_of(st.text(), _command_like))
def test_any_sanitized_text_gives_none_a_command_or_a_client_error(text):
    _check_parse(sanitize(text))


@settings(max_examples=300)
@given(st.lists(st.one_of(st.binary(max_size=80),
                          _command_like.map(lambda s: s.encode("utf-8", "surrogatepass")),
                          st.sampled_from([b"\n", b"\r\n", b"\xff", b"\x1b[31m", b"/msg "])),
                max_size=12),
       st.integers(1, 64))
def test_pipeline_on_any_bytes_yields_commands_or_documented_errors(chunks, max_line):
    buf = LineBuffer(max_line)
    for chunk in chunks:
        for item in buf.feed(chunk):
            if isinstance(item, LineTooLong):
                continue
            try:
                line = sanitize(decode(item))
            except InvalidUTF8:
                continue
            _check_parse(line)


def test_a_name_of_six_digits_is_refused_since_it_would_read_as_a_uid():
    with pytest.raises(ClientError) as e:
        parse_line("/nick 123456")
    assert e.value.message == "invalid name 123456: six digits would read as a user ID"
    assert parse_line("/nick 12345") == Nick("12345")
    assert parse_line("/nick 1234567") == Nick("1234567")


@pytest.mark.parametrize("name", ["u123456", "U654321"])
def test_a_name_of_u_and_six_digits_is_refused_since_it_would_read_as_an_irc_stand_in(name):
    with pytest.raises(ClientError) as e:
        parse_line(f"/nick {name}")
    assert e.value.message == f"invalid name {name}: u and six digits would read as a user ID"
    assert not valid_name(name)
    assert parse_line("/nick u12345") == Nick("u12345")
    assert parse_line("/nick u1234567") == Nick("u1234567")
    assert parse_line("/nick x123456") == Nick("x123456")


def test_room_names_ignore_case():
    assert parse_line("/join #DevOps") == Join("#devops")


# ---- the table carries the handler ----------------------------------------------------------

def test_every_row_names_a_handler_its_server_has():
    from pychat.acceptor.connection import Connection
    from pychat.router.state import RouterState
    servers = {ROUTER: RouterState, LOCAL: Connection}
    for spec in TABLE:
        assert callable(getattr(servers[spec.served_by], spec.handler, None)), spec
        assert spec.handler == "on_" + (spec.words[0] if spec.words else "say"), spec
    assert set(handler_names(ROUTER)) == set(ROUTED)
    assert set(handler_names(LOCAL)) | set(ROUTED) == {spec.command for spec in TABLE}


def test_every_client_error_from_the_parser_has_a_code_and_its_command_word():
    cases = {"/nosuch x": (errors.UNKNOWN_COMMAND, "nosuch"), "/msg": (errors.USAGE, "msg"),
             "/w x": (errors.USAGE, "msg"), "/nick 123456": (errors.INVALID_NAME, "nick"),
             "/nick bad!": (errors.INVALID_NAME, "nick"),
             "/join lobby": (errors.INVALID_ROOM, "join"),
             "/history x": (errors.USAGE, "history"), "/cap": (errors.USAGE, "cap")}
    for line, (code, word) in cases.items():
        with pytest.raises(ClientError) as info:
            parse_line(line)
        assert (info.value.code, info.value.word) == (code, word), line
        assert info.value.line(codes=True) == f"@code={code} ERROR: {info.value.message}"
    assert set(errors.CODES) >= {code for code, _ in cases.values()}


@pytest.mark.parametrize("line, word", [
    ("/users", "users"), ("/W bob hi", "msg"), ("/EXIT", "quit"), ("/nosuch", "nosuch"),
    ("/nick\tbob", "nick"), ("hello", ""), ("//slash", ""), ("/", ""), ("", "")])
def test_end_word_is_what_the_server_ends_the_reply_with(line, word):
    assert end_word(line) == word
    try:
        cmd = parse_line(line)
    except ClientError as e:
        assert e.word == word
    else:
        assert cmd is None or word_of(cmd) == word
