"""`pychat console` on a real terminal: tmux runs it, ``send-keys`` types, ``capture-pane`` reads.

Each test has its own tmux server (``tmux -L <unique>``), killed at the end. Waits are for text
on the pane, with a timeout. The screenshot of the pane (colours included: ``capture-pane -e``)
is drawn with ImageMagick, one ``-annotate`` per run of same-styled characters, into
``artifacts/console-typing.png``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import uuid

import pytest

from support.procs import ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(
    shutil.which("tmux") is None, reason="missing tmux (Debian: tmux; .ci/run installs it)")]

ARTIFACTS = os.path.join(ROOT, "artifacts")


class Tmux:
    def __init__(self, command: list[str], width: int = 100, height: int = 28):
        self.sock = f"pychat-test-{uuid.uuid4().hex[:8]}"
        line = " ".join(f"'{a}'" for a in command)
        self.tmux("-f", "/dev/null", "new-session", "-d", "-s", "main", "-x", str(width),
                  "-y", str(height), "-c", ROOT,
                  "-e", "PYTHONUNBUFFERED=1", f"exec {line}")

    def tmux(self, *args: str, check: bool = True) -> str:
        done = subprocess.run(["tmux", "-L", self.sock, *args], capture_output=True, text=True,
                              timeout=20)
        if check and done.returncode != 0:
            raise RuntimeError(f"tmux {args}: {done.stderr}")
        return done.stdout

    def screen(self, ansi: bool = False) -> str:
        return self.tmux("capture-pane", "-p", "-t", "main", *(["-e"] if ansi else []))

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", "main", *keys)

    def type(self, text: str) -> None:
        self.tmux("send-keys", "-t", "main", "-l", text)

    def wait(self, pattern: str, timeout: float = 20.0) -> str:
        rx = re.compile(pattern, re.M)
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if rx.search(screen):
                return screen
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {pattern!r} on the pane:\n{screen}")
            time.sleep(0.05)  # polling the pane's text

    def alive(self) -> bool:
        return subprocess.run(["tmux", "-L", self.sock, "has-session", "-t", "main"],
                              capture_output=True).returncode == 0

    def kill(self) -> None:
        self.tmux("kill-server", check=False)


# ---- the pane as a PNG ---------------------------------------------------------------------------

BASIC = ["#1e1e1e", "#cd3131", "#0dbc79", "#c8a800", "#2472c8", "#bc3fbc", "#11a8cd", "#e5e5e5",
         "#666666", "#f14c4c", "#23d18b", "#f5f543", "#3b8eea", "#d670d6", "#29b8db", "#ffffff"]


def color256(n: int) -> str:
    if n < 16:
        return BASIC[n]
    if n < 232:
        n -= 16
        r, g, b = (0 if v == 0 else 55 + 40 * v for v in (n // 36, n // 6 % 6, n % 6))
        return f"#{r:02x}{g:02x}{b:02x}"
    v = 8 + 10 * (n - 232)
    return f"#{v:02x}{v:02x}{v:02x}"


def styled_runs(line: str):
    """(text, fg, bg, bold, italic) runs of one captured line with SGR escapes."""
    fg, bg, bold, italic = None, None, False, False
    for part in re.split(r"(\x1b\[[0-9;]*m)", line):
        if not part.startswith("\x1b["):
            if part:
                yield part, fg, bg, bold, italic
            continue
        codes = [int(c) if c else 0 for c in part[2:-1].split(";")]
        i = 0
        while i < len(codes):
            c = codes[i]
            if c == 0:
                fg, bg, bold, italic = None, None, False, False
            elif c in (1, 22):
                bold = c == 1
            elif c in (3, 23):
                italic = c == 3
            elif 30 <= c <= 37 or 90 <= c <= 97:
                fg = BASIC[c - 30 if c < 90 else c - 82]
            elif 40 <= c <= 47 or 100 <= c <= 107:
                bg = BASIC[c - 40 if c < 100 else c - 92]
            elif c in (39, 49):
                fg, bg = (None, bg) if c == 39 else (fg, None)
            elif c in (38, 48) and i + 1 < len(codes):
                if codes[i + 1] == 5 and i + 2 < len(codes):
                    value, i = color256(codes[i + 2]), i + 2
                elif codes[i + 1] == 2 and i + 4 < len(codes):
                    value, i = "#%02x%02x%02x" % tuple(codes[i + 2:i + 5]), i + 4
                else:
                    value = None
                fg, bg = (value, bg) if c == 38 else (fg, value)
            i += 1


def pane_png(ansi: str, path: str, size: int = 14) -> str:
    """Draw a captured pane (with escapes) as a terminal would, with ImageMagick."""
    probe = subprocess.run(["convert", "-font", "DejaVu-Sans-Mono", "-pointsize", str(size),
                            "label:" + "M" * 50, "-format", "%w", "info:"],
                           capture_output=True, text=True, check=True, timeout=30)
    cw, ch = int(probe.stdout) / 50, size * 1.35  # one cell's width, a line's height
    lines = ansi.rstrip("\n").split("\n")
    width = int(max(len(re.sub(r"\x1b\[[0-9;]*m", "", ln)) for ln in lines) * cw + 16)
    argv = ["convert", "-size", f"{max(width, 200)}x{int(len(lines) * ch + 12)}", "xc:#1e1e1e",
            "-pointsize", str(size)]
    for row, line in enumerate(lines):
        col = 0
        for text, fg, bg, bold, italic in styled_runs(line):
            x, y = 8 + col * cw, 6 + row * ch
            if bg:
                argv += ["-fill", bg, "-draw",
                         f"rectangle {x:.1f},{y:.1f} {x + len(text) * cw:.1f},{y + ch:.1f}"]
            if text.strip():
                font = "DejaVu-Sans-Mono" + ("-Bold" if bold else "") + \
                    ("-Oblique" if italic else "")
                safe = text.replace("\\", "\\\\").replace("%", "%%")
                if safe.startswith("@"):
                    safe = "\\" + safe
                argv += ["-font", font, "-fill", fg or "#d4d4d4",
                         "-annotate", f"+{x:.1f}+{y + size:.1f}", safe]
            col += len(text)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    subprocess.run(argv + [path], check=True, timeout=60)
    return path


# ---- tests ---------------------------------------------------------------------------------------

@pytest.fixture
def terminal():
    made: list[Tmux] = []

    def start(command: list[str]) -> Tmux:
        t = Tmux(command)
        made.append(t)
        return t

    yield start
    for t in made:
        t.kill()


def console(port: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "pychat", "console", "--port", str(port), *args]


def test_console_asks_a_name_again_when_taken_and_keeps_the_typed_line_whole(
        serve, connect, terminal):
    room = f"#tmx-{uuid.uuid4().hex[:4]}"  # a room with no history from earlier runs
    erin = connect(serve)
    erin.handshake()
    for line in ("/nick erin", f"/join {room}"):
        erin.send(line)
    erin.expect_prefix(f"ROOM:{room}")
    t = terminal(console(serve, "--room", room))
    t.wait(r"^Your name:")
    t.type("Erin")
    t.keys("Enter")
    t.wait(r"name Erin is taken: choose another")
    t.wait(r"^name>")
    t.type("frank")
    t.keys("Enter")
    t.wait(r"\* you are now frank")
    t.wait(rf"^\[{room}\] frank>")
    t.wait(rf"{room} \| frank \| ID \d{{6}} \| connected to")  # the bottom bar (drawn after)
    erin.send("/users")
    frank_uid = erin.expect(lambda ln: ln.startswith(f"USERS:{erin.uid},")).split(",")[-1]

    t.type("half a sentence, still typ")
    chatter = ["did the deploy finish?", "frank, the logs look clean to me",
               "merging the reconnect fix now", "build 1042 is green", "lunch in ten?"]
    for line in chatter:
        erin.send(line)
    # a frame with the last line and the prompt redrawn below it (a capture can fall between
    # prompt_toolkit erasing the prompt to print above it and drawing it again)
    screen = t.wait(rf"erin: lunch in ten\?$[\s\S]*^{re.escape(f'[{room}] frank> ')}")
    rows = screen.split("\n")
    prompt_row = next(i for i, r in enumerate(rows) if r.startswith(f"[{room}] frank> "))
    assert rows[prompt_row] == f"[{room}] frank> half a sentence, still typ"
    arrived = [i for i, r in enumerate(rows) for line in chatter if r.endswith(f"erin: {line}")]
    assert len(arrived) == 5 and max(arrived) < prompt_row
    assert all(re.match(r"\[\d\d:\d\d:\d\d\] erin: ", rows[i]) for i in arrived)
    pane_png(t.screen(ansi=True), os.path.join(ARTIFACTS, "console-typing.png"))

    t.type("ing")
    t.keys("Enter")
    erin.expect(f"{frank_uid}: half a sentence, still typing")
    t.wait(r"frank: half a sentence, still typing")
    t.type("/msg erin see you")
    t.keys("Enter")
    erin.expect(f"[Private] {frank_uid}: see you")
    t.wait(r"to erin: see you")
    t.type("/quit")
    t.keys("Enter")
    deadline = time.monotonic() + 15
    while t.alive():
        assert time.monotonic() < deadline, t.screen()
        time.sleep(0.05)  # polling for the process to end
    erin.expect(f"USERS:{erin.uid}")  # frank left the room
