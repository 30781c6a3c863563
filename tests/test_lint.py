"""ruff and mypy over the repository, as ``python -m support.lint`` runs them (configuration in
pyproject.toml; mypy strict on wire/ and the pure state machines). A finding fails the test with
the tools' own messages."""

from __future__ import annotations

import subprocess
import sys

import pytest

from support.procs import ROOT

pytestmark = pytest.mark.timeout(300)


def test_ruff_and_mypy_find_nothing():
    r = subprocess.run([sys.executable, "-m", "support.lint"], capture_output=True, text=True,
                       cwd=ROOT, timeout=280)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
    assert "All checks passed!" in r.stdout  # ruff ran
    assert "Success: no issues found" in r.stdout  # mypy ran
