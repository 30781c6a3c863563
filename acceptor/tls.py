"""TLS for clients, optional: a server context from a certificate chain and its key.

Built before the acceptor binds, so a missing or unusable file is a usage error at start. TLS 1.2
or newer. A client that does not speak TLS on a TLS port fails its handshake and is closed; it
never becomes a session, so nobody else notices it. A connection counts against the limits
from its accept, and its handshake must finish within ``--tls-handshake-timeout`` of it.
"""

from __future__ import annotations

import ssl

from pychat.config import BadValue


def server_context(cert: str, key: str) -> ssl.SSLContext:
    """``BadValue`` when the files cannot be used."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key or None)
    except (OSError, ssl.SSLError) as e:
        raise BadValue(f"cannot use TLS certificate {cert} with key {key or cert}: {e}") from None
    return ctx
