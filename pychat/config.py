"""Flags with ``PYCHAT_*`` environment fallbacks, validated before anything binds; logging.

``option`` adds one flag with its variable: the flag wins, then the variable, then the default.
``--help`` shows all three. A bad value (flag or variable) is a usage error at start. Which
options exist is declared once, in the table of pychat/options.py, which adds them through
``option`` and takes its value checkers (``positive``, ``port``...) from here.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

LOG_FORMAT = "%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s"


class BadValue(argparse.ArgumentTypeError, ValueError):
    """A flag or variable value that is wrong; argparse prints its message as it is."""


def _parse_bool(text: str) -> bool:
    v = text.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise BadValue(f"not a boolean: {text!r}")


def positive(cast: Callable[[str], Any]) -> Callable[[str], Any]:
    def check(text: str) -> Any:
        try:
            value = cast(text)
        except ValueError:
            raise BadValue(f"not a number: {text!r}") from None
        if not value > 0 or not math.isfinite(value):  # nan and inf are no limits
            raise BadValue(f"must be positive: {text!r}")
        return value
    check.__name__ = cast.__name__
    return check


def zero_or_more(unit: str, zero: str) -> Callable[[str], float]:
    """A finite number of ``unit`` >= 0, where 0 means ``zero`` (off, forever...)."""
    def check(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise BadValue(f"not a number of {unit}: {text!r}") from None
        if not 0 <= value < math.inf:
            raise BadValue(f"must be 0 ({zero}) or more {unit}: {text!r}")
        return value
    check.__name__ = unit
    return check


def non_negative(text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise BadValue(f"not a whole number >= 0: {text!r}")
    return int(text)


def port(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 0 <= int(text) <= 65535:
        raise BadValue(f"not a port: {text!r}")
    return int(text)


def endpoint(text: str) -> str:
    if not text.startswith(("tcp://", "ipc://", "inproc://")):
        raise BadValue(f"not a ZeroMQ endpoint (tcp://HOST:PORT or ipc://PATH): {text!r}")
    return text


def option(parser: argparse.ArgumentParser, flag: str, env: str, *, default: Any, help: str,
           type: Callable[[str], Any] = str, choices: list[str] | None = None) -> None:
    """Add ``flag``; its default comes from ``env`` when that is set."""
    dest = flag.lstrip("-").replace("-", "_")
    raw = os.environ.get(env)
    value = default
    if raw is not None and raw != "":
        try:
            value = _parse_bool(raw) if type is bool else type(raw)
        except ValueError as e:
            parser.error(f"${env}: {e}")
        if choices and value not in choices:
            parser.error(f"${env}: {raw!r} is not one of {', '.join(choices)}")
    text = f"{help} [env {env}; default {default!r}]"
    if type is bool:
        parser.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction,
                            default=value, help=text)
    else:
        parser.add_argument(flag, dest=dest, type=type, default=value, choices=choices,
                            help=text, metavar=dest.upper())


def default_data_dir() -> str:
    """``$XDG_DATA_HOME/pychat`` (``~/.local/share/pychat``): --data-dir's default. Here, not
    in router/sqlite_history.py, so that a parser's default costs no sqlite3 (issue 18)."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"),
                                                           ".local", "share")
    return os.path.join(base, "pychat")


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (UTC, ISO 8601), level, logger, pid, message."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z"
        entry = {"time": stamp,
                 "level": record.levelname.lower(), "logger": record.name,
                 "pid": record.process, "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


JsonFormatter.converter = time.gmtime


def setup_logging(level: str, fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(LOG_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler])


def add_ready_fd(parser: argparse.ArgumentParser) -> None:
    # internal: `pychat serve` passes a pipe to learn when a child is ready
    parser.add_argument("--ready-fd", type=int, default=None, help=argparse.SUPPRESS)


def signal_ready(fd: int | None, what: str) -> None:
    """Tell ``pychat serve`` (the read end of ``fd``) that this child is ready. A supervisor
    that has given up meanwhile (another child failed to start) has closed its end: then there
    is nobody to tell, and it is stopping us anyway."""
    if fd is None:
        return
    try:
        os.write(fd, f"{what}\n".encode())
    except BrokenPipeError:
        pass
    finally:
        os.close(fd)


def import_asyncio(tls: bool) -> ModuleType:
    """asyncio, imported without ssl in a process that will never speak TLS (``tls`` False:
    an acceptor without ``--tls-cert``); with it otherwise. Returns the module.

    asyncio imports ssl for its TLS transports (base_events, selector_events, sslproto: each
    ``try: import ssl / except ImportError: ssl = None``), and ssl maps libssl and libcrypto:
    about 4.5 MB of each such process's RSS (issue 18). A ``None`` in ``sys.modules`` makes that
    import fail, so asyncio keeps ``ssl = None``, as on a Python built without it: its TLS
    support is off in this process, and nothing else changes (CurveZMQ is libzmq's own; the web
    door's HTTP and WebSocket are plain). The entry is removed afterwards, so a later ``import
    ssl`` still gets the real module. Call it before anything imports asyncio (the acceptor's
    ``__main__`` imports nothing that does at its top): once asyncio is in, it changes nothing.
    """
    if tls or "asyncio" in sys.modules or "ssl" in sys.modules:
        import asyncio
        return asyncio
    sys.modules["ssl"] = None  # type: ignore[assignment]  # "import ssl" raises ImportError
    try:
        import asyncio
    finally:
        del sys.modules["ssl"]
    return asyncio
