"""``pychat <command>``: one front door to every PyChat program."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "serve": ("pychat.serve", "run a router and N acceptors on one port (the default setup)"),
    "router": ("pychat.router.__main__", "run the router by hand"),
    "acceptor": ("pychat.acceptor.__main__", "run one acceptor by hand"),
    "gui": ("pychat.clients.gui", "the Tk desktop client"),
    "console": ("pychat.clients.console",
                "the terminal client (reads stdin when it is not a terminal)"),
    "loadtest": ("pychat.clients.loadtest", "simulate many users and measure the server"),
    "status": ("pychat.status", "print a running router's view (acceptors, users, rooms, rate)"),
    "keys": ("pychat.keys", "make CurveZMQ key files for a trusted router-acceptor bus"),
    "admin": ("pychat.admin", "accounts, operators and bans in the router's data folder"),
}


def usage() -> str:
    lines = ["usage: pychat <command> [options]   (pychat <command> --help for its options)", ""]
    lines += [f"  {name:<10} {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        from pychat import __version__
        print(f"pychat {__version__}")
        return 0
    entry = COMMANDS.get(argv[0])
    if entry is None:
        print(f"pychat: unknown command {argv[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    return importlib.import_module(entry[0]).main(argv[1:]) or 0
