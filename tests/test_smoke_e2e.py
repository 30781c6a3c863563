"""End to end smoke: pychat serve and a hand-started cluster chat across two acceptors."""

import pytest

pytestmark = pytest.mark.e2e


def test_serve_public_message_reaches_everyone_sender_included(serve, connect):
    a = connect(serve)
    ua = a.handshake()
    b = connect(serve)
    ub = b.handshake()
    a.expect(lambda ln: ln.startswith("USERS:") and ub in ln)
    a.send("hello")
    assert a.expect_prefix(f"{ua}: ") == f"{ua}: hello"
    assert b.expect_prefix(f"{ua}: ") == f"{ua}: hello"


def test_hand_cluster_clients_on_two_acceptors_talk(hand_cluster, connect):
    p1, p2 = hand_cluster
    a = connect(p1)
    ua = a.handshake()
    b = connect(p2)
    ub = b.handshake()
    a.expect(lambda ln: ln.startswith("USERS:") and ub in ln)
    b.send("from b")
    assert a.expect_prefix(f"{ub}:") == f"{ub}: from b"
    a.send(f"/msg {ub} secret")
    assert b.expect_prefix("[Private]") == f"[Private] {ua}: secret"
    assert a.expect_prefix("[Private]") == f"[Private] To {ub}: secret"
