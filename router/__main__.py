"""``pychat router`` / ``python -m pychat.router``: run the router by hand.

Besides the bus, the router owns the clock its stamps come from (``--ntp``) and the room history
(``--history``, ``--data-dir``). Both are set up here, before the router binds: a history file
that cannot be used stops the start with one line and exit code 1, never a crash later.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import zmq

from pychat.config import (
    BadValue,
    add_logging,
    add_ready_fd,
    endpoint,
    option,
    positive,
    setup_logging,
    signal_ready,
    zero_or_more,
)
from pychat.keys import count_public_keys, load_secret, start_authenticator
from pychat.metrics import Metrics, add_metrics_options

from .clock import LocalClock, NtpClock, parse_servers
from .history import MemoryHistory
from .server import RouterServer
from .sqlite_history import HistoryError, SqliteHistory, default_data_dir
from .state import RouterState

DEFAULT_BIND = "tcp://127.0.0.1:65431"
DAY = 86400.0
# test hook, not an option: seconds the history writer sleeps per batch (a slow disk)
WRITE_DELAY_ENV = "PYCHAT_TEST_HISTORY_WRITE_DELAY"

# the options `pychat serve` takes too and passes on to its router
ROUTER_FLAGS = ("ntp", "ntp_interval", "ntp_timeout", "history", "data_dir", "history_per_room",
                "history_max_age", "history_private")

log = logging.getLogger("pychat.router")


def ntp_servers(text: str) -> str:
    try:
        return " ".join(str(s) for s in parse_servers(text))
    except ValueError as e:
        raise BadValue(f"not a list of NTP servers: {e}") from None


days = zero_or_more("days", "forever")


def add_time_history_options(p: argparse.ArgumentParser) -> None:
    """The clock and history options; `pychat serve` takes them too and passes them on."""
    option(p, "--ntp", "PYCHAT_NTP", default="", type=ntp_servers,
           help="NTP servers to correct the clock with, asked in order (HOST, HOST:PORT or "
                "[V6]:PORT, comma- or space-separated); empty: the host clock as it is")
    option(p, "--ntp-interval", "PYCHAT_NTP_INTERVAL", default=1024.0, type=positive(float),
           help="seconds between NTP rounds")
    option(p, "--ntp-timeout", "PYCHAT_NTP_TIMEOUT", default=2.0, type=positive(float),
           help="seconds to wait for each NTP server's answer")
    option(p, "--history", "PYCHAT_HISTORY", default="sqlite", choices=["sqlite", "memory"],
           help="where room history lives: sqlite (a file in --data-dir, kept across "
                "restarts) or memory (the last 200 per room, lost when the router stops)")
    option(p, "--data-dir", "PYCHAT_DATA_DIR", default=default_data_dir(),
           help="folder of the history file (history.sqlite3)")
    option(p, "--history-per-room", "PYCHAT_HISTORY_PER_ROOM", default=10_000,
           type=positive(int), help="messages kept per room in the history file")
    option(p, "--history-max-age", "PYCHAT_HISTORY_MAX_AGE", default=30.0, type=days,
           help="days a message is kept (and shown by /history); 0 keeps them forever")
    option(p, "--history-private", "PYCHAT_HISTORY_PRIVATE", default=False, type=bool,
           help="also store private messages in the history file (never shown by /history; "
                "a record for the operator)")


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
    option(p, "--curve-secret", "PYCHAT_CURVE_SECRET", default="",
           help="CurveZMQ: the router's secret key file (router.key_secret from `pychat keys`); "
                "with --curve-clients, the bus is encrypted and only authorised acceptors get in")
    option(p, "--curve-clients", "PYCHAT_CURVE_CLIENTS", default="",
           help="CurveZMQ: folder of the authorised acceptors' public keys (*.key)")
    add_time_history_options(p)
    add_metrics_options(p)
    add_logging(p)
    add_ready_fd(p)
    return p


def curve_keys(p: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[bytes, bytes] | None:
    """The router's CurveZMQ key pair, or None; a usage error unless both options or neither."""
    if not args.curve_secret and not args.curve_clients:
        return None
    if not (args.curve_secret and args.curve_clients):
        p.error("--curve-secret and --curve-clients go together")
    try:
        keys = load_secret(args.curve_secret)
        if not os.path.isdir(args.curve_clients):
            raise BadValue(f"--curve-clients {args.curve_clients}: not a folder")
        if not count_public_keys(args.curve_clients):
            raise BadValue(f"--curve-clients {args.curve_clients}: no public keys (*.key)")
    except BadValue as e:
        p.error(str(e))
    return keys


def make_clock(args: argparse.Namespace) -> LocalClock | NtpClock:
    servers = parse_servers(args.ntp)
    if not servers:
        log.info("clock: the host clock (no --ntp)")
        return LocalClock()
    return NtpClock(servers, interval=args.ntp_interval, timeout=args.ntp_timeout)


def make_history(args: argparse.Namespace, clock) -> MemoryHistory | SqliteHistory:
    """Raises HistoryError when the history file cannot be used."""
    if args.history == "memory":
        log.info("history: in memory only (lost when the router stops)")
        return MemoryHistory()
    delay = float(os.environ.get(WRITE_DELAY_ENV) or 0)
    if delay:
        log.warning("history: test hook %s: the writer sleeps %gs per batch",
                    WRITE_DELAY_ENV, delay)
    history = SqliteHistory(args.data_dir, per_room=args.history_per_room,
                            max_age=args.history_max_age * DAY, private=args.history_private,
                            clock=clock.now, write_delay=delay)
    history.open()
    return history


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    curve = curve_keys(parser, args)
    setup_logging(args.log_level, args.log_format)
    clock = make_clock(args)
    try:
        history = make_history(args, clock)
    except HistoryError as e:
        log.error("%s", e)
        return 1
    state = RouterState(clock, history)
    auth = None
    if curve is not None:  # the ZAP handler must be up before the socket binds
        auth = start_authenticator(zmq.Context.instance(), args.curve_clients)
        log.info("bus: CurveZMQ on; %d authorised acceptor keys in %s",
                 count_public_keys(args.curve_clients), args.curve_clients)
    server = RouterServer(state, args.bind, heartbeat=args.heartbeat, hwm=args.bus_hwm,
                          curve=curve)
    try:
        server.bind()
    except Exception as e:  # zmq.ZMQError: address in use, bad path
        log.error("cannot bind %s: %s", args.bind, e)
        server.close()
        history.close()
        if auth is not None:
            auth.stop()
        return 1
    if args.metrics_port:
        metrics = Metrics()
        server.register_metrics(metrics)
        try:
            metrics.serve(args.metrics_host, args.metrics_port)
        except OSError as e:
            log.error("cannot serve metrics on %s:%d: %s", args.metrics_host,
                      args.metrics_port, e)
            server.close()
            history.close()
            return 1
    server.install_signal_handlers()
    clock.start()
    signal_ready(args.ready_fd, "router")
    try:
        server.run()
    finally:  # SIGTERM/SIGINT end run(): save the history still queued before exiting
        clock.stop()
        history.close()
        if auth is not None:
            auth.stop()
    log.info("router stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
