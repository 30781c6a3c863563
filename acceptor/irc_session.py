"""The IRC door's pump: a ``Session`` whose bytes pass through an ``IrcDoor`` (acceptor/irc.py).

Everything else is the TCP door's: the same ``Connection`` (flood, limits, order), the same
output queues and send-queue limits, the same router. What differs: the bytes read are IRC
lines, translated into PyChat lines fed to ``Connection.receive_line``; the lines the session
would be sent are translated into IRC lines (``send_line``); there is no Welcome line; and the
core is asked for ``/cap time codes end deltas`` as the session opens, invisibly to the client.
Room chat lines reach IRC members through ``Output.fan_out``, translated once per message into
the room's IRC run, which a member gets once registered (``Output.ready``); ``cap_time`` here is
whether the client asked for server-time (the core's lines all come with their times).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from .irc import SERVER, START, IrcDoor
from .session import Session

if TYPE_CHECKING:
    from .connection import Action
    from .server import Acceptor


class IrcSession(Session):
    KIND = 1
    __slots__ = ("irc",)

    def __init__(self, acceptor: Acceptor, conn_id: int):
        super().__init__(acceptor, conn_id)
        self.irc = IrcDoor()
        self.door = self.irc

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self.open:
            self.greeting = False  # no Welcome line on this door
            self.pump(self.conn.receive_line, START)

    def data_received(self, data: bytes) -> None:
        if not self.open:
            return
        self.conn.seen = self.acceptor.loop.time()  # (a PING the door answers is not silence)
        core, out = self.irc.receive(data)
        for reply in out:  # (the room's lines before a CAP ACK go out as asked before it)
            self.queue_irc(reply)
        self.cap_time = "server-time" in self.irc.caps  # (CAP REQ is answered here)
        self._registered()  # (CAP END after a SASL login registers here)
        for line in core:
            if not self.open or self.conn.quitting:
                break
            self.pump(self.conn.receive_line, line)

    def _after(self, actions: list[Action]) -> None:
        super()._after(actions)
        self.cap_time = "server-time" in self.irc.caps  # (not the core's /cap time)

    def send_line(self, text: str) -> None:
        irc = self.irc
        for line in irc.from_core(text):
            self.queue_irc(line)
        self._registered()
        if irc.to_core:  # a server line led to a command (the history of a room entered)
            commands, irc.to_core = irc.to_core, []
            for command in commands:
                if self.open and not self.conn.quitting:
                    self.pump(self.conn.receive_line, command)

    def _registered(self) -> None:
        """Registered now (the core's answer to NICK, or CAP END after a SASL login): its
        room's lines from now on."""
        if self.run is None and self.irc.registered:
            self.acceptor.output.ready(self)

    def queue_irc(self, line: str) -> None:
        self.acceptor.output.queue(self, (line + "\r\n").encode("utf-8"))

    def ping(self, now: float) -> None:
        if self.irc.registered:
            self.pinged = now
            self.queue_irc(f"PING :{SERVER}")

    def last_words(self, text: str, code: str | None = None) -> bytes:
        return f"ERROR :Closing link: {text}\r\n".encode()

    def greet(self) -> None:
        self.greeting = False
