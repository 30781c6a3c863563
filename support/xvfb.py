"""A private X server (Xvfb) for the GUI tests and benchmarks.

``Xvfb -displayfd`` picks a free display number itself and writes it to a pipe once it accepts
connections, so parallel test workers never collide and nobody sleeps. The server is killed by
its pid. ``Xvfb.screenshot`` writes a PNG of the whole screen with ImageMagick's ``import``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from .procs import ROOT

ARTIFACTS = os.path.join(ROOT, "artifacts")
X_TOOLS = ("Xvfb", "xdotool", "import")
missing_x = [t for t in X_TOOLS if shutil.which(t) is None]
needs_x = pytest.mark.skipif(bool(missing_x), reason=f"missing {', '.join(missing_x)} "
                             "(Debian: xvfb xdotool imagemagick; .ci/run installs them)")


class Xvfb:
    def __init__(self, size: str = "1024x768x24"):
        r, w = os.pipe()
        self.proc = subprocess.Popen(
            ["Xvfb", "-displayfd", str(w), "-screen", "0", size, "-nolisten", "tcp"],
            pass_fds=(w,), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        os.close(w)
        number = b""
        with os.fdopen(r, "rb") as f:  # Xvfb writes "N\n" when ready (or exits)
            number = f.readline().strip()
        if not number:
            err = self.proc.stderr.read().decode(errors="replace") if self.proc.poll() else ""
            self.stop()
            raise RuntimeError(f"Xvfb did not start: {err[-500:]}")
        self.display = f":{number.decode()}"
        self.env = dict(os.environ, DISPLAY=self.display)

    def run(self, *argv: str, check: bool = True) -> str:
        done = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=20)
        if check and done.returncode != 0:
            raise RuntimeError(f"{argv}: {done.returncode} {done.stderr}")
        return done.stdout

    def xdotool(self, *args: str) -> str:
        return self.run("xdotool", *args)

    def find_window(self, title_regex: str, timeout: float = 15.0) -> str:
        """The X id of a visible window whose title matches (waits for it to be mapped)."""
        deadline = time.monotonic() + timeout
        while True:
            out = self.run("xdotool", "search", "--onlyvisible", "--name", title_regex,
                           check=False).split()
            if out:
                return out[0]
            if time.monotonic() > deadline:
                raise TimeoutError(f"no window named {title_regex!r} on {self.display}")
            time.sleep(0.05)  # polling the X server for a window, not synchronising on time

    def screenshot(self, path: str) -> str:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self.run("import", "-window", "root", path)
        return path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if self.proc.stderr:
            self.proc.stderr.close()
