"""What both fronts take on the command line, and checking a name before it is sent."""

from __future__ import annotations

import argparse

from pychat.options import CLIENTS, add_options
from pychat.wire import commands
from pychat.wire.errors import ClientError


def client_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The parser of ``pychat gui`` or ``pychat console`` (``prog`` names which); its options
    are declared in pychat/options.py."""
    program = prog.rsplit(" ", 1)[-1]
    if program not in CLIENTS:
        raise ValueError(f"not a client program: {prog!r}")
    p = argparse.ArgumentParser(prog=prog, description=description)
    add_options(p, program)
    return p


def name_problem(name: str) -> str:
    """Why a name cannot be a name ("" when it can), by the same rules as the server."""
    try:
        commands.parse_line(f"/nick {name}")
    except ClientError as e:
        if e.message.startswith("usage:"):
            return "a name is one word of 1-24 letters, digits, _ or -"
        return e.message
    return ""
