"""Bytes to lines, and text sanitizing.

Invariants:
- ``LineBuffer.feed`` returns complete lines without their ``\\n`` (and without a ``\\r`` just
  before it), or a ``LineTooLong`` marker in place of a line longer than ``max_line`` bytes.
- The buffer never holds more than ``max_line + 1`` bytes of an unfinished line: an over-long
  line is reported as soon as it is known to be too long, and its remaining bytes are discarded
  up to the next ``\\n``. The line after it is read normally.
- ``sanitize`` removes C0 controls except tab, DEL, C1 controls and whole ANSI escape sequences.
"""

from __future__ import annotations

import re

from .errors import InvalidUTF8, LineTooLong

DEFAULT_MAX_LINE = 4096


class LineBuffer:
    """Split a byte stream into lines; one ``recv()`` may hold half a line or twenty."""

    __slots__ = ("_buf", "_discarding", "max_line")

    def __init__(self, max_line: int = DEFAULT_MAX_LINE):
        if max_line < 1:
            raise ValueError("max_line must be at least 1")
        self.max_line = max_line
        self._buf = b""
        self._discarding = False  # inside an over-long line already reported

    def feed(self, data: bytes) -> list[bytes | LineTooLong]:
        out: list[bytes | LineTooLong] = []
        if not data:
            return out
        buf = self._buf + data if self._buf else data
        limit = self.max_line
        start = 0
        while True:
            nl = buf.find(b"\n", start)
            if nl < 0:
                break
            line = buf[start:nl]
            start = nl + 1
            if self._discarding:
                self._discarding = False
                continue
            if line.endswith(b"\r"):
                line = line[:-1]
            if len(line) > limit:
                out.append(LineTooLong(limit))
            else:
                out.append(line)
        rest = buf[start:]
        if self._discarding:
            rest = b""
        elif len(rest) > limit + 1:  # +1: a trailing '\r' may still be followed by '\n'
            out.append(LineTooLong(limit))
            self._discarding = True
            rest = b""
        self._buf = rest
        return out

    def take_partial(self) -> bytes | None:
        """The unfinished line held, as a line (without a trailing ``\r``), or None when there is
        none; the buffer is then empty and out of any over-long line. For a client that ends
        no message with a newline (its piece sat idle), and for a client's last piece at EOF."""
        rest, self._buf = self._buf, b""
        self._discarding = False
        if rest.endswith(b"\r"):
            rest = rest[:-1]
        return rest or None

    @property
    def pending(self) -> int:
        """Bytes of an unfinished line held (for slowloris checks)."""
        return len(self._buf)

    @property
    def partial(self) -> bool:
        """Inside an unfinished line: bytes held, or an over-long line still being discarded."""
        return bool(self._buf) or self._discarding


def decode(line: bytes) -> str:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidUTF8() from None


# ANSI escapes, removed whole: CSI (ESC [ or 8-bit 0x9b) params, intermediates, final byte;
# OSC/DCS/SOS/PM/APC strings up to BEL or ST; two-byte ESC sequences. Then any control left.
_ESCAPES = re.compile(
    r"(?:\x1b\[|\x9b)[\x30-\x3f]*[\x20-\x2f]*[\x40-\x7e]?"
    r"|(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"
    r"|\x1b[\x20-\x2f]*[\x30-\x7e]?"
)
_CONTROLS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")


def sanitize(text: str) -> str:
    """Remove control characters (tab kept) and whole ANSI escape sequences."""
    if _CONTROLS.search(text) is None:  # the common case: nothing to do
        return text
    return _CONTROLS.sub("", _ESCAPES.sub("", text))
