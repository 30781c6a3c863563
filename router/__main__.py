"""``pychat router`` / ``python -m router``: run the router by hand."""

from __future__ import annotations

import argparse
import logging
import sys

from pychat.config import (add_logging, add_ready_fd, endpoint, option, positive,
                           setup_logging, signal_ready)

from .clock import LocalClock
from .history import MemoryHistory
from .server import RouterServer
from .state import RouterState

DEFAULT_BIND = "tcp://127.0.0.1:65431"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pychat router",
                                description="The PyChat router: owns users, names, rooms and "
                                            "fan-out; acceptors connect to it over ZeroMQ.")
    option(p, "--bind", "PYCHAT_ROUTER_BIND", default=DEFAULT_BIND, type=endpoint,
           help="ZeroMQ endpoint the acceptors connect to (tcp://HOST:PORT or ipc://PATH)")
    option(p, "--heartbeat", "PYCHAT_HEARTBEAT", default=1.0, type=positive(float),
           help="seconds between bus heartbeats; 3 missed = the acceptor is dead")
    option(p, "--bus-hwm", "PYCHAT_BUS_HWM", default=100_000, type=positive(int),
           help="ZeroMQ high-water mark (batches) per acceptor")
    add_logging(p)
    add_ready_fd(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    state = RouterState(LocalClock(), MemoryHistory())
    server = RouterServer(state, args.bind, heartbeat=args.heartbeat, hwm=args.bus_hwm)
    try:
        server.bind()
    except Exception as e:  # zmq.ZMQError: address in use, bad path
        logging.getLogger("pychat.router").error("cannot bind %s: %s", args.bind, e)
        server.close()
        return 1
    server.install_signal_handlers()
    signal_ready(args.ready_fd, "router")
    server.run()
    logging.getLogger("pychat.router").info("router stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
