"""Every command-line option of every PyChat program, declared once: the table ``OPTIONS``.

A row (``Option``) is one setting: its flag, its ``PYCHAT_*`` variable, default, parser
(``type``), choices, help, the programs that take it, and where ``pychat serve`` passes it on
to its children (``forward``). From the table come

- every program's parser: ``add_options(parser, program)``, through ``pychat.config.option``
  (the flag wins, then the variable, then the default; a bad value is a usage error; ``--help``
  ends each help with ``[env PYCHAT_X; default ...]``);
- the argv ``pychat serve`` gives its router and acceptor children: ``forward_argv``;
- the README's configuration table: ``markdown()``, ``python -m pychat.options --markdown``
  (``--update-readme README.md`` rewrites it between its markers).

Invariants (tests/test_options.py checks them):

- one row per variable, and within one program one row per flag. A flag may mean different
  things in programs that share no row: ``--history`` is the router's history store
  (``PYCHAT_HISTORY``) and the clients' lines of history shown (``PYCHAT_CLIENT_HISTORY``);
- where programs take the same setting with different words (or serve's ``--router``, which
  is optional), the row says so per program (``variants``), and it is still one row;
- the limit rows (``limit=True``) are exactly the fields of ``pychat.acceptor.limits.Limits``,
  and their defaults are read from it: that dataclass is where they are declared;
- a row taken by serve and by one of its children is forwarded to that child, or set by serve
  itself (``Forward.BY_SERVE``: the port, the bus endpoint, the metrics ports); the one
  exception is ``--curve-secret``, which serve holds for its acceptors toward a router
  elsewhere, never for its own router (which gets its key from ``--curve-keys``).

Options without a variable (``env=None``: per-run switches such as ``pychat status --json``)
are rows too; their help says ``[env: none]``. The internal ``--ready-fd`` and positional
arguments are not options and are not here.
"""

from __future__ import annotations

import argparse
import enum
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from pychat.acceptor.limits import Limits, exempt_addresses
from pychat.config import (
    BadValue,
    endpoint,
    non_negative,
    option,
    port,
    positive,
    zero_or_more,
)
from pychat.wire import bus, commands
from pychat.wire.errors import ClientError

# ---- programs ------------------------------------------------------------------------------------

SERVE, ROUTER, ACCEPTOR = "serve", "router", "acceptor"
GUI, CONSOLE, LOADTEST, STATUS, KEYS = "gui", "console", "loadtest", "status", "keys"
PROGRAMS = (SERVE, ROUTER, ACCEPTOR, GUI, CONSOLE, LOADTEST, STATUS, KEYS)
SERVERS = (SERVE, ROUTER, ACCEPTOR)  # the README's configuration table is theirs
CLIENTS = (GUI, CONSOLE)  # the two fronts share one parser (clients/options.py)

DEFAULT_BUS = "tcp://127.0.0.1:65431"  # where `pychat router` binds and the others look for it


class Forward(enum.Enum):
    """Where ``pychat serve`` passes a row's value on to its children."""

    NOWHERE = "nowhere"  # serve's own, or not a serve option
    ROUTER = "router"
    ACCEPTORS = "acceptors"
    BOTH = "both"
    BY_SERVE = "set by serve"  # the children get a value serve makes (Supervisor.plan)

    def reaches(self, child: str) -> bool:
        return (self is Forward.BOTH or (self is Forward.ROUTER and child == ROUTER)
                or (self is Forward.ACCEPTORS and child == ACCEPTOR))


# ---- value checkers that belong to one option ----------------------------------------------------

seconds_or_off = zero_or_more("seconds", "off")
days = zero_or_more("days", "forever")


def acceptor_count(text: str) -> int | str:
    """``auto`` (serve picks for the cores it may use: ``pychat.serve.auto_acceptors``) or a
    positive count."""
    if text.strip().lower() == "auto":
        return "auto"
    return positive(int)(text)


def bus_name(text: str) -> str:
    if text and not bus.valid_token(text):
        raise BadValue(f"not a name the bus takes (1-255 letters, digits and . _ : @ + -): "
                       f"{text!r}")
    return text


def web_url(text: str) -> str:
    if text and not re.fullmatch(r"https?://[^/\s?#]+", text.rstrip("/")):
        raise BadValue(f"not a base URL (http(s)://host[:port], no path): {text!r}")
    return text.rstrip("/")


def origin_list(text: str) -> str:
    for origin in filter(None, (o.strip() for o in text.split(","))):
        if origin != "*" and not re.fullmatch(r"https?://[^/\s]+", origin):
            raise BadValue(f"not an origin (scheme://host[:port], no path) or *: {origin!r}")
    return text


def endpoint_or_none(text: str) -> str:
    return endpoint(text) if text else ""


def address_list(text: str) -> str:
    try:
        exempt_addresses(text)
    except ValueError as e:
        raise BadValue(f"not a list of IP addresses, 'loopback' or 'none': {e}") from None
    return text


def ntp_servers(text: str) -> str:
    # imported here: the clients' parsers come from this table too and need no router code
    from pychat.router.clock import parse_servers
    try:
        return " ".join(str(s) for s in parse_servers(text))
    except ValueError as e:
        raise BadValue(f"not a list of NTP servers: {e}") from None


def room(text: str) -> str:
    try:
        cmd = commands.parse_line(f"/join {text}")
    except ClientError as e:
        raise BadValue(e.message) from None
    if not isinstance(cmd, commands.Join):  # parse_line's type allows any command, or none
        raise BadValue(f"not a room: {text!r}")
    return cmd.room


def default_data_dir() -> str:
    # read when a parser is made (it follows $XDG_DATA_HOME); in pychat/config.py, which
    # imports no router code (the clients' parsers, serve's: no sqlite3)
    from pychat.config import default_data_dir
    return default_data_dir()


# ---- the row ------------------------------------------------------------------------------------

_UNSET: Any = object()


@dataclass(frozen=True)
class Variant:
    """What one program takes differently from the row: its own words, default or parser."""

    help: str | None = None
    default: Any = _UNSET
    type: Callable[[str], Any] | None = None


def each(programs: Iterable[str], **changes: Any) -> dict[str, Variant]:
    """The same ``Variant`` for several programs (``variants={**each(CLIENTS, help=...)}``)."""
    return dict.fromkeys(programs, Variant(**changes))


@dataclass(frozen=True)
class Option:
    """One setting, declared once: see the module's docstring. ``help`` is what ``--help``
    says (before its ``[env ...; default ...]``); ``doc`` what the README says."""

    flag: str
    env: str | None  # None: a per-run switch without a variable ([env: none])
    default: Any
    help: str
    programs: tuple[str, ...]
    type: Callable[[str], Any] = str  # bool: --flag/--no-flag, and 1/0, yes/no... in the variable
    choices: tuple[str, ...] = ()
    forward: Forward = Forward.NOWHERE
    path: bool = False  # a file: serve passes it made absolute, so a child finds it wherever
    limit: bool = False  # a field of Limits (acceptor/limits.py), which holds its default
    repeat: bool = False  # may be given several times; the value is the list (env=None only)
    default_from: Callable[[], Any] | None = None  # a default read when the parser is made
    doc: str | None = None  # the README's "meaning" column (None: the help)
    doc_default: str | None = None  # the README's "default" column (None: made from default)
    variants: Mapping[str, Variant] = field(default_factory=dict)

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")

    def on(self, program: str) -> Option:
        """This row as ``program`` takes it (its variant applied)."""
        if program not in self.programs:
            raise ValueError(f"{program} does not take {self.flag}")
        v = self.variants.get(program)
        if v is None:
            return self
        return replace(self, help=self.help if v.help is None else v.help,
                       default=self.default if v.default is _UNSET else v.default,
                       type=self.type if v.type is None else v.type, variants={})

    def default_value(self) -> Any:
        return self.default_from() if self.default_from is not None else self.default

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        if self.env is not None:
            option(parser, self.flag, self.env, default=self.default_value(), help=self.help,
                   type=self.type, choices=list(self.choices) or None)
        elif self.type is bool:
            parser.add_argument(self.flag, dest=self.dest, action="store_true",
                                help=f"{self.help} [env: none]")
        elif self.repeat:  # a list of its own in each parser (the row holds a tuple)
            parser.add_argument(self.flag, dest=self.dest, type=self.type, action="append",
                                default=list(self.default), help=f"{self.help} [env: none]",
                                metavar=self.dest.upper())
        else:
            parser.add_argument(self.flag, dest=self.dest, type=self.type,
                                default=self.default_value(), choices=list(self.choices) or None,
                                help=f"{self.help} [env: none]", metavar=self.dest.upper())

    def argv(self, value: Any) -> list[str]:
        """``value`` as this option's command-line words (what a child parses back); one word,
        ``--flag=VALUE``, so that a value starting with ``-`` is not taken for a flag."""
        if self.type is bool:
            return [self.flag if value else "--no-" + self.flag[2:]]
        if self.path and value:
            value = os.path.abspath(value)
        return [f"{self.flag}={value}"]


_LIMITS = Limits()


def _limit(flag: str, help: str, type: Callable[[str], Any], doc: str, **more: Any) -> Option:
    """A per-client limit: serve and the acceptor take it, serve passes it on, and its default
    is the field of ``Limits`` of the same name."""
    dest = flag.lstrip("-").replace("-", "_")
    env = "PYCHAT_" + dest.upper()
    return Option(flag, env, getattr(_LIMITS, dest), help, (SERVE, ACCEPTOR), type=type,
                  forward=Forward.ACCEPTORS, limit=True, doc=doc, **more)


# ---- the table -----------------------------------------------------------------------------------
# Rows in the README's order (the server's settings), then the clients' and the tools'. A
# program's --help lists its options in this order.

LOOPS = ("auto", "asyncio", "uvloop")

OPTIONS: tuple[Option, ...] = (
    # where the server listens, and the bus
    Option("--host", "PYCHAT_HOST", "127.0.0.1", "address to listen on",
           (SERVE, ACCEPTOR, *CLIENTS, LOADTEST), forward=Forward.ACCEPTORS,
           variants=each((*CLIENTS, LOADTEST), help="server address"),
           doc="address clients connect to (serve, acceptor)"),
    Option("--port", "PYCHAT_PORT", 65432, "TCP port to listen on",
           (SERVE, ACCEPTOR, *CLIENTS, LOADTEST), type=port, forward=Forward.BY_SERVE,
           variants={SERVE: Variant(help="TCP port for clients (0: any free port, printed when "
                                         "ready)"),
                     **each((*CLIENTS, LOADTEST), help="server port")},
           doc="client port; `pychat serve --port 0` picks a free one and prints it"),
    Option("--irc-port", "PYCHAT_IRC_PORT", 0,
           "TCP port for IRC clients (0: off); every acceptor shares it, on --host",
           (SERVE, ACCEPTOR), type=port, forward=Forward.ACCEPTORS,
           doc="the IRC door's port (docs/PROTOCOL.md, The IRC door)", doc_default="`0` (off)"),
    Option("--web", "PYCHAT_WEB", True,
           "serve the browser client and the WebSocket door on --web-port", (SERVE, ACCEPTOR),
           type=bool, forward=Forward.BY_SERVE, variants={ACCEPTOR: Variant(default=False)},
           doc="the web door: the browser client at `/`, the line protocol over WebSocket at "
               "`/ws` (docs/PROTOCOL.md, The web door)",
           doc_default="on (`serve`), off (`acceptor`)"),
    Option("--web-port", "PYCHAT_WEB_PORT", 65433,
           "the web door's TCP port (0: any free port, printed when ready); every acceptor "
           "shares it, on --host", (SERVE, ACCEPTOR), type=port, forward=Forward.BY_SERVE,
           doc="the web door's port; `0` picks a free one, printed"),
    Option("--web-url", "PYCHAT_WEB_URL", "",
           "the web door's address as clients reach it, for the URLs of files (e.g. "
           "https://chat.example.org behind a proxy; default: http(s)://--host:--web-port)",
           (SERVE, ACCEPTOR), type=web_url, forward=Forward.ACCEPTORS,
           doc="the web door's public base URL, for the URLs of uploads and files",
           doc_default="`http(s)://HOST:WEB_PORT`"),
    Option("--web-origins", "PYCHAT_WEB_ORIGINS", "",
           "web pages (origins, e.g. https://chat.example.org) allowed to open the WebSocket "
           "besides the door's own pages, comma-separated; * allows any", (SERVE, ACCEPTOR),
           type=origin_list, forward=Forward.ACCEPTORS,
           doc="other web origins allowed to open `/ws` (a page the door served always may)",
           doc_default="none"),
    Option("--acceptors", "PYCHAT_ACCEPTORS", "auto", "acceptor processes sharing the port "
           "(auto: one per core, less one for serve's own router; 1 to 8)", (SERVE,),
           type=acceptor_count, doc="acceptor processes under `pychat serve` (auto: one per "
                                    "core, less one for serve's own router; 1 to 8)"),
    Option("--bus", "PYCHAT_BUS", "",
           "router endpoint (default: a private ipc:// endpoint in a temporary folder)", (SERVE,),
           doc="router endpoint under `pychat serve`", doc_default="private `ipc://`"),
    Option("--bind", "PYCHAT_ROUTER_BIND", DEFAULT_BUS,
           "ZeroMQ endpoint the acceptors connect to (tcp://HOST:PORT or ipc://PATH)", (ROUTER,),
           type=endpoint, doc="endpoint `pychat router` binds"),
    Option("--router", "PYCHAT_ROUTER", DEFAULT_BUS,
           "the router's ZeroMQ endpoint (tcp://HOST:PORT or ipc://PATH)",
           (SERVE, ACCEPTOR, STATUS), type=endpoint, forward=Forward.BY_SERVE,
           variants={SERVE: Variant(default="", type=endpoint_or_none,
                                    help="start no router: the acceptors connect to this running "
                                         "router's endpoint (tcp://HOST:PORT or ipc://PATH); the "
                                         "router options are then unused"),
                     STATUS: Variant(help="the router's bus endpoint (pychat serve prints its own "
                                          "at start)")},
           doc="endpoint `pychat acceptor` connects to; for `pychat serve` (default: none) a "
               "running router to use instead of starting one"),
    Option("--name", "PYCHAT_ACCEPTOR_NAME", "",
           "this acceptor's id on the bus (default: host-pid-random, unique)", (ACCEPTOR,),
           type=bus_name, doc="an acceptor's id on the bus", doc_default="host-pid-random"),
    Option("--reuse-port", "PYCHAT_REUSE_PORT", False,
           "SO_REUSEPORT, so several acceptors share one port", (ACCEPTOR,), type=bool,
           doc="let several acceptors share a port"),
    # per-client limits (acceptor/limits.py)
    _limit("--max-line", "longest line in bytes, without its newline; longer lines get ERROR:",
           positive(int), "longest line in bytes; longer ones get `ERROR:`"),
    _limit("--send-queue",
           "bytes queued for a client that stopped draining them before it is dropped",
           positive(int), "bytes waiting for a client that has stopped draining them before it "
                          "is disconnected"),
    _limit("--send-queue-hard", "bytes queued for any client before it is dropped at once",
           positive(int), "bytes waiting for any client before it is disconnected at once"),
    _limit("--stall-check", "seconds between checks of clients over --send-queue",
           positive(float), "seconds between checks of clients over `--send-queue`"),
    _limit("--sndbuf", "kernel send buffer per client socket in bytes (0: kernel autotuning)",
           non_negative, "kernel send buffer per client socket (0: the kernel's autotuning)"),
    _limit("--flood-burst",
           "commands for others (messages, nick, join...) a client may send at once",
           positive(int), "commands that reach others (messages, /nick, /join...) a client may "
                          "send at once ..."),
    _limit("--flood-rate",
           "such commands per second after the burst; a flooder is slowed, not cut",
           positive(float), "... then per second; a flooder is slowed down (reading paused), "
                            "never dropped"),
    _limit("--flood-bytes", "bytes a client's command may make the server send (replies, pushes "
                            "to a room's members, a line to a large room) for each flood token "
                            "it costs beyond the first",
           positive(int), "what a command makes the server send costs one more token per this "
                          "many bytes (`/history`, a crowded `/join`, a line to a large room)"),
    _limit("--lines-per-turn", "lines of one client handled before the others get a turn",
           positive(int), "lines of one client handled before the others get a turn"),
    _limit("--coalesce-ms", "the longest a line waits so that lines arriving together share one "
                            "write (0: write every loop turn)",
           float, "the longest a line waits so that lines arriving together share one write"),
    _limit("--coalesce-factor", "wait between writes, as a multiple of the time the last round "
                                "of writes took, after a round that batched (1.5 lines a write "
                                "or more): light load never waits, a busy acceptor batches more",
           float, "wait after a round of writes that batched, as a multiple of its duration"),
    _limit("--max-connections", "clients this acceptor serves at once", positive(int),
           "clients per acceptor"),
    _limit("--max-per-address", "clients from one IP address on this acceptor", positive(int),
           "clients from one IP address per acceptor; one more gets `ERROR:` and is closed"),
    _limit("--connect-burst", "new connections one IP address may open at once (the "
                              "--per-address-exempt addresses may open any)",
           positive(int), "new connections from one IP address at once ..."),
    _limit("--connect-rate", "such new connections per second after the burst; one more gets "
                             "ERROR: and is closed",
           positive(float), "... then per second; one more gets `ERROR:` and is closed"),
    _limit("--per-address-exempt", "addresses --max-per-address does not apply to: "
                                   "comma-separated IPs, 'loopback' or 'none'",
           address_list, "addresses `--max-per-address` does not apply to: IPs "
                         "(comma-separated), `loopback` or `none`"),
    _limit("--idle-timeout", "seconds a client may send nothing before it gets 'ERROR: idle "
                             "timeout' and is closed (0: never)",
           seconds_or_off, "seconds a client may send nothing before `ERROR: idle timeout` and "
                           "close; `0`: never (TCP keepalive still clears vanished peers)",
           doc_default="`0` (off)"),
    _limit("--partial-line-timeout", "seconds an unfinished line (no newline yet) may stay "
                                     "unfinished before the client gets ERROR: and is closed: "
                                     "the slowloris guard (0: never)",
           seconds_or_off, "seconds an unfinished line may stay unfinished (slowloris guard); "
                           "`0`: never"),
    _limit("--piece-idle", "until a client's first newline, seconds an unfinished piece may sit "
                           "before it is taken as a line (clients that end no message with a "
                           "newline, as the original PyChat client; 0: never)",
           seconds_or_off, "until a client's first newline, seconds after which an unfinished "
                           "piece is taken as a line (for clients that send one message per "
                           "packet with no newline); `0`: never"),
    _limit("--transfer-stall", "seconds an upload's body or a download may move nothing on the "
                               "web door before it is given up (HTTP 408)",
           positive(float), "seconds an upload or a download may stall before it is given up"),
    _limit("--transfer-mbps", "MB/s all of an acceptor's file uploads and downloads may move "
                              "together, so that chat does not wait behind them (0: no limit)",
           zero_or_more("MB/s", "no limit"), "MB/s an acceptor's file transfers move at most, "
                                             "together (chat first); `0`: no limit"),
    _limit("--ping-after", "seconds a WebSocket or IRC client may be silent before the server "
                           "pings it (browsers and IRC clients answer by themselves; 0: never)",
           seconds_or_off, "seconds of silence before a WebSocket or IRC client is pinged (its "
                           "answer keeps proxies and `--idle-timeout` from closing it); `0`: "
                           "never"),
    _limit("--keepalive-idle", "TCP keepalive: seconds of silence before the kernel probes a "
                               "client (finds half-open connections)",
           positive(int), "TCP keepalive on client sockets: seconds of silence before the first "
                          "probe ..."),
    _limit("--keepalive-interval", "TCP keepalive: seconds between probes", positive(int),
           "... seconds between probes ..."),
    _limit("--keepalive-count", "TCP keepalive: unanswered probes before the kernel drops the "
                                "connection",
           positive(int), "... unanswered probes before the kernel drops a half-open connection"),
    # TLS for clients, CurveZMQ for the bus
    Option("--tls-cert", "PYCHAT_TLS_CERT", "",
           "TLS: certificate chain file (PEM); clients must then speak TLS on the port",
           (SERVE, ACCEPTOR), forward=Forward.ACCEPTORS, path=True,
           doc="TLS for clients: certificate chain (PEM) (serve, acceptor)",
           doc_default="none (plain TCP)"),
    _limit("--tls-handshake-timeout", "seconds a TLS client has, from its connection's accept, "
                                      "to finish its handshake (it counts against the limits "
                                      "from its accept)",
           positive(float), "seconds a TLS client has, from its accept (it counts from there), to "
                            "finish its handshake"),
    Option("--tls-key", "PYCHAT_TLS_KEY", "",
           "TLS: private key file (PEM) of --tls-cert (empty: the key is in that file)",
           (SERVE, ACCEPTOR), forward=Forward.ACCEPTORS, path=True,
           doc="its private key (PEM), if not in the certificate file"),
    # serve passes the acceptors' keys on only toward a router elsewhere (--router), and makes
    # its own children's from --curve-keys (serve.py, bus_keys)
    Option("--curve-secret", "PYCHAT_CURVE_SECRET", "",
           "CurveZMQ: this acceptor's secret key file (acceptor-N.key_secret from `pychat keys`); "
           "with --curve-server, the bus is encrypted and authenticated",
           (SERVE, ROUTER, ACCEPTOR), forward=Forward.ACCEPTORS, path=True,
           variants={ROUTER: Variant(help="CurveZMQ: the router's secret key file "
                                          "(router.key_secret from `pychat keys`); with "
                                          "--curve-clients, the bus is encrypted and only "
                                          "authorised acceptors get in"),
                     SERVE: Variant(help="with --router tcp://...: the acceptors' CurveZMQ secret "
                                         "key file (acceptor-N.key_secret from `pychat keys`); "
                                         "ignored on a private ipc:// bus (for a router serve "
                                         "starts on a tcp:// bus: --curve-keys)")},
           doc="CurveZMQ on a tcp:// bus: this process's secret key file from `pychat keys`, "
               "readable by its owner only (router, acceptor; serve only with `--router`)",
           doc_default="none (bus not encrypted)"),
    Option("--curve-clients", "PYCHAT_CURVE_CLIENTS", "",
           "CurveZMQ: folder of the authorised acceptors' public keys (*.key)", (ROUTER,),
           doc="router: folder of the authorised acceptors' public keys"),
    Option("--curve-server", "PYCHAT_CURVE_SERVER", "",
           "CurveZMQ: the router's public key file (router.key)", (SERVE, ACCEPTOR),
           forward=Forward.ACCEPTORS, path=True,
           variants={SERVE: Variant(help="with --router tcp://...: the router's CurveZMQ public "
                                         "key file (router.key)")},
           doc="acceptor: the router's public key file"),
    Option("--curve-keys", "PYCHAT_CURVE_KEYS", "",
           "with --bus tcp://...: the folder `pychat keys DIR` made; the router serve starts gets "
           "its router.key_secret and authorized/, every acceptor acceptor-1.key_secret and "
           "router.key", (SERVE,),
           doc="serve with `--bus tcp://...`: the folder `pychat keys DIR` made, for its router "
               "and acceptors (CurveZMQ)"),
    Option("--insecure-bus", "PYCHAT_INSECURE_BUS", False,
           "allow binding a tcp:// bus other hosts can reach (not loopback) without CurveZMQ "
           "keys: anyone who reaches it can join as an acceptor and read every chat line; "
           "without it such a bind is refused", (SERVE, ROUTER), type=bool,
           forward=Forward.ROUTER,
           doc="let the router bind a tcp:// bus other hosts can reach without CurveZMQ keys (a "
               "private network you trust); refused otherwise. Loopback and `ipc://` need no "
               "keys"),
    # processes and the bus between them
    Option("--loop", "PYCHAT_LOOP", "auto",
           "event loop: uvloop is faster (pip install 'pychat[speed]'); auto uses it when "
           "installed", (ACCEPTOR,), choices=LOOPS,
           doc="acceptor event loop: `uvloop` (`pip install '.[speed]'`), `asyncio`, or `auto` "
               "(uvloop when installed)"),
    Option("--heartbeat", "PYCHAT_HEARTBEAT", 1.0, "seconds between bus heartbeats",
           (SERVE, ROUTER, ACCEPTOR), type=positive(float), forward=Forward.BOTH,
           variants={ROUTER: Variant(help="seconds between bus heartbeats; 3 missed = the "
                                          "acceptor is dead")},
           doc="seconds between bus heartbeats (3 missed = dead)"),
    Option("--bus-hwm", "PYCHAT_BUS_HWM", 100_000,
           "ZeroMQ high-water mark (batches) toward the router", (ROUTER, ACCEPTOR),
           type=positive(int),
           variants={ROUTER: Variant(help="ZeroMQ high-water mark (batches) per acceptor")},
           doc="ZeroMQ high-water mark, in batches"),
    # the router's clock and history
    Option("--ntp", "PYCHAT_NTP", "",
           "NTP servers to correct the clock with, all asked, a majority trusted (HOST, "
           "HOST:PORT or [V6]:PORT, comma- or space-separated); empty: the host clock as it is",
           (SERVE, ROUTER),
           type=ntp_servers, forward=Forward.ROUTER,
           doc="NTP servers (`HOST`, `HOST:PORT`, `[V6]:PORT`, comma-separated) whose offset "
               "corrects the router's stamps (router, serve)", doc_default="none (off)"),
    Option("--ntp-interval", "PYCHAT_NTP_INTERVAL", 1024.0, "seconds between NTP rounds",
           (SERVE, ROUTER), type=positive(float), forward=Forward.ROUTER),
    Option("--ntp-timeout", "PYCHAT_NTP_TIMEOUT", 2.0,
           "seconds to wait for each NTP server's answer", (SERVE, ROUTER), type=positive(float),
           forward=Forward.ROUTER, doc="seconds to wait for each server's answer"),
    Option("--ntp-max-offset", "PYCHAT_NTP_MAX_OFFSET", 86400.0,
           "seconds: an NTP answer further than this from the host clock is refused (0: no "
           "bound)", (SERVE, ROUTER), type=zero_or_more("seconds", "no bound"),
           forward=Forward.ROUTER,
           doc="seconds: an NTP answer further than this from the host clock is refused "
               "(`0`: no bound)"),
    Option("--history", "PYCHAT_HISTORY", "sqlite",
           "where room history lives: sqlite (a file in --data-dir, kept across restarts) or "
           "memory (the last 200 per room, of the --history-cache-rooms used last; lost when the "
           "router stops)", (SERVE, ROUTER),
           choices=("sqlite", "memory"), forward=Forward.ROUTER,
           doc="`sqlite`: room history in a file, kept across restarts; `memory`: last 200 per "
               "room of the `--history-cache-rooms` used last, lost when the router stops"),
    Option("--data-dir", "PYCHAT_DATA_DIR", None, "folder of the history file (history.sqlite3)",
           (SERVE, ROUTER), forward=Forward.ROUTER, default_from=default_data_dir,
           doc="folder of the history file `history.sqlite3`",
           doc_default="`$XDG_DATA_HOME/pychat` or `~/.local/share/pychat`"),
    Option("--history-per-room", "PYCHAT_HISTORY_PER_ROOM", 10_000,
           "messages kept per room in the history file", (SERVE, ROUTER), type=positive(int),
           forward=Forward.ROUTER, doc="messages kept per room in the file"),
    Option("--history-max-age", "PYCHAT_HISTORY_MAX_AGE", 30.0,
           "days a message is kept (and shown by /history); 0 keeps them forever",
           (SERVE, ROUTER), type=days, forward=Forward.ROUTER,
           doc="days a message is kept and shown by `/history`; `0` keeps them forever"),
    Option("--history-cache-rooms", "PYCHAT_HISTORY_CACHE_ROOMS", 1000,
           "rooms whose last 200 messages are kept in memory; the others' are read from the "
           "history file when asked (with --history memory, a room dropped past this loses its "
           "history)", (SERVE, ROUTER), type=positive(int), forward=Forward.ROUTER,
           doc="rooms whose last 200 messages are kept in memory, least recently used dropped; "
               "the others' are read from the file when asked (with `--history memory`, a room "
               "dropped loses its history)"),
    Option("--history-cache-mb", "PYCHAT_HISTORY_CACHE_MB", 16,
           "MiB (estimated) of room history kept in memory", (SERVE, ROUTER),
           type=positive(int), forward=Forward.ROUTER),
    Option("--durable", "PYCHAT_DURABLE", False,
           "send a message to anyone (its sender's echo too) only once it is committed to the "
           "history file, fsynced (group commit); costs latency, see docs/OPERATIONS.md",
           (SERVE, ROUTER), type=bool, forward=Forward.ROUTER,
           doc="a message reaches anyone, its sender's echo too, only once it is committed to "
               "the history file and fsynced (group commit); see docs/OPERATIONS.md"),
    Option("--history-private", "PYCHAT_HISTORY_PRIVATE", False,
           "also store private messages in the history file (never shown by /history; a record "
           "for the operator)", (SERVE, ROUTER), type=bool, forward=Forward.ROUTER,
           doc="also store private messages (never shown by `/history`; see "
               "docs/OPERATIONS.md)"),
    Option("--history-private-per-sender", "PYCHAT_HISTORY_PRIVATE_PER_SENDER", 1000,
           "private messages kept per sender with --history-private; one sender cannot push "
           "out another's", (SERVE, ROUTER), type=positive(int), forward=Forward.ROUTER,
           doc="private messages kept per sender with `--history-private`: one sender cannot "
               "push out another's"),
    # accounts and moderation (PROTOCOL Part 3)
    Option("--accounts", "PYCHAT_ACCOUNTS", "sqlite",
           "where accounts, bans, room owners and topics live: sqlite (accounts.sqlite3 in "
           "--data-dir, kept across restarts) or memory (lost when the router stops)",
           (SERVE, ROUTER), choices=("sqlite", "memory"), forward=Forward.ROUTER,
           doc="`sqlite`: accounts, bans, room owners and topics in `accounts.sqlite3` in "
               "`--data-dir`; `memory`: lost when the router stops"),
    Option("--files", "PYCHAT_FILES", "sqlite",
           "where sent files live: sqlite (files/ in --data-dir: blobs and files.sqlite3, kept "
           "across restarts), memory (lost when the router stops) or off (no /upload)",
           (SERVE, ROUTER), choices=("sqlite", "memory", "off"), forward=Forward.ROUTER,
           doc="`sqlite`: files sent with `/upload` in `files/` in `--data-dir`; `memory`: "
               "lost when the router stops; `off`: no uploads"),
    Option("--upload-ttl", "PYCHAT_UPLOAD_TTL", 600.0,
           "seconds the URL /upload gives stays valid for its PUT", (SERVE, ROUTER),
           type=positive(float), forward=Forward.ROUTER,
           doc="seconds an `/upload` URL stays valid (PROTOCOL Part 5: 10 minutes)"),
    Option("--files-max-mb", "PYCHAT_FILES_MAX_MB", 100.0, "largest file one may send, in MiB",
           (SERVE, ROUTER), type=positive(float), forward=Forward.ROUTER,
           doc="largest file `/upload` takes, in MiB"),
    Option("--files-quota-mb", "PYCHAT_FILES_QUOTA_MB", 1024.0,
           "MiB of files one account (a guest: one address) may have stored (0: no quota)",
           (SERVE, ROUTER), type=zero_or_more("MiB", "no quota"), forward=Forward.ROUTER,
           doc="MiB of stored files per account (a guest: per address); `0`: no quota"),
    Option("--files-per-hour", "PYCHAT_FILES_PER_HOUR", 60.0,
           "uploads one account (a guest: one address) may begin per hour (0: no limit)",
           (SERVE, ROUTER), type=zero_or_more("uploads", "no limit"), forward=Forward.ROUTER,
           doc="uploads per account (a guest: per address) per hour; `0`: no limit"),
    Option("--files-total-gb", "PYCHAT_FILES_TOTAL_GB", 10.0,
           "GiB all stored files may take; past it the oldest are deleted first (0: no limit)",
           (SERVE, ROUTER), type=zero_or_more("GiB", "no limit"), forward=Forward.ROUTER,
           doc="GiB of all stored files; past it the oldest go first; `0`: no limit"),
    Option("--files-max-age", "PYCHAT_FILES_MAX_AGE", 30.0,
           "days a file is kept (0: until the store is full)", (SERVE, ROUTER),
           type=zero_or_more("days", "until the store is full"), forward=Forward.ROUTER,
           doc="days a sent file is kept; `0`: until the store needs the room"),
    Option("--require-login", "PYCHAT_REQUIRE_LOGIN", False,
           "guests may only /nick, /register, /login, /resume, /help, /ping and /quit: "
           "everything else needs an account", (SERVE, ROUTER), type=bool,
           forward=Forward.ROUTER),
    Option("--password-pepper-file", "PYCHAT_PASSWORD_PEPPER_FILE", "",
           "a file of secret bytes mixed into every password hash (keep it outside --data-dir; "
           "losing it makes every password wrong)", (SERVE, ROUTER), path=True,
           forward=Forward.ROUTER, doc_default="none"),
    Option("--login-workers", "PYCHAT_LOGIN_WORKERS", 1,
           "threads hashing passwords (argon2id, about 20 ms of a core each), off the router's "
           "loop", (SERVE, ROUTER), type=positive(int), forward=Forward.ROUTER),
    Option("--token-days", "PYCHAT_TOKEN_DAYS", 30.0,
           "days a resume token from /token stays valid", (SERVE, ROUTER),
           type=positive(float), forward=Forward.ROUTER),
    # observing: metrics and logs
    Option("--metrics-port", "PYCHAT_METRICS_PORT", 0,
           "serve Prometheus metrics at http://HOST:PORT/metrics (0: off; under pychat serve the "
           "router takes PORT and acceptor i PORT+i)", (SERVE, ROUTER, ACCEPTOR),
           type=non_negative, forward=Forward.BY_SERVE,
           doc="Prometheus metrics at `http://HOST:PORT/metrics` (router, acceptor; under serve: "
               "router PORT, acceptor i PORT+i)", doc_default="`0` (off)"),
    Option("--metrics-host", "PYCHAT_METRICS_HOST", "127.0.0.1", "address the metrics listen on",
           (SERVE, ROUTER, ACCEPTOR), forward=Forward.BOTH),
    Option("--log-level", "PYCHAT_LOG_LEVEL", "info", "log threshold", (SERVE, ROUTER, ACCEPTOR),
           choices=("debug", "info", "warning", "error"), forward=Forward.BOTH,
           doc="debug, info, warning, error"),
    Option("--log-format", "PYCHAT_LOG_FORMAT", "text",
           "log lines as text, or as one JSON object each (for log collectors)",
           (SERVE, ROUTER, ACCEPTOR), choices=("text", "json"), forward=Forward.BOTH,
           doc="`json`: one JSON object a line (time, level, logger, pid, message)"),
    # pychat status, pychat keys
    Option("--timeout", "PYCHAT_STATUS_TIMEOUT", 5.0, "seconds to wait for the router's answer",
           (STATUS,), type=positive(float)),
    Option("--json", None, False, "print the raw JSON", (STATUS,), type=bool),
    Option("--curve-secret", "PYCHAT_STATUS_CURVE_SECRET", "",
           "CurveZMQ, for a router with keys: this client's secret key file (status.key_secret "
           "from `pychat keys`, authorised in the router's --curve-clients)", (STATUS,)),
    Option("--curve-server", "PYCHAT_STATUS_CURVE_SERVER", "",
           "CurveZMQ, for a router with keys: the router's public key file (router.key)",
           (STATUS,)),
    Option("--acceptors", "PYCHAT_KEYS_ACCEPTORS", 1,
           "acceptor key pairs to make (acceptor-1 ... acceptor-N)", (KEYS,), type=positive(int)),
    Option("--if-missing", None, False,
           "a folder that holds every file already is left as it is (exit 0; for a container "
           "that makes its keys on first start); part of them is still an error", (KEYS,),
           type=bool),
    # the clients (pychat gui, pychat console); --host and --port are above
    Option("--name", "PYCHAT_NAME", "", "your display name (asked for when not given)", CLIENTS),
    Option("--room", "PYCHAT_ROOM", commands.LOBBY, "room to join on connecting", CLIENTS,
           type=room),
    Option("--history", "PYCHAT_CLIENT_HISTORY", 20,
           "lines of a room's history shown on entering it (0: none)", CLIENTS,
           type=non_negative),
    Option("--user", "PYCHAT_USER", "",
           "log in to this account (its password from $PYCHAT_PASSWORD, or asked for without "
           "echo; --user wins over --name)", CLIENTS),
    Option("--register", None, False,
           "make the --user account (the name must be free) and log in to it", CLIENTS,
           type=bool),
    Option("--tls", "PYCHAT_TLS", False,
           "connect with TLS, verifying the server's certificate against the system's CAs and "
           "that it names --host", (*CLIENTS, LOADTEST), type=bool),
    Option("--ca", "PYCHAT_TLS_CA", "",
           "connect with TLS (implies --tls), verifying the server's certificate against this "
           "CA or certificate file (PEM) instead of the system's", (*CLIENTS, LOADTEST)),
    Option("--geometry", "PYCHAT_GUI_GEOMETRY", "1000x640+0+0", "window size and place (Tk)",
           (GUI,)),
    Option("--log-limit", "PYCHAT_GUI_LOG_LIMIT", 1000, "lines kept in the log", (GUI,),
           type=positive(int)),
    # pychat loadtest; --host and --port are above
    Option("--clients", "PYCHAT_LT_CLIENTS", 50,
           "simulated clients (up to 10,000 and more: the open-file limit is raised)",
           (LOADTEST,), type=positive(int)),
    Option("--senders", "PYCHAT_LT_SENDERS", 10, "how many of the clients send", (LOADTEST,),
           type=positive(int)),
    Option("--rate", "PYCHAT_LT_RATE", 100.0,
           "messages per second, all senders together; 0 = flat out", (LOADTEST,), type=float),
    Option("--count", "PYCHAT_LT_COUNT", 0,
           "stop after this many messages (0: run for --duration)", (LOADTEST,), type=int),
    Option("--duration", "PYCHAT_LT_DURATION", 10.0, "seconds of sending when --count is 0",
           (LOADTEST,), type=positive(float)),
    Option("--size", "PYCHAT_LT_SIZE", 64, "approximate bytes per message", (LOADTEST,),
           type=positive(int)),
    Option("--sample", "PYCHAT_LT_SAMPLE", 20,
           "receivers that parse every line (latency, order, duplicates)", (LOADTEST,),
           type=positive(int)),
    Option("--sample-lines", "PYCHAT_LT_SAMPLE_LINES", 50000,
           "at most this many lines a second parsed by the sampled receivers: at a rate where "
           "--sample receivers would parse more, fewer are sampled (at least 2), so the load "
           "generator's own work does not grow with the rate on a machine it shares with the "
           "server (flat out: --sample)", (LOADTEST,), type=positive(int)),
    Option("--sample-at", "PYCHAT_LT_SAMPLE_AT", "spread",
           "which receivers are sampled: spread evenly over the join order, or the clients that "
           "join first or last (servers write a room's members in join order or its reverse, so "
           "first and last see the best and worst of each round)", (LOADTEST,),
           choices=("spread", "first", "last")),
    Option("--stamp", "PYCHAT_LT_STAMP", "kernel",
           "when a sampled line counts as received: the kernel's receive time on the client's "
           "socket (SO_TIMESTAMPNS; the load generator's own delay is left out and reported "
           "apart), or when this process read it", (LOADTEST,), choices=("kernel", "user")),
    Option("--proto", "PYCHAT_LT_PROTO", "pychat",
           "the server's protocol: pychat (lines), irc, or ws (the line protocol over WebSocket, "
           "GET /ws; --port is then the web door's port)", (LOADTEST,),
           choices=("pychat", "irc", "ws")),
    Option("--room", "PYCHAT_LT_ROOM", "#load", "IRC channel to join", (LOADTEST,)),
    Option("--timeout", "PYCHAT_LT_TIMEOUT", 60.0,
           "seconds to wait for connections and the settle round", (LOADTEST,),
           type=positive(float)),
    Option("--connect-concurrency", "PYCHAT_LT_CONNECT_CONCURRENCY", 256,
           "connections opened at once (a server with a short listen backlog needs fewer)",
           (LOADTEST,), type=positive(int)),
    Option("--loop", "PYCHAT_LT_LOOP", "auto", "event loop (auto: uvloop when installed)",
           (LOADTEST,), choices=LOOPS),
    Option("--server-pid", None, (),
           "pid of the server (its descendants are counted too) to report server CPU; "
           "repeatable", (LOADTEST,), type=int, repeat=True),
    Option("--json", None, False, "print the summary as JSON", (LOADTEST,), type=bool),
    Option("--plot", None, "",
           "write latency over time and a histogram to this PNG (needs matplotlib)",
           (LOADTEST,)),
    Option("--quiet", None, False, "no progress line", (LOADTEST,), type=bool),
    Option("--linger", None, 0.0,
           "keep every client connected, idle, this many seconds after the run (to measure idle "
           "server memory)", (LOADTEST,), type=float),
)

LIMIT_OPTIONS = tuple(row for row in OPTIONS if row.limit)


# ---- what the table makes ------------------------------------------------------------------------

def options_of(program: str) -> list[Option]:
    """The rows ``program`` takes, each as that program takes it, in table order."""
    if program not in PROGRAMS:
        raise ValueError(f"not a PyChat program: {program!r}")
    return [row.on(program) for row in OPTIONS if program in row.programs]


def add_options(parser: argparse.ArgumentParser, program: str) -> None:
    """Every option of ``program``, from the table."""
    for row in options_of(program):
        row.add_to(parser)


def by_variable(env: str) -> Option:
    """The row of ``env`` (for code that reads a variable without a parser)."""
    for row in OPTIONS:
        if row.env == env:
            return row
    raise KeyError(env)


def variables(program: str) -> set[str]:
    """The ``PYCHAT_*`` variables ``program`` reads."""
    return {row.env for row in options_of(program) if row.env is not None}


def limit_values(args: argparse.Namespace) -> dict[str, Any]:
    """The parsed limits, as ``Limits(**limit_values(args))`` takes them."""
    return {row.dest: getattr(args, row.dest) for row in LIMIT_OPTIONS}


def forward_argv(args: argparse.Namespace, child: str, leave_out: Iterable[str] = ()) -> list[str]:
    """What ``pychat serve`` (its parsed ``args``) tells a ``child`` (ROUTER or ACCEPTOR) on its
    command line: every row forwarded there, with serve's value, even when that is the default
    (a flag wins over the variables the child inherits, so the child gets what serve got).
    ``leave_out``: dests serve decided not to pass on this time (the CurveZMQ keys)."""
    if child not in (ROUTER, ACCEPTOR):
        raise ValueError(f"serve has no {child!r} child")
    skip = set(leave_out)
    argv: list[str] = []
    for row in options_of(SERVE):
        if row.forward.reaches(child) and row.dest not in skip:
            argv += row.argv(getattr(args, row.dest))
    return argv


# ---- the README's table --------------------------------------------------------------------------

# The table sits between these lines in README.md, with a blank line on each side so that
# markdown ends the table before the closing comment.
README_BEGIN = ("<!-- options table: made from pychat/options.py by "
                "`python -m pychat.options --update-readme README.md`; edit it there -->")
README_END = "<!-- end of options table -->"


def _default_cell(row: Option) -> str:
    if row.doc_default is not None:
        return row.doc_default
    value = row.default
    if isinstance(value, bool):
        return "on" if value else "off"
    if value == "":
        return "none"
    if isinstance(value, float):
        return f"`{value:g}`"
    return f"`{value}`"


def markdown() -> str:
    """The README's configuration table: every option of serve, the router or an acceptor."""
    lines = ["| flag | variable | default | meaning |", "| --- | --- | --- | --- |"]
    for row in OPTIONS:
        if row.env is None or not set(row.programs) & set(SERVERS):
            continue
        cells = [f"`{row.flag}`", f"`{row.env}`", _default_cell(row), row.doc or row.help]
        if any("|" in cell for cell in cells):
            raise ValueError(f"{row.flag}: a | would split the table's cell")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def readme_with_table(text: str) -> str:
    """``text`` (the README) with the table between its markers made anew."""
    try:
        head, rest = text.split(README_BEGIN + "\n", 1)
        _, tail = rest.split(README_END, 1)
    except ValueError:
        raise ValueError("the README has lost its options table markers") from None
    return f"{head}{README_BEGIN}\n\n{markdown()}\n{README_END}{tail}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pychat.options",
                                description="The table of PyChat's options, as markdown.")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--markdown", action="store_true",
                     help="print the README's configuration table")
    how.add_argument("--update-readme", metavar="README", help="rewrite the table in this file")
    args = p.parse_args(argv)
    if args.markdown:
        sys.stdout.write(markdown())
        return 0
    with open(args.update_readme, encoding="utf-8") as f:
        old = f.read()
    try:
        new = readme_with_table(old)
    except ValueError as e:
        p.error(f"{args.update_readme}: {e}")
    if new != old:
        with open(args.update_readme, "w", encoding="utf-8") as f:
            f.write(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
