"""``pychat acceptor`` / ``python -m pychat.acceptor``: run one acceptor by hand."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import resource
import signal
import socket
import sys

from pychat.config import (
    BadValue,
    add_logging,
    add_ready_fd,
    endpoint,
    non_negative,
    option,
    port,
    positive,
    setup_logging,
    signal_ready,
    zero_or_more,
)
from pychat.keys import load_public, load_secret
from pychat.metrics import Metrics, add_metrics_options

from .limits import Limits, exempt_addresses
from .server import Acceptor
from .tls import server_context

log = logging.getLogger("pychat.acceptor")

DEFAULT_ROUTER = "tcp://127.0.0.1:65431"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pychat acceptor",
                                description="A PyChat acceptor: owns client TCP connections and "
                                            "forwards their commands to the router over ZeroMQ.")
    option(p, "--host", "PYCHAT_HOST", default="127.0.0.1", help="address to listen on")
    option(p, "--port", "PYCHAT_PORT", default=65432, type=port, help="TCP port to listen on")
    option(p, "--router", "PYCHAT_ROUTER", default=DEFAULT_ROUTER, type=endpoint,
           help="the router's ZeroMQ endpoint (tcp://HOST:PORT or ipc://PATH)")
    option(p, "--name", "PYCHAT_ACCEPTOR_NAME", default="",
           help="this acceptor's id on the bus (default: host-pid-random, unique)")
    option(p, "--reuse-port", "PYCHAT_REUSE_PORT", default=False, type=bool,
           help="SO_REUSEPORT, so several acceptors share one port")
    add_limit_options(p)
    option(p, "--heartbeat", "PYCHAT_HEARTBEAT", default=1.0, type=positive(float),
           help="seconds between bus heartbeats")
    option(p, "--loop", "PYCHAT_LOOP", default="auto", choices=["auto", "asyncio", "uvloop"],
           help="event loop: uvloop is faster (pip install 'pychat[speed]'); auto uses it "
                "when installed")
    option(p, "--bus-hwm", "PYCHAT_BUS_HWM", default=100_000, type=positive(int),
           help="ZeroMQ high-water mark (batches) toward the router")
    add_tls_options(p)
    option(p, "--curve-secret", "PYCHAT_CURVE_SECRET", default="",
           help="CurveZMQ: this acceptor's secret key file (acceptor-N.key_secret from "
                "`pychat keys`); with --curve-server, the bus is encrypted and authenticated")
    option(p, "--curve-server", "PYCHAT_CURVE_SERVER", default="",
           help="CurveZMQ: the router's public key file (router.key)")
    add_metrics_options(p)
    add_logging(p)
    add_ready_fd(p)
    return p


LIMIT_FLAGS = ("max_line", "send_queue", "send_queue_hard", "stall_check", "flood_burst",
               "flood_rate", "max_connections", "sndbuf", "lines_per_turn", "coalesce_ms",
               "coalesce_factor", "idle_timeout", "partial_line_timeout", "max_per_address",
               "keepalive_idle", "keepalive_interval", "keepalive_count", "per_address_exempt")
TLS_FLAGS = ("tls_cert", "tls_key")


seconds_or_off = zero_or_more("seconds", "off")


def address_list(text: str) -> str:
    try:
        exempt_addresses(text)
    except ValueError as e:
        raise BadValue(f"not a list of IP addresses, 'loopback' or 'none': {e}") from None
    return text


def add_tls_options(p: argparse.ArgumentParser) -> None:
    """TLS for clients; `pychat serve` takes them too and passes them on."""
    option(p, "--tls-cert", "PYCHAT_TLS_CERT", default="",
           help="TLS: certificate chain file (PEM); clients must then speak TLS on the port")
    option(p, "--tls-key", "PYCHAT_TLS_KEY", default="",
           help="TLS: private key file (PEM) of --tls-cert (empty: the key is in that file)")


def tls_context(p: argparse.ArgumentParser, args: argparse.Namespace):
    """The server's TLS context, or None; a usage error when the files cannot be used."""
    if not args.tls_cert:
        if args.tls_key:
            p.error("--tls-key needs --tls-cert")
        return None
    try:
        return server_context(args.tls_cert, args.tls_key)
    except BadValue as e:
        p.error(str(e))


def curve_keys(p: argparse.ArgumentParser, args: argparse.Namespace):
    """(public, secret, router's public) for a CurveZMQ bus, or None."""
    if not args.curve_secret and not args.curve_server:
        return None
    if not (args.curve_secret and args.curve_server):
        p.error("--curve-secret and --curve-server go together")
    try:
        public, secret = load_secret(args.curve_secret)
        return public, secret, load_public(args.curve_server)
    except BadValue as e:
        p.error(str(e))


def add_limit_options(p: argparse.ArgumentParser) -> None:
    """The per-client limits; `pychat serve` takes them too and passes them on."""
    d = Limits()
    option(p, "--max-line", "PYCHAT_MAX_LINE", default=d.max_line, type=positive(int),
           help="longest line in bytes, without its newline; longer lines get ERROR:")
    option(p, "--send-queue", "PYCHAT_SEND_QUEUE", default=d.send_queue, type=positive(int),
           help="bytes queued for a client that stopped draining them before it is dropped")
    option(p, "--send-queue-hard", "PYCHAT_SEND_QUEUE_HARD", default=d.send_queue_hard,
           type=positive(int), help="bytes queued for any client before it is dropped at once")
    option(p, "--stall-check", "PYCHAT_STALL_CHECK", default=d.stall_check,
           type=positive(float), help="seconds between checks of clients over --send-queue")
    option(p, "--flood-burst", "PYCHAT_FLOOD_BURST", default=d.flood_burst, type=positive(int),
           help="commands for others (messages, nick, join...) a client may send at once")
    option(p, "--flood-rate", "PYCHAT_FLOOD_RATE", default=d.flood_rate, type=positive(float),
           help="such commands per second after the burst; a flooder is slowed, not cut")
    option(p, "--max-connections", "PYCHAT_MAX_CONNECTIONS", default=d.max_connections,
           type=positive(int), help="clients this acceptor serves at once")
    option(p, "--sndbuf", "PYCHAT_SNDBUF", default=d.sndbuf, type=non_negative,
           help="kernel send buffer per client socket in bytes (0: kernel autotuning)")
    option(p, "--coalesce-ms", "PYCHAT_COALESCE_MS", default=d.coalesce_ms, type=float,
           help="the longest a line waits so that lines arriving together share one write "
                "(0: write every loop turn)")
    option(p, "--coalesce-factor", "PYCHAT_COALESCE_FACTOR", default=d.coalesce_factor,
           type=float, help="wait between writes, as a multiple of the time the last round of "
                            "writes took: light load waits ~0, a busy acceptor batches more")
    option(p, "--lines-per-turn", "PYCHAT_LINES_PER_TURN", default=d.lines_per_turn,
           type=positive(int), help="lines of one client handled before the others get a turn")
    option(p, "--idle-timeout", "PYCHAT_IDLE_TIMEOUT", default=d.idle_timeout,
           type=seconds_or_off, help="seconds a client may send nothing before it gets "
                                     "'ERROR: idle timeout' and is closed (0: never)")
    option(p, "--partial-line-timeout", "PYCHAT_PARTIAL_LINE_TIMEOUT",
           default=d.partial_line_timeout, type=seconds_or_off,
           help="seconds an unfinished line (no newline yet) may stay unfinished before the "
                "client gets ERROR: and is closed: the slowloris guard (0: never)")
    option(p, "--max-per-address", "PYCHAT_MAX_PER_ADDRESS", default=d.max_per_address,
           type=positive(int), help="clients from one IP address on this acceptor")
    option(p, "--per-address-exempt", "PYCHAT_PER_ADDRESS_EXEMPT", default=d.per_address_exempt,
           type=address_list, help="addresses --max-per-address does not apply to: "
                                   "comma-separated IPs, 'loopback' or 'none'")
    option(p, "--keepalive-idle", "PYCHAT_KEEPALIVE_IDLE", default=d.keepalive_idle,
           type=positive(int), help="TCP keepalive: seconds of silence before the kernel "
                                    "probes a client (finds half-open connections)")
    option(p, "--keepalive-interval", "PYCHAT_KEEPALIVE_INTERVAL",
           default=d.keepalive_interval, type=positive(int),
           help="TCP keepalive: seconds between probes")
    option(p, "--keepalive-count", "PYCHAT_KEEPALIVE_COUNT", default=d.keepalive_count,
           type=positive(int), help="TCP keepalive: unanswered probes before the kernel "
                                    "drops the connection")


def acceptor_metrics(acceptor: Acceptor) -> Metrics:
    m = Metrics()
    st = acceptor.stats
    m.gauge("pychat_acceptor_connections", "clients connected", lambda: len(acceptor.sessions))
    m.counter("pychat_acceptor_accepted_total", "clients accepted", lambda: st["accepted"])
    m.counter("pychat_acceptor_lines_out_total", "line groups queued to clients",
              lambda: st["lines_out"])
    m.counter("pychat_acceptor_writes_total", "writes to client sockets", lambda: st["writes"])
    m.counter("pychat_acceptor_send_queue_drops_total",
              "clients disconnected for their send queue", lambda: st["send_queue_drops"])
    m.counter("pychat_acceptor_refused_total", "clients refused (full, or per address)",
              lambda: st["full_refusals"] + st.get("address_refusals", 0))
    m.gauge("pychat_acceptor_bus_backlog_batches", "batches waiting for the router",
            lambda: acceptor.link.backlog)
    m.gauge("pychat_acceptor_router_alive", "1 while the router's heartbeats arrive",
            lambda: 1 if acceptor.router_alive else 0)
    return m


def raise_fd_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard == resource.RLIM_INFINITY else min(hard, max(soft, wanted))
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


async def serve(args: argparse.Namespace, tls=None, curve=None) -> int:
    loop = asyncio.get_running_loop()
    limits = Limits(**{k: getattr(args, k) for k in LIMIT_FLAGS})
    name = args.name or f"{socket.gethostname()}-{os.getpid()}-{os.urandom(2).hex()}"
    acceptor = Acceptor(loop, name=name, router=args.router, limits=limits,
                        heartbeat=args.heartbeat, bus_hwm=args.bus_hwm, curve=curve)
    try:
        await acceptor.start(args.host, args.port, args.reuse_port, ssl=tls)
    except OSError as e:
        log.error("cannot listen on %s:%d: %s", args.host, args.port, e)
        acceptor.link.close()
        return 1
    if args.metrics_port:
        try:
            acceptor_metrics(acceptor).serve(args.metrics_host, args.metrics_port)
        except OSError as e:
            log.error("cannot serve metrics on %s:%d: %s", args.metrics_host,
                      args.metrics_port, e)
            acceptor.link.close()
            return 1
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    where = ", ".join(f"{h}:{p}" for h, p in acceptor.ports())
    log.info("acceptor %s listening on %s%s, router %s%s (%s)", name, where,
             " (TLS)" if tls else "", args.router, " (CurveZMQ)" if curve else "",
             type(loop).__module__.split(".")[0])
    signal_ready(args.ready_fd, f"acceptor {where}")
    await stop.wait()
    log.info("acceptor %s shutting down (%d clients)", name, len(acceptor.sessions))
    await acceptor.shutdown()
    st = acceptor.stats
    log.info("acceptor %s stopped: %d clients served, %d line groups in %d writes, "
             "%d dropped for their send queue", name, st["accepted"], st["lines_out"],
             st["writes"], st["send_queue_drops"])
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        Limits(**{k: getattr(args, k) for k in LIMIT_FLAGS}).check()
    except ValueError as e:
        parser.error(str(e))
    tls = tls_context(parser, args)
    curve = curve_keys(parser, args)
    setup_logging(args.log_level, args.log_format)
    raise_fd_limit(args.max_connections + 64)
    if not use_loop(args.loop):
        return 2
    return asyncio.run(serve(args, tls, curve))


def use_loop(choice: str) -> bool:
    """Install uvloop's policy when asked (or, for auto, when it is installed)."""
    if choice == "asyncio":
        return True
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            log.error("--loop uvloop: uvloop is not installed (pip install 'pychat[speed]')")
            return False
        return True
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


if __name__ == "__main__":
    sys.exit(main())
