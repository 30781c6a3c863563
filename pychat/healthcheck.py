"""``python -m pychat.healthcheck clients|router``: the container healthcheck.

Exit 0 when a socket in this network namespace is listening on the port, else 1 with one line
saying what is missing. ``clients`` checks the client port (``PYCHAT_PORT``, default 65432: an
acceptor, or ``pychat serve``); ``router`` checks the port of the router's tcp:// endpoint
(``PYCHAT_ROUTER_BIND``, default tcp://127.0.0.1:65431).

It reads ``/proc/net/tcp`` and ``/proc/net/tcp6`` (Linux, which is what containers run) instead
of connecting, on purpose: a client connection would be a chat session, so every check would
add a user to #lobby and remove it again, and everyone there would get two USERS lines each
time. A TCP connection to the router's ZeroMQ port would be harmless but says no more than the
listening socket does. Needs nothing beyond the Python standard library (the defaults come from
pychat/options.py, which imports no more).
"""

from __future__ import annotations

import os
import sys

from pychat.options import by_variable

LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's "st" column
TABLES = ("/proc/net/tcp", "/proc/net/tcp6")


def listening_ports(tables: tuple[str, ...] = TABLES) -> set[int]:
    """Every local TCP port in the LISTEN state in this network namespace."""
    ports = set()
    for path in tables:
        try:
            with open(path) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) > 3 and fields[3] == LISTEN:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def wanted_port(role: str, env: dict[str, str]) -> int:
    if role == "clients":
        return int(env.get("PYCHAT_PORT") or by_variable("PYCHAT_PORT").default)
    bind = env.get("PYCHAT_ROUTER_BIND") or by_variable("PYCHAT_ROUTER_BIND").default
    if not bind.startswith("tcp://"):
        raise ValueError(f"PYCHAT_ROUTER_BIND={bind!r}: only a tcp:// endpoint can be checked")
    return int(bind.rsplit(":", 1)[1])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0] not in ("clients", "router"):
        print("usage: python -m pychat.healthcheck clients|router", file=sys.stderr)
        return 2
    try:
        port = wanted_port(argv[0], dict(os.environ))
    except ValueError as e:
        print(f"unhealthy: {e}")
        return 1
    if port in listening_ports():
        print(f"healthy: listening on {argv[0]} port {port}")
        return 0
    print(f"unhealthy: nothing listens on {argv[0]} port {port}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
