"""TLS for clients, optional: a server context from a certificate chain and its key.

Built before the acceptor binds, so a missing or unusable file is a usage error at start. TLS 1.2
or newer. A client that does not speak TLS on a TLS port fails its handshake and is closed; it
never becomes a session, so nobody else notices it. A connection counts against the limits
from its accept, and its handshake must finish within ``--tls-handshake-timeout`` of it.

ssl (libssl and libcrypto: 4.5 MB a process) is imported only when a certificate is given:
``pychat serve`` and an acceptor without TLS never load it (issue 18).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from pychat.config import BadValue

if TYPE_CHECKING:
    import ssl


def server_context(cert: str, key: str) -> ssl.SSLContext:
    """``BadValue`` when the files cannot be used."""
    import ssl
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key or None)
    except (OSError, ssl.SSLError) as e:
        raise BadValue(f"cannot use TLS certificate {cert} with key {key or cert}: {e}") from None
    return ctx


def tls_context(p: argparse.ArgumentParser, args: argparse.Namespace) -> ssl.SSLContext | None:
    """The server's TLS context, or None; a usage error when the files cannot be used (here,
    not in the acceptor's module, so that ``pychat serve`` checks them without importing the
    acceptor: the supervisor stays small)."""
    if not args.tls_cert:
        if args.tls_key:
            p.error("--tls-key needs --tls-cert")
        return None
    try:
        return server_context(args.tls_cert, args.tls_key)
    except BadValue as e:
        p.error(str(e))
