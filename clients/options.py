"""What both fronts take on the command line, and checking a name before it is sent."""

from __future__ import annotations

import argparse

from pychat.config import BadValue, non_negative, option, port
from pychat.wire import commands
from pychat.wire.errors import ClientError


def client_parser(prog: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description)
    option(p, "--host", "PYCHAT_HOST", default="127.0.0.1", help="server address")
    option(p, "--port", "PYCHAT_PORT", default=65432, type=port, help="server port")
    option(p, "--name", "PYCHAT_NAME", default="",
           help="your display name (asked for when not given)")
    option(p, "--room", "PYCHAT_ROOM", default=commands.LOBBY, type=room,
           help="room to join on connecting")
    option(p, "--history", "PYCHAT_CLIENT_HISTORY", default=20, type=non_negative,
           help="lines of a room's history shown on entering it (0: none)")
    return p


def room(text: str) -> str:
    try:
        cmd = commands.parse_line(f"/join {text}")
    except ClientError as e:
        raise BadValue(e.message) from None
    return cmd.room


def name_problem(name: str) -> str:
    """Why a name cannot be a name ("" when it can), by the same rules as the server."""
    try:
        commands.parse_line(f"/nick {name}")
    except ClientError as e:
        if e.message.startswith("usage:"):
            return "a name is one word of 1-24 letters, digits, _ or -"
        return e.message
    return ""
