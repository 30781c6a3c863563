"""``pychat acceptor`` / ``python -m pychat.acceptor``: run one acceptor by hand.

asyncio (and with it the acceptor's modules) is imported in ``main``, once the options are
read: without a certificate it comes without ssl (``pychat.config.import_asyncio``; issue 18).
Nothing this module imports at its top may import asyncio.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import signal
import socket
import sys
from typing import TYPE_CHECKING

from pychat.config import BadValue, add_ready_fd, import_asyncio, setup_logging, signal_ready
from pychat.keys import is_open_bus, load_public, load_secret
from pychat.options import ACCEPTOR, add_options, limit_values

from .limits import Limits
from .tls import tls_context

if TYPE_CHECKING:
    from pychat.metrics import Metrics

    from .server import Acceptor

log = logging.getLogger("pychat.acceptor")

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pychat acceptor",
                                description="A PyChat acceptor: owns client TCP connections and "
                                            "forwards their commands to the router over ZeroMQ.")
    add_options(p, ACCEPTOR)  # pychat/options.py declares them
    add_ready_fd(p)
    return p


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


def acceptor_metrics(acceptor: Acceptor) -> Metrics:
    from pychat.metrics import Metrics
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
    m.counter("pychat_acceptor_web_requests_total", "HTTP requests the web door answered",
              lambda: st["web_requests"])
    m.counter("pychat_acceptor_web_sockets_total", "WebSocket sessions the web door opened",
              lambda: st["web_sockets"])
    m.counter("pychat_acceptor_web_origin_refusals_total",
              "WebSocket handshakes refused for their page's origin",
              lambda: st["web_origin_refusals"])
    m.gauge("pychat_acceptor_bus_backlog_batches", "batches waiting for the router",
            lambda: len(acceptor.bus.link.out))
    m.gauge("pychat_acceptor_router_alive", "1 while the router's heartbeats arrive",
            lambda: 1 if acceptor.router_alive else 0)
    return m


def raise_fd_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard == resource.RLIM_INFINITY else min(hard, max(soft, wanted))
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


async def serve(args: argparse.Namespace, tls=None, curve=None) -> int:
    import asyncio

    from .server import Acceptor
    loop = asyncio.get_running_loop()
    limits = Limits(**limit_values(args))
    name = args.name or f"{socket.gethostname()}-{os.getpid()}-{os.urandom(2).hex()}"
    acceptor = Acceptor(loop, name=name, router=args.router, limits=limits,
                        heartbeat=args.heartbeat, bus_hwm=args.bus_hwm, curve=curve,
                        web_origins=tuple(filter(None, (o.strip() for o in
                                                        args.web_origins.split(",")))))
    try:
        await acceptor.start(args.host, args.port, args.reuse_port, ssl=tls,
                             irc_port=args.irc_port,
                             web_port=args.web_port if args.web else None,
                             web_url=args.web_url)
    except OSError as e:
        log.error("cannot listen on %s:%d%s: %s", args.host, args.port,
                  f" (IRC {args.irc_port})" if args.irc_port else "", e)
        acceptor.bus.close()
        return 1
    if args.metrics_port:
        try:
            acceptor_metrics(acceptor).serve(args.metrics_host, args.metrics_port)
        except OSError as e:
            log.error("cannot serve metrics on %s:%d: %s", args.metrics_host,
                      args.metrics_port, e)
            acceptor.bus.close()
            return 1
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    where = ", ".join(f"{h}:{p}" for h, p in acceptor.ports())
    if args.irc_port:
        where += f", IRC {args.host}:{args.irc_port}"
    if args.web:
        scheme = "https" if tls else "http"
        where += f", web {scheme}://{args.host}:{acceptor.web_port()}/"
        if args.web_url:
            where += f" ({args.web_url}/ to clients)"
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
        Limits(**limit_values(args)).check()
    except ValueError as e:
        parser.error(str(e))
    tls = tls_context(parser, args)
    curve = curve_keys(parser, args)
    setup_logging(args.log_level, args.log_format)
    if curve is None and is_open_bus(args.router):
        # the router decides who may join (it refuses such a bus without --insecure-bus);
        # this end only says what it sees: chat crosses the network in clear text
        log.warning("bus: the router at %s is reached without CurveZMQ keys: the bus is neither "
                    "encrypted nor authenticated", args.router)
    raise_fd_limit(args.max_connections + 64)
    asyncio = import_asyncio(tls=tls is not None)
    if not use_loop(args.loop):
        return 2
    return asyncio.run(serve(args, tls, curve))


def use_loop(choice: str) -> bool:
    """Install uvloop's policy when asked (or, for auto, when it is installed)."""
    import asyncio
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
