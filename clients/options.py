"""What both fronts take on the command line, and checking a name or a password before it is
sent.

``--user NAME`` logs in to an account: the password comes from ``PYCHAT_PASSWORD`` or is asked
for without echo, never from a flag (a flag shows in ``ps`` and in shell history);
``--register`` makes the account first. Both fronts read it with ``env_password()``.

``--tls`` and ``--ca FILE`` (``pychat loadtest`` takes them too) make ``tls_context()``: TLS,
the server's certificate and its name always verified.
"""

from __future__ import annotations

import argparse
import os
import ssl

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


def tls_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    """The TLS the options ask for (``--tls``, ``--ca FILE``), or None for plain TCP.

    Always verifying: the certificate must chain to the system's CAs (``--tls``) or to
    ``--ca``'s file, and name the host connected to (``--host``: a name, or an IP address the
    certificate carries as an IP SAN). A ``--ca`` that cannot be read is a ``ValueError`` whose
    text is one line for a person."""
    if not (args.tls or args.ca):
        return None
    if args.ca:
        try:
            return ssl.create_default_context(cafile=args.ca)
        except FileNotFoundError:
            raise ValueError(f"--ca {args.ca}: no such file") from None
        except (ssl.SSLError, OSError) as e:  # not PEM, or unreadable
            why = getattr(e, "reason", None) or getattr(e, "strerror", None) or str(e)
            raise ValueError(f"--ca {args.ca}: not a CA or certificate file ({why})") from None
    return ssl.create_default_context()
