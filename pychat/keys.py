"""``pychat keys DIR``: CurveZMQ key files for a trusted bus, and loading them.

When acceptors reach the router over tcp:// (another host), the bus can be authenticated and
encrypted with CurveZMQ (``zmq.auth``). The layout ``pychat keys DIR --acceptors N`` makes:

```
DIR/router.key              the router's public key: give it to every acceptor (--curve-server)
DIR/router.key_secret       the router's secret key: the router's --curve-secret
DIR/acceptor-I.key_secret   acceptor I's secret key: that acceptor's --curve-secret
DIR/authorized/acceptor-I.key   acceptor I's public key: the router's --curve-clients DIR/authorized
```

One key pair per acceptor (not one shared by all), so one acceptor host can be shut out by
deleting its public key from the router's folder and restarting the router, without new keys
for the others. A secret file holds the public key too (zmq.auth's format). Secret files are made
readable by their owner only. Existing files are never overwritten.

The router authorises acceptors with a ZAP handler (zmq.auth's ThreadAuthenticator) that allows
exactly the public keys in its folder: an acceptor with any other key is refused in the
handshake and nothing it sends reaches the router; an acceptor with a wrong router key never
completes the handshake at all.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

import zmq
import zmq.auth

from pychat.config import BadValue
from pychat.options import KEYS, add_options

log = logging.getLogger("pychat.keys")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pychat keys",
        description="Make CurveZMQ key files for a trusted router-acceptor bus over tcp://: a "
                    "router pair and one pair per acceptor.")
    p.add_argument("dir", help="folder for the key files (created if missing)")
    add_options(p, KEYS)  # pychat/options.py declares them
    return p


def make_keys(folder: str, acceptors: int) -> list[str]:
    """Make the layout above; returns the files written. Refuses to overwrite."""
    authorized = os.path.join(folder, "authorized")
    names = ["router"] + [f"acceptor-{i}" for i in range(1, acceptors + 1)]
    targets = [os.path.join(folder, f"{n}.key_secret") for n in names]
    targets += [os.path.join(folder, "router.key")]
    targets += [os.path.join(authorized, f"{n}.key") for n in names[1:]]
    existing = [t for t in targets if os.path.exists(t)]
    if existing:
        raise FileExistsError(f"would overwrite {', '.join(existing)}")
    os.makedirs(authorized, exist_ok=True)
    for name in names:
        public, secret = zmq.auth.create_certificates(folder, name)
        os.chmod(secret, 0o600)
        if name != "router":
            os.replace(public, os.path.join(authorized, f"{name}.key"))
    return targets


def load_secret(path: str) -> tuple[bytes, bytes]:
    """(public, secret) from a ``.key_secret`` file; ``BadValue`` when it is not one."""
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as e:
        raise BadValue(f"cannot read CurveZMQ secret key {path}: {e}") from None
    if not secret:
        raise BadValue(f"{path} holds no secret key (use the .key_secret file)")
    return public, secret


def load_public(path: str) -> bytes:
    try:
        public, _ = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as e:
        raise BadValue(f"cannot read CurveZMQ public key {path}: {e}") from None
    if not public:
        raise BadValue(f"{path} holds no public key")
    return public


def count_public_keys(folder: str) -> int:
    try:
        return len(zmq.auth.load_certificates(folder))
    except (OSError, ValueError) as e:
        raise BadValue(f"cannot read authorised keys in {folder}: {e}") from None


class _AuthLog:
    """zmq.auth logs a refused key at debug level; an operator wants to see it (at most once a
    minute for each key, since a refused peer retries every few hundred milliseconds)."""

    def __init__(self, logger: logging.Logger, every: float = 60.0):
        self._log = logger
        self._every = every
        self._last: dict[str, float] = {}

    def debug(self, msg: str, *args) -> None:
        text = msg % args if args else msg
        if text.startswith("DENIED"):
            now = time.monotonic()
            if now - self._last.get(text, -1e9) >= self._every:
                self._last[text] = now
                self._log.warning("bus: refused a peer whose key is not authorised: %s", text)
        else:
            self._log.debug(msg, *args)

    def __getattr__(self, name: str):
        return getattr(self._log, name)


def start_authenticator(ctx: zmq.Context, folder: str):
    """A ZAP handler allowing exactly the CurveZMQ public keys in ``folder``; call ``stop()``."""
    from zmq.auth.thread import ThreadAuthenticator
    auth = ThreadAuthenticator(ctx, log=_AuthLog(logging.getLogger("pychat.router.auth")))
    auth.start()
    auth.configure_curve(domain="*", location=folder)
    return auth


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        files = make_keys(args.dir, args.acceptors)
    except OSError as e:
        print(f"pychat keys: {e}", file=sys.stderr)
        return 1
    for f in files:
        print(f)
    d = args.dir
    print(f"\nrouter:     --curve-secret {d}/router.key_secret --curve-clients {d}/authorized\n"
          f"acceptor I: --curve-secret {d}/acceptor-I.key_secret --curve-server {d}/router.key")
    return 0


if __name__ == "__main__":
    sys.exit(main())
