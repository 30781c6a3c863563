"""Pure tier: wire.framing (LineBuffer, decode, sanitize). No sockets, no sleeps.

PROTOCOL.md "Transport": one message is one line ending in ``\\n``, a ``\\r`` just before it is
dropped, a line over the limit is discarded with one ERROR and the next line is read normally;
invalid UTF-8 is an error; control characters (tab kept) and whole ANSI escapes are removed.
"""

from __future__ import annotations

from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pychat.wire.errors import ClientError, InvalidUTF8, LineTooLong
from pychat.wire.framing import DEFAULT_MAX_LINE, LineBuffer, decode, sanitize


def feed_all(buf: LineBuffer, chunks) -> list:
    out = []
    for chunk in chunks:
        out.extend(buf.feed(chunk))
    return out


def shape(items) -> list:
    """Lines as bytes, a LineTooLong as ("TOO LONG", limit): comparable with ==."""
    return [("TOO LONG", i.limit) if isinstance(i, LineTooLong) else i for i in items]


# ---- LineBuffer: framing ------------------------------------------------------------------------

def test_default_limit_is_4096_as_in_the_protocol():
    assert DEFAULT_MAX_LINE == 4096
    assert LineBuffer().max_line == 4096


def test_max_line_below_one_is_refused():
    with pytest.raises(ValueError):
        LineBuffer(0)


def test_one_line():
    assert LineBuffer().feed(b"hello\n") == [b"hello"]


def test_empty_feed_returns_nothing():
    buf = LineBuffer()
    assert buf.feed(b"") == []
    assert buf.pending == 0


def test_no_newline_yet_returns_nothing_and_keeps_the_bytes():
    buf = LineBuffer()
    assert buf.feed(b"hal") == []
    assert buf.pending == 3
    assert buf.feed(b"f\n") == [b"half"]
    assert buf.pending == 0


def test_byte_by_byte_feeding():
    buf = LineBuffer()
    data = b"hello world\r\nsecond\nthird\r\n"
    out = feed_all(buf, (data[i:i + 1] for i in range(len(data))))
    assert out == [b"hello world", b"second", b"third"]
    assert buf.pending == 0


def test_many_lines_in_one_chunk():
    lines = [b"line %d" % i for i in range(20)]
    assert LineBuffer().feed(b"\n".join(lines) + b"\n") == lines


def test_many_lines_in_one_chunk_with_a_partial_tail():
    buf = LineBuffer()
    assert buf.feed(b"a\nb\nc") == [b"a", b"b"]
    assert buf.pending == 1
    assert buf.feed(b"d\n") == [b"cd"]


def test_crlf_is_dropped():
    assert LineBuffer().feed(b"one\r\ntwo\r\n") == [b"one", b"two"]


def test_crlf_split_between_feeds():
    buf = LineBuffer()
    assert buf.feed(b"one\r") == []
    assert buf.feed(b"\ntwo\r") == [b"one"]
    assert buf.feed(b"\n") == [b"two"]


def test_only_one_cr_before_the_newline_is_dropped():
    assert LineBuffer().feed(b"x\r\r\n") == [b"x\r"]


def test_lone_cr_in_the_middle_is_kept():
    assert LineBuffer().feed(b"a\rb\n") == [b"a\rb"]
    assert LineBuffer().feed(b"\rab\n") == [b"\rab"]


def test_empty_lines_are_returned_as_empty_bytes():
    # ignoring blank lines is parse_line's business; the buffer reports them faithfully
    assert LineBuffer().feed(b"\n\r\n\n") == [b"", b"", b""]


# ---- LineBuffer: the length limit ---------------------------------------------------------------

def test_exactly_max_line_bytes_is_accepted():
    buf = LineBuffer(4096)
    line = b"x" * 4096
    assert buf.feed(line + b"\n") == [line]
    assert LineBuffer(4096).feed(line + b"\r\n") == [line]


def test_max_line_plus_one_is_rejected():
    out = LineBuffer(4096).feed(b"x" * 4097 + b"\n")
    assert shape(out) == [("TOO LONG", 4096)]


def test_max_line_plus_one_with_crlf_is_rejected():
    out = LineBuffer(4096).feed(b"x" * 4097 + b"\r\n")
    assert shape(out) == [("TOO LONG", 4096)]


def test_the_cr_is_not_counted_even_when_split_from_its_newline():
    buf = LineBuffer(8)
    assert buf.feed(b"12345678\r") == []  # 9 bytes held: the \r may still end the line
    assert buf.pending == 9
    assert buf.feed(b"\n") == [b"12345678"]


def test_the_error_line_text_matches_the_protocol():
    (item,) = LineBuffer().feed(b"x" * 5000 + b"\n")
    assert isinstance(item, LineTooLong)
    assert isinstance(item, ClientError)
    assert item.line() == "ERROR: line too long (max 4096 bytes)"


def test_over_long_line_is_reported_once_and_the_next_line_is_read_normally():
    buf = LineBuffer(10)
    out = buf.feed(b"y" * 50 + b"\nnext\n")
    assert shape(out) == [("TOO LONG", 10), b"next"]


def test_over_long_line_split_over_many_feeds_is_reported_once():
    buf = LineBuffer(10)
    out = []
    for _ in range(100):
        out.extend(buf.feed(b"z" * 7))
        assert buf.pending <= 11
    out.extend(buf.feed(b"zzz\r\nafter\n"))
    assert shape(out) == [("TOO LONG", 10), b"after"]
    assert buf.pending == 0


def test_over_long_line_is_reported_as_soon_as_it_is_known_too_long():
    buf = LineBuffer(10)
    assert buf.feed(b"a" * 11) == []  # 11 = max_line + 1: could still be 10 bytes and \r
    assert shape(buf.feed(b"a")) == [("TOO LONG", 10)]
    assert buf.pending == 0
    assert buf.feed(b"a" * 1000) == []  # still the same discarded line
    assert buf.pending == 0
    assert buf.feed(b"\nok\n") == [b"ok"]


def test_over_long_line_byte_by_byte():
    buf = LineBuffer(5)
    data = b"0123456789abcdef\nshort\n"
    out = feed_all(buf, (data[i:i + 1] for i in range(len(data))))
    assert shape(out) == [("TOO LONG", 5), b"short"]


def test_two_over_long_lines_in_a_row_are_two_errors():
    out = LineBuffer(3).feed(b"aaaa\nbbbb\ncc\n")
    assert shape(out) == [("TOO LONG", 3), ("TOO LONG", 3), b"cc"]


def test_memory_stays_bounded_under_a_slowloris_stream():
    limit = 64
    buf = LineBuffer(limit)
    errors = 0
    for i in range(10_000):
        errors += len(buf.feed(b"q" * (i % 13 + 1)))
        assert buf.pending <= limit + 1
    assert errors == 1


# ---- decode -------------------------------------------------------------------------------------

def test_decode_valid_utf8():
    assert decode("héllo ✓ 👋".encode()) == "héllo ✓ 👋"
    assert decode(b"") == ""


@pytest.mark.parametrize("raw", [
    b"\xff",
    b"abc\xc3",            # truncated two-byte sequence
    b"\xc0\xaf",           # overlong encoding of '/'
    b"\xed\xa0\x80",       # an encoded surrogate
    b"\xf4\x90\x80\x80",   # above U+10FFFF
    b"ok \x80 not ok",     # lone continuation byte
])
def test_decode_invalid_utf8_raises_invalid_utf8(raw):
    with pytest.raises(InvalidUTF8) as info:
        decode(raw)
    assert isinstance(info.value, ClientError)
    assert info.value.line() == "ERROR: invalid UTF-8"


# ---- sanitize -----------------------------------------------------------------------------------

@pytest.mark.parametrize("text", [
    "hello world",
    "tab\tstays",
    "unicode: héllo ✓ 👋 日本語",
    "brackets [31m are not an escape",
    "",
])
def test_sanitize_leaves_plain_text_untouched(text):
    assert sanitize(text) == text


_C1_INTRODUCERS = {0x90, 0x98, 0x9b, 0x9d, 0x9e, 0x9f}  # DCS SOS CSI OSC PM APC


@pytest.mark.parametrize("text, expected", [
    ("a\x00b", "ab"),
    ("bell\x07", "bell"),
    ("back\x08space", "backspace"),
    ("new\nline", "newline"),
    ("carriage\rreturn", "carriagereturn"),
    ("".join(chr(c) for c in range(0x20)), "\t"),
    ("del\x7fete", "delete"),
    ("c1\x80\x85\x8dend", "c1end"),
    # every DEL/C1 char that does not open an escape sequence (those are tested below)
    ("".join(chr(c) for c in range(0x7f, 0xa0) if c not in _C1_INTRODUCERS) + "x", "x"),
    ("\xa0nbsp kept", "\xa0nbsp kept"),  # U+00A0 is not a control
])
def test_sanitize_removes_controls_but_tab(text, expected):
    assert sanitize(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("\x1b[31mred\x1b[0m", "red"),
    ("\x1b[1;38;5;196mbold\x1b[m", "bold"),
    ("\x1b[2J\x1b[Hwiped", "wiped"),
    ("\x1b[?25lhidden cursor", "hidden cursor"),
    ("\x9b31mC1 CSI", "C1 CSI"),
    ("\x1b]0;evil title\x07after", "after"),
    ("\x1b]0;evil title\x1b\\after", "after"),
    ("\x1b]8;;http://x.example\x1b\\link\x1b]8;;\x1b\\", "link"),
    ("\x9d0;title\x9cafter", "after"),
    ("\x90dcs\x9cafter", "after"),
    ("\x98sos\x9cafter", "after"),
    ("\x9epm\x9cafter", "after"),
    ("\x9fapc\x9cafter", "after"),
    ("\x1b_apc\x1b\\after", "after"),
    ("\x1bPdevice control\x1b\\after", "after"),
    ("\x1b(Bcharset", "charset"),
    ("\x1bcreset", "reset"),
    ("a\x1b[31mb\x1b]2;t\x07c", "abc"),
])
def test_sanitize_removes_whole_escape_sequences(text, expected):
    assert sanitize(text) == expected


_CONTROL_CHARS = {chr(c) for c in range(0x20)} - {"\t"} | {chr(c) for c in range(0x7f, 0xa0)}

# text biased towards controls and escape-sequence pieces, plus anything else
_nasty_text = st.lists(
    st.one_of(
        st.sampled_from(sorted(_CONTROL_CHARS) + ["\t", "[", "]", "\\", ";", "m", "P", "0", "?"]),
        st.sampled_from(["\x1b[", "\x1b]", "\x1b\\", "\x9b", "\x9d", "\x1bP", "\x1b(", "\x07"]),
        st.characters(),
    ),
    max_size=40,
).map("".join)


@settings(max_examples=400)
@given(st.one_of(st.text(), _nasty_text))
def test_sanitize_output_has_no_control_but_tab_and_is_idempotent(text):
    clean = sanitize(text)
    assert not (set(clean) & _CONTROL_CHARS)
    assert sanitize(clean) == clean


@settings(max_examples=200)
@given(st.text(alphabet=st.characters(blacklist_characters=sorted(_CONTROL_CHARS))))
def test_sanitize_is_the_identity_on_text_without_controls(text):
    assert sanitize(text) == text


# ---- LineBuffer: properties ---------------------------------------------------------------------

_stream_bytes = st.one_of(
    st.binary(max_size=300),
    st.lists(st.sampled_from([b"a", b"bc", b"\r", b"\n", b"\r\n", b"x" * 9, b"\xff"]),
             max_size=60).map(b"".join),
)


@st.composite
def _stream_and_cuts(draw):
    data = draw(_stream_bytes)
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=20)))
    return data, cuts


@settings(max_examples=400)
@given(_stream_and_cuts(), st.integers(1, 16))
def test_any_split_gives_the_same_lines_as_one_feed(data_cuts, max_line):
    data, cuts = data_cuts
    bounds = [0, *cuts, len(data)]
    chunks = [data[a:b] for a, b in pairwise(bounds)]
    whole = LineBuffer(max_line)
    pieces = LineBuffer(max_line)
    assert shape(feed_all(pieces, chunks)) == shape(whole.feed(data))
    assert pieces.pending == whole.pending


@settings(max_examples=400)
@given(_stream_and_cuts(), st.integers(1, 16))
def test_every_item_is_a_short_line_or_line_too_long_and_memory_is_bounded(data_cuts, max_line):
    data, cuts = data_cuts
    bounds = [0, *cuts, len(data)]
    buf = LineBuffer(max_line)
    items = []
    for a, b in pairwise(bounds):
        items.extend(buf.feed(data[a:b]))
        assert buf.pending <= max_line + 1
    for item in items:
        if isinstance(item, LineTooLong):
            assert item.limit == max_line
        else:
            assert type(item) is bytes
            assert b"\n" not in item
            assert len(item) <= max_line
    # the lines reported are exactly the complete lines of the stream that fit
    complete = data.split(b"\n")[:-1]
    expected = []
    for line in complete:
        if line.endswith(b"\r"):
            line = line[:-1]
        expected.append(line if len(line) <= max_line else ("TOO LONG", max_line))
    assert shape(items[:len(expected)]) == expected
    # beyond those, at most the unfinished tail, and only as LineTooLong when it is too long
    tail = data.split(b"\n")[-1]
    extra = items[len(expected):]
    if len(tail) > max_line + 1:
        assert shape(extra) == [("TOO LONG", max_line)]
    else:
        assert extra == []
