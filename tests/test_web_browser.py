"""The browser client (acceptor/web/: index.html, app.js, style.css) in a real headless
Chromium, driven by Selenium, against ``pychat serve`` and its web door (``/ws``).

Every assertion is on what a user sees: the log's lines (their kind, sender, text, clock), the
user list, the room shown, the login form's message. Nothing sleeps: each step waits for the DOM
state it expects (``WebDriverWait``), with a timeout. Browsers use a fresh profile each and are
quit at the end of their test; servers are stopped by pid. Rooms and names are the test's own,
so the module's tests share one server (``served``) where they can.

Chromium and its driver are Debian's (/usr/bin/chromium, /usr/bin/chromedriver), started
offline (SE_OFFLINE: Selenium Manager never looks for a browser on the network). Without
/usr/bin/chromium the module is skipped, saying so.

``PYCHAT_SCREENSHOTS=1`` writes the phone and desktop screenshots to docs/img/ (otherwise to the
test's tmp_path).
"""

from __future__ import annotations

import datetime
import json
import os
import re
import signal
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from support.client import Connection
from support.procs import ROOT, Proc, child_pids, start_serve, web_port

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

if not os.path.exists(CHROMIUM):
    pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium chromium-driver)",
                allow_module_level=True)

from selenium import webdriver  # noqa: E402  (after the skip: only where Chromium is)
from selenium.common.exceptions import TimeoutException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

pytestmark = pytest.mark.e2e

WAIT = 15.0          # seconds a step may take before the test fails
PASSWORD = "correct-horse-9"
PHONE = (390, 844)
DESKTOP = (1280, 800)


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


# ---- servers -----------------------------------------------------------------------------------

class Served:
    """A ``pychat serve``: its process, line port and web port."""

    def __init__(self, p: Proc, port: int):
        self.p, self.port = p, port
        self.web = web_port(p)
        self.url = f"http://127.0.0.1:{self.web}/"


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[Served]:
    p, port = start_serve("--data-dir", str(tmp_path_factory.mktemp("web-data")))
    yield Served(p, port)
    p.stop()


@pytest.fixture
def tcp() -> Iterator[Callable[..., Connection]]:
    """``tcp(port, name, room)``: a line-protocol client with ``/cap time end``, named and in
    the room; all are closed at the end."""
    opened: list[Connection] = []

    def make(port: int, name: str, room: str) -> Connection:
        c = Connection("127.0.0.1", port)
        opened.append(c)
        c.handshake()
        c.ask("/cap time end", word="cap")
        assert c.ask(f"/nick {name}")[0] == f"OK nick {name}"
        assert c.ask(f"/join {room}")[0] == f"ROOM:{room}"
        return c

    yield make
    for c in opened:
        c.close()


# ---- browsers ----------------------------------------------------------------------------------

@pytest.fixture
def browser(tmp_path, monkeypatch) -> Iterator[Callable[..., WebDriver]]:
    """``browser(url, size=DESKTOP, timezone=None, mobile=False)``: a headless Chromium with a
    fresh profile showing ``url``; every one is quit when the test ends."""
    monkeypatch.setenv("SE_OFFLINE", "true")
    drivers: list[WebDriver] = []

    def make(url: str, size: tuple[int, int] = DESKTOP, timezone: str | None = None,
             mobile: bool = False) -> WebDriver:
        profile = tmp_path / f"chromium-{len(drivers)}"
        profile.mkdir()
        opts = webdriver.ChromeOptions()
        opts.binary_location = CHROMIUM
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-features=Translate,MediaRouter,OptimizationHints",
                    f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}"):
            opts.add_argument(arg)
        if mobile:
            opts.add_experimental_option("mobileEmulation", {
                "deviceMetrics": {"width": size[0], "height": size[1], "pixelRatio": 2,
                                  "touch": True, "mobile": True},
                "userAgent": "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 "
                             "(KHTML, like Gecko) Chrome/156.0 Mobile Safari/537.36"})
        # the console (CSP reports), and the performance log: the WebSocket frames sent
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
        driver = webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))
        drivers.append(driver)
        if not mobile:  # --window-size is the window; the page gets exactly this viewport
            driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
                "width": size[0], "height": size[1], "deviceScaleFactor": 1, "mobile": False})
        if timezone:
            driver.execute_cdp_cmd("Emulation.setTimezoneOverride", {"timezoneId": timezone})
        driver.get(url)
        return driver

    yield make
    for driver in drivers:
        try:
            driver.quit()
        except Exception:  # a driver that died already: nothing left to quit
            pass


def wait(driver: WebDriver, condition: Callable[[WebDriver], Any], what: str,
         timeout: float = WAIT) -> Any:
    """Wait until ``condition(driver)`` is truthy; fail saying ``what`` was awaited, and what
    the page showed then."""
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.05).until(condition)
    except TimeoutException:
        raise AssertionError(f"timed out after {timeout}s waiting for {what}; the page showed:\n"
                             + json.dumps(seen(driver), indent=1)[-4000:]) from None


LINES_JS = """
return Array.from(document.querySelectorAll('#log .line')).map(n => ({
  kind: n.dataset.kind, who: n.dataset.who || '', uid: n.dataset.uid || '',
  text: n.querySelector('.text') ? n.querySelector('.text').textContent : '',
  clock: n.querySelector('.clock').textContent,
  stamp: n.querySelector('.clock').getAttribute('datetime') || '',
  history: n.classList.contains('history'), mention: n.classList.contains('mention')}));
"""

USERS_JS = """
return Array.from(document.querySelectorAll('#users button[data-uid]')).map(b => ({
  uid: b.dataset.uid, name: b.dataset.name, me: b.classList.contains('me')}));
"""


def lines(driver: WebDriver) -> list[dict]:
    return driver.execute_script(LINES_JS)


def users(driver: WebDriver) -> list[dict]:
    return driver.execute_script(USERS_JS)


def seen(driver: WebDriver) -> dict:
    """What the page shows, for failure messages."""
    try:
        return driver.execute_script(
            "return {room: document.getElementById('room').textContent,"
            " who: document.getElementById('who').textContent,"
            " status: document.getElementById('status').textContent,"
            " login: document.getElementById('login-error').textContent,"
            " dialog: document.getElementById('login').open,"
            " users: Array.from(document.querySelectorAll('#users button'))"
            ".map(b => b.textContent),"
            " log: Array.from(document.querySelectorAll('#log .line')).slice(-25)"
            ".map(n => n.dataset.kind + ' | ' + n.textContent)};")
    except Exception as e:  # the page itself is gone
        return {"error": str(e)}


def line_with(driver: WebDriver, text: str, **want: Any) -> Callable[[WebDriver], Any]:
    """A condition: a log line whose text is ``text`` and whose fields are ``want``."""
    def check(d: WebDriver) -> dict | None:
        for ln in lines(d):
            if ln["text"] == text and all(ln[k] == v for k, v in want.items()):
                return ln
        return None
    return check


def element(driver: WebDriver, css: str):
    return driver.find_element(By.CSS_SELECTOR, css)


def me(driver: WebDriver) -> dict:
    return driver.execute_script("const w = document.getElementById('who');"
                                 "return {uid: w.dataset.uid, name: w.dataset.name,"
                                 " account: w.dataset.account, text: w.textContent};")


def stored(driver: WebDriver) -> dict:
    """What the page keeps in sessionStorage for a reload."""
    return json.loads(driver.execute_script(
        "return sessionStorage.getItem('pychat.session') || '{}'"))


def as_guest(driver: WebDriver, name: str) -> str:
    """The login form's Guest with ``name``; returns the uid the page shows."""
    wait(driver, lambda d: element(d, "#login").is_displayed(), "the login form")
    element(driver, "#login-name").send_keys(name)
    element(driver, "#guest-button").click()
    wait(driver, lambda d: me(d)["name"] == name, f"the name {name} taken")
    assert not element(driver, "#login").is_displayed()
    assert driver.switch_to.active_element.get_attribute("id") == "input"  # ready to type
    return me(driver)["uid"]


def say(driver: WebDriver, text: str) -> None:
    box = element(driver, "#input")
    box.send_keys(text)
    box.send_keys(Keys.ENTER)


def join(driver: WebDriver, room: str) -> None:
    """Join ``room`` with the room field and its Join button."""
    field = element(driver, "#join-room")
    field.clear()
    field.send_keys(room)
    element(driver, "#join").click()
    wait(driver, lambda d: element(d, "#room").text == room, f"the room shown as {room}")


def tcp_sees(c: Connection, *endings: str) -> list[str]:
    """Read until the line client has received a line ending so for each of ``endings``;
    returns them (in the order of ``endings``)."""
    def found() -> list[str] | None:
        got = [next((ln for ln in c.seen if ln.endswith(e)), None) for e in endings]
        return None if None in got else [ln for ln in got if ln is not None]
    while (got := found()) is None:
        c.read_line()
    return got


def frames_sent(driver: WebDriver) -> list[str]:
    """The WebSocket frames the page sent since the last call (Chromium's performance log)."""
    out = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.webSocketFrameSent":
            out.append(message["params"]["response"]["payloadData"])
    return out


def has_users(driver: WebDriver, *names: str) -> Callable[[WebDriver], bool]:
    return lambda d: set(names) <= {u["name"] for u in users(d)}


# ---- tests -------------------------------------------------------------------------------------

def test_two_browsers_and_a_tcp_client_chat_in_a_room(served, browser, tcp):
    room = unique("#chat-")
    ann, bob, carl = unique("ann"), unique("bob"), unique("carl")
    a = browser(served.url, timezone="Asia/Kolkata")  # UTC+05:30: clocks in the viewer's time
    b = browser(served.url)
    as_guest(a, ann)
    as_guest(b, bob)
    c = tcp(served.port, carl, room)
    join(a, room)
    join(b, room)
    for d in (a, b):
        wait(d, has_users(d, ann, bob, carl), "all three in the user list")

    say(a, "hello from ann")
    say(b, f"hi {ann}, bob here")
    c.send("carl over tcp")
    stamped = tcp_sees(c, f"{c.uid}: carl over tcp", ": hello from ann", f": hi {ann}, bob here")[0]

    wait(a, line_with(a, "hello from ann", kind="own", who=ann), "ann's own line, as own")
    wait(b, line_with(b, "hello from ann", kind="public", who=ann), "ann's line at bob's")
    mention = wait(a, line_with(a, f"hi {ann}, bob here", kind="public", who=bob),
                   "bob's line at ann's")
    assert mention["mention"], "a line naming ann is highlighted for ann"
    assert not wait(b, line_with(b, f"hi {ann}, bob here", kind="own"), "bob's own line")[
        "mention"]
    got = wait(a, line_with(a, "carl over tcp", kind="public", who=carl), "carl's line at ann's")
    wait(b, line_with(b, "carl over tcp", kind="public", who=carl), "carl's line at bob's")

    # the clock is the server's stamp in the viewer's time zone (Asia/Kolkata, +05:30)
    stamp = re.match(r"@time=(\S+) ", stamped).group(1)
    assert got["stamp"] == stamp
    utc = datetime.datetime.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S")
    assert got["clock"] == (utc + datetime.timedelta(hours=5, minutes=30)).strftime("%H:%M:%S")

    # bob leaves: the others see it in their lists
    join(b, unique("#elsewhere-"))
    wait(a, lambda d: bob not in {u["name"] for u in users(d)}, "bob gone from ann's list")
    assert {u["name"] for u in users(a)} == {ann, carl}
    assert [u["name"] for u in users(a) if u["me"]] == [ann]


def test_a_private_message_started_from_the_user_list(served, browser, tcp):
    room = unique("#pm-")
    ann, bob, carl = unique("ann"), unique("bob"), unique("carl")
    a, b = browser(served.url), browser(served.url)
    ann_uid = as_guest(a, ann)
    as_guest(b, bob)
    c = tcp(served.port, carl, room)
    join(a, room)
    join(b, room)
    wait(a, has_users(a, bob, carl), "bob and carl in ann's list")
    by_name = {u["name"]: u["uid"] for u in users(a)}

    # a click on bob starts a private message to him, in the input, which has the keyboard
    element(a, f'#users button[data-uid="{by_name[bob]}"]').click()
    assert element(a, "#input").get_attribute("value") == f"/msg {by_name[bob]} "
    assert a.switch_to.active_element.get_attribute("id") == "input"
    a.switch_to.active_element.send_keys("psst, bob" + Keys.ENTER)
    wait(b, line_with(b, "psst, bob", kind="private", who=f"from {ann}"),
         "the private line at bob's")
    wait(a, line_with(a, "psst, bob", kind="private", who=f"to {bob}"), "ann's echo, as private")

    # the same to the line client: a private line there
    element(a, f'#users button[data-uid="{by_name[carl]}"]').click()
    a.switch_to.active_element.send_keys("psst, carl" + Keys.ENTER)
    assert tcp_sees(c, f"[Private] {ann_uid}: psst, carl")

    # bob answers from his own list: private at both ends
    wait(b, has_users(b, ann), "ann in bob's list")
    ann_at_bob = next(u["uid"] for u in users(b) if u["name"] == ann)
    element(b, f'#users button[data-uid="{ann_at_bob}"]').click()
    b.switch_to.active_element.send_keys("psst back" + Keys.ENTER)
    wait(a, line_with(a, "psst back", kind="private", who=f"from {bob}"), "bob's reply at ann's")
    wait(b, line_with(b, "psst back", kind="private", who=f"to {ann}"), "bob's echo, as private")
    # ... and nobody else saw them: carl's line client got only its own private line
    c.send("/ping done")
    c.expect("PONG done")
    assert not [ln for ln in c.seen if "psst, bob" in ln or "psst back" in ln]
    assert not [ln for ln in lines(b) if ln["text"] == "psst, carl"]


def test_entering_a_room_shows_its_history(served, browser, tcp):
    room_a, room_b = unique("#a-"), unique("#b-")
    ann, carl = unique("ann"), unique("carl")
    c = tcp(served.port, carl, room_b)
    said = [f"said before {i}" for i in range(3)]
    for text in said:
        c.send(text)
    tcp_sees(c, *[f"{c.uid}: {text}" for text in said])

    a = browser(served.url)
    as_guest(a, ann)
    join(a, room_a)
    assert not [ln for ln in lines(a) if ln["text"] in said]
    say(a, f"/join {room_b}")  # typed, as a command
    wait(a, lambda d: element(d, "#room").text == room_b, f"the room shown as {room_b}")
    for text in said:
        wait(a, line_with(a, text, kind="public", who=carl, history=True), f"{text!r} as history")
    shown = [ln["text"] for ln in lines(a) if ln["text"] in said]
    assert shown == said, "history is shown once, oldest first"
    c.send("said live")
    wait(a, line_with(a, "said live", kind="public", who=carl, history=False), "a live line")
    wait(a, lambda d: d.find_elements(By.CSS_SELECTOR, f'#rooms button[data-room="{room_b}"]'
                                      '[aria-current="true"]'), "the room current in the list")
    wait(a, has_users(a, ann, carl), "both in the room's list")

    # the rooms list: #lobby is always there, a click goes back to it
    element(a, '#rooms button[data-room="#lobby"]').click()
    wait(a, lambda d: element(d, "#room").text == "#lobby", "the room shown as #lobby")
    # coming back to the room shows its history again, the live line included
    join(a, room_b)
    wait(a, lambda d: sum(ln["text"] == "said live" for ln in lines(d)) == 2,
         "the live line again, as history")
    assert [ln["history"] for ln in lines(a) if ln["text"] == "said live"] == [False, True]


def test_the_browser_reconnects_by_itself_with_its_name_and_room(tmp_path, browser, tcp):
    p, port = start_serve("--data-dir", str(tmp_path / "data"), acceptors=1)
    try:
        url = f"http://127.0.0.1:{web_port(p)}/"
        room, ann = unique("#back-"), unique("ann")
        a = browser(url)
        as_guest(a, ann)
        join(a, room)
        # and a browser logged in to an account: it comes back by its resume token
        b, bea = browser(url), unique("bea")
        wait(b, lambda d: element(d, "#login").is_displayed(), "the login form")
        element(b, "#login-name").send_keys(bea)
        element(b, "#login-password").send_keys(PASSWORD)
        element(b, "#register-button").click()
        wait(b, lambda d: me(d)["account"] == bea, "bea registered and logged in")
        join(b, room)
        wait(b, lambda d: stored(d).get("token"), "bea's resume token")
        assert f"/register {PASSWORD}" in frames_sent(b)
        c = tcp(port, unique("carl"), room)
        wait(a, has_users(a, ann, bea), "ann and bea in ann's list")
        victim = child_pids(p)["acceptor 1"]
        os.kill(victim, signal.SIGKILL)
        c.close()
        while True:  # serve restarts the acceptor (the web door with it, on the same port)
            pid = int(p.wait_for(r"started acceptor 1 \(pid (\d+)\)", timeout=WAIT).group(1))
            if pid != victim:
                break
        wait(a, lambda d: any(ln["kind"] == "system" and ln["text"].startswith("disconnected (")
                              and "attempt 1" in ln["text"] for ln in lines(d)),
             "the drop, and the backoff's first attempt, in the log")
        wait(a, lambda d: element(d, "#status").text == f"reconnected as {ann} in {room}",
             "the page back with its name and room", timeout=25)
        carl = unique("carl")
        wait(b, lambda d: element(d, "#status").text == f"reconnected as {bea} in {room}",
             "bea back, logged in, in her room", timeout=25)
        c2 = tcp(port, carl, room)
        names = " ".join(c2.ask("/users"))
        assert f"={ann}" in names and f"={bea}" in names, names
        c2.send("said after the restart")
        for d in (a, b):
            wait(d, line_with(d, "said after the restart", kind="public", who=carl),
                 "a line said after the restart")
            assert element(d, "#room").text == room
            assert element(d, "#status").get_attribute("data-state") == "connected"
        assert [u["name"] for u in users(a) if u["me"]] == [ann]
        assert me(b)["account"] == bea and element(b, "#who").text == f"{bea} (logged in)"
        # the reconnect logged in with the token, and the password never went again
        again = frames_sent(b)
        assert f"/resume {bea} {stored(b)['token']}" in again, again
        assert not [f for f in again if PASSWORD in f], again
    finally:
        p.stop()


PROBES = ['<script>window.__pwned=1</script>',
          '<img src=x onerror="window.__pwned=2">',
          '<a href="javascript:window.__pwned=3">click</a> javascript:window.__pwned=4',
          'see http://x.test/"><img src=x onerror=window.__pwned=5> &lt;b&gt; &amp;']


def test_markup_from_the_network_is_shown_as_text(served, browser, tcp):
    room = unique("#xss-")
    ann, carl = unique("ann"), unique("carl")
    a = browser(served.url)
    ann_uid = as_guest(a, ann)
    join(a, room)
    c = tcp(served.port, carl, room)
    # names cannot carry markup: the server's rules refuse it
    for bad in ("<script>x</script>", '<img src=x onerror="window.__pwned=6">'):
        assert c.ask(f"/nick {bad}")[0].startswith(("ERROR: invalid name", "ERROR: usage"))
    for probe in PROBES:
        c.send(probe)
        c.send(f"/msg {ann_uid} {probe}")
    for probe in PROBES:
        wait(a, line_with(a, probe, kind="public", who=carl), f"{probe!r} shown as text")
        wait(a, line_with(a, probe, kind="private", who=f"from {carl}"),
             f"{probe!r} shown as text in a private line")
    # a topic is text too: an account owns the new room it enters first, and sets it
    owner, topic_room = unique("own"), unique("#topic-")
    o = Connection("127.0.0.1", served.port)
    try:
        o.handshake()
        o.ask("/cap end", word="cap")
        assert o.ask(f"/nick {owner}")[0] == f"OK nick {owner}"
        assert o.ask(f"/register {PASSWORD}") == [f"OK register {owner}"]
        o.ask(f"/join {topic_room}")
        assert o.ask(f"/topic {PROBES[1]}") == [f"TOPIC:{topic_room} {PROBES[1]}"]
        join(a, topic_room)
        wait(a, lambda d: element(d, "#topic").text == f"Topic: {PROBES[1]}", "the topic as text")
    finally:
        o.close()
    assert a.execute_script("return window.__pwned") is None
    assert a.find_elements(By.CSS_SELECTOR, "#log script, #log img, #log iframe, #topic *, "
                                            "#users script, #users img") == []
    hrefs = [x.get_attribute("href") for x in a.find_elements(By.CSS_SELECTOR, "#log a")]
    assert hrefs and all(h == "http://x.test/" for h in hrefs), hrefs
    assert all(x.get_attribute("rel") == "noopener noreferrer"
               for x in a.find_elements(By.CSS_SELECTOR, "#log a"))


def test_register_log_in_and_a_refused_login_in_the_form(served, browser):
    name = unique("reg")
    a = browser(served.url)
    wait(a, lambda d: element(d, "#login").is_displayed(), "the login form")
    element(a, "#login-name").send_keys(name)
    element(a, "#login-password").send_keys("short")
    element(a, "#register-button").click()  # refused before anything is sent
    assert element(a, "#login-error").text == ("a password is 8-256 characters, with no spaces "
                                               "or control characters")
    element(a, "#login-password").send_keys(PASSWORD)
    element(a, "#register-button").click()
    wait(a, lambda d: me(d)["account"] == name, "registered and logged in")
    assert not element(a, "#login").is_displayed()
    assert element(a, "#who").text == f"{name} (logged in)"
    assert element(a, "#account-button").text == "Log out"
    wait(a, line_with(a, f"account {name} made: you are logged in as {name}", kind="system"),
         "the registration in the log")
    # the page keeps a resume token, never the password
    kept = wait(a, lambda d: stored(d) if stored(d).get("token") else None,
                "a resume token kept in sessionStorage")
    assert kept["account"] == name and len(kept["token"]) == 43, kept
    assert PASSWORD not in a.execute_script("return JSON.stringify(sessionStorage) + "
                                            "JSON.stringify(localStorage) + document.cookie + "
                                            "document.documentElement.outerHTML")
    # a reload logs in again with the token: no form
    a.refresh()
    wait(a, lambda d: me(d)["account"] == name, "logged in again after a reload, by token")
    assert not element(a, "#login").is_displayed()

    # another browser: the name is registered, and a wrong password is refused in the form
    b = browser(served.url)
    wait(b, lambda d: element(d, "#login").is_displayed(), "the login form")
    element(b, "#login-name").send_keys(name)
    element(b, "#login-password").send_keys(PASSWORD)
    element(b, "#register-button").click()
    wait(b, lambda d: element(d, "#login-error").text == f"name {name} is registered",
         "registering a registered name refused in the form")
    element(b, "#login-password").send_keys("wrong-password-1" + Keys.ENTER)  # Enter: Log in
    wait(b, lambda d: element(d, "#login-error").text == "login failed",
         "the refusal in the form")
    assert element(b, "#login").is_displayed()
    assert element(b, "#login-password").get_attribute("value") == ""
    assert me(b)["account"] == ""
    element(b, "#login-password").send_keys(PASSWORD + Keys.ENTER)
    wait(b, lambda d: me(d)["account"] == name, "logged in with the right password")
    assert not element(b, "#login").is_displayed()
    element(b, "#account-button").click()  # Log out
    wait(b, lambda d: element(d, "#who").text.startswith("guest"), "logged out: a guest")
    assert element(b, "#account-button").text == "Log in"


def box(driver: WebDriver, css: str) -> dict:
    return driver.execute_script(
        "const r = document.querySelector(arguments[0]).getBoundingClientRect();"
        "return {x: r.x, y: r.y, width: r.width, height: r.height};", css)


def conversation(port: int, room: str, web: WebDriver) -> list[Connection]:
    """A few lines in ``room`` from two line clients (bob and carol) and the browser ``web``
    (alice); returns the clients, still in the room."""
    bob = Connection("127.0.0.1", port)
    carol = Connection("127.0.0.1", port)
    for c, name in ((bob, "bob"), (carol, "carol")):
        c.handshake()
        c.ask("/cap end", word="cap")
        c.ask(f"/nick {name}")
        c.ask(f"/join {room}")
    bob.send("morning! the deploy went out at 09:00")
    tcp_sees(bob, "morning! the deploy went out at 09:00")
    carol.send("nice. release notes: https://example.org/notes")
    tcp_sees(carol, "release notes: https://example.org/notes")
    say(web, "thanks both, I'll check the dashboards")
    tcp_sees(bob, "thanks both, I'll check the dashboards")
    bob.send("alice: can you look at the login page on phones?")
    wait(web, line_with(web, "alice: can you look at the login page on phones?", mention=True),
         "the conversation")
    carol.send(f"/msg {me(web)['uid']} lunch at 12?")
    wait(web, line_with(web, "lunch at 12?", kind="private"), "a private line")
    return [bob, carol]


def test_phone_and_desktop_layouts_and_screenshots(tmp_path, browser):
    out = os.path.join(ROOT, "docs", "img") if os.environ.get("PYCHAT_SCREENSHOTS") == "1" \
        else str(tmp_path)
    # a server of its own: plain names in the pictures
    p, port = start_serve("--data-dir", str(tmp_path / "data"))
    others: list[Connection] = []
    try:
        url = f"http://127.0.0.1:{web_port(p)}/"
        phone = browser(url, size=PHONE, mobile=True)
        as_guest(phone, "alice")
        assert not element(phone, "#join-room").is_displayed()  # the rooms: behind their button
        element(phone, "#rooms-toggle").click()
        join(phone, "#general")
        wait(phone, lambda d: not element(d, "#rooms-panel").is_displayed(), "the rooms closed")
        others = conversation(port, "#general", phone)

        assert phone.execute_script("return innerWidth") == PHONE[0]
        # the user list is behind its button; the log has the whole width
        assert not element(phone, "#users").is_displayed()
        assert element(phone, "#users-toggle").is_displayed()
        assert element(phone, "#users-toggle").get_attribute("aria-expanded") == "false"
        assert box(phone, "#log")["width"] >= PHONE[0] - 2
        for css in ("#users-toggle", "#rooms-toggle", "#account-button", "#input", "#send"):
            assert box(phone, css)["height"] >= 44, css
        phone.save_screenshot(os.path.join(out, "web-phone.png"))
        element(phone, "#users-toggle").click()
        wait(phone, lambda d: element(d, "#users").is_displayed(), "the user list, opened")
        assert element(phone, "#users-toggle").get_attribute("aria-expanded") == "true"
        names = [u["name"] for u in users(phone)]
        assert names == ["alice", "bob", "carol"], names
        rows = phone.find_elements(By.CSS_SELECTOR, "#users button")
        assert all(r.size["height"] >= 44 for r in rows), [r.size for r in rows]
        phone.save_screenshot(str(tmp_path / "web-phone-users.png"))
        # a tap on a user closes the list and starts a private message
        rows[1].click()
        wait(phone, lambda d: not element(d, "#users").is_displayed(), "the list closed")
        assert element(phone, "#input").get_attribute("value").startswith("/msg ")

        desktop = browser(url, size=DESKTOP)
        as_guest(desktop, "dave")
        join(desktop, "#general")
        wait(desktop, line_with(desktop, "thanks both, I'll check the dashboards", who="alice",
                                history=True), "the room's history")
        say(desktop, "hi all, dave here from the desktop")
        wait(desktop, has_users(desktop, "alice", "bob", "carol", "dave"), "everyone listed")
        wait(phone, line_with(phone, "hi all, dave here from the desktop"), "dave's line")
        bob, carol = others
        bob.send("welcome dave! the dashboards are green")
        carol.send(f"/msg {me(desktop)['uid']} can you take the on-call handover at 17:00?")
        wait(desktop, line_with(desktop, "welcome dave! the dashboards are green", who="bob",
                                mention=True), "a line naming dave, highlighted")
        wait(desktop, line_with(desktop, "can you take the on-call handover at 17:00?",
                                kind="private", who="from carol"), "carol's private line")
        assert element(desktop, "#users").is_displayed()
        assert not element(desktop, "#users-toggle").is_displayed()
        assert element(desktop, "#rooms").is_displayed()
        log, side = box(desktop, "#log"), box(desktop, "#users-panel")
        assert side["x"] >= log["x"] + log["width"] - 1, "the user list beside the log"
        for css in ("#input", "#send", "#join", "#account-button"):
            assert box(desktop, css)["height"] >= 44, css
        desktop.save_screenshot(os.path.join(out, "web-desktop.png"))
    finally:
        for c in others:
            c.close()
        p.stop()


def test_security_headers_and_no_csp_violations(served, browser):
    with urllib.request.urlopen(served.url, timeout=WAIT) as r:
        csp = r.headers["Content-Security-Policy"] or ""
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert r.headers["Content-Type"].startswith("text/html")
        page = r.read().decode()
    assert "script-src 'self'" in csp and "default-src 'self'" in csp, csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp, csp
    # the page has no inline script or style for the policy to refuse
    assert "<style" not in page and " style=" not in page and "<script>" not in page
    for name, kind in (("app.js", "text/javascript"), ("style.css", "text/css"),
                       ("icon.svg", "image/svg+xml")):
        with urllib.request.urlopen(served.url + name, timeout=WAIT) as r:
            assert r.headers["Content-Type"].startswith(kind), (name, r.headers["Content-Type"])

    room, ann, bob = unique("#csp-"), unique("ann"), unique("bob")
    a, b = browser(served.url), browser(served.url)
    as_guest(a, ann)
    as_guest(b, bob)
    join(a, room)
    join(b, room)
    say(a, "a link: https://example.org/x and " + PROBES[1])
    say(b, f"/msg {ann} private, with {PROBES[0]}")
    wait(a, line_with(a, f"private, with {PROBES[0]}", kind="private"), "bob's private line")
    wait(b, line_with(b, "a link: https://example.org/x and " + PROBES[1]), "ann's line")
    log = element(a, "#log")
    assert log.get_attribute("role") == "log" and log.get_attribute("aria-live") == "polite"
    for d in (a, b):
        problems = [e for e in d.get_log("browser")
                    if e["level"] == "SEVERE" or "Content Security Policy" in e["message"]]
        assert problems == [], problems
    # the check sees a violation when there is one: an inline style is refused, and logged
    a.execute_script("document.body.setAttribute('style', 'color: red')")
    wait(a, lambda d: [e for e in d.get_log("browser")
                       if "Content Security Policy" in e["message"]], "the violation logged")
