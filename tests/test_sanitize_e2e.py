"""End to end: a line carrying bidirectional overrides or invisible characters reaches the other
members of the room, and its sender's echo, neutralised (wire.framing's rules), over a real
``pychat serve``. The rules themselves are tested in the pure tier (tests/test_framing.py); here
only that the server applies them to what it relays, public and private.
"""

from __future__ import annotations

import uuid

import pytest

pytestmark = pytest.mark.e2e


def in_new_room(connect, port: int, n: int):
    """``n`` clients past the handshake, all in a room of their own."""
    room = f"#bidi-{uuid.uuid4().hex[:10]}"
    clients = []
    for _ in range(n):
        c = connect(port)
        c.handshake()
        c.send(f"/join {room}")
        c.expect(f"ROOM:{room}")
        clients.append(c)
    return clients


def from_(sender):
    return lambda line: line.startswith(f"{sender.uid}: ")


def test_a_right_to_left_override_reaches_the_room_neutralised(shared_serve, connect):
    mallory, bob = in_new_room(connect, shared_serve, 2)
    # RLO would show the text reversed ("alice: hi") and, never closed, spill into what
    # follows; it arrives as an embedding (letters in the order sent) closed at the end
    mallory.send("\u202eih :ecila")
    for reader in (bob, mallory):
        assert reader.expect(from_(mallory)) == f"{mallory.uid}: \u202bih :ecila\u202c"


def test_invisible_characters_and_line_separators_are_removed_and_emoji_kept(shared_serve,
                                                                             connect):
    mallory, bob = in_new_room(connect, shared_serve, 2)
    mallory.send("hi al\u200bice\u2028[12:00:00] bob: a \u2067\u05e9 \U0001f468\u200d\U0001f469")
    assert bob.expect(from_(mallory)) == (
        f"{mallory.uid}: hi alice[12:00:00] bob: a \u2067\u05e9 \U0001f468\u200d\U0001f469\u2069")


def test_private_text_is_neutralised_too(shared_serve, connect):
    mallory, bob = in_new_room(connect, shared_serve, 2)
    mallory.send(f"/msg {bob.uid} \u2069\u202eterces")
    assert bob.expect(lambda line: line.startswith("[Private] ")) == (
        f"[Private] {mallory.uid}: \u202bterces\u202c")
    assert mallory.expect(lambda line: line.startswith("[Private] ")) == (
        f"[Private] To {bob.uid}: \u202bterces\u202c")


def test_a_target_opening_an_isolate_is_an_unknown_user_not_a_silent_drop(shared_serve, connect):
    """The line is balanced as a whole (the isolate opened in the target is closed at the end of
    the text); the router checks the routed command as that whole line, so it answers."""
    mallory, bob = in_new_room(connect, shared_serve, 2)
    mallory.send(f"/msg \u2067{bob.uid} hi")
    assert mallory.expect_prefix("ERROR:") == f"ERROR: no such user \u2067{bob.uid}"
