"""`read_only: true` for the compose emulation (tests/test_compose_emulation.py), in Python.

A container of docker-compose.yml has a read-only root filesystem: it can write only to its
volumes and its tmpfs mounts. The emulation runs each service as a local process with this
folder on PYTHONPATH and ``READ_ONLY_ROOT_WRITABLE`` set to the local folders that stand for
those mounts (os.pathsep between them): then every write this Python process asks for anywhere
else (a file opened for writing or created, a folder made, a file renamed, removed or changed,
an SQLite database opened) fails as it would there, with EROFS, and is reported on stderr. It
sees what Python does, not what a C library does on its own (ZeroMQ's ipc:// socket files).
Without the variable it does nothing.
"""

from __future__ import annotations

import errno
import os
import sys

_ROOTS = [os.path.realpath(p) for p in os.environ.get("READ_ONLY_ROOT_WRITABLE", "").split(
    os.pathsep) if p]
_WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
# events whose first argument is a path being changed
_CHANGES = {"os.mkdir", "os.rename", "os.replace", "os.remove", "os.rmdir", "os.chmod",
            "os.chown", "os.symlink", "os.link", "os.truncate", "os.utime", "shutil.rmtree",
            "sqlite3.connect"}


def _writable(path: object) -> bool:
    if isinstance(path, int):  # an open file descriptor: checked when it was opened
        return True
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not isinstance(path, str) or path in (":memory:", ""):
        return True
    real = os.path.realpath(path)
    if real == "/dev/null" or real.startswith("/dev/shm/"):  # a container's own /dev
        return True
    return any(real == root or real.startswith(root + os.sep) for root in _ROOTS)


def _hook(event: str, args: tuple) -> None:
    if event == "open":
        path, mode, flags = args
        wants = (flags & _WRITE) if isinstance(flags, int) and flags else \
            any(c in (mode or "") for c in "wax+")
        if not wants:
            return
    elif event in _CHANGES:
        path = args[0]
    else:
        return
    if not _writable(path):
        print(f"read_only emulation: {event} {path!r} refused: read-only file system",
              file=sys.stderr)
        raise OSError(errno.EROFS, "Read-only file system (emulated read_only: true)", path)


if _ROOTS:
    sys.addaudithook(_hook)
