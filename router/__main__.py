"""``pychat router`` / ``python -m pychat.router``: run the router by hand.

Besides the bus, the router owns the clock its stamps come from (``--ntp``) and the room history
(``--history``, ``--data-dir``). Both are set up here, before the router binds: a history file
that cannot be used stops the start with one line and exit code 1, never a crash later.

Who may join the bus is settled before anything binds: a ``--bind`` other hosts can reach
(any tcp:// address but loopback) needs CurveZMQ keys (``--curve-secret``, ``--curve-clients``)
or, said in so many words, ``--insecure-bus``; otherwise the start is a usage error (exit 2)
saying what to do (pychat/keys.py, ``is_open_bus``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

import zmq

from pychat.config import BadValue, add_ready_fd, setup_logging, signal_ready
from pychat.keys import (
    count_public_keys,
    describe_authorised,
    is_open_bus,
    load_secret,
    open_bus_refusal,
    start_authenticator,
)
from pychat.options import ROUTER, add_options

from .accounts import AccountsError, AccountStore
from .clock import LocalClock, NtpClock, parse_servers
from .files import FileLimits, FileStore, FileStoreError, GiB, MiB
from .history import MemoryHistory
from .passwords import Jobs, Passwords
from .server import RouterServer
from .sqlite_history import HistoryError, SqliteHistory
from .state import RouterState
from .transfers import Transfers

DAY = 86400.0
# test hook, not an option: seconds the history writer sleeps per batch (a slow disk)
WRITE_DELAY_ENV = "PYCHAT_TEST_HISTORY_WRITE_DELAY"

log = logging.getLogger("pychat.router")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pychat router",
                                description="The PyChat router: owns users, names, rooms and "
                                            "fan-out; acceptors connect to it over ZeroMQ.")
    add_options(p, ROUTER)  # pychat/options.py declares them
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
    return NtpClock(servers, interval=args.ntp_interval, timeout=args.ntp_timeout,
                    max_offset=args.ntp_max_offset)


def make_history(args: argparse.Namespace, clock) -> MemoryHistory | SqliteHistory:
    """Raises HistoryError when the history file cannot be used."""
    if args.history == "memory":
        log.info("history: in memory only (lost when the router stops)")
        return MemoryHistory(max_rooms=args.history_cache_rooms,
                             max_bytes=args.history_cache_mb * 2**20)
    delay = float(os.environ.get(WRITE_DELAY_ENV) or 0)
    if delay:
        log.warning("history: test hook %s: the writer sleeps %gs per batch",
                    WRITE_DELAY_ENV, delay)
    history = SqliteHistory(args.data_dir, per_room=args.history_per_room,
                            max_age=args.history_max_age * DAY, private=args.history_private,
                            private_per_sender=args.history_private_per_sender,
                            clock=clock.now, write_delay=delay,
                            cache_rooms=args.history_cache_rooms,
                            cache_bytes=args.history_cache_mb * 2**20, durable=args.durable)
    history.open()
    return history


def make_accounts(args: argparse.Namespace) -> AccountStore:
    """Raises AccountsError when the accounts file cannot be used."""
    if args.accounts == "memory":
        log.info("accounts: in memory only (lost when the router stops)")
        return AccountStore(None).open()
    store = AccountStore.in_folder(args.data_dir, durable=args.durable).open()
    log.info("accounts: %s (schema version %d)", store.path, store.version())
    return store


def make_transfers(args: argparse.Namespace) -> Transfers | None:
    """The file store and its transfers (None: --files off). Raises FileStoreError."""
    if args.files == "off":
        log.info("files: off (no /upload)")
        return None
    limits = FileLimits(max_file=int(args.files_max_mb * MiB),
                        user_quota=int(args.files_quota_mb * MiB),
                        uploads_per_hour=args.files_per_hour,
                        max_total=int(args.files_total_gb * GiB),
                        max_age=args.files_max_age * DAY)
    if args.files == "memory":
        log.info("files: in memory only (lost when the router stops)")
        store = FileStore(None, limits).open_store()
    else:
        store = FileStore.in_folder(args.data_dir, limits).open_store()
        log.info("files: %s", os.path.join(args.data_dir, "files"))
    return Transfers(store, monotonic=time.monotonic, wall=time.time, ttl=args.upload_ttl)


def read_pepper(path: str) -> bytes:
    """The pepper's bytes; AccountsError when the file cannot be read or is too short."""
    if not path:
        return b""
    try:
        with open(path, "rb") as f:
            pepper = f.read(4096)
    except OSError as e:
        raise AccountsError(f"--password-pepper-file {path}: {e.strerror}") from None
    if len(pepper) < 16:
        raise AccountsError(f"--password-pepper-file {path}: at least 16 bytes, please "
                            f"(e.g. head -c 32 /dev/urandom > {path})")
    return pepper


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    curve = curve_keys(parser, args)
    open_bus = is_open_bus(args.bind)
    if open_bus and curve is None and not args.insecure_bus:
        parser.error(open_bus_refusal(args.bind, "--curve-secret DIR/router.key_secret "
                                                 "--curve-clients DIR/authorized"))
    if args.durable and args.history != "sqlite":
        parser.error("--durable needs --history sqlite: it waits for the history file")
    setup_logging(args.log_level, args.log_format)
    if open_bus and curve is None:
        log.warning("bus: %s is neither encrypted nor authenticated (--insecure-bus): every "
                    "host that reaches it can join as an acceptor", args.bind)
    clock = make_clock(args)
    try:
        history = make_history(args, clock)
    except HistoryError as e:
        log.error("%s", e)
        return 1
    try:
        accounts = make_accounts(args)
        pepper = read_pepper(args.password_pepper_file)
    except AccountsError as e:
        log.error("%s", e)
        history.close()
        return 1
    try:
        transfers = make_transfers(args)
    except (FileStoreError, ValueError) as e:
        log.error("files: %s", e)
        history.close()
        accounts.close()
        return 1
    jobs = Jobs(workers=args.login_workers)
    state = RouterState(clock, history, durable=args.durable, accounts=accounts,
                        passwords=Passwords(pepper), jobs=jobs, token_days=args.token_days,
                        require_login=args.require_login, transfers=transfers)
    auth = None
    if curve is not None:  # the ZAP handler must be up before the socket binds
        auth = start_authenticator(zmq.Context.instance(), args.curve_clients)
        log.info("bus: CurveZMQ on; %s", describe_authorised(args.curve_clients))
    gate = history if args.durable and isinstance(history, SqliteHistory) else None
    server = RouterServer(state, args.bind, heartbeat=args.heartbeat, hwm=args.bus_hwm,
                          curve=curve, durable=gate)
    jobs.on_done = server.poke  # a password job finished: its answer goes at once
    if gate is not None:
        gate.on_commit = server.poke
        log.info("history: durable: a message is sent on only once committed and fsynced")
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
        from pychat.metrics import Metrics  # and asyncio, which the router needs for nothing else
        metrics = Metrics()
        server.register_metrics(metrics)
        try:
            metrics.serve(args.metrics_host, args.metrics_port)
        except OSError as e:
            log.error("cannot serve metrics on %s:%d: %s", args.metrics_host,
                      args.metrics_port, e)
            server.close()
            history.close()
            if auth is not None:
                auth.stop()
            return 1
    server.install_signal_handlers()
    clock.start()
    signal_ready(args.ready_fd, "router")
    try:
        server.run()
    finally:  # SIGTERM/SIGINT end run(): save the history still queued before exiting
        clock.stop()
        jobs.close()
        if transfers is not None:
            transfers.close()
        history.close()
        accounts.close()
        if auth is not None:
            auth.stop()
    log.info("router stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
