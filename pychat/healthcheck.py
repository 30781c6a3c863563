"""``python -m pychat.healthcheck clients|router``: the container healthcheck.

Exit 0 when healthy, else 1, with one line saying what was seen.

``router``: the router's loop answers. It asks the router for its status over the bus
(``pychat.status.ask``, what ``pychat status`` does) at the local address of its bind
(``PYCHAT_ROUTER_BIND``, default tcp://127.0.0.1:65431; a wildcard address is asked on
loopback), within ``PYCHAT_STATUS_TIMEOUT`` or else ``TIMEOUT`` seconds (below the compose
file's 5 s, so the check says why rather than being killed). A router with CurveZMQ keys is
asked with ``pychat status``'s own keys, from its variables (``PYCHAT_STATUS_CURVE_SECRET``,
``PYCHAT_STATUS_CURVE_SERVER``). The answer comes from the router's one thread, so a router that
is stopped, stuck in a turn or gone fails the check, where a listening socket would pass (the
kernel completes TCP handshakes for a stopped process). Asking opens no chat session and never
makes the asker a bus peer.

``clients``: a socket in this network namespace listens on the client port (``PYCHAT_PORT``,
default 65432: an acceptor, or ``pychat serve``). It reads ``/proc/net/tcp`` and
``/proc/net/tcp6`` (Linux, which is what containers run) instead of connecting, on purpose: a
client connection would be a chat session, so every check would add a user to #lobby and remove
it again, and everyone there would get two USERS lines each time.
"""

from __future__ import annotations

import os
import sys

from pychat.options import by_variable

LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's "st" column
TABLES = ("/proc/net/tcp", "/proc/net/tcp6")
TIMEOUT = 3.0  # seconds for the router's answer when PYCHAT_STATUS_TIMEOUT is not set


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


def wanted_port(env: dict[str, str]) -> int:
    """The client port to check."""
    return int(env.get("PYCHAT_PORT") or by_variable("PYCHAT_PORT").default)


def router_endpoint(env: dict[str, str]) -> str:
    """Where to ask the router this container runs: its bind, a wildcard made loopback."""
    bind = env.get("PYCHAT_ROUTER_BIND") or by_variable("PYCHAT_ROUTER_BIND").default
    if not bind.startswith("tcp://"):
        return bind  # ipc://: the same path
    host, _, port = bind[len("tcp://"):].rpartition(":")
    host = host.strip("[]")
    if host in ("", "*", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"


def check_router(env: dict[str, str]) -> tuple[bool, str]:
    # imported here: the clients check needs no ZeroMQ
    import zmq

    from pychat.config import BadValue, positive
    from pychat.status import ask, load_keys
    from pychat.wire.errors import BusError

    endpoint = router_endpoint(env)
    try:
        raw = env.get("PYCHAT_STATUS_TIMEOUT")
        timeout = positive(float)(raw) if raw else TIMEOUT
        curve = load_keys(env.get("PYCHAT_STATUS_CURVE_SECRET", ""),
                          env.get("PYCHAT_STATUS_CURVE_SERVER", ""))
        st = ask(endpoint, timeout, curve)
    except (BadValue, TimeoutError, BusError, zmq.ZMQError) as e:
        return False, f"router on {endpoint}: {e}"
    return True, (f"router {st['epoch']} answered on {endpoint} ({len(st['acceptors'])} "
                  f"acceptors, {st['users']} users)")


def check_clients(env: dict[str, str]) -> tuple[bool, str]:
    port = wanted_port(env)
    if port in listening_ports():
        return True, f"listening on clients port {port}"
    return False, f"nothing listens on clients port {port}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0] not in ("clients", "router"):
        print("usage: python -m pychat.healthcheck clients|router", file=sys.stderr)
        return 2
    check = check_router if argv[0] == "router" else check_clients
    ok, what = check(dict(os.environ))
    print(f"{'healthy' if ok else 'unhealthy'}: {what}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
