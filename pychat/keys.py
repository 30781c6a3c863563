"""``pychat keys DIR``: CurveZMQ key files for a trusted bus, loading them, and when a bus needs
them.

When acceptors reach the router over tcp:// (another host), the bus is authenticated and
encrypted with CurveZMQ (``zmq.auth``). The layout ``pychat keys DIR --acceptors N`` makes:

```
DIR/router.key              the router's public key: give it to every acceptor (--curve-server)
DIR/router.key_secret       the router's secret key: the router's --curve-secret
DIR/acceptor-I.key_secret   acceptor I's secret key: that acceptor's --curve-secret
DIR/status.key_secret       `pychat status`'s secret key: its --curve-secret
DIR/authorized/acceptor-I.key   acceptor I's public key: the router's --curve-clients DIR/authorized
DIR/authorized/status.key       status's public key, authorised like an acceptor's
```

One key pair per acceptor (not one shared by all), so one acceptor host can be shut out by
deleting its public key from the router's folder and restarting the router, without new keys
for the others. The status pair lets an operator (and the container healthcheck) ask a
protected router for its view; the router cannot tell it from an acceptor's, so it is as
powerful as one: keep it where the router's own secret is. A secret file holds the public key
too (zmq.auth's format).

Invariants of the files:

- a secret file is created readable and writable by its owner only (``os.open`` with mode 0600
  and ``O_EXCL``: it never exists, even for a moment, with wider permissions, and an existing
  file is never overwritten); ``DIR`` and ``DIR/authorized`` are made 0700, and an existing
  ``DIR`` that others may write to is refused (they could swap ``router.key``);
- ``load_secret`` refuses a secret file that group or others can read or write, naming the file
  and the ``chmod`` that fixes it: a key others can read is no longer a secret.

The router authorises peers with a ZAP handler (zmq.auth's ThreadAuthenticator) that allows
exactly the public keys in its folder: a peer with any other key is refused in the handshake
and nothing it sends reaches the router; a peer with a wrong router key never completes the
handshake at all.

When a bus needs keys (``is_open_bus``): a router bound to a tcp:// address other hosts can
reach (anything but loopback) without keys lets anyone who reaches it join as an acceptor and
read every chat line. The router and ``pychat serve`` refuse to bind one unless told
``--insecure-bus`` (``open_bus_refusal`` is what they say). ipc:// and loopback tcp:// stay on
this host and need none.
"""

from __future__ import annotations

import argparse
import logging
import os
import stat
import sys
import time
from typing import TYPE_CHECKING

from pychat.config import BadValue
from pychat.options import KEYS, add_options

if TYPE_CHECKING:
    import zmq

# zmq is imported where keys are made or read, not at import: `pychat serve` (which imports
# this module) stays a small supervisor when its bus needs no keys; datetime and ipaddress
# where they are used too (a key file written, a tcp:// bus's host), for the same reason

log = logging.getLogger("pychat.keys")

STATUS = "status"  # the name of `pychat status`'s key pair


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pychat keys",
        description="Make CurveZMQ key files for a trusted router-acceptor bus over tcp://: a "
                    "router pair, one pair per acceptor and a pair for `pychat status`.")
    p.add_argument("dir", help="folder for the key files (created, mode 0700, if missing)")
    add_options(p, KEYS)  # pychat/options.py declares them
    return p


# ---- making the files ----------------------------------------------------------------------------

def _write_new(path: str, text: str, mode: int) -> None:
    """Create ``path`` with ``mode`` from the start (never wider, whatever the umask allows
    more of: fchmod sets it exactly) and write ``text``; an existing file is an error."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, text.encode("utf-8"))
    finally:
        os.close(fd)


def _key_text(kind: str, public: bytes, secret: bytes | None = None) -> str:
    """zmq.auth's certificate format (``zmq.auth.load_certificate`` reads it)."""
    import datetime
    lines = [f"#   ****  Generated on {datetime.datetime.now()} by pychat keys  ****",
             f"#   ZeroMQ CURVE {kind} Certificate", "", "metadata", "curve",
             f'    public-key = "{public.decode()}"']
    if secret is not None:
        lines.append(f'    secret-key = "{secret.decode()}"')
    return "\n".join(lines) + "\n"


def _make_private_folder(path: str) -> None:
    if os.path.isdir(path):
        mode = stat.S_IMODE(os.stat(path).st_mode)
        if mode & 0o022:
            raise PermissionError(f"{path} can be written by others (mode {mode:04o}), who could "
                                  f"replace its keys: chmod go-w {path}, or use a new folder")
        return
    os.makedirs(path, mode=0o700)
    os.chmod(path, 0o700)  # makedirs' mode passes through the umask


def layout(folder: str, acceptors: int) -> tuple[list[str], list[str]]:
    """(secret files, public files) of the layout above."""
    names = ["router"] + [f"acceptor-{i}" for i in range(1, acceptors + 1)] + [STATUS]
    authorized = os.path.join(folder, "authorized")
    secrets = [os.path.join(folder, f"{n}.key_secret") for n in names]
    publics = [os.path.join(folder, "router.key")]
    publics += [os.path.join(authorized, f"{n}.key") for n in names[1:]]
    return secrets, publics


def make_keys(folder: str, acceptors: int, if_missing: bool = False) -> list[str]:
    """Make the layout above; returns the files written. Refuses to overwrite any file; with
    ``if_missing``, a folder that holds the whole layout already is left as it is (returns [])."""
    secrets, publics = layout(folder, acceptors)
    existing = [t for t in secrets + publics if os.path.lexists(t)]
    if if_missing and len(existing) == len(secrets + publics):
        return []
    if existing:
        raise FileExistsError(f"would overwrite {', '.join(existing)}")
    _make_private_folder(folder)
    _make_private_folder(os.path.join(folder, "authorized"))
    for secret_file, public_file in zip(secrets, publics, strict=True):
        import zmq
        public, secret = zmq.curve_keypair()
        _write_new(secret_file, _key_text("**Secret**", public, secret), 0o600)
        _write_new(public_file, _key_text("Public", public), 0o644)
    return secrets + publics


# ---- loading them --------------------------------------------------------------------------------

def check_private(path: str) -> None:
    """``BadValue`` when group or others may read or write the secret key file ``path``."""
    if os.name != "posix":  # no owner-only mode bits to check
        return
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError as e:
        raise BadValue(f"cannot read CurveZMQ secret key {path}: {e}") from None
    if mode & 0o077:
        raise BadValue(f"CurveZMQ secret key {path} can be read or written by others (mode "
                       f"{mode:04o}); a key others can read is no secret: chmod 600 {path}")


def load_secret(path: str) -> tuple[bytes, bytes]:
    """(public, secret) from a ``.key_secret`` file; ``BadValue`` when it is not one, or when
    others may read or write it."""
    try:
        import zmq.auth
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as e:
        raise BadValue(f"cannot read CurveZMQ secret key {path}: {e}") from None
    if not secret:
        raise BadValue(f"{path} holds no secret key (use the .key_secret file)")
    check_private(path)  # after: a public key given here needs another file, not a chmod
    return public, secret


def load_public(path: str) -> bytes:
    try:
        import zmq.auth
        public, _ = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as e:
        raise BadValue(f"cannot read CurveZMQ public key {path}: {e}") from None
    if not public:
        raise BadValue(f"{path} holds no public key")
    return public


def public_keys(folder: str) -> set[bytes]:
    try:
        import zmq.auth
        return set(zmq.auth.load_certificates(folder))
    except (OSError, ValueError) as e:
        raise BadValue(f"cannot read authorised keys in {folder}: {e}") from None


def count_public_keys(folder: str) -> int:
    return len(public_keys(folder))


def describe_authorised(folder: str) -> str:
    """What the router logs of its folder: the acceptors' keys, and the status key apart."""
    status = os.path.join(folder, f"{STATUS}.key")
    others = count_public_keys(folder)
    if os.path.exists(status):
        return f"{others - 1} authorised acceptor keys and a status key in {folder}"
    return f"{others} authorised acceptor keys in {folder}"


# ---- when a bus needs them -----------------------------------------------------------------------

def is_open_bus(endpoint: str) -> bool:
    """Whether a router bound to ``endpoint`` can be reached from other hosts: any tcp://
    address but loopback (127.0.0.0/8, ::1, localhost). ``*``, 0.0.0.0, ``::``, an interface
    or host name may be any address, so they count as open. ipc:// and inproc:// do not."""
    if not endpoint.startswith("tcp://"):
        return False
    host = endpoint[len("tcp://"):].rsplit(":", 1)[0].strip("[]")
    if host.lower() == "localhost":
        return False
    import ipaddress
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True


def open_bus_refusal(endpoint: str, keys_hint: str) -> str:
    """The usage error for binding an open bus without keys; ``keys_hint`` names the options
    that give this program its keys."""
    return (f"refusing to bind {endpoint} without CurveZMQ keys: every host that reaches it "
            f"could join as an acceptor and read every chat line. Make keys with `pychat keys "
            f"DIR` and give {keys_hint}; or bind a loopback or ipc:// endpoint; or, on a private "
            f"network you trust, say so with --insecure-bus (PYCHAT_INSECURE_BUS=1)")


# ---- the router's side ---------------------------------------------------------------------------

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
        files = make_keys(args.dir, args.acceptors, if_missing=args.if_missing)
    except OSError as e:
        print(f"pychat keys: {e}", file=sys.stderr)
        return 1
    if not files:
        print(f"pychat keys: {args.dir} holds its keys already; nothing made")
        return 0
    for f in files:
        print(f)
    d = args.dir
    print(f"\nrouter:     --curve-secret {d}/router.key_secret --curve-clients {d}/authorized\n"
          f"acceptor I: --curve-secret {d}/acceptor-I.key_secret --curve-server {d}/router.key\n"
          f"status:     --curve-secret {d}/status.key_secret --curve-server {d}/router.key\n"
          f"serve with its own router on a tcp:// bus: --curve-keys {d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
