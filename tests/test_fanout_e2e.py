"""A room larger than a slice of writes, with lines arriving while its rounds are written.

The acceptor keeps a room's lines once (acceptor/output.py ``Run``) and writes its members in
rounds of ``FLUSH_SLICE`` clients a slice, with the loop running between slices: a line that
arrives mid-round reaches the members the round has not passed in that round, and the others in
the next. Here 400 clients (more than three slices) hear 8 senders at 2,000 lines a second,
while some of them also get lines of their own (private messages, queued between the room's);
every client must get every line once, in each sender's order, and its private messages, in
order, whole.
"""

from __future__ import annotations

import pytest

from acceptor.output import FLUSH_SLICE
from support.crowd import Crowd
from support.procs import start_serve

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

CLIENTS = 400
SENDERS = 8
COUNT = 150
RATE = 2000.0


def test_a_room_of_several_slices_gets_every_line_in_order_while_lines_keep_coming(procs):
    assert CLIENTS > 3 * FLUSH_SLICE
    p, port = start_serve("--history", "memory", "--flood-burst", "100000", "--flood-rate",
                          "100000", acceptors=1)
    procs.append(p)
    crowd = Crowd(port, CLIENTS)
    try:
        crowd.wait_registered()
        # private lines to the last clients, between the room's: they go through each one's
        # own queue, after the room's lines it has not had yet
        targets = [c.uid for c in crowd.clients[-20:]]

        def private(k: int) -> None:
            if k % 10 == 0:
                for uid in targets:
                    crowd.send(SENDERS, f"/msg {uid} p {k}")

        senders = crowd.run_senders(SENDERS, COUNT, RATE, on_line=private)
        senders.join(60)
        assert not senders.is_alive()
        crowd.wait(lambda: crowd.all_ended(SENDERS), 60, "every sender's end at every client")
        result = crowd.check(SENDERS, COUNT)
        assert not result["problems"], result["problems"][:20]
        assert result["refused"] == 0
        assert result["delivered"] == CLIENTS * SENDERS * COUNT
        want = [f"p {k}" for k in range(0, COUNT, 10)]
        for c in crowd.clients[-20:]:
            got = [line.rsplit(": ", 1)[-1] for line in c.other if line.endswith(
                tuple(f": {w}" for w in want))]
            assert got == want, c.other[-5:]
    finally:
        crowd.close()
