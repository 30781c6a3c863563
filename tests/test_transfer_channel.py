"""The file channel's frames (wire/transfer.py): every message round-trips; anything else is a
``BusError``, never another exception (a peer's frames are checked like a client's lines)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pychat.wire import transfer
from pychat.wire.errors import BusError

TOKEN = "2jVcJDauPKTd-nUDC5_LVA"
EXAMPLES = [
    transfer.Put(1, TOKEN, 1234), transfer.Get(2, TOKEN, 0), transfer.Get(2, TOKEN, 1),
    transfer.Data(3, 0, b""), transfer.Data(3, 65536, bytes(range(256)) * 256),
    transfer.Credit(4, 16), transfer.Abort(5, "the client went away"),
    transfer.Done(6, 201, "/files/x/cat.png"), transfer.Done(6, 404, "no such upload"),
    transfer.Meta(7, 200, '[["Content-Type", "image/png"], ["Content-Length", "5"]]'),
    transfer.Meta(7, 404, "no such file"), transfer.End(8),
]


@pytest.mark.parametrize("msg", EXAMPLES, ids=repr)
def test_every_message_round_trips(msg):
    frames = transfer.encode(msg)
    assert frames[0] == transfer.HEADER
    assert transfer.decode(frames) == msg


@pytest.mark.parametrize("frames", [
    [], [b"pychat-files/0", b"end", b"1"], [transfer.HEADER], [transfer.HEADER, b"nope", b"1"],
    [transfer.HEADER, b"end"], [transfer.HEADER, b"end", b"1", b"2"],
    [transfer.HEADER, b"end", b"-1"], [transfer.HEADER, b"end", b"1e3"],
    [transfer.HEADER, b"put", b"1", b"short", b"5"],  # not a token
    [transfer.HEADER, b"put", b"1", b"../../etc/passwd____", b"5"],
    [transfer.HEADER, b"get", b"1", TOKEN.encode(), b"2"],
    [transfer.HEADER, b"credit", b"1", b"17"], [transfer.HEADER, b"credit", b"1", b"0"],
    [transfer.HEADER, b"data", b"1", b"0", b"x" * (transfer.CHUNK + 1)],
    [transfer.HEADER, b"data", b"1", b"0"],  # no payload frame
    [transfer.HEADER, b"done", b"1", b"99", b"x"], [transfer.HEADER, b"abort", b"1", b"a\nb"],
    [transfer.HEADER, b"meta", b"1", b"200", b"not json"],
    [transfer.HEADER, b"meta", b"1", b"200", b'[["a", 1]]'],
    [transfer.HEADER, b"\xff", b"1"],
])
def test_bad_frames_are_bus_errors(frames):
    with pytest.raises(BusError):
        transfer.decode(frames)


@given(st.sampled_from([b"put", b"get", b"data", b"credit", b"abort", b"done", b"meta",
                         b"end", b"x"]),
       st.lists(st.binary(max_size=40), max_size=5))
def test_any_frames_give_a_checked_message_or_a_bus_error(kind, fields):
    try:
        msg = transfer.decode([transfer.HEADER, kind, *fields])
    except BusError:
        return
    assert msg.kind == kind.decode()
    assert transfer.decode(transfer.encode(msg)) == msg  # what passed is what we would send
