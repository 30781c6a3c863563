"""``pychat serve``: the embedded default, a router and N acceptors as child processes.

The acceptors share one port with SO_REUSEPORT (one acceptor where the OS lacks it) and reach the
router over a private ipc:// endpoint in a fresh temporary folder, so two ``pychat serve`` with
different ports never collide. With ``--router ENDPOINT`` no router is started: the acceptors
connect to that one (a router run elsewhere, e.g. the compose file's ``router`` service), and
serve is only their supervisor. Each child reports readiness through a pipe; when all are ready we
print ``serving on HOST:PORT`` on stdout. A child that dies is restarted with backoff (and the
acceptors resync a restarted router). SIGINT or SIGTERM stops every child (SIGTERM, then SIGKILL
after a grace period) and removes the temporary folder.

The bus's keys are decided once, before any child starts (``bus_keys``):

- on the private ipc:// bus (the default) there are none: it never leaves this host;
- with ``--bus tcp://...`` serve starts its router there: ``--curve-keys DIR`` (the folder
  ``pychat keys DIR`` made) gives the router ``DIR/router.key_secret`` and ``DIR/authorized``
  and every acceptor ``DIR/acceptor-1.key_secret`` and ``DIR/router.key`` (one host: one
  acceptor key, as an acceptor host under ``--router`` has). A bus other hosts can reach without
  them is refused, as ``pychat router`` refuses it, unless ``--insecure-bus``;
- with ``--router tcp://...`` (a router elsewhere) the acceptors get ``--curve-secret`` and
  ``--curve-server``, the acceptor host's own key and the router's public key.

Keys given where they are not used are ignored with a warning, and every ``PYCHAT_CURVE_*``
variable is kept from the children: each gets its keys as flags, or none.
"""

from __future__ import annotations

import argparse
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from pychat.acceptor.tls import tls_context
from pychat.config import BadValue, setup_logging
from pychat.keys import (
    is_open_bus,
    load_public,
    load_secret,
    open_bus_refusal,
    public_keys,
)
from pychat.options import ACCEPTOR, ROUTER, SERVE, add_options, by_variable, forward_argv

log = logging.getLogger("pychat.serve")

READY_TIMEOUT = 20.0
STOP_GRACE = 5.0
BACKOFF_MAX = 30.0
# the acceptors' key options: never forwarded as they are, given by bus_keys() when used
CURVE_KEYS = ("curve_secret", "curve_server")


AUTO_MAX = 8  # acceptors ``--acceptors auto`` starts at most


def cores() -> int:
    """The cores this process may run on (its affinity mask, so a cpuset counts)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def auto_acceptors(n_cores: int | None = None, router: bool = True) -> int:
    """``--acceptors auto``: one core for the router (``router``: serve starts one; not with
    ``--router``, a router elsewhere), one acceptor for each of the others; at least one, at
    most ``AUTO_MAX``.

    Why (docs/BENCHMARKS.md, 2026-12-07): on 2 cores, with the clients on the same machine, one
    acceptor wrote a round of 1,000 clients in ~4 ms and its p99 was 6.9 ms against two
    acceptors' 8.2-9.8 (two processes, the router and the clients on two cores wait for each
    other);
    a second acceptor pays off only with a core of its own. Each acceptor a room's members are
    spread over costs the router ~7 us per message (docs/ARCHITECTURE.md "Sizing"), hence the
    cap: past 8, more acceptors add router work sooner than they add cores' worth of writing."""
    if n_cores is None:
        n_cores = cores()
    return max(1, min(n_cores - (1 if router else 0), AUTO_MAX))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pychat serve",
                                description="Run a PyChat server: one router and N acceptors "
                                            "sharing one port, as child processes.")
    add_options(p, SERVE)  # pychat/options.py declares them, and which child each goes to
    return p


@dataclass(frozen=True)
class BusKeys:
    """The CurveZMQ key files each child gets ("" where none): see the module's docstring."""

    router_secret: str = ""
    clients: str = ""  # the router's folder of authorised public keys
    acceptor_secret: str = ""
    server: str = ""  # the router's public key, for the acceptors

    @property
    def on(self) -> bool:
        return bool(self.acceptor_secret)

    def router_argv(self) -> list[str]:
        if not self.router_secret:
            return []
        return [f"--curve-secret={self.router_secret}", f"--curve-clients={self.clients}"]

    def acceptor_argv(self) -> list[str]:
        if not self.acceptor_secret:
            return []
        return [*by_variable("PYCHAT_CURVE_SECRET").argv(self.acceptor_secret),
                *by_variable("PYCHAT_CURVE_SERVER").argv(self.server)]

    def check(self) -> None:
        """Load every file (as the children will), so that an unusable one is serve's usage
        error and not a child that fails to start; ``BadValue`` says which and why."""
        if self.acceptor_secret:
            acceptor, _ = load_secret(self.acceptor_secret)
            router = load_public(self.server)
        if self.router_secret:
            mine, _ = load_secret(self.router_secret)
            if mine != router:
                raise BadValue(f"{self.server} is not the public key of {self.router_secret}")
            if not os.path.isdir(self.clients):
                raise BadValue(f"{self.clients}: not a folder")
            if acceptor not in public_keys(self.clients):
                raise BadValue(f"{self.clients} does not authorise {self.acceptor_secret}: its "
                               "acceptors could never join")


def bus_keys(args: argparse.Namespace, bus: str) -> BusKeys:
    """Which keys the children get on ``bus`` (see the module's docstring); ``ValueError``
    for a usage error. Files are not read here (``BusKeys.check`` does)."""
    for key in [k for k in os.environ if k.startswith("PYCHAT_CURVE_")]:
        del os.environ[key]  # the children get their keys as flags, or none
    tcp = bus.startswith("tcp://")
    given = bool(args.curve_secret or args.curve_server)
    if args.router:
        if args.curve_keys:
            raise ValueError("--curve-keys is for the router serve starts (--bus tcp://...); "
                             "toward a router elsewhere give the acceptors' --curve-secret and "
                             "--curve-server")
        if given and tcp:
            if not (args.curve_secret and args.curve_server):
                raise ValueError("--curve-secret and --curve-server go together")
            return BusKeys(acceptor_secret=args.curve_secret, server=args.curve_server)
        if given:
            log.warning("CurveZMQ keys ignored: this bus is %s, which never leaves this host",
                        bus)
        return BusKeys()
    if given:
        log.warning("CurveZMQ keys ignored: --curve-secret and --curve-server are for "
                    "acceptors reaching a router elsewhere (--router); serve's own router on a "
                    "tcp:// bus takes --curve-keys DIR")
    if args.curve_keys and tcp:
        d = os.path.abspath(args.curve_keys)
        return BusKeys(router_secret=os.path.join(d, "router.key_secret"),
                       clients=os.path.join(d, "authorized"),
                       acceptor_secret=os.path.join(d, "acceptor-1.key_secret"),
                       server=os.path.join(d, "router.key"))
    if args.curve_keys:
        log.warning("CurveZMQ keys ignored: this bus is %s, which never leaves this host", bus)
    if is_open_bus(bus) and not args.insecure_bus:
        raise ValueError(open_bus_refusal(bus, "--curve-keys DIR"))
    return BusKeys()


class Child:
    def __init__(self, role: str, argv: list[str]):
        self.role = role
        self.argv = argv
        self.proc: subprocess.Popen | None = None
        self.failures = 0
        self.restart_at = 0.0
        self.started = 0.0

    def start(self, ready_w: int | None) -> None:
        argv = list(self.argv)
        pass_fds: tuple[int, ...] = ()
        if ready_w is not None:
            argv += ["--ready-fd", str(ready_w)]
            pass_fds = (ready_w,)
        self.proc = subprocess.Popen([sys.executable, "-m", *argv], pass_fds=pass_fds,
                                     stdin=subprocess.DEVNULL)
        self.started = time.monotonic()
        log.info("started %s (pid %d)", self.role, self.proc.pid)


class Supervisor:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.tmp = tempfile.mkdtemp(prefix="pychat-")
        self.bus = args.router or args.bus or f"ipc://{self.tmp}/router.sock"
        self.stopping = False  # set by SIGTERM/SIGINT
        # signals wake the supervisor through this socket pair (signal.set_wakeup_fd): a
        # handler that took a lock (threading.Event.set) could deadlock against the main
        # thread holding that same lock when the signal came
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.children: list[Child] = []
        self.port = args.port
        self.web_port = args.web_port if args.web else None
        self._hold: list[socket.socket] = []
        self.keys = BusKeys()  # the children's CurveZMQ keys (see bus_keys)

    def reserve_port(self, reuse: bool, port: int) -> int:
        """For ``--port 0`` (or ``--web-port 0``): pick a free port once, so every acceptor
        binds the same one."""
        if port != 0:
            return port
        s = socket.socket(socket.AF_INET6 if ":" in self.args.host else socket.AF_INET)
        if reuse:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind((self.args.host, 0))
        port = s.getsockname()[1]
        if reuse:
            self._hold.append(s)  # bound, never listening: keeps the port ours until they listen
        else:
            s.close()
        return int(port)

    def plan(self) -> None:
        a = self.args
        reuse = hasattr(socket, "SO_REUSEPORT")
        n = auto_acceptors(router=not a.router) if a.acceptors == "auto" else a.acceptors
        if n > 1 and not reuse:
            log.warning("this OS has no SO_REUSEPORT: running one acceptor, not %d", n)
            n = 1
        self.port = self.reserve_port(reuse, self.port)
        if self.web_port is not None:
            self.web_port = self.reserve_port(reuse, self.web_port)
        web = (["--web", f"--web-port={self.web_port}"] if self.web_port is not None
               else ["--no-web"])
        # the children's options come from serve's as the table forwards them
        # (pychat/options.py); serve sets the rest: the bus, the port, names, metrics ports
        if not a.router:
            router = ["pychat.router", "--bind", self.bus, *forward_argv(a, ROUTER),
                      *self.keys.router_argv(), "--metrics-port", str(a.metrics_port)]
            self.children.append(Child("router", router))
        shared = forward_argv(a, ACCEPTOR, CURVE_KEYS) + self.keys.acceptor_argv()
        for i in range(n):
            argv = ["pychat.acceptor", "--port", str(self.port), "--router", self.bus,
                    "--name", f"{socket.gethostname()}-{os.getpid()}-a{i + 1}",
                    "--reuse-port" if reuse else "--no-reuse-port", *web, *shared,
                    "--metrics-port", str(a.metrics_port + i + 1 if a.metrics_port else 0)]
            self.children.append(Child(f"acceptor {i + 1}", argv))

    def start_all(self) -> bool:
        r, w = os.pipe()
        try:
            for child in self.children:
                child.start(w)
        finally:
            os.close(w)
        ready = 0
        deadline = time.monotonic() + READY_TIMEOUT
        buf = b""
        with os.fdopen(r, "rb", buffering=0) as pipe:
            while ready < len(self.children) and not self.stopping:
                left = deadline - time.monotonic()
                if left <= 0 or any(c.proc is not None and c.proc.poll() is not None
                                    for c in self.children):
                    return False
                if select.select([pipe], [], [], min(left, 0.2))[0]:
                    chunk = pipe.read(4096)
                    if not chunk:  # every child closed its end; some never said ready
                        return ready == len(self.children)
                    buf += chunk
                    ready = buf.count(b"\n")
        return ready == len(self.children)

    def failed_children(self) -> list[str]:
        """Which children exited, for the start failure's message. The ready pipe can reach
        end-of-file a moment before a dying child can be reaped: allow it a moment."""
        deadline = time.monotonic() + 2.0
        while True:
            failed = [f"{c.role} (exit code {c.proc.returncode})" for c in self.children
                      if c.proc is not None and c.proc.poll() is not None]
            if failed or time.monotonic() > deadline:
                return failed
            time.sleep(0.02)

    def handle_signals(self) -> None:
        def stop(signum, _frame):
            self.stopping = True  # no locks in a handler; the wakeup fd wakes the loop
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so SIGCHLD wakes us too

    def _sleep(self, timeout: float) -> None:
        """Until a signal comes (or ``timeout`` seconds)."""
        if select.select([self._wake_r], [], [], timeout)[0]:
            try:
                while self._wake_r.recv(512):
                    pass
            except (BlockingIOError, InterruptedError):
                pass

    def supervise(self) -> None:
        while not self.stopping:
            due = [c.restart_at for c in self.children if c.proc is None]
            self._sleep(min([1.0] + [max(0.0, t - time.monotonic()) for t in due]))
            now = time.monotonic()
            for child in self.children:
                if self.stopping:
                    break
                proc = child.proc
                if proc is not None and proc.poll() is not None:
                    code = proc.returncode
                    why = f"signal {-code}" if code < 0 else f"exit code {code}"
                    if now - child.started > 60:
                        child.failures = 0
                    # at once after a good run; then 0.5 s doubling, for one that keeps dying
                    delay = min(BACKOFF_MAX, 0.25 * 2 ** child.failures) if child.failures else 0
                    child.failures += 1
                    log.error("%s (pid %d) died: %s; restarting in %.1fs",
                              child.role, proc.pid, why, delay)
                    child.proc = None
                    child.restart_at = now + delay
                if child.proc is None and now >= child.restart_at:
                    child.start(None)

    def stop_all(self) -> None:
        procs = [c.proc for c in self.children if c.proc is not None and c.proc.poll() is None]
        # acceptors first, so clients hear "shutting down" while the router is still there
        for proc in reversed(procs):
            try:
                proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + STOP_GRACE
        for proc in procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("pid %d ignored SIGTERM; killing it", proc.pid)
                proc.kill()
                proc.wait()
        for held in self._hold:
            held.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    tls_context(parser, args)  # unusable certificate files: a usage error before any child
    setup_logging(args.log_level, args.log_format)
    try:  # the bus's keys, and unusable key files: a usage error before any child
        keys = bus_keys(args, args.router or args.bus or "ipc://")
        keys.check()
    except ValueError as e:  # BadValue too
        parser.error(str(e))
    sup = Supervisor(args)
    sup.keys = keys
    sup.handle_signals()
    try:
        sup.plan()
        if not sup.start_all():
            failed = sup.failed_children()
            log.error("%s did not start; see its log above",
                      ", ".join(failed) if failed else "a child")
            return 1
        for held in sup._hold:
            held.close()
        sup._hold.clear()
        n = sum(c.role.startswith("acceptor") for c in sup.children)
        irc = f", IRC on port {args.irc_port}" if args.irc_port else ""
        if sup.web_port is not None:
            scheme = "https" if args.tls_cert else "http"
            irc += f", web {scheme}://{args.host}:{sup.web_port}/"
        print(f"pychat: serving on {args.host}:{sup.port} ({n} acceptor{'s' * (n > 1)}, "
              f"bus {sup.bus}{irc})", flush=True)
        sup.supervise()
        return 0
    except OSError as e:
        log.error("cannot start: %s", e)
        return 1
    finally:
        sup.stop_all()
        log.info("stopped")
