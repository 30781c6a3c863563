"""`pychat gui` and files (PROTOCOL Part 5), driven for real under a private Xvfb: a PNG made with
Pillow sent by another client shows as a thumbnail under its line (the image in the log, read
from the GUI's state file: clients/gui_probe.py), its name is a link whose click opens Save as
(Tk's file dialog, typed into with xdotool) and saves it byte-identical; a ``/send`` typed in
the window reaches the room; without Pillow a file is a text line with its link and no
thumbnail, a file pasted (a ``file://`` URI from another X client's clipboard) becomes
``/send <path>``, and a slow upload sent with Send file... (Tk's file dialog) shows its progress in
the status bar.

``PYCHAT_SCREENSHOTS=1`` writes the thumbnail's screenshot to docs/img/gui-thumbnail.png
(reduced in colours, as the other pictures there), otherwise to the test's tmp_path.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import uuid

import pytest

from pychat.clients import events
from pychat.wire import replies
from support.gui import GuiProc
from support.procs import ROOT, Proc, start_serve
from support.xvfb import needs_x

from .test_client_files import session as peer

pytestmark = [pytest.mark.e2e, needs_x]
PIL = pytest.importorskip("PIL", reason="Pillow makes the test's pictures (pip install Pillow)")


@pytest.fixture
def server(procs, tmp_path):
    p, port = start_serve("--history", "memory", "--accounts", "memory", "--data-dir",
                          str(tmp_path / "data"), acceptors=1)
    procs.append(p)
    return port


def picture(path, size=(640, 400)) -> bytes:
    """A PNG of a sunset over the sea (Pillow)."""
    from PIL import Image, ImageDraw
    w, h = size
    im = Image.new("RGB", size)
    draw = ImageDraw.Draw(im)
    for y in range(h * 3 // 5):  # the sky, orange to purple
        t = y / (h * 3 / 5)
        draw.line([(0, y), (w, y)], fill=(int(250 - 120 * t), int(170 - 120 * t),
                                          int(80 + 90 * t)))
    draw.ellipse([w // 2 - 70, h * 3 // 5 - 70, w // 2 + 70, h * 3 // 5 + 70],
                 fill=(255, 214, 90))
    for y in range(h * 3 // 5, h):  # the sea
        t = (y - h * 3 / 5) / (h * 2 / 5)
        draw.line([(0, y), (w, y)], fill=(int(30 + 20 * t), int(70 + 40 * t), int(120 + 50 * t)))
    buf = io.BytesIO()
    im.save(buf, "PNG")
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


def screenshot(g: GuiProc, tmp_path) -> str:
    if os.environ.get("PYCHAT_SCREENSHOTS") == "1":
        raw = g.x.screenshot(str(tmp_path / "gui-thumbnail-raw.png"))
        out = os.path.join(ROOT, "docs", "img", "gui-thumbnail.png")
        subprocess.run(["convert", raw, "-crop", "1024x768+0+0", "+repage", "+dither",
                        "-colors", "256", out], check=True, timeout=60)
        return out
    return g.x.screenshot(str(tmp_path / "gui-thumbnail.png"))


def test_a_picture_shows_as_a_thumbnail_and_its_link_saves_it(xvfb, server, procs, sessions,
                                                             tmp_path):
    room = "#photos"  # (a server of its own: plain names in the picture)
    g = GuiProc(xvfb, server, tmp_path, "--name", "alice", "--room", room)
    procs.append(g.proc)
    g.wait(lambda st: st["title"].endswith(room) and st["pillow"], "alice in the room")
    bob, got = peer(server, sessions, "bob", room)
    g.wait(lambda st: any("bob (" in r["text"] for r in st["users"]), "bob in the list")
    bob.send("the view from the pier last night:")
    src = tmp_path / "sunset at the pier.png"
    data = picture(src)
    tid = bob.send_file(str(src))
    done = got.wait(lambda ev: isinstance(ev, events.TransferDone) and ev.id == tid, timeout=20)
    assert not done.error, done.error

    st = g.wait(lambda st: st["images"] == 1 and st["thumbnails"][0]["screen"],
                "the thumbnail in the log")
    thumb = st["thumbnails"][0]
    assert thumb["size"] == [240, 150]  # 640x400 scaled into 240x240, its proportions kept
    assert "link" in thumb["tags"]
    line = next(ln for ln in st["log"] if "sent sunset_at_the_pier.png" in ln)
    assert re.fullmatch(r"\d\d:\d\d:\d\d bob sent sunset_at_the_pier\.png \(\d+\.\d KB\) #1",
                        line), line
    link, = st["links"]
    assert link["text"] == "sunset_at_the_pier.png"
    bob.send("gorgeous colours")
    g.log_has("bob: gorgeous colours")
    shot = screenshot(g, tmp_path)
    assert os.path.getsize(shot) > 10_000

    # the link: Save as (Tk's own dialog), a path typed, Enter; saved byte-identical
    st = g.state()
    x, y, w, h = st["links"][0]["screen"]
    g.x.xdotool("mousemove", "--sync", str(x + w // 2), str(y + h // 2), "click", "1")
    dialog = g.x.find_window("^Save sunset_at_the_pier.png as$")
    target = tmp_path / "saved.png"
    g.x.xdotool("windowfocus", "--sync", dialog)
    g.x.xdotool("key", "ctrl+slash")  # select all in the file name field
    g.x.xdotool("type", "--delay", "5", str(target))
    g.x.xdotool("key", "Return")
    g.log_has(f"saved sunset_at_the_pier.png ({len(data) / 1000:.1f} KB) to {target}")
    assert target.read_bytes() == data

    # /send typed in the window: to the room, and its own thumbnail too
    mine = tmp_path / "mine.png"
    mine_data = picture(mine, (300, 600))
    g.type_line(f"/send {mine}")
    shared = got.wait(lambda ev: isinstance(ev, replies.FileShared) and ev.name == "mine.png",
                      timeout=20)
    assert shared.size == len(mine_data)
    st = g.wait(lambda st: st["images"] == 2, "the second thumbnail")
    assert sorted(t["size"] for t in st["thumbnails"]) == [[120, 240], [240, 150]]
    g.log_has("* mine.png sent")


NO_PILLOW_SLOW = """
import http.client, sys, time
sys.modules["PIL"] = None  # as if Pillow were not installed
from pychat.clients import gui, transfer
transfer.CHUNK = 16384
send = http.client.HTTPConnection.send
def slow_send(self, data):  # a slow link: 16 KiB every 20 ms (about 0.8 MB/s)
    if len(data) == transfer.CHUNK:
        time.sleep(0.02)
    return send(self, data)
http.client.HTTPConnection.send = slow_send
sys.exit(gui.main(sys.argv[1:]))
"""


CLIPBOARD_OWNER = """
import sys, tkinter
root = tkinter.Tk()
root.withdraw()
root.clipboard_clear()
root.clipboard_append(sys.argv[1])
root.update()
print("owning the clipboard", flush=True)
root.mainloop()
"""


class BareGui(GuiProc):
    """The GUI run without Pillow and with a slow link (its own process, patched)."""

    def __init__(self, x, port: int, tmp_path, *args: str):
        self.x = x
        self.state_file = str(tmp_path / f"gui-{uuid.uuid4().hex[:6]}.json")
        self.proc = Proc([sys.executable, "-c", NO_PILLOW_SLOW, "--port", str(port),
                          "--geometry", "1024x768+0+0", *args],
                         env={"DISPLAY": x.display, "PYCHAT_GUI_STATE_FILE": self.state_file},
                         name="pychat gui (no Pillow)")
        self.wid = x.find_window("PyChat")


def test_without_pillow_a_text_line_and_a_slow_upload_in_the_status_bar(xvfb, server, procs,
                                                                        sessions, tmp_path):
    room = f"#bare-{uuid.uuid4().hex[:4]}"
    g = BareGui(xvfb, server, tmp_path, "--name", "carol", "--room", room)
    procs.append(g.proc)
    g.wait(lambda st: st["title"].endswith(room), "carol in the room")
    assert g.state()["pillow"] is False
    dave, got = peer(server, sessions, "dave", room)
    src = tmp_path / "pier.png"
    picture(src)
    tid = dave.send_file(str(src))
    assert not got.wait(lambda ev: isinstance(ev, events.TransferDone) and ev.id == tid,
                        timeout=20).error
    st = g.wait(lambda st: st["links"], "the file's line")
    assert st["links"][0]["text"] == "pier.png" and st["images"] == 0
    assert any(re.fullmatch(r"\d\d:\d\d:\d\d dave sent pier\.png \(\d+\.\d KB\) #1", ln)
               for ln in st["log"])

    # a file pasted (as a file manager copies one: a file:// URI) becomes /send <path>
    note = tmp_path / "pasted note.txt"
    note.write_text("pasted\n")
    owner = Proc([sys.executable, "-c", CLIPBOARD_OWNER, "file://" + str(note).replace(" ", "%20")],
                 env={"DISPLAY": xvfb.display}, name="clipboard owner")
    procs.append(owner)
    owner.wait_for("^owning the clipboard$")
    g.x.xdotool("windowfocus", "--sync", g.wid)
    g.x.xdotool("key", "ctrl+v")
    g.wait(lambda st: st["input"] == f"/send {note}", "the pasted file as /send")
    g.x.xdotool("key", "Return")
    assert got.wait(lambda ev: isinstance(ev, replies.FileShared)
                    and ev.name == "pasted_note.txt", timeout=20).size == 7

    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(2_000_000))
    x, y, w, h = g.state()["send_file_screen"]  # Send file...: Tk's file dialog
    g.x.xdotool("mousemove", "--sync", str(x + w // 2), str(y + h // 2), "click", "1")
    dialog = g.x.find_window("^Send a file$")
    g.x.xdotool("windowfocus", "--sync", dialog)
    g.x.xdotool("key", "ctrl+slash")
    g.x.xdotool("type", "--delay", "5", str(big))
    g.x.xdotool("key", "Return")
    st = g.wait(lambda st: re.fullmatch(r"sending big\.bin \d+%", st["transfer"])
                and 0 < st["progress"] < 1, "the upload's progress in the status bar")
    got.wait(lambda ev: isinstance(ev, replies.FileShared) and ev.name == "big.bin", timeout=40)
    st = g.wait(lambda st: st["transfer"] == "", "the progress gone once it is done")
    g.log_has("* big.bin sent (2.0 MB)")
    assert st["images"] == 0


def test_make_thumbnail_checks_the_bytes_against_the_name(server, sessions, tmp_path):
    """The thumbnail maker (no Tk): a picture scaled into the box; bytes that are not what the
    name says (a PNG asked for as a .jpg) give no thumbnail, whatever the server did."""
    from pychat.clients.gui import make_thumbnail
    from pychat.clients.transfer import TransferError
    room = f"#t-{uuid.uuid4().hex[:4]}"
    s, got = peer(server, sessions, "erin", room)
    src = tmp_path / "a.png"
    picture(src, (500, 100))
    tid = s.send_file(str(src))
    done = got.wait(lambda ev: isinstance(ev, events.TransferDone) and ev.id == tid, timeout=20)
    assert make_thumbnail(done.url, "a.png", None).size == (240, 48)
    with pytest.raises(TransferError, match="not a JPEG image"):
        make_thumbnail(done.url, "a.jpg", None)
