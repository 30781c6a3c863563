"""Pure tier: wire.bus. ``decode(encode(m)) == m`` for every message class; ``decode`` raises
``BusError`` and nothing else for anything that is not such an encoding."""

from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pychat.wire import bus
from pychat.wire.bus import (
    HEADER,
    Ack,
    ChatConn,
    ChatRoom,
    Close,
    Cmd,
    Err,
    From,
    Heartbeat,
    Hello,
    Open,
    Peers,
    Resync,
    Seq,
    SessionSet,
    Status,
    StatusAsk,
    Sync,
    ToConn,
    ToRoom,
    decode,
    decode_message,
    encode,
    encode_message,
)
from pychat.wire.commands import (
    ROUTED,
    Ban,
    History,
    Join,
    Kick,
    Login,
    Logout,
    Nick,
    Password,
    Private,
    Register,
    Resume,
    Rooms,
    Say,
    Token,
    Topic,
    Unban,
    Upload,
    Users,
    password_problem,
)
from pychat.wire.errors import CODES, BusError
from pychat.wire.framing import sanitize

ALL_CLASSES = (Hello, Heartbeat, Open, Close, Sync, Cmd, SessionSet, ToConn, ToRoom, ChatRoom,
               ChatConn, bus.Kick, Resync, Seq, Ack, From, Peers, StatusAsk, Status, Err,
               bus.Done, bus.Notice)

EXAMPLES = [
    Hello("acc-1", "e1f2"),
    Hello("acc-2", "e1f3", '["acc-1"]', 250),
    Hello("acc-3", "e1f4", "[]", 1000, "https://chat.example.org:8443"),
    Heartbeat("epoch-9"),
    Heartbeat("epoch-9", 200),
    Seq(12),
    Ack(12),
    From("e1f2", 12),
    From("", 0),
    Peers('["acc-1", "acc-2"]'),
    StatusAsk(),
    Status('{"users": 3}'),
    Open(7, "127.0.0.1:5555"),
    Close(7, "peer closed"),
    Sync(7, "123456", "alice", "#lobby"),
    Sync(8, "654321", "", "#dev"),
    SessionSet(7, "123456", "", "#lobby"),
    SessionSet(7, "123456", "alice", "#lobby", "alice", "ab" * 32),
    Sync(7, "123456", "alice", "#dev", "127.0.0.1:5555", "alice", "0f" * 32),
    bus.Done(7),
    bus.Notice("#dev", "TOPIC:#dev hello"),
    ToConn(7, "ID:123456"),
    ToConn(7, "USERS:123456\nNAMES:"),
    ToRoom("#lobby", "USERS:123456,654321"),
    ChatRoom("#lobby", "2026-11-26T11:34:42.123Z", "123456: héllo ✓"),
    ChatConn(7, "2026-11-26T11:34:42.123Z", "[Private] 123456: psst"),
    bus.Kick(7, "ERROR: send queue full"),
    Err(7, "name-taken", "name ALICE is taken"),
    bus.Kick(7, ""),
    Resync(),
    Cmd(1, Say("hello")),
    Cmd(1, Say("/text with\ttab")),
    ChatRoom("#lobby", "2026-11-26T11:34:42.123Z", "123456: a\ttab"),
    Cmd(2, Private("alice", "hi there")),
    Cmd(3, Nick("bob")),
    Cmd(4, Users()),
    Cmd(5, Join("#room")),
    Cmd(6, Rooms()),
    Cmd(7, History(0)),
    Cmd(8, History(200)),
    Cmd(9, Register("pass word".replace(" ", "-"))),
    Cmd(9, Login("alice", "s3cret-pw")),
    Cmd(9, Logout()),
    Cmd(9, Password("old-pass", "new-pass1")),
    Cmd(9, Token()),
    Cmd(9, Resume("alice", "tok-en_1")),
    Cmd(9, Topic("")),
    Cmd(9, Topic("the topic: héllo")),
    Cmd(9, Kick("bob", "")),
    Cmd(9, Kick("123456", "too  loud")),
    Cmd(9, Ban("bob", 0, "")),
    Cmd(9, Ban("10.0.0.1", 90, "12 monkeys")),
    Cmd(9, Unban("10.0.0.1")),
    Cmd(9, Upload(1234, "cat.png", "")),
    Cmd(9, Upload(0, "empty.txt", "bob")),
]


def test_the_examples_cover_every_message_class_and_every_routed_command():
    assert {type(m) for m in EXAMPLES} == set(ALL_CLASSES)
    assert {type(m.command) for m in EXAMPLES if isinstance(m, Cmd)} == set(ROUTED)


def test_header_is_versioned():
    assert HEADER == b"pychat-bus/4"  # 4: Hello carries the web door's URL
    assert bus.VERSION == 4


@pytest.mark.parametrize("msg", EXAMPLES, ids=repr)
def test_round_trip_one(msg):
    frames = encode([msg])
    assert frames[0] == HEADER
    assert len(frames) == 2
    assert decode(frames) == [msg]
    assert type(decode(frames)[0]) is type(msg)


def test_round_trip_a_batch_keeps_order():
    assert decode(encode(EXAMPLES)) == EXAMPLES
    assert decode(encode([])) == []


def test_frame_layout_is_kind_then_fields_joined_by_nul():
    assert encode_message(Open(7, "1.2.3.4:5")) == b"open\x007\x001.2.3.4:5"
    assert encode_message(Cmd(3, Private("bob", "hi"))) == b"cmd\x003\x00msg\x00bob\x00hi"
    assert encode_message(Resync()) == b"resync"


# ---- hypothesis round trips ---------------------------------------------------------------------

# fields as a well-behaved peer writes them: text of one line has no control character (the
# acceptor sanitizes), lines of a reply are joined by newlines, names and rooms follow the rules
_line = st.text(alphabet=st.characters(codec="utf-8", blacklist_categories=("Cc",))
                | st.just("\t"), max_size=30).map(sanitize)  # (it keeps tabs, drops invisibles)
_text = st.text(alphabet=st.characters(codec="utf-8", blacklist_characters="\x00"), max_size=30)
_word = st.from_regex(r"[^\s\x00-\x1f\x7f-\x9f]{1,20}", fullmatch=True).map(sanitize).filter(
    lambda w: w and not any(c.isspace() for c in w))
_said = _line.filter(lambda t: t and not t.isspace())
_lines = st.lists(_line, min_size=1, max_size=4).map("\n".join)
_int = st.integers(min_value=0, max_value=10 ** 18 - 1)
_uid = st.from_regex(r"[1-9]\d{5}", fullmatch=True)
_name = st.from_regex(r"[A-Za-z_-][A-Za-z0-9_-]{0,23}", fullmatch=True)
_room = st.from_regex(r"#[a-z0-9_-]{1,32}", fullmatch=True)
_token = st.from_regex(r"[0-9A-Za-z._-]{1,40}", fullmatch=True)
_stamp = st.builds(lambda n: f"2026-12-{1 + n % 28:02d}T11:{n % 60:02d}:42.{n % 1000:03d}Z",
                   st.integers(0, 10 ** 6))

_seal = st.from_regex(r"[0-9a-f]{64}", fullmatch=True) | st.just("")
_password = st.from_regex(r"[!-~\u00a1-\u07ff]{8,40}", fullmatch=True).map(sanitize).filter(
    lambda p: not password_problem(p))

_routed = st.one_of(
    st.builds(Say, _said),
    st.builds(Private, _word, _said.map(str.strip).filter(bool)),
    st.builds(Nick, _name),
    st.builds(Users),
    st.builds(Join, _room),
    st.builds(Rooms),
    st.builds(History, st.integers(0, 200)),
    st.builds(Register, _password),
    st.builds(Login, _name, _word),
    st.builds(Logout),
    st.builds(Password, _word, _password),
    st.builds(Token),
    st.builds(Resume, _name, _word),
    st.builds(Topic, _line.map(str.strip).filter(lambda t: len(t) <= 390)),
    st.builds(Kick, _word, _line.map(str.strip)),
    st.builds(Ban, _word, st.integers(0, 10 ** 6), _line.map(str.strip)),
    st.builds(Unban, _word),
)

_messages = st.one_of(
    st.builds(Hello, _token, _token, st.lists(_token, max_size=3).map(json.dumps),
              st.integers(1, 60_000)),
    st.builds(Heartbeat, _token, st.integers(1, 60_000)),
    st.builds(Open, _int, _line),
    st.builds(Close, _int, _line),
    st.builds(Sync, _int, _uid | st.just(""), _name | st.just(""), _room, _line,
              _name | st.just(""), _seal),
    st.builds(Cmd, _int, _routed),
    st.builds(SessionSet, _int, _uid, _name | st.just(""), _room, _name | st.just(""), _seal),
    st.builds(bus.Done, _int),
    st.builds(bus.Notice, _room, _lines),
    st.builds(ToConn, _int, _lines),
    st.builds(Err, _int, st.sampled_from(CODES), _line),
    st.builds(ToRoom, _room, _lines),
    st.builds(ChatRoom, _room, _stamp, _line),
    st.builds(ChatConn, _int, _stamp, _line),
    st.builds(bus.Kick, _int, _lines),
    st.builds(From, _token | st.just(""), _int),
    st.builds(Resync),
)


@settings(max_examples=500)
@given(st.lists(_messages, max_size=8))
def test_round_trip_any_fields(msgs):
    assert decode(encode(msgs)) == msgs


# ---- a peer is not trusted: forged fields are refused -------------------------------------------

@pytest.mark.parametrize("msg", [
    Sync(7, "123456", "eve\n123456: forged", "#lobby"),   # a newline in a name: a forged line
    Sync(7, "123456", "123456", "#lobby"),                 # a six-digit name reads as a uid
    Sync(7, "123456", "alice", "lobby"),                   # not a room
    Sync(7, "123456", "alice", "#Lobby"),                  # rooms are lower case
    Sync(7, "12345", "", "#lobby"),                        # not a uid
    SessionSet(7, "", "", "#lobby"),
    Cmd(1, Say("hi\x1b[2J")),                               # an escape sequence
    Cmd(1, Say("   ")),                                    # blank: a client's blank is ignored
    Cmd(1, Nick("a b")),
    Cmd(1, Nick("123456")),
    Cmd(1, Join("#Dev")),
    Cmd(1, History(999)),                                  # a client's is capped at 200
    Cmd(1, Private("bob", "hi\x07")),
    Cmd(1, Private("b o b", "hi")),
    ChatRoom("#lobby", "yesterday", "123456: hi"),
    ChatRoom("#lobby", "2026-11-26T11:34:42.123Z", "123456: hi\n999999: forged"),
    ChatConn(1, "2026-11-26T11:34:42.123Z", "\x9b31m red"),
    ToConn(1, "USERS:1\x1b]0;title\x07"),
    Err(1, "made-up-code", "x"),
    Hello("acc 1", "e"), Hello("acc", "e", "not json"), Hello("acc", "e", "[]", 0),
    Hello("acc", "e", "[]", 1000, "javascript:alert(1)"), Hello("acc", "e", "[]", 1000, "http://x/path"),
    Heartbeat("e", 10 ** 12),
    Open(1, "x" * 2000),
], ids=repr)
def test_decode_refuses_a_field_no_client_could_have_caused(msg):
    frame = encode_message(msg)
    with pytest.raises(BusError):
        decode_message(frame)


@pytest.mark.parametrize("frame", [
    b"open\x00+7\x00p", b"open\x00 7\x00p", b"open\x001_000\x00p", b"open\x00\xd9\xa1\x00p",
    b"open\x00" + b"9" * 40 + b"\x00p", b"cmd\x001\x00ping\x00x", b"cmd\x001\x00cap\x00time",
], ids=repr)
def test_decode_refuses_numbers_not_as_encode_writes_them_and_local_commands(frame):
    with pytest.raises(BusError):
        decode_message(frame)


def test_a_frame_past_the_size_limit_is_refused_before_it_is_decoded():
    with pytest.raises(BusError, match="max"):
        decode_message(b"to\x001\x00" + b"x" * bus.MAX_FRAME)


# ---- decode refuses with BusError ---------------------------------------------------------------

@pytest.mark.parametrize("frames", [
    [],
    [b"pychat-bus/2", b"hb\x00e"],  # the last version: a mixed deployment refuses, not guesses
    [b"pychat-bus/1 ", b"hb\x00e"],
    [b"PYCHAT-BUS/1"],
    [b"hb\x00e"],
    [b""],
], ids=repr)
def test_wrong_header(frames):
    with pytest.raises(BusError):
        decode(frames)


@pytest.mark.parametrize("frame", [
    b"",
    b"nosuchkind\x001",
    b"HB\x00e",               # kinds are case-sensitive
    b"cmd\x001\x00nosuch\x00x",
], ids=repr)
def test_unknown_kind(frame):
    with pytest.raises(BusError):
        decode([HEADER, frame])


@pytest.mark.parametrize("frame", [
    b"hb",
    b"hb\x00e\x00extra",
    b"open\x007",
    b"open\x007\x00peer\x00more",
    b"sync\x001\x00123456\x00name",
    b"resync\x00x",
    b"cmd",
    b"cmd\x001",
    b"cmd\x001\x00say",
    b"cmd\x001\x00say\x00a\x00b",
    b"cmd\x001\x00msg\x00bob",
    b"cmd\x001\x00users\x00x",
], ids=repr)
def test_wrong_field_count(frame):
    with pytest.raises(BusError):
        decode([HEADER, frame])


@pytest.mark.parametrize("frame", [
    b"open\x00seven\x00peer",
    b"open\x00\x00peer",
    b"cmd\x00x\x00users",
    b"cmd\x001\x00history\x00many",
], ids=repr)
def test_bad_integer(frame):
    with pytest.raises(BusError):
        decode([HEADER, frame])


@pytest.mark.parametrize("frame", [b"hb\x00\xff", b"\xc3(\x00x", b"to\x001\x00\xed\xa0\x80"],
                         ids=repr)
def test_invalid_utf8(frame):
    with pytest.raises(BusError):
        decode([HEADER, frame])


def test_one_bad_frame_fails_the_whole_batch():
    with pytest.raises(BusError):
        decode([HEADER, encode_message(Heartbeat("e")), b"bogus"])


def _decode_or_bus_error(frames):
    try:
        out = decode(frames)
    except BusError:
        return
    # whatever decodes is a list of real messages, one per frame after the header
    assert len(out) == len(frames) - 1
    assert all(type(m) in ALL_CLASSES for m in out)


_kinds = st.sampled_from([c.kind for c in ALL_CLASSES] + ["say", "msg", "history", "x", ""])
_fieldish = st.one_of(st.binary(max_size=12), _int.map(lambda i: str(i).encode()),
                      st.sampled_from([b"say", b"msg", b"users", b"history", b"\xff", b"-"]))
_structured_frame = st.builds(
    lambda kind, fields: b"\x00".join([kind.encode(), *fields]),
    _kinds, st.lists(_fieldish, max_size=6),
)


@settings(max_examples=500)
@given(st.lists(st.one_of(st.binary(max_size=40), _structured_frame), max_size=5),
       st.booleans())
def test_random_frames_decode_or_raise_bus_error_only(frames, with_header):
    _decode_or_bus_error([HEADER, *frames] if with_header else frames)


@settings(max_examples=200)
@given(st.lists(st.binary(max_size=30), max_size=4))
def test_random_batches_without_a_valid_header_raise_bus_error(frames):
    if frames and frames[0] == HEADER:
        frames = frames[1:]
    with pytest.raises(BusError):
        decode(frames)


# ---- encode refuses NUL -------------------------------------------------------------------------

@pytest.mark.parametrize("msg", [
    Hello("acc\x001", "e"),
    Heartbeat("\x00"),
    Close(1, "bye\x00now"),
    Sync(1, "123456", "al\x00ice", "#lobby"),
    ToConn(1, "x\x00y"),
    ToRoom("#lobby\x00", "x"),
    ChatRoom("#r", "stamp", "123456: a\x00b"),
    ChatConn(1, "s\x00", "t"),
    bus.Kick(1, "\x00"),
    Cmd(1, Say("nul\x00inside")),
    Cmd(1, Private("bob\x00", "hi")),
    Cmd(1, Private("bob", "h\x00i")),
    Cmd(1, Join("#a\x00b")),
], ids=repr)
def test_encode_refuses_a_nul_inside_a_field(msg):
    with pytest.raises(BusError):
        encode([msg])


@settings(max_examples=200)
@given(_text, _text)
def test_encode_refuses_a_nul_anywhere_in_text(before, after):
    with pytest.raises(BusError):
        encode([ToConn(1, before + "\x00" + after)])


def test_messages_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Open(1, "p").conn = 2


def test_a_batch_of_too_many_messages_is_refused_whole():
    frames = [HEADER] + [encode_message(Resync())] * (bus.MAX_BATCH + 1)
    with pytest.raises(BusError, match="max"):
        decode(frames)


@given(st.text(alphabet=st.characters(max_codepoint=0x2FF)) | st.text(
    alphabet=st.characters(max_codepoint=0x7F)))
def test_the_ascii_fast_check_for_controls_says_what_the_pattern_says(text):
    """bus._lines deletes ASCII controls in C for ASCII text (a joiner's 70 KB USERS line):
    for any text, ASCII or not, it agrees with the pattern it stands in for."""
    assert bus._lines(text) == (bus._CONTROL_BUT_NEWLINE.search(text) is None)
