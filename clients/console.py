"""``pychat console``: the terminal client, on the shared core (``Session`` + ``ChatState``).

On a terminal it runs prompt_toolkit: incoming lines are printed above the prompt, so the line
being typed is never broken; each line has its time, the sender's name and a colour for its kind
(own, others', private, system, error; a line naming you is highlighted); a bottom bar shows the
room, the name and the connection state with reconnect attempts. Every line typed goes to the
server as it is, so every protocol command works; ``/quit`` and ``/exit`` say goodbye and leave.

Logging in: ``--user NAME`` logs in to an account, its password from ``PYCHAT_PASSWORD`` or
asked for without echo (``--register`` makes the account, the new password asked twice).
Without ``--user`` it asks ``Your name:`` as before; a name that is an account's asks for its
password (empty: choose another name). A refused password is asked again; so is one after a
reconnect whose token was refused. Typed ``/login NAME``, ``/register`` and ``/password``
without their passwords ask for them without echo; typed with them they go as typed. Lines
that carry a password are kept out of the input history (Up).

When stdin is not a terminal ("pipe mode", for scripts and bots) it sends the lines of stdin
and prints each received line plainly (``[HH:MM:SS] name: text``); connection states and
failures go to stderr. At the end of stdin (or after a ``/quit`` line) it says ``/quit`` once
connected, so lines typed while the connection was down go first, and exits when the server
has said goodbye. It never waits forever: without a connection for ``GIVE_UP`` seconds (30; at
the start or after a drop, a server that accepts but never answers included) it gives up. Its
exit status is the first failure's:

- 0: the server said goodbye and refused no line (a text line written just before a
  connection dropped, and came back, may still be lost: text lines get no receipt);
- 1: the name was refused (taken, or invalid by the server's rules);
- 2: bad usage: an invalid ``--name`` (refused before connecting) or option, or stdin that is
  not text;
- 3: no connection: none within ``GIVE_UP`` seconds, at the start or after a drop, or the
  connection ended before the server said goodbye (the last lines may not have arrived);
- 4: the server refused to pass a line on: an ``ERROR`` coded ``not-sent`` (the router is
  unavailable) or ``line-too-long``. The other ``ERROR`` replies answer the script's commands
  (an unknown command, no such user): printed as ``!`` lines, they do not change the status;
- 5: ``--user``'s login was refused (wrong password or no such account, too many attempts,
  banned; with ``--register``: the name is taken or registered, or the password is not
  acceptable), or after a reconnect its token was (no stdin line is sent before the login
  succeeded). ``--user`` in pipe mode takes its password from ``PYCHAT_PASSWORD``, or asks on
  the terminal when stdin is one (status 2 when neither);
- 6: the server put us out: ``BYE kicked: ...`` or ``BYE banned: ...``;
- 7: TLS: the server's certificate was refused (``--tls``, ``--ca``), the server does not speak
  TLS, or (without TLS) the server closed the first connection without a word, as a TLS server
  does. It does not retry: the one line on stderr says which;
- 8: a file could not be sent (``/send``: no such file, refused by the server, the upload
  failed) or saved (``/get``: no such number, the download failed).

Files (PROTOCOL Part 5), handled by the client, not sent as typed: ``/send <path> [target]``
sends a file to the room (or privately to ``target``), ``/files`` lists the files seen with
their numbers, ``/get <n> [path]`` saves the n-th (default: its name in the current folder;
never over an existing file: ``name-1.ext``...). A file line reads ``[12:00:01] alice sent
cat.png (34.2 KB) #3 http://...``. On a terminal the bottom bar shows each transfer's progress
bar; pipe mode prints one line when it ends, and waits for the transfers before it says
goodbye at the end of stdin.

TLS (``--tls``, or ``--ca FILE``): every connection, reconnects too, is TLS, its certificate
verified; the connection's status line says so (``connected to host:port (TLS 1.3, verified)
as 123456``; on a terminal, in the bottom bar).

Errors are matched by their code (the session asks for ``/cap codes``), never by their text;
from a server without codes a refused line cannot be told, and the status stays 0.

Threads: the session's thread owns the socket; its events are handed to the asyncio loop with
``call_soon_threadsafe`` (terminal) or a queue (pipe), and the state is touched only there.
"""

from __future__ import annotations

import asyncio
import getpass
import os
import queue
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from pychat.wire import errors, replies

from . import events
from .options import (
    PASSWORD_ENV,
    client_parser,
    env_password,
    name_problem,
    password_problem,
    tls_context,
)
from .session import Credentials, Session, TlsFailed
from .state import ERROR, FILE, SYSTEM, ChatState, LogLine, Transfer, clock_of
from .transfer import human_size, split_send

QUIT_WORDS = ("/quit", "/exit")
FILE_WORDS = ("/send", "/get", "/files")  # the client's own commands (files), never sent as typed
COMMAND_WORDS = ["/msg", "/w", "/nick", "/users", "/join", "/rooms", "/history", "/cap",
                 "/ping", "/help", "/login", "/logout", "/register", "/password", "/topic",
                 "/send", "/get", "/files", "/quit", "/exit"]
BAR_WIDTH = 20  # characters of a transfer's progress bar in the bottom bar
# a typed line that carries a password: kept out of the input history
SECRET_LINE = re.compile(r"\s*/(login|register|password|resume)\s+\S", re.I)
# refusals a new password cannot mend (a login's is asked again; these are told and left)
NOT_A_PASSWORD = (errors.NAME_REGISTERED, errors.NAME_TAKEN, errors.INVALID_NAME, errors.USAGE,
                  errors.LOGGED_IN, errors.BANNED)
STYLE = {
    "time": "#8a8a8a",
    "own": "ansigreen bold",
    "public": "ansicyan bold",
    "private": "ansimagenta bold",
    "system": "#8a8a8a italic",
    "error": "ansired bold",
    "mention": "bg:ansiyellow ansiblack bold",
    "history": "#8a8a8a",
    "file": "bold",
    "number": "ansiyellow bold",
    "url": "underline",
    "bottom-toolbar": "bg:#303030 #d0d0d0 noreverse",
}


def fragments(line: LogLine) -> list[tuple[str, str]]:
    """A log line as prompt_toolkit styled text."""
    out = [("class:time", f"[{line.clock}] ")]
    if line.kind == FILE and line.file is not None:
        f = line.file
        return out + [("class:own" if f.mine else "class:public", line.who), ("", " sent "),
                      ("class:file", f.name), ("", f" ({f.size_text()}) "),
                      ("class:number", f"#{f.number}"), ("", " "), ("class:url", f.url)]
    if line.kind == ERROR:
        return out + [("class:error", f"! {line.text}")]
    if line.kind == SYSTEM:
        return out + [("class:system", f"* {line.text}")]
    body = "class:mention" if line.mention else "class:history" if line.history else ""
    return out + [(f"class:{line.kind}", line.who), ("", ": "), (body, line.text)]


# ---- terminal --------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Ask:
    """A question the prompt asks instead of taking a chat line: its prompt, whether the answer
    is a secret (typed without echo, kept out of the history), and what to do with it."""
    prompt: str
    secret: bool
    answer: Callable[[str], None]


class Console:
    """The terminal front: state, what is waiting to be printed, whether we need a name, and
    the questions (passwords) the prompt asks before it takes chat lines again."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        from prompt_toolkit.styles import Style
        self.loop = loop
        self.state = ChatState()
        self.style = Style.from_dict(STYLE)
        self.need_name = False
        self.pending: list[tuple[str, str]] = []
        self.closed = asyncio.Event()
        self.session: Session | None = None
        self.asks: deque[Ask] = deque()
        self.secret_prompt = False  # a password prompt outside the asks (before the session)

    def on_event(self, ev) -> None:  # the asyncio loop's thread
        line = self.state.apply(ev)
        if isinstance(ev, events.NameRefused):
            if ev.registered:
                self.ask_login(ev.name, f"Password for {ev.name} (empty: choose another "
                                        "name): ")
            else:
                self.need_name = True
        elif isinstance(ev, events.LoginRefused):
            self.login_refused(ev)
        elif isinstance(ev, events.LoggedIn):
            self.need_name = False  # the account's name is ours
        elif isinstance(ev, TlsFailed):
            line = LogLine(clock_of(None), ERROR, "", ev.reason)
        if isinstance(ev, events.Status) and ev.state == events.CLOSED:
            self.closed.set()
        if line is not None:
            self.show(line)
        self.redraw()

    def redraw(self) -> None:
        from prompt_toolkit.application import get_app_or_none
        app = get_app_or_none()
        if app is not None:
            app.invalidate()  # the prompt and the bottom bar may have changed

    def login_refused(self, ev: events.LoginRefused) -> None:
        if ev.final:
            return  # banned: the session ends
        session = self.session
        if ev.code == errors.INVALID_PASSWORD and session is not None:  # a new account's
            self.ask_new_password(lambda pw: session.login(ev.name, pw, register=True),
                                  f"New password for {ev.name}: ", self.no_login)
            return
        if ev.code in NOT_A_PASSWORD:
            self.no_login()
            return
        empty = "stay a guest" if ev.restored or self.state.name else "choose a name"
        self.ask_login(ev.name, f"Password for {ev.name} (empty: {empty}): ")

    def ask(self, *asks: Ask) -> None:
        """Ask these next (a question already pending goes first). A chat line half typed when
        a password is asked is dropped rather than taken for the password."""
        if not self.asks and asks and asks[0].secret:
            from prompt_toolkit.application import get_app_or_none
            app = get_app_or_none()
            if app is not None:
                app.current_buffer.reset()
        self.asks.extend(asks)
        self.redraw()

    def ask_login(self, name: str, prompt: str) -> None:
        def answer(password: str) -> None:
            if password and self.session is not None:
                self.session.login(name, password)
            else:
                self.no_login()
        self.ask(Ask(prompt, True, answer))

    def no_login(self) -> None:
        """No login after all: a guest, asked for a name if it has none."""
        if not self.state.name:
            self.need_name = True

    def ask_new_password(self, then: Callable[[str], None], first: str = "New password: ",
                         cancel: Callable[[], None] | None = None) -> None:
        """A new password, twice, checked by the server's rules; empty cancels."""
        def got(password: str) -> None:
            if not password:
                if cancel is not None:
                    cancel()
                return
            problem = password_problem(password)
            if problem:
                self.show(LogLine(clock_of(None), ERROR, "", problem))
                self.ask_new_password(then, first, cancel)
                return

            def again(second: str) -> None:
                if second != password:
                    self.show(LogLine(clock_of(None), ERROR, "", "the passwords differ"))
                    self.ask_new_password(then, first, cancel)
                else:
                    then(password)
            self.ask(Ask("Again: ", True, again))
        self.ask(Ask(first, True, got))

    def typed_account_command(self, text: str) -> bool:
        """``/login NAME``, ``/register``, ``/password`` typed without their passwords: ask for
        them without echo. True if handled here."""
        session = self.session
        word, *rest = text.split()
        word = word.lower()
        if session is None or word not in ("/login", "/register", "/password"):
            return False
        if word == "/login" and len(rest) == 1:
            name = rest[0]
            self.ask(Ask(f"Password for {name}: ", True,
                         lambda pw: session.login(name, pw) if pw else None))
            return True
        if word == "/register" and not rest:
            name = self.state.name
            if not name:
                self.show(LogLine(clock_of(None), ERROR, "", "set a name with /nick first"))
            else:
                self.ask_new_password(lambda pw: session.login(name, pw, register=True),
                                      f"New password for {name}: ")
            return True
        if word == "/password" and not rest:
            def old(current: str) -> None:
                if current:
                    self.ask_new_password(lambda new: session.send(
                        f"/password {current} {new}", show=True))
            self.ask(Ask("Current password: ", True, old))
            return True
        return False

    def secret(self) -> bool:
        """The prompt is asking for a password now (no echo, no history)."""
        return self.secret_prompt or bool(self.asks and self.asks[0].secret)

    def show(self, line: LogLine) -> None:
        if not self.pending:
            self.loop.call_soon(self.flush)
        if self.pending:
            self.pending.append(("", "\n"))
        self.pending += fragments(line)

    def flush(self) -> None:
        from prompt_toolkit import print_formatted_text
        from prompt_toolkit.formatted_text import FormattedText
        text, self.pending = self.pending, []
        if text:
            print_formatted_text(FormattedText(text), style=self.style)

    def message(self):
        if self.asks:
            return [("class:error", self.asks[0].prompt)]
        if self.need_name:
            return [("class:error", "name> ")]
        who = self.state.name or self.state.uid or "?"
        return [("class:time", f"[{self.state.room}] "), ("class:own", who), ("", "> ")]

    def toolbar(self):
        st = self.state
        bar = f" {st.room} | {st.who()} | ID {st.uid or '?'} | {st.status} "
        moving = [progress_bar(t) for t in st.transfers.values()]
        return bar + ("\n " + "\n ".join(moving) if moving else "")


def progress_bar(t: Transfer, width: int = BAR_WIDTH) -> str:
    """``^ cat.png [=========>          ] 45% 1.2 MB/2.6 MB`` (``v`` for a download)."""
    arrow = "^" if t.kind == events.UPLOAD else "v"
    frac = t.fraction()
    if frac is None:  # a download of unknown size
        return f"{arrow} {t.name} {human_size(t.done)}"
    full = int(frac * width)
    bar = "=" * full + (">" if full < width else "") + " " * (width - full - 1)
    return (f"{arrow} {t.name} [{bar}] {int(frac * 100):3d}% "
            f"{human_size(t.done)}/{human_size(t.total)}")


def file_list(state: ChatState) -> list[LogLine]:
    """``/files``: one system line per file seen, with its number."""
    if not state.files:
        return [LogLine(clock_of(None), SYSTEM, "", "no files yet (files sent to your room or "
                        "to you are numbered as they come)")]
    return [LogLine(clock_of(None), SYSTEM, "", f"#{f.number} {f.name} ({f.size_text()}) from "
                    f"{'you' if f.mine else f.who} {f.url}") for f in state.files]


def file_command(text: str, session: Session, state: ChatState,
                 show: Callable[[LogLine], None]) -> int | None:
    """``/send``, ``/get`` or ``/files`` typed (both modes): the transfer's id when one starts,
    else None (what went wrong, or the list, is given to ``show``)."""
    word, _, rest = text.strip().partition(" ")
    word, rest = word.lower(), rest.strip()

    def error(message: str) -> None:
        show(LogLine(clock_of(None), ERROR, "", message))

    if word == "/files":
        for line in file_list(state):
            show(line)
        return None
    if word == "/send":
        path, target = split_send(rest)
        if not path:
            error("usage: /send <path> [target]")
            return None
        return session.send_file(os.path.expanduser(path), target)
    number, _, dest = rest.partition(" ")
    f = state.file(int(number)) if number.isdigit() else None
    if f is None:
        error("usage: /get <n> [path]" if not number.isdigit()
              else f"no file #{number} (/files lists them)")
        return None
    return session.download(f.url, os.path.abspath(os.path.expanduser(dest.strip() or ".")),
                            f.name)


def prompt_history(con: Console):
    """The input history (Up), without the answers to password prompts or lines that carry a
    password."""
    from prompt_toolkit.history import InMemoryHistory

    class Scrubbed(InMemoryHistory):
        def append_string(self, string: str) -> None:
            if not con.secret() and not SECRET_LINE.match(string):
                super().append_string(string)

    return Scrubbed()


async def ask_name(prompt_session, style) -> str:
    while True:
        name = (await prompt_session.prompt_async("Your name: ", style=style)).strip()
        problem = name_problem(name)
        if not problem:
            return name
        print(f"! {problem}")


async def ask_secret(prompt_session, con: Console, prompt: str) -> str:
    con.secret_prompt = True
    try:
        return (await prompt_session.prompt_async(prompt, style=con.style)).strip()
    finally:
        con.secret_prompt = False


async def login_from_terminal(ps, con: Console, user: str, register: bool) -> Credentials | None:
    """``--user``'s credentials: the password from PYCHAT_PASSWORD, else asked (twice for a new
    account); None when the user gives none."""
    password = env_password()
    while not password:
        if not register:
            password = await ask_secret(ps, con, f"Password for {user}: ")
            if not password:
                return None
            break
        password = await ask_secret(ps, con, f"New password for {user}: ")
        if not password:
            return None
        problem = password_problem(password)
        if problem or password != await ask_secret(ps, con, "Again: "):
            print(f"! {problem or 'the passwords differ'}")
            password = ""
    return Credentials(user, password, register)


async def interactive(args) -> int:
    from prompt_toolkit import PromptSession
    from prompt_toolkit.completion import WordCompleter
    from prompt_toolkit.filters import Condition
    from prompt_toolkit.patch_stdout import patch_stdout

    loop = asyncio.get_running_loop()
    con = Console(loop)
    ps: PromptSession[str] = PromptSession(
        completer=WordCompleter(COMMAND_WORDS, sentence=True), history=prompt_history(con),
        is_password=Condition(con.secret),
        complete_while_typing=Condition(lambda: not con.secret()))
    name, login = args.name, None
    try:
        tls = tls_context(args)
    except ValueError as e:
        print(f"! {e}")
        return USAGE
    if args.register and not args.user:
        print("! --register needs --user NAME")
        return USAGE
    try:
        if args.user:
            problem = name_problem(args.user)
            if problem:
                print(f"! {problem}")
                return USAGE
            login = await login_from_terminal(ps, con, args.user, args.register)
            if login is None:
                return USAGE
            name = ""
        else:
            if name and name_problem(name):
                print(f"! {name_problem(name)}")
                name = ""
            while not name:
                name = await ask_name(ps, con.style)
    except (EOFError, KeyboardInterrupt):
        return 0
    session = Session(args.host, args.port, lambda ev: loop.call_soon_threadsafe(con.on_event, ev),
                      name=name, room=args.room, history=args.history, login=login,
                      tls=tls).start()
    con.session = session
    del login  # the session holds the password until the server has answered
    with patch_stdout(raw=True):
        while not con.closed.is_set():
            try:
                text = await ps.prompt_async(con.message, bottom_toolbar=con.toolbar,
                                             style=con.style, refresh_interval=0.5)
            except (EOFError, KeyboardInterrupt):
                break
            if con.asks:
                con.asks.popleft().answer(text.strip())
                continue
            text = text.strip()
            if not text:
                continue
            if con.need_name:
                problem = name_problem(text)
                if problem:
                    con.show(LogLine(clock_of(None), ERROR, "", problem))
                    continue
                con.need_name = False
                session.set_name(text)
            elif text.split()[0].lower() in QUIT_WORDS:
                break
            elif text.split()[0].lower() in FILE_WORDS:
                file_command(text, session, con.state, con.show)
            elif not con.typed_account_command(text):
                session.send(text, show=True)
        await asyncio.to_thread(session.close)
        con.flush()
    return 0


# ---- pipe ------------------------------------------------------------------------------------

# pipe mode's exit statuses (the module docstring says when)
OK, NAME_REFUSED, USAGE, NO_CONNECTION, NOT_SENT, LOGIN_REFUSED, PUT_OUT, TLS, FILE_FAILED = \
    range(9)
GIVE_UP = 30.0  # seconds without a connection (at the start, or after a drop) before giving up
WIND_DOWN = 2.0  # seconds then left to the session to stop: it may be inside a connect
# ERROR codes meaning the line reached no one: the server could not pass it on, or would not take
# it (matched by code, which the session asks for with /cap codes, never by the English text)
UNSENT = (errors.NOT_SENT, errors.LINE_TOO_LONG)
_EOF = object()  # the stdin thread's last item on the event queue


@dataclass(frozen=True, slots=True)
class _Typed:
    """A stdin line for the main loop rather than the server (``/get``, ``/files``)."""
    text: str


def pipe(args) -> int:
    """stdin lines to the server, received lines to stdout, plainly; states and failures to
    stderr. Returns the exit status: the first failure's, or OK."""
    login = None
    try:
        tls = tls_context(args)
    except ValueError as e:
        print(f"pychat console: {e}", file=sys.stderr)
        return USAGE
    if args.user:
        if name_problem(args.user):
            print(f"pychat console: {name_problem(args.user)}", file=sys.stderr)
            return USAGE
        password = env_password()
        if not password and sys.stdin.isatty():
            try:
                password = getpass.getpass(f"Password for {args.user}: ")
            except EOFError:
                password = ""
        if not password:
            print(f"pychat console: --user needs its password in {PASSWORD_ENV} (or a terminal "
                  "to ask it on)", file=sys.stderr)
            return USAGE
        if args.register and password_problem(password):
            print(f"pychat console: {password_problem(password)}", file=sys.stderr)
            return USAGE
        login = Credentials(args.user, password, args.register)
        del password
    elif args.register:
        print("pychat console: --register needs --user NAME", file=sys.stderr)
        return USAGE
    elif args.name and name_problem(args.name):
        print(f"pychat console: {name_problem(args.name)}", file=sys.stderr)
        return USAGE
    got: queue.Queue = queue.Queue()
    session = Session(args.host, args.port, got.put, name="" if login else args.name,
                      room=args.room, history=args.history, login=login, tls=tls)
    del login  # the session holds the password until the server has answered
    logged_in = threading.Event()  # stdin's lines wait for the login (a guest sends at once)
    if not args.user:
        logged_in.set()
    state = ChatState()
    where = f"{args.host}:{args.port}"
    status = OK

    def fail(code: int, message: str) -> None:
        nonlocal status
        print(f"pychat console: {message}", file=sys.stderr, flush=True)
        status = status or code

    def fail_quietly(code: int) -> None:  # (its line is on stdout)
        nonlocal status
        status = status or code

    def read_stdin() -> None:
        logged_in.wait()
        try:
            for number, raw in enumerate(sys.stdin, 1):
                line = raw.rstrip("\r\n")
                try:
                    line.encode("utf-8")  # stdin's surrogateescape lets bytes through as such
                except UnicodeEncodeError:
                    got.put(ValueError(f"line {number} is not UTF-8; not sent"))
                    continue
                if line.strip():
                    word = line.split()[0].lower()
                    if word in QUIT_WORDS:  # said by close(), once the transfers are done
                        break
                    if word == "/send":  # here: the /upload goes in order with the lines
                        file_command(line, session, state, got.put)
                    elif word in FILE_WORDS:  # the files seen are the main loop's
                        got.put(_Typed(line))
                    else:
                        session.send(line, show=True)
        except (OSError, ValueError) as e:  # ValueError: not text in a strict encoding
            got.put(e)
        got.put(_EOF)

    session.start()
    threading.Thread(target=read_stdin, name="stdin", daemon=True).start()
    moving: set[int] = set()  # transfers not yet done (the goodbye waits for them)
    connected = ever_connected = ending = closing = said_bye = tls_failed = False
    deadline = time.monotonic() + GIVE_UP  # while not connected: when to give up
    while True:
        try:
            ev = got.get(timeout=None if connected else max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            fail(NO_CONNECTION, (f"lost the connection to {where} and could not reconnect"
                                 if ever_connected else f"could not connect to {where}")
                 + f" within {GIVE_UP:g} s; giving up")
            session.close(timeout=0)
            _wind_down(got)
            return status
        if ev is _EOF:  # say goodbye once the lines sent so far can go
            ending = True
        elif isinstance(ev, Exception):
            fail(USAGE, f"reading stdin: {ev}")
        elif isinstance(ev, _Typed):
            tid = file_command(ev.text, session, state, got.put)
            if tid is not None:
                moving.add(tid)
        elif isinstance(ev, LogLine):  # what a file command had to say
            print(ev.plain(), flush=True)
            if ev.kind == ERROR:
                fail_quietly(FILE_FAILED)
        elif isinstance(ev, TlsFailed):  # the session ends: its CLOSED status follows
            tls_failed = True
            fail(TLS, ev.reason)
        elif isinstance(ev, events.Status):
            if not (tls_failed and ev.state == events.CLOSED):  # (the reason, said once)
                print(f"pychat console: {ev.text}", file=sys.stderr, flush=True)
            if ev.state == events.CONNECTED:
                connected = ever_connected = True
            elif ev.state == events.CLOSED:
                break
            elif connected:  # dropped: the session reconnects, for GIVE_UP at most
                connected = False
                deadline = time.monotonic() + GIVE_UP
        else:
            line = state.apply(ev)
            if isinstance(ev, events.NameRefused):
                fail(NAME_REFUSED, f"name {ev.name} is registered: log in with --user "
                                   f"{ev.name}" if ev.registered else ev.reason)
                ending = True
            elif isinstance(ev, events.LoggedIn):
                logged_in.set()
            elif isinstance(ev, events.LoginRefused):
                fail(LOGIN_REFUSED, f"login as {ev.name} refused: {ev.reason}")
                ending = True
            elif isinstance(ev, replies.Error) and ev.code in UNSENT:
                fail(NOT_SENT, f"a line was not sent ({ev.code}): {ev.message}")
            elif isinstance(ev, replies.Bye):
                said_bye = True
                if ev.reason:
                    fail(PUT_OUT, f"the server closed the connection: {ev.reason}")
            elif isinstance(ev, events.TransferProgress):
                moving.add(ev.id)
            elif isinstance(ev, events.TransferDone):
                moving.discard(ev.id)
                if ev.error:
                    fail_quietly(FILE_FAILED)
            if line is not None:
                print(line.plain(), flush=True)
        if ending and connected and not closing and not moving:
            # on a connection: the lines queued go before the /quit, which close() adds
            closing = True
            session.close(timeout=0)
    if not said_bye and not tls_failed:
        fail(NO_CONNECTION, "the connection ended before the server said goodbye: "
                            "lines sent last may not have arrived")
    return status


def _wind_down(got: queue.Queue) -> None:
    """Wait a little for the closed session's last status: it may be inside a connect or a
    read that ``close()`` cannot cut short (its thread is a daemon: it dies with us)."""
    deadline = time.monotonic() + WIND_DOWN
    while (left := deadline - time.monotonic()) > 0:
        try:
            ev = got.get(timeout=left)
        except queue.Empty:
            return
        if isinstance(ev, events.Status) and ev.state == events.CLOSED:
            return


def main(argv: list[str] | None = None) -> int:
    args = client_parser("pychat console", "The PyChat terminal client.").parse_args(argv)
    try:
        if sys.stdin.isatty() and sys.stdout.isatty():
            return asyncio.run(interactive(args))
        return pipe(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
