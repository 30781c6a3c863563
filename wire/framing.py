"""Bytes to lines, and text sanitizing.

Invariants:
- ``LineBuffer.feed`` returns complete lines without their ``\\n`` (and without a ``\\r`` just
  before it), or a ``LineTooLong`` marker in place of a line longer than ``max_line`` bytes.
- The buffer never holds more than ``max_line + 1`` bytes of an unfinished line: an over-long
  line is reported as soon as it is known to be too long, and its remaining bytes are discarded
  up to the next ``\\n``. The line after it is read normally.
- ``sanitize`` runs on every line a client sends, before anything reads it: what it returns is
  what every reader sees. It removes C0 controls except tab, DEL, C1 controls and whole ANSI
  escape sequences, and it neutralises the characters that can make text display as other text
  ("special": Unicode's default-ignorable code points, which renderers show as nothing, plus
  the line and paragraph separators U+2028/9 and the interlinear annotation marks U+FFF9-FFFB):

  1. none is kept inside an ASCII word: a run of them between two of ``A-Z a-z 0-9 _ -`` goes
     whole, so a name, a command word or any word written in ASCII hides nothing;
  2. bidirectional embeddings and isolates (LRE RLE LRI RLI FSI) are kept, balanced: a closer
     (PDF, PDI) that closes nothing opened in the line is removed, and what is still open at the
     end of the line is closed there, innermost first. Text can then reorder only itself: it
     cannot reach into what a client shows after it (the next field, the next line) nor close
     what a client opened around it. Overrides (LRO, RLO) become the embedding of their
     direction (LRE, RLE): they alone make letters display in another order than they were sent
     (``\\u202eih :ecila`` shown as "alice: hi", "gnp.exe" shown as "exe.png"). At most
     ``MAX_OPEN`` (16) are open at once, deeper ones go with their closers; a line with more than
     ``MAX_BIDI`` (64) loses them all;
  3. the marks LRM, RLM, ALM are kept: right-to-left writers need them to place punctuation and
     numbers, and they can do nothing a Hebrew or Arabic letter cannot;
  4. joiners (ZWJ, ZWNJ, CGJ, Mongolian vowel separator) are kept only between two visible
     characters outside ASCII ("bases": anything but ASCII, white space and special characters),
     the first possibly followed by its variation selector: emoji sequences (family, heart on
     fire: U+2764 U+FE0F ZWJ U+1F525), the Persian ZWNJ and Indic conjuncts keep working, and a
     joiner is never alone or at an edge. ZWJ and ZWNJ right after a virama are kept whatever
     follows (IDNA's CONTEXTJ rule: Malayalam chillus, Indic half forms);
  5. variation selectors only right after a base (emoji presentation, ideographic variants) or
     in a keycap (``#``, ``*`` or a digit, U+FE0F, U+20E3); tags only as one emoji tag sequence
     right after its black flag (England, Scotland, Wales);
  6. the rest is removed: zero width space, word joiner, zero width no-break space (BOM), soft
     hyphen, Hangul fillers, invisible operators, deprecated format characters, ... Dropping
     them changes at most where a line may wrap or hyphenate, never how it reads.

  Why isolate rather than strip the bidirectional controls: Arabic, Hebrew and Persian writers
  use them (and the marks) to get mixed-direction text right, and once balanced they are no
  more dangerous than the letters they surround. Why joiners by context: a blanket strip of ZWJ
  breaks emoji and scripts, while next to ASCII or alone it can only hide a difference.

  The result is a fixed point (sanitizing it again changes nothing), and a line with nothing to
  remove comes back as it was, at the cost of one search (plain ASCII: one search of the
  controls, as before).
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


# ---- sanitize: controls and escapes --------------------------------------------------------------

# ANSI escapes, removed whole: CSI (ESC [ or 8-bit 0x9b) params, intermediates, final byte;
# OSC/DCS/SOS/PM/APC strings up to BEL or ST; two-byte ESC sequences. Then any control left.
_ESCAPES = re.compile(
    r"(?:\x1b\[|\x9b)[\x30-\x3f]*[\x20-\x2f]*[\x40-\x7e]?"
    r"|(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"
    r"|\x1b[\x20-\x2f]*[\x30-\x7e]?"
)
_CONTROLS_CLASS = r"\x00-\x08\x0a-\x1f\x7f-\x9f"
_CONTROLS = re.compile(f"[{_CONTROLS_CLASS}]")

# ---- sanitize: invisible and bidirectional formatting characters ---------------------------------

# The characters the rules of the module docstring are about ("special"): Unicode's
# Default_Ignorable_Code_Point (DerivedCoreProperties.txt; the same list from Unicode 14 to 16),
# which renderers show as nothing, plus the line and paragraph separators (a line break in many
# renderers) and the interlinear annotation characters (which may set text aside, or hide it).
# Those removed everywhere (rule 6):
_DROPPED_BMP = (
    "\u00ad"          # soft hyphen
    "\u115f\u1160"    # Hangul choseong and jungseong fillers
    "\u17b4\u17b5"    # Khmer inherent vowels
    "\u200b"          # zero width space
    "\u2028\u2029"    # line separator, paragraph separator
    "\u2060-\u2065"   # word joiner, invisible operators, reserved
    "\u206a-\u206f"   # deprecated format characters (symmetric swapping, Arabic shaping, digits)
    "\u3164"          # Hangul filler
    "\ufeff"          # zero width no-break space (byte order mark)
    "\uffa0"          # halfwidth Hangul filler
    "\ufff0-\ufffb"   # reserved; interlinear annotation anchor, separator, terminator
)
_DROPPED_ASTRAL = (
    "\U0001bca0-\U0001bca3"  # shorthand format controls
    "\U0001d173-\U0001d17a"  # musical symbol format controls (beams, ties, slurs, phrases)
    "\U000e0000-\U000e001f"  # reserved, language tag
    "\U000e0080-\U000e00ff"  # reserved
    "\U000e01f0-\U000e0fff"  # reserved
)
# Those kept where a rule allows them (rules 2-5):
_RULED_BMP = (
    "\u034f"          # combining grapheme joiner
    "\u061c"          # Arabic letter mark
    "\u180b-\u180f"   # Mongolian free variation selectors, vowel separator
    "\u200c-\u200f"   # zero width non-joiner, joiner; left-to-right and right-to-left marks
    "\u202a-\u202e"   # embeddings, pop directional formatting, overrides
    "\u2066-\u2069"   # isolates, pop directional isolate
    "\ufe00-\ufe0f"   # variation selectors
)
_RULED_ASTRAL = (
    "\U000e0020-\U000e007f"  # tags (emoji tag sequences)
    "\U000e0100-\U000e01ef"  # variation selectors supplement
)
_SPECIAL_BMP = _DROPPED_BMP + _RULED_BMP
# the union of _DROPPED_ASTRAL and _RULED_ASTRAL in three ranges: a regex tests ranges above
# U+FFFF one by one, for every character it scans
_SPECIAL_ASTRAL = "\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0000-\U000e0fff"
_SPECIAL = f"[{_SPECIAL_BMP}{_SPECIAL_ASTRAL}]"
# What the fast path looks for, by the width of the text (``_width``): up to U+00FF only the
# soft hyphen is special, and a class of 256 is a bitmap; above U+FFFF the first two ranges are
# made one (wider: what falls in between costs a trip to the slow path, which then finds nothing)
_SUSPECT_LATIN1 = re.compile(f"[{_CONTROLS_CLASS}\u00ad]")
_SUSPECT_NARROW = re.compile(f"[{_CONTROLS_CLASS}{_SPECIAL_BMP}]")
_SUSPECT_WIDE = re.compile(
    f"[{_CONTROLS_CLASS}{_SPECIAL_BMP}\U0001bca0-\U0001d17a\U000e0000-\U000e0fff]")

# The pieces of the rules. A base is a visible character outside ASCII: what a joiner may join
# and a selector may select (a letter, mark, digit, symbol or punctuation of any script, emoji).
_WORD = "[A-Za-z0-9_-]"  # ASCII word characters (names are made of them)
_BASE = f"[^\\x00-\\x7f\\s\\ud800-\\udfff{_SPECIAL_BMP}{_SPECIAL_ASTRAL}]"
_MARKS_AND_BIDI = "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
_JOINER = "[\u200c\u200d\u180e\u034f]"  # ZWNJ, ZWJ, Mongolian vowel separator, CGJ
# Canonical_Combining_Class Virama (Unicode 14): after one, ZWJ and ZWNJ choose the form of a
# conjunct or a Malayalam chillu, whatever follows (IDNA's CONTEXTJ rule)
_VIRAMA = (
    "[\u094d\u09cd\u0a4d\u0acd\u0b4d\u0bcd\u0c4d\u0ccd\u0d3b-\u0d3c\u0d4d\u0dca\u0e3a\u0eba\u0f84"
    "\u1039-\u103a\u1714-\u1715\u1734\u17d2\u1a60\u1b44\u1baa-\u1bab\u1bf2-\u1bf3\u2d7f\ua806"
    "\ua82c\ua8c4\ua953\ua9c0\uaaf6\uabed\U00010a3f\U00011046\U00011070\U0001107f\U000110b9"
    "\U00011133-\U00011134\U000111c0\U00011235\U000112ea\U0001134d\U00011442\U000114c2"
    "\U000115bf\U0001163f\U000116b6\U0001172b\U00011839\U0001193d-\U0001193e\U000119e0"
    "\U00011a34\U00011a47\U00011a99\U00011c3f\U00011d44-\U00011d45\U00011d97]"
)
_SELECTOR = "[\u180b-\u180d\u180f\ufe00-\ufe0f\U000e0100-\U000e01ef]"
_TAG = "[\U000e0020-\U000e007f]"
# an emoji tag sequence follows its black flag (England, Scotland, Wales): one to eight tag
# letters and digits, then CANCEL TAG
_FLAG = "\U0001f3f4"
_TAG_LETTER = "[\U000e0030-\U000e0039\U000e0061-\U000e007a]"
_CANCEL_TAG = "\U000e007f"

# What the rules remove, bidirectional controls apart, in one pass of C. The pattern starts with
# the class of the special characters (without those above U+FFFF when the text has none: a
# regex tests each range above U+FFFF one by one) so that the engine skips plain text nearly at
# the speed of the fast path; the alternatives then say, from the special character taken (the
# "." in each lookbehind), why it goes. Every lookaround looks at the text as given, and what is
# kept has the same neighbours in the result: the result is a fixed point.
def _remover(lead: str) -> re.Pattern[str]:
    return re.compile(
        f"(?s){lead}(?:"
        f"(?<={_WORD}.){_SPECIAL}*(?={_WORD})"                   # a run inside an ASCII word
        f"|(?<![{_MARKS_AND_BIDI}])(?:"  # marks and bidi controls: only the rule above (here)
        f"(?<=[{_DROPPED_BMP}{_DROPPED_ASTRAL}])"                 # never kept
        # a joiner not after a base (and its selector), or not before one; but ZWJ and ZWNJ
        # after a virama stay
        f"|(?<={_JOINER})(?<!{_VIRAMA}[\u200c\u200d])"
        f"(?:(?<!{_BASE}.)(?<!{_BASE}{_SELECTOR}.)|(?!{_BASE}))"
        # a selector not after a base, unless in a keycap
        f"|(?<={_SELECTOR})(?<!{_BASE}.)(?!(?<=[#*0-9]\ufe0f)\u20e3)"
        f"|(?<={_TAG})(?<!{_FLAG}.)(?<!{_TAG}.){_TAG}*"          # tags not after a flag
        f"|(?<={_FLAG}{_TAG})(?:(?<={_TAG_LETTER})(?!{_TAG_LETTER}{{0,7}}{_CANCEL_TAG}(?!{_TAG}))"
        f"|(?<!{_TAG_LETTER})){_TAG}*"                           # ... or not one tag sequence
        "))"
    )


_REMOVE_NARROW = _remover(f"[{_SPECIAL_BMP}]")  # for text with nothing above U+FFFF
_REMOVE_WIDE = _remover(_SPECIAL)

LRE, RLE, PDF, LRO, RLO = "\u202a", "\u202b", "\u202c", "\u202d", "\u202e"
LRI, RLI, FSI, PDI = "\u2066", "\u2067", "\u2068", "\u2069"
_BIDI_CHARS = (LRE, RLE, PDF, LRO, RLO, LRI, RLI, FSI, PDI)
_BIDI = re.compile(f"[{''.join(_BIDI_CHARS)}]")
# an opener as it is kept (an override becomes the embedding of its direction), and its closer
_OPENERS = {LRE: (LRE, PDF), RLE: (RLE, PDF), LRO: (LRE, PDF), RLO: (RLE, PDF),
            LRI: (LRI, PDI), RLI: (RLI, PDI), FSI: (FSI, PDI)}
MAX_OPEN = 16  # embeddings and isolates open at once; deeper ones are dropped with their closers
# No line of text needs more bidirectional controls than this; bounds the work of balancing.
MAX_BIDI = 64

# CPython stores a str at 1, 2 or 4 bytes a character, the width of its widest character
# (PEP 393), and only the 4-byte form can hold one above U+FFFF. The size of the object tells the
# width at once, and a search for fewer characters is cheaper: a third of the price without the
# ranges above U+FFFF (the regex engine tests those one by one), less again for a class of 256.
# Where the sizes do not match this layout (another version or implementation) the width is
# taken for 4: slower, never wrong.
_UCS1_BASE = "\xe9".__sizeof__() - 2
_UCS2_BASE = "\u0100".__sizeof__() - 4


def _width(text: str) -> int:
    """1 or 2 when ``text`` (not ASCII) is known to hold nothing above U+00FF or U+FFFF;
    else 4."""
    size, n = text.__sizeof__(), len(text) + 1
    return 1 if size == _UCS1_BASE + n else 2 if size == _UCS2_BASE + 2 * n else 4


def _bidi_count(text: str) -> int:
    return sum(map(text.count, _BIDI_CHARS))  # str.count scans in C, with no match objects


def _balance(text: str) -> str:
    """Bidirectional controls paired as the Unicode Bidirectional Algorithm pairs them (rules
    X1-X8, with its overflow counters at depth ``MAX_OPEN``): a closer that closes nothing is
    dropped, an override becomes an embedding, and the closers still owed are added at the end.
    PDFs that a PDI closes implicitly are written out before it: the result nests strictly.
    More than ``MAX_BIDI`` of them, before or after, and they all go."""
    if _bidi_count(text) > MAX_BIDI:
        return _BIDI.sub("", text)
    out: list[str] = []
    owed: list[str] = []  # the closers of the openers still open, innermost last
    over_isolates = over_embeddings = 0
    pos = 0
    for m in _BIDI.finditer(text):
        start = m.start()
        out.append(text[pos:start])
        pos = start + 1
        c = m.group()
        if c in _OPENERS:
            opener, closer = _OPENERS[c]
            if len(owed) < MAX_OPEN:
                owed.append(closer)
                out.append(opener)
            elif closer == PDI:
                over_isolates += 1
            elif not over_isolates:
                over_embeddings += 1
        elif c == PDF:  # closes the innermost embedding, if it is one (X7)
            if over_isolates:
                pass
            elif over_embeddings:
                over_embeddings -= 1
            elif owed and owed[-1] == PDF:
                out.append(owed.pop())
        elif over_isolates:  # a PDI (X6a)
            over_isolates -= 1
        elif PDI in owed:  # closes the innermost isolate and what is open inside it
            over_embeddings = 0
            while True:
                out.append(owed.pop())
                if out[-1] == PDI:
                    break
    out.append(text[pos:])
    out.extend(reversed(owed))
    balanced = "".join(out)
    return balanced if _bidi_count(balanced) <= MAX_BIDI else _BIDI.sub("", balanced)


def sanitize(text: str) -> str:
    """Remove control characters (tab kept) and whole ANSI escape sequences; neutralise
    bidirectional formatting and invisible characters (module docstring)."""
    if text.isascii():  # O(1) in CPython; ASCII holds no special character, only controls
        if _CONTROLS.search(text) is None:  # the common case: nothing to do
            return text
        return _CONTROLS.sub("", _ESCAPES.sub("", text))
    width = _width(text)
    suspect = _SUSPECT_LATIN1 if width == 1 else _SUSPECT_NARROW if width == 2 else _SUSPECT_WIDE
    if suspect.search(text) is None:
        return text
    if _CONTROLS.search(text) is not None:
        text = _CONTROLS.sub("", _ESCAPES.sub("", text))
    text = (_REMOVE_WIDE if width == 4 else _REMOVE_NARROW).sub("", text)
    return text if _BIDI.search(text) is None else _balance(text)
