"""``pychat status``: the router's view (acceptors alive, users, rooms, messages/s, clock).

It connects to the router's bus endpoint as a short-lived DEALER that is not an acceptor, sends
one ``status?`` batch and prints the ``status`` answer. For ``pychat serve`` the endpoint is
the private one it prints at start (``bus ipc://...``).

A router with CurveZMQ keys answers only peers whose key it authorises: ``--curve-secret``
(``status.key_secret`` from ``pychat keys``, authorised like an acceptor's) and
``--curve-server`` (the router's ``router.key``). A refused or unfinished handshake looks like
silence, so a timeout says which keys were used. ``ask`` is also the router's container
healthcheck (pychat/healthcheck.py): an answer proves the router's loop turns, which a listening
socket does not.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import zmq

from pychat.config import BadValue
from pychat.keys import load_public, load_secret
from pychat.wire import bus
from pychat.wire.errors import BusError

from .options import STATUS, add_options

# (this client's public key, its secret key, the router's public key)
CurveKeys = tuple[bytes, bytes, bytes]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pychat status",
                                description="Print a running router's view of the chat.")
    add_options(p, STATUS)  # pychat/options.py declares them
    return p


def load_keys(secret: str, server: str) -> CurveKeys | None:
    """The key pair and the router's public key, or None for neither; ``BadValue`` for one
    without the other, or a file that cannot be used."""
    if not secret and not server:
        return None
    if not (secret and server):
        raise BadValue("--curve-secret and --curve-server go together")
    public, secret_key = load_secret(secret)
    return public, secret_key, load_public(server)


def ask(router: str, timeout: float, curve: CurveKeys | None = None) -> dict:
    ctx: zmq.Context = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.ROUTING_ID, f"status-{os.getpid()}-{os.urandom(3).hex()}".encode())
    if curve is not None:
        sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = curve
    try:
        sock.connect(router)
        sock.send_multipart(bus.encode([bus.StatusAsk()]))
        if not sock.poll(int(timeout * 1000)):
            hint = ("the router refused this key, or it is not the router's"
                    if curve is not None else
                    "a router with CurveZMQ keys answers only --curve-secret/--curve-server")
            raise TimeoutError(f"no answer from {router} in {timeout:g} s ({hint})")
        for msg in bus.decode(sock.recv_multipart()):
            if isinstance(msg, bus.Status):
                return json.loads(msg.json)
        raise BusError("the router answered without a status")
    finally:
        sock.close(0)


def render(st: dict) -> str:
    bus_kind = " (CurveZMQ)" if st.get("curve") else ""
    lines = [f"router {st['epoch']} on {st['endpoint']}{bus_kind}, up {st['uptime_s']:.0f} s",
             f"acceptors: {len(st['acceptors'])}"]
    for a in st["acceptors"]:
        lines.append(f"  {a['name']}: {a['users']} users, heard {a['last_heard_s']:.1f} s ago"
                     + (f", {a['backlog']} batches behind" if a["backlog"] else ""))
    lines.append(f"users: {st['users']} ({st['named']} named"
                 + (f", {st['logged_in']} logged in)" if "logged_in" in st else ")"))
    if st.get("logins"):
        lg = st["logins"]
        lines.append(f"logins: {lg['done']} done, {lg['failed']} failed, {lg['hashing']} being "
                     f"checked, {lg['refused_busy']} refused as busy")
    lines.append("rooms: " + (", ".join(f"{r}={n}" for r, n in st["rooms"].items()) or "none"))
    lines.append(f"messages/s: {st['messages_per_s']:g} (last 10 s)")
    clock = st.get("clock") or {}
    lines.append(f"clock: {clock.get('source', '?')}, offset {clock.get('offset_ms', 0):+.1f} ms"
                 + (f" from {clock['server']}" if clock.get("server") else "")
                 + (f", slewing to {clock['target_ms']:+.1f} ms" if clock.get("slewing") else "")
                 + (f"; {clock['rejections']} answers refused, the last: {clock['rejected']}"
                    if clock.get("rejections") else ""))
    hist = st.get("history") or {}
    lines.append("history: " + ", ".join(f"{k}={v}" for k, v in hist.items())
                 + ("; durable" + (f", {st['held_turns']} turns waiting for the disk"
                                   if st.get("held_turns") else "")
                    if st.get("durable") else ""))
    files = st.get("files")
    if files:
        lines.append(f"files: {files.get('files', 0)} stored ({files.get('bytes', 0)} bytes, "
                     f"{files.get('backend', '?')}), {files.get('uploads_waiting', 0)} uploads "
                     f"waiting, {files.get('uploads_done', 0)} done, "
                     f"{files.get('downloads_done', 0)} downloads")
    elif "files" in st:
        lines.append("files: off")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        curve = load_keys(args.curve_secret, args.curve_server)
    except BadValue as e:
        parser.error(str(e))
    try:
        st = ask(args.router, args.timeout, curve)
    except (TimeoutError, BusError, zmq.ZMQError) as e:
        print(f"pychat status: {e}", file=sys.stderr)
        return 1
    print(json.dumps(st, indent=2) if args.json else render(st))
    return 0
