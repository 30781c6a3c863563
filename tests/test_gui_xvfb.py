"""The private X server for GUI tests (``support/xvfb.py``; the ``xvfb`` fixture is in conftest)."""

from __future__ import annotations

from support.xvfb import Xvfb, needs_x


@needs_x
def test_xvfb_starts_on_a_free_display_and_takes_screenshots(tmp_path):
    a, b = Xvfb(), Xvfb()
    try:
        assert a.display != b.display
        assert a.xdotool("getdisplaygeometry").split() == ["1024", "768"]
        shot = a.screenshot(str(tmp_path / "blank.png"))
        with open(shot, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    finally:
        a.stop()
        b.stop()
