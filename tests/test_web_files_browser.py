"""Files in the browser client (acceptor/web/app.js; PROTOCOL Part 5), in a real headless
Chromium driven by Selenium, against ``pychat serve`` with its file store and web door.

A file chosen in the page's file picker (the hidden ``<input type=file>`` given a path, as a
user's choice would), dropped on the page (a ``drop`` event carrying a ``DataTransfer``, as
Chromium makes one for a real drop) or pasted into the input (a ``paste`` event with the
clipboard's ``DataTransfer``) goes as ``/upload <bytes> <name> [target]`` on the WebSocket and
then by one HTTP ``PUT`` to the URL the server answers; what is checked is what the others get
(the ``FILE:`` line a line-protocol client reads, the bytes behind its URL) and what the pages
show (the file's line, its link, an image's preview decoded by the browser, a refusal). Nothing
sleeps: every step waits for the DOM state or the line it expects.

``PYCHAT_SCREENSHOTS=1`` writes the desktop preview's screenshot to docs/img/web-file-preview.png
(otherwise to the test's tmp_path).
"""

from __future__ import annotations

import base64
import math
import os
import re
import struct
import urllib.request
import zlib
from collections.abc import Iterator

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver

from support.client import Connection
from support.procs import ROOT, start_serve, web_port
from tests import test_web_browser as wb  # skips this module where Chromium is not

pytestmark = pytest.mark.e2e

# the page's browsers and line clients: the fixtures of tests/test_web_browser.py
browser = wb.browser
tcp = wb.tcp
wait, element, lines, line_with, me = wb.wait, wb.element, wb.lines, wb.line_with, wb.me
as_guest, join, unique, frames_sent = wb.as_guest, wb.join, wb.unique, wb.frames_sent

WAIT = wb.WAIT
FILE_RE = re.compile(r"(?:@time=\S+ )?FILE:(\d{6}) (\d+) (https?://\S+) (.+)\Z")
MAX_MB = 1  # the servers' --files-max-mb: a 2 MB file is refused


def png(width: int, height: int, seed: int = 0) -> bytes:
    """A valid RGB PNG of a small sunset (zlib and struct: no imaging library needed)."""
    rows = bytearray()
    sun_x, sun_y, sun_r = width * (0.62 + 0.05 * seed), height * 0.58, height * 0.17
    horizon = int(height * 0.66)
    for y in range(height):
        rows.append(0)  # filter: none
        t = y / max(1, horizon)
        for x in range(width):
            if y < horizon:
                r, g, b = 255 - int(70 * t), 120 + int(80 * t), 90 + int(40 * (1 - t))
                if math.hypot(x - sun_x, y - sun_y) < sun_r:
                    r, g, b = 255, 226, 120
            else:  # the sea, and the sun's reflection
                d = (y - horizon) / max(1, height - horizon)
                r, g, b = 30 + int(40 * (1 - d)), 60 + int(50 * (1 - d)), 110 + int(60 * (1 - d))
                if abs(x - sun_x) < sun_r * (1 - d) * 0.8 and (y // 4) % 2 == 0:
                    r, g, b = 250, 200, 110
            rows += bytes((r, g, b))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0,
                                                                0, 0))
            + chunk(b"IDAT", zlib.compress(bytes(rows), 9)) + chunk(b"IEND", b""))


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=WAIT) as r:
        return r.read()


def file_line(c: Connection, name: str) -> re.Match:
    """The ``FILE:`` line of ``name`` the line client reads next (other lines are skipped)."""
    line = c.expect(lambda ln: (m := FILE_RE.match(ln)) is not None and m.group(4) == name)
    m = FILE_RE.match(line)
    assert m is not None
    return m


FILES_JS = """
return Array.from(document.querySelectorAll('#log .line[data-kind="file"]')).map(n => {
  const a = n.querySelector('a.file-name'), img = n.querySelector('.file-preview img');
  const open = n.querySelector('a.file-preview');
  return {who: n.dataset.who, uid: n.dataset.uid, text: n.querySelector('.text').textContent,
    history: n.classList.contains('history'), href: a ? a.href : null,
    download: a ? a.getAttribute('download') : null, img: img ? img.src : null,
    width: img && img.complete ? img.naturalWidth : 0, shown: img ? img.clientWidth : 0,
    shownHeight: img ? img.clientHeight : 0, open: open ? open.href : null,
    target: open ? open.target : null, lazy: img ? img.loading : null,
    links: n.querySelectorAll('a').length, imgs: n.querySelectorAll('img').length};
});
"""

UPLOADS_JS = """
return Array.from(document.querySelectorAll('#log .line[data-state]')).map(n => ({
  kind: n.dataset.kind, state: n.dataset.state, text: n.querySelector('.text').textContent,
  bar: !!n.querySelector('progress')}));
"""


def files(driver: WebDriver) -> list[dict]:
    return driver.execute_script(FILES_JS)


def uploads(driver: WebDriver) -> list[dict]:
    return driver.execute_script(UPLOADS_JS)


def preview_of(url: str, width: int):
    """A condition: the file line of ``url`` with its image decoded (``width`` pixels wide)."""
    def check(d: WebDriver) -> dict | None:
        return next((f for f in files(d) if f["href"] == url and f["width"] == width), None)
    return check


def upload_done(name: str, state: str = "sent"):
    def check(d: WebDriver) -> dict | None:
        return next((u for u in uploads(d) if u["state"] == state and f" {name} (" in u["text"]),
                    None)
    return check


def midway(name: str):
    """A condition: ``name``'s upload line with its bar, part way (between 0 and 100%)."""
    def check(d: WebDriver) -> dict | None:
        for u in uploads(d):
            m = re.search(r": (\d+)%$", u["text"])
            if (u["state"] == "sending" and f" {name} (" in u["text"] and m
                    and 0 < int(m.group(1)) < 100 and u["bar"]):
                return u
        return None
    return check


def no_csp_problems(driver: WebDriver) -> None:
    problems = [e for e in driver.get_log("browser")
                if e["level"] == "SEVERE" or "Content Security Policy" in e["message"]]
    assert problems == [], problems


def to_browser_file(driver: WebDriver, data: bytes, name: str, kind: str) -> None:
    """``window.__file``: a File of ``data`` made in the page (for a drop or a paste)."""
    driver.execute_script(
        "const bytes = Uint8Array.from(atob(arguments[0]), c => c.charCodeAt(0));"
        "window.__file = new File([bytes], arguments[1], {type: arguments[2]});",
        base64.b64encode(data).decode(), name, kind)


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[wb.Served]:
    p, port = start_serve("--data-dir", str(tmp_path_factory.mktemp("web-files")),
                          "--files-max-mb", str(MAX_MB))
    yield wb.Served(p, port)
    p.stop()


# ---- tests -------------------------------------------------------------------------------------

def test_a_picture_from_the_file_picker_reaches_the_room_with_its_preview(served, browser, tcp,
                                                                         tmp_path):
    """The picker's PNG: the room's line client gets its FILE: line, its URL gives the bytes
    back, and both pages show the line, the link and the decoded preview; the screenshot."""
    out = os.path.join(ROOT, "docs", "img") if os.environ.get("PYCHAT_SCREENSHOTS") == "1" \
        else str(tmp_path)
    # plain names for the picture: no other test on this server takes them
    room, alice, carol = "#photos", "alice", "carol"
    bob = tcp(served.port, "bob", room)
    a = browser(served.url)
    alice_uid = as_guest(a, alice)
    join(a, room)
    c = browser(served.url)
    as_guest(c, carol)
    join(c, room)
    wait(a, wb.has_users(a, alice, carol), "carol in alice's list")
    bob.send("how was the evening at the pier?")
    wait(a, line_with(a, "how was the evening at the pier?"), "bob's line")
    wb.say(a, "look at this sunset:")

    # the button: reached with the keyboard (just before the input), labelled
    attach = element(a, "#attach")
    assert attach.get_attribute("aria-label") == "Send a file"
    element(a, "#input").send_keys(Keys.SHIFT, Keys.TAB)
    assert a.switch_to.active_element.get_attribute("id") == "attach"
    assert element(a, "#file-input").get_attribute("multiple") == "true"

    picture = png(480, 300)
    path = tmp_path / "sunset at the pier.png"  # spaces: sent as _
    path.write_bytes(picture)
    frames_sent(a)  # forget the frames so far
    element(a, "#file-input").send_keys(str(path))
    name = "sunset_at_the_pier.png"
    m = file_line(bob, name)
    assert (m.group(1), int(m.group(2))) == (alice_uid, len(picture))
    url = m.group(3)
    assert url.startswith(served.url + "files/"), url
    assert get(url) == picture
    assert f"/upload {len(picture)} {name}" in frames_sent(a)

    done = wait(a, upload_done(name), "the upload shown as sent")
    assert re.fullmatch(rf"sent {re.escape(name)} \(\d+\.\d KB\) to {room}", done["text"]), done
    assert done["kind"] == "upload" and not done["bar"], done
    for d in (a, c):
        shown = wait(d, preview_of(url, 480), "the picture's preview, decoded")
        assert shown["who"] == alice and shown["uid"] == alice_uid, shown
        assert shown["download"] == name and shown["open"] == url, shown
        assert shown["target"] == "_blank" and shown["lazy"] == "lazy", shown
        assert re.fullmatch(re.escape(name) + r" \(\d+\.\d KB\)", shown["text"]), shown
        assert 0 < shown["shown"] <= 240 and shown["shownHeight"] <= 240, shown  # sized by CSS
    own = a.find_element(By.CSS_SELECTOR, '#log .line[data-kind="file"]')
    assert "own" in (own.get_attribute("class") or "")
    bob.send("wow, gorgeous!")
    wait(a, line_with(a, "wow, gorgeous!"), "bob's answer")
    a.save_screenshot(os.path.join(out, "web-file-preview.png"))
    # in the room's history: carol leaves and comes back, and sees it again, as history
    element(c, '#rooms button[data-room="#lobby"]').click()
    wait(c, lambda d: element(d, "#room").text == "#lobby", "carol in #lobby")
    join(c, room)
    again = wait(c, lambda d: next((f for f in files(d) if f["history"] and f["width"] == 480),
                                   None), "the picture again, from the history, with its preview")
    assert again["href"] == url and again["who"] == alice, again
    for d in (a, c):
        no_csp_problems(d)


def test_a_refused_upload_says_why_and_the_next_one_still_goes(served, browser, tcp, tmp_path):
    """On a phone: the button is a touch target; two files chosen at once, the first over the
    server's limit: its refusal is shown on its own line, and the second is sent (each
    UPLOAD:/ERROR: paired with its own /upload)."""
    room = unique("#big-")
    bob = tcp(served.port, unique("bob"), room)
    a = browser(served.url, size=wb.PHONE, mobile=True)
    as_guest(a, unique("ann"))
    element(a, "#rooms-toggle").click()
    join(a, room)
    box = wb.box(a, "#attach")
    assert box["width"] >= 44 and box["height"] >= 44, box
    assert element(a, "#attach").is_displayed()
    big, small = tmp_path / "big.bin", tmp_path / "field recording.bin"
    big.write_bytes(os.urandom(2 * 1024 * 1024))
    data = os.urandom(600_000)
    small.write_bytes(data)
    # a slow uplink (300 kB/s), for the progress to be seen
    a.execute_cdp_cmd("Network.enable", {})
    a.execute_cdp_cmd("Network.emulateNetworkConditions", {
        "offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": 300_000})
    element(a, "#file-input").send_keys(f"{big}\n{small}")
    refused = wait(a, upload_done("big.bin", "failed"), "the refusal shown")
    assert refused["kind"] == "error" and not refused["bar"], refused
    assert refused["text"].startswith("could not send big.bin (2.1 MB): file too large"), refused
    name = "field_recording.bin"

    going = wait(a, midway(name), "the upload's progress, part way")
    assert going["text"].startswith(f"sending {name} (600.0 KB) to {room}: "), going
    wait(a, upload_done(name), "the second upload shown as sent")
    m = file_line(bob, name)
    assert get(m.group(3)) == data
    shown = wait(a, lambda d: next((f for f in files(d) if f["href"] == m.group(3)), None),
                 "the file's line")
    assert shown["imgs"] == 0 and shown["text"] == f"{name} (600.0 KB)", shown  # no preview
    assert not [ln for ln in lines(a) if "big.bin" in ln["text"] and ln["kind"] == "file"]
    # one cancelled part way: the server gives it up, and says so
    gone = tmp_path / "to cancel.bin"
    gone.write_bytes(os.urandom(600_000))
    element(a, "#file-input").send_keys(str(gone))
    wait(a, midway("to_cancel.bin"), "the second upload's progress")
    a.save_screenshot(str(tmp_path / "web-file-phone.png"))
    cancel = element(a, '#log .line[data-state="sending"] button')
    assert cancel.get_attribute("aria-label") == "Cancel sending to_cancel.bin"
    assert cancel.size["height"] >= 44, cancel.size  # a touch target
    cancel.click()
    cancelled = wait(a, upload_done("to_cancel.bin", "failed"), "the upload cancelled")
    assert cancelled["text"] == "could not send to_cancel.bin (600.0 KB): cancelled", cancelled
    wait(a, lambda d: [ln for ln in lines(d) if ln["kind"] == "error"
                       and ln["text"].startswith("upload of to_cancel.bin failed: ")],
         "the server giving the upload up")
    no_csp_problems(a)


def test_a_dropped_file_goes_to_the_room_and_a_pasted_one_privately(served, browser, tcp):
    """A drop anywhere on the page (its zone says where the files will go) sends to the room; an
    image pasted into the input while it holds ``/msg <uid> `` goes to that user only."""
    room, bob_name = unique("#drop-"), unique("bob")
    bob, dan = tcp(served.port, bob_name, room), tcp(served.port, unique("dan"), room)
    a = browser(served.url)
    as_guest(a, unique("ann"))
    join(a, room)
    dropped = png(64, 40, seed=1)
    to_browser_file(a, dropped, "dropped pic.png", "image/png")
    a.execute_script("""
      const dt = new DataTransfer(); dt.items.add(window.__file);
      document.getElementById('log').dispatchEvent(new DragEvent('dragenter',
        {dataTransfer: dt, bubbles: true, cancelable: true}));""")
    assert a.execute_script("return document.body.classList.contains('dragging')")
    assert element(a, "#drop-text").text == f"Drop files to send them to {room}"
    assert element(a, "#drop-zone").get_attribute("aria-live") == "assertive"
    was_cancelled = a.execute_script("""
      const dt = new DataTransfer(); dt.items.add(window.__file);
      return !document.getElementById('log').dispatchEvent(new DragEvent('drop',
        {dataTransfer: dt, bubbles: true, cancelable: true}));""")
    assert was_cancelled  # the page took the drop: the browser does not open the file instead
    assert not a.execute_script("return document.body.classList.contains('dragging')")
    assert element(a, "#drop-text").text == ""
    m = file_line(bob, "dropped_pic.png")
    assert get(m.group(3)) == dropped
    wait(a, preview_of(m.group(3), 64), "the dropped picture's preview")
    file_line(dan, "dropped_pic.png")

    # a paste while writing to bob: the picture goes to bob (and back to ann) only
    pasted = png(50, 30, seed=2)
    to_browser_file(a, pasted, "image.png", "image/png")
    element(a, "#input").send_keys(f"/msg {bob.uid} ")
    a.execute_script("""
      const dt = new DataTransfer(); dt.items.add(window.__file);
      document.getElementById('input').dispatchEvent(new ClipboardEvent('paste',
        {clipboardData: dt, bubbles: true, cancelable: true}));""")
    m = bob.expect(lambda ln: (f := FILE_RE.match(ln)) is not None and f.group(4).startswith(
        "pasted-"))
    got = FILE_RE.match(m)
    assert got is not None
    assert re.fullmatch(r"pasted-\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d\.png", got.group(4)), m
    assert get(got.group(3)) == pasted
    assert f"/upload {len(pasted)} {got.group(4)} {bob.uid}" in frames_sent(a)
    wait(a, preview_of(got.group(3), 50), "the pasted picture's preview")
    wait(a, upload_done(got.group(4)), "the paste's upload shown as sent")
    assert next(u["text"] for u in uploads(a) if got.group(4) in u["text"]).endswith(
        f"privately to {bob_name}")  # the uid typed, shown as its name
    assert element(a, "#input").get_attribute("value") == f"/msg {bob.uid} "  # kept, not pasted
    # dan, in the room, never got it: a line bob says after it reaches dan first
    bob.send("after the private picture")
    dan.expect(lambda ln: ln.endswith("after the private picture"))
    assert not [ln for ln in dan.seen if "pasted-" in ln], dan.seen
    no_csp_problems(a)


def test_a_file_url_of_another_origin_is_taken_on_the_page_door(browser, tcp, tmp_path):
    """A server whose --web-url is not the address the page has: its UPLOAD: URL is on another
    origin, so the page sends the bytes to the same path on its own door (the only one its CSP
    lets it reach); the FILE: line's URL is another origin's too, so the page links the same
    /files/ path on its own door, which serves it (every web door serves every file)."""
    foreign = "http://files.example.test:8080"
    p, port = start_serve("--data-dir", str(tmp_path / "data"), "--web-url", foreign,
                          acceptors=1)
    try:
        url = f"http://127.0.0.1:{web_port(p)}/"
        room = unique("#far-")
        bob = tcp(port, unique("bob"), room)
        a = browser(url)
        as_guest(a, unique("ann"))
        join(a, room)
        picture = png(40, 30)
        path = tmp_path / "far.png"
        path.write_bytes(picture)
        element(a, "#file-input").send_keys(str(path))
        m = file_line(bob, "far.png")
        assert m.group(3).startswith(foreign + "/files/"), m.group(0)
        assert get(url + m.group(3)[len(foreign) + 1:]) == picture  # the file, on the real door
        wait(a, upload_done("far.png"), "the upload, sent to the page's own door")
        own = url + m.group(3)[len(foreign) + 1:]
        shown = wait(a, lambda d: next((f for f in files(d) if f["href"] == own), None),
                     "the file line, linked on the page's own door")
        assert shown["links"] >= 1 and shown["download"] == "far.png", shown
        wait(a, preview_of(own, 40), "its preview, decoded from the page's own door")
        no_csp_problems(a)
    finally:
        p.stop()
