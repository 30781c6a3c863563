"""What both fronts take on the command line, and checking a name or a password before it is
sent.

``--user NAME`` logs in to an account: the password comes from ``PYCHAT_PASSWORD`` or is asked
for without echo, never from a flag (a flag shows in ``ps`` and in shell history);
``--register`` makes the account first. Both fronts read it with ``login_password()``.
"""

from __future__ import annotations

import argparse
import os

from pychat.options import CLIENTS, add_options
from pychat.wire import commands
from pychat.wire.errors import ClientError

PASSWORD_ENV = "PYCHAT_PASSWORD"  # where --user's password may come from (never a flag)

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


def password_problem(password: str) -> str:
    """Why a new password cannot be one ("" when it can), by the same rules as the server."""
    try:
        commands.parse_line(f"/register {password}")
    except ClientError as e:
        if e.message.startswith("usage:"):  # a space in it, or none at all
            return "a password is 8-256 characters, with no spaces or control characters"
        return e.message
    return ""


def env_password() -> str:
    """``PYCHAT_PASSWORD``, or "" when it is not set."""
    return os.environ.get(PASSWORD_ENV, "")
