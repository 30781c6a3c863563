"""``pychat console``: the terminal client, on the shared core (``Session`` + ``ChatState``).

On a terminal it runs prompt_toolkit: incoming lines are printed above the prompt, so the line
being typed is never broken; each line has its time, the sender's name and a colour for its kind
(own, others', private, system, error; a line naming you is highlighted); a bottom bar shows the
room, the name and the connection state with reconnect attempts. Every line typed goes to the
server as it is, so every protocol command works; ``/quit`` and ``/exit`` say goodbye and leave.

When stdin is not a terminal it reads lines from stdin and prints each received line plainly
(``[HH:MM:SS] name: text``), for scripts; connection states go to stderr. At the end of stdin
it says ``/quit`` and exits once the server has answered everything sent before.

Threads: the session's thread owns the socket; its events are handed to the asyncio loop with
``call_soon_threadsafe`` (terminal) or a queue (pipe), and the state is touched only there.
"""

from __future__ import annotations

import asyncio
import queue
import sys
import threading

from . import events
from .options import client_parser, name_problem
from .session import Session
from .state import ERROR, SYSTEM, ChatState, LogLine, clock_of

QUIT_WORDS = ("/quit", "/exit")
COMMAND_WORDS = ["/msg", "/w", "/nick", "/users", "/join", "/rooms", "/history", "/cap",
                 "/ping", "/help", "/quit", "/exit"]
STYLE = {
    "time": "#8a8a8a",
    "own": "ansigreen bold",
    "public": "ansicyan bold",
    "private": "ansimagenta bold",
    "system": "#8a8a8a italic",
    "error": "ansired bold",
    "mention": "bg:ansiyellow ansiblack bold",
    "history": "#8a8a8a",
    "bottom-toolbar": "bg:#303030 #d0d0d0 noreverse",
}


def fragments(line: LogLine) -> list[tuple[str, str]]:
    """A log line as prompt_toolkit styled text."""
    out = [("class:time", f"[{line.clock}] ")]
    if line.kind == ERROR:
        return out + [("class:error", f"! {line.text}")]
    if line.kind == SYSTEM:
        return out + [("class:system", f"* {line.text}")]
    body = "class:mention" if line.mention else "class:history" if line.history else ""
    return out + [(f"class:{line.kind}", line.who), ("", ": "), (body, line.text)]


# ---- terminal --------------------------------------------------------------------------------

class Console:
    """The terminal front: state, what is waiting to be printed, and whether we need a name."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        from prompt_toolkit.styles import Style
        self.loop = loop
        self.state = ChatState()
        self.style = Style.from_dict(STYLE)
        self.need_name = False
        self.pending: list[tuple[str, str]] = []
        self.closed = asyncio.Event()

    def on_event(self, ev) -> None:  # the asyncio loop's thread
        line = self.state.apply(ev)
        if isinstance(ev, events.NameRefused):
            self.need_name = True
        if isinstance(ev, events.Status) and ev.state == events.CLOSED:
            self.closed.set()
        if line is not None:
            self.show(line)
        from prompt_toolkit.application import get_app_or_none
        app = get_app_or_none()
        if app is not None:
            app.invalidate()  # the prompt and the bottom bar may have changed

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
        if self.need_name:
            return [("class:error", "name> ")]
        who = self.state.name or self.state.uid or "?"
        return [("class:time", f"[{self.state.room}] "), ("class:own", who), ("", "> ")]

    def toolbar(self):
        st = self.state
        return f" {st.room} | {st.name or '(no name)'} | ID {st.uid or '?'} | {st.status} "


async def ask_name(prompt_session, style) -> str:
    while True:
        name = (await prompt_session.prompt_async("Your name: ", style=style)).strip()
        problem = name_problem(name)
        if not problem:
            return name
        print(f"! {problem}")


async def interactive(args) -> int:
    from prompt_toolkit import PromptSession
    from prompt_toolkit.completion import WordCompleter
    from prompt_toolkit.patch_stdout import patch_stdout

    loop = asyncio.get_running_loop()
    con = Console(loop)
    ps: PromptSession[str] = PromptSession(completer=WordCompleter(COMMAND_WORDS, sentence=True))
    name = args.name
    if name and name_problem(name):
        print(f"! {name_problem(name)}")
        name = ""
    try:
        while not name:
            name = await ask_name(ps, con.style)
    except (EOFError, KeyboardInterrupt):
        return 0
    session = Session(args.host, args.port, lambda ev: loop.call_soon_threadsafe(con.on_event, ev),
                      name=name, room=args.room, history=args.history).start()
    with patch_stdout(raw=True):
        while not con.closed.is_set():
            try:
                text = await ps.prompt_async(con.message, bottom_toolbar=con.toolbar,
                                             style=con.style, refresh_interval=0.5)
            except (EOFError, KeyboardInterrupt):
                break
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
            else:
                session.send(text, show=True)
        await asyncio.to_thread(session.close)
        con.flush()
    return 0


# ---- pipe ------------------------------------------------------------------------------------

def pipe(args) -> int:
    """stdin lines to the server, received lines to stdout, plainly; states to stderr."""
    if args.name and name_problem(args.name):
        print(f"pychat console: {name_problem(args.name)}", file=sys.stderr)
        return 2
    got: queue.Queue = queue.Queue()
    session = Session(args.host, args.port, got.put, name=args.name, room=args.room,
                      history=args.history)
    state = ChatState()

    def read_stdin() -> None:
        for raw in sys.stdin:
            line = raw.rstrip("\r\n")
            if line.strip():
                session.send(line, show=True)
                if line.split()[0].lower() in QUIT_WORDS:
                    return
        session.close(timeout=0)

    session.start()
    threading.Thread(target=read_stdin, name="stdin", daemon=True).start()
    code = 0
    while True:
        ev = got.get()
        line = state.apply(ev)
        if isinstance(ev, events.Status):
            print(f"pychat console: {ev.text}", file=sys.stderr, flush=True)
            if ev.state == events.CLOSED:
                break
        elif isinstance(ev, events.NameRefused):
            print(f"pychat console: {ev.reason}", file=sys.stderr, flush=True)
            code = 1
            session.close(timeout=0)
        elif line is not None:
            print(line.plain(), flush=True)
    return code


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
