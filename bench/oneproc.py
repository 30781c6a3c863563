"""The one-process baseline: a plain asyncio chat server, the way one writes it first.

The benchmark issue compares PyChat with "a one-process asyncio Python server, same protocol";
this is that server, kept here so its figure is measured in the same sitting as PyChat's and
ngircd's instead of quoted. It is for the benchmark only (never started by `pychat`).

What it does, in one process and one event loop (uvloop when installed, as PyChat):
- Part 1 of the protocol: `Welcome to PyChat Server!`, `ID:<uid>`, `USERS:` on connect; a public
  line goes to every member, the sender too, as `<uid>: <text>`; `/msg <uid> <text>`.
- `/ping [token]`, `/users`, `/quit`, and `ERROR: unknown command` for the rest.
- A line is encoded once and written to each member with `transport.write` as it arrives: no
  coalescing, no router, no bus. That is the design PyChat's acceptors replace.
- ``--direct`` (kind ``oneproc-direct`` in bench/run.py) writes each line to the socket with
  ``os.write`` as PyChat's acceptor does, the transport taking only what the socket does not: the
  floor of a Python server that writes every delivery at once (TCP_NODELAY), with no bus hop.
- USERS pushes to the others are sent at most once a second per change (a room of 1,000 that
  pushed its list at every arrival would move gigabytes while the load generator connects).

    python3 -m bench.oneproc --port 0 [--direct]  # prints "serving on 127.0.0.1:<port>"
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import sys

MAX_LINE = 4096


class Server:
    def __init__(self, direct: bool = False) -> None:
        self.direct = direct
        self.members: dict[str, Client] = {}  # uid -> client, in arrival order
        self.uids = (f"{n:06d}" for n in itertools.count(100000))
        self.push_due: asyncio.TimerHandle | None = None

    def users_line(self) -> bytes:
        return ("USERS:" + ",".join(self.members) + "\n").encode()

    def arrived(self, c: Client) -> None:
        self.members[c.uid] = c
        c.transport.write(f"Welcome to PyChat Server!\nID:{c.uid}\n".encode()
                          + self.users_line())
        self.list_changed()

    def left(self, c: Client) -> None:
        if self.members.pop(c.uid, None) is not None:
            self.list_changed()

    def list_changed(self) -> None:
        if self.push_due is None:
            self.push_due = asyncio.get_running_loop().call_later(1.0, self.push_users)

    def push_users(self) -> None:
        self.push_due = None
        line = self.users_line()
        for c in self.members.values():
            c.transport.write(line)

    def public(self, c: Client, text: str) -> None:
        data = f"{c.uid}: {text}\n".encode()
        if not self.direct:
            for m in self.members.values():
                m.transport.write(data)
            return
        write = os.write
        for m in self.members.values():  # --direct: the socket first, the transport for the rest
            t = m.transport
            if t.is_closing():  # (its fd may be closed already, and its number reused)
                continue
            if t.get_write_buffer_size():
                t.write(data)
                continue
            try:
                sent = write(m.fd, data)
            except OSError:
                sent = 0
            if sent < len(data):
                t.write(data[sent:])


class Client(asyncio.Protocol):
    def __init__(self, server: Server) -> None:
        self.server = server
        self.uid = next(server.uids)
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.fd = transport.get_extra_info("socket").fileno()
        self.server.arrived(self)

    def connection_lost(self, exc) -> None:
        self.server.left(self)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        *lines, self.buf = self.buf.split(b"\n")
        if len(self.buf) > MAX_LINE:
            self.buf = b""
            self.reply("ERROR: line too long (max 4096 bytes)")
        for raw in lines:
            try:
                line = raw.rstrip(b"\r").decode()
            except UnicodeDecodeError:
                self.reply("ERROR: invalid UTF-8")
                continue
            if line.strip():
                self.command(line)

    def reply(self, text: str) -> None:
        self.transport.write((text + "\n").encode())

    def command(self, line: str) -> None:
        if not line.startswith("/") or line.startswith("//"):
            self.server.public(self, line[1:] if line.startswith("//") else line)
            return
        word, _, rest = line.partition(" ")
        if word == "/ping":
            self.reply(f"PONG {rest}".rstrip())
        elif word == "/users":
            self.transport.write(self.server.users_line())
        elif word in ("/msg", "/w"):
            target, _, text = rest.partition(" ")
            other = self.server.members.get(target)
            if other is None or not text:
                self.reply(f"ERROR: no user {target}")
            else:
                other.reply(f"[Private] {self.uid}: {text}")
                self.reply(f"[Private] To {target}: {text}")
        elif word in ("/quit", "/exit"):
            self.reply("BYE")
            self.transport.close()
        else:
            self.reply(f"ERROR: unknown command {word}")


async def serve(host: str, port: int, direct: bool) -> None:
    server = Server(direct)
    srv = await asyncio.get_running_loop().create_server(lambda: Client(server), host, port,
                                                         backlog=4096)
    print(f"serving on {host}:{srv.sockets[0].getsockname()[1]}", flush=True)
    async with srv:
        await srv.serve_forever()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--loop", choices=["auto", "asyncio"], default="auto")
    ap.add_argument("--direct", action="store_true",
                    help="write each line to the socket with os.write, as PyChat's acceptor does "
                         "(the transport only for what the socket does not take)")
    args = ap.parse_args()
    if args.loop == "auto":
        try:
            import uvloop
            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        except ImportError:
            pass
    try:
        asyncio.run(serve(args.host, args.port, args.direct))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
