"""``pychat gui``: the Tk desktop client, on the shared core (``Session`` + ``ChatState``).

Layout: rooms on the left (click one to join it, or type a new one), the log in the middle
(time, name, text; own lines, private lines, system lines and lines naming you each styled
apart), the members of your room on the right (click one to start ``/msg <uid> ``), the input
with Send below, and a status bar with the connection state and reconnect attempts. The title
shows your name and ID, and ``(logged in)`` when the name is your account's; the room's topic
is above the log.

Logging in: at start, unless ``--name`` (a guest) or ``--user`` with ``PYCHAT_PASSWORD`` says
who you are, a modal dialog asks: Name, Password, and Log in, Register or Guest (Enter: Log in
when a password is typed, else Guest; closing it: Guest). It stays open, showing the server's
refusal, until the login succeeds; it opens again when the name typed as a guest is an
account's, and when a reconnect's login (by token) is refused. The button beside Send opens it
(``Log in``), or logs out (``Log out``).

TLS (``--tls``, ``--ca FILE``): every connection, reconnects too, is TLS with the server's
certificate verified; the title ends with `` - TLS 1.3`` and the status bar shows ``TLS 1.3,
verified`` beside who you are. A refused certificate (or a server that does not speak TLS, or,
without TLS, a server that closes at once as a TLS server does) ends the session: the status
bar and a dialog say why.

Files (PROTOCOL Part 5): **Send file...** beside Send (a file dialog) sends a file to the room;
``/send <path> [target]``, ``/get <n> [path]`` and ``/files`` typed work as in the console, and
pasting a file (a path, or a ``file://`` URI as file managers copy files) into the empty input
makes it ``/send <path>``. Dropping a file on the window is not offered: Tk 8.6 takes drops
only with the tkdnd extension (tkinterdnd2), which is not a dependency. The status bar shows a
progress bar while files move. A ``FILE:`` line shows the sender, the file's name as a link
(click: Save as; right click: Save as, Open, Copy link), its size and number; a PNG, JPEG, GIF
or WebP (by its name, confirmed by its first bytes and by Pillow's decoder) also gets a
thumbnail under the line, at most ``THUMB_SIZE`` px, fetched (at most ``THUMB_MAX_BYTES``) and
scaled in a thread of its own. Pillow is optional: without it, no thumbnails.

Threads (STYLE.md rule 10): the session's thread owns the socket and only puts events on a
queue; Tk's thread polls that queue with ``after()``, applies the events to its ``ChatState`` and
updates the widgets, a batch at a time. Sending only appends to the session's queue. So Tk
never waits on the network, and a flood of lines costs one widget update per poll, not one per
line; the log keeps at most ``log_limit`` lines (older ones are deleted in chunks).
"""

from __future__ import annotations

import io
import queue
import ssl
import sys
import threading
import tkinter as tk
import warnings
import webbrowser
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from tkinter import filedialog, ttk
from typing import Any, TypedDict

from pychat.wire import errors, replies
from pychat.wire.commands import LOBBY

from . import events, transfer
from .console import FILE_WORDS, file_command
from .gui_probe import LagProbe, StateDump
from .options import client_parser, env_password, name_problem, password_problem, tls_context
from .session import Credentials, Session, TlsFailed
from .state import ERROR, FILE, OWN, PRIVATE, SYSTEM, ChatState, LogLine, SharedFile, clock_of

POLL_MS = 30            # how often Tk takes the session's events
MAX_EVENTS_PER_POLL = 5000
TRIM_SLACK = 100        # delete in chunks of at least this many lines
ROOMS_POLL_MS = 3000    # the room list is asked for again this often
THUMB_SIZE = (240, 240)  # a thumbnail fits this box (width, height), its proportions kept
THUMB_MAX_BYTES = 8 * 1024 * 1024  # larger images get no thumbnail (not fetched past this)
THUMB_MAX_PIXELS = 40_000_000  # nor do images that would decode larger than this
THUMB_FETCHES = 2  # thumbnails fetched at once
THUMBS_KEPT = 200  # thumbnails kept (their Tk images); the log trims older lines anyway


def pillow() -> tuple[Any, Any] | None:
    """Pillow's ``Image`` and ``ImageTk`` modules, or None when it is not installed."""
    try:
        from PIL import Image, ImageTk  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return None
    return Image, ImageTk


@dataclass(frozen=True, slots=True)
class ThumbReady:
    """A thumbnail thread's result (on the events queue): the scaled image (a Pillow image),
    or None and why not."""
    url: str
    image: Any
    why: str = ""


def make_thumbnail(url: str, name: str, tls: ssl.SSLContext | None,
                   cancelled: threading.Event | None = None) -> Any:
    """The thumbnail of the image at ``url`` (a Pillow image, at most ``THUMB_SIZE``); a
    ``TransferError`` when there is none to make: too large, not the image its name says (by
    its first bytes and by Pillow's decoder), or unreadable. Any thread (no Tk here)."""
    libs = pillow()
    kind = transfer.image_kind(name)
    if libs is None or not kind:
        raise transfer.TransferError("no thumbnail for this file")
    Image = libs[0]
    buf = io.BytesIO()
    transfer.get_to(url, buf, tls, cancelled=cancelled, limit=THUMB_MAX_BYTES)
    if transfer.sniff_image(buf.getbuffer()[:16].tobytes()) != kind:
        raise transfer.TransferError(f"not a {kind} image")
    buf.seek(0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(buf, formats=[kind])
            if im.width * im.height > THUMB_MAX_PIXELS:
                raise transfer.TransferError(f"{im.width}x{im.height} is too large a picture")
            im.draft("RGB", (THUMB_SIZE[0] * 2, THUMB_SIZE[1] * 2))  # (JPEG: decode smaller)
            im.thumbnail(THUMB_SIZE)
            return im.convert("RGBA" if "A" in im.getbands() or "transparency" in im.info
                              else "RGB")
    except transfer.TransferError:
        raise
    except Exception as e:  # Pillow's many ways to say a file is bad
        raise transfer.TransferError(f"not a readable {kind}: {e}") from None


class _TagStyle(TypedDict, total=False):
    """The options of ``Text.tag_configure`` the log's tags use."""
    foreground: str
    background: str
    font: tuple[str, int] | tuple[str, int, str]


class Gui:
    def __init__(self, root: tk.Tk, args, tls: ssl.SSLContext | None = None):
        self.root = root
        self.args = args
        self.tls = tls
        self.failed = ""  # why the session ended before it could talk (TlsFailed)
        self.state = ChatState()
        self.events: queue.Queue = queue.Queue()
        self.session: Session | None = None
        self.dialog: LoginDialog | None = None
        self._login_due: tuple[str, str] | None = None  # the dialog to open, once we can
        self.need_name = True
        self.log_limit = args.log_limit
        self.lines_received = 0
        self.user_uids: list[str] = []
        self.room_names: list[str] = []
        # thumbnails: Tk images by URL (the newest last), lines waiting for one (by URL: the
        # tags of their lines), and how many fetches may run at once
        self.pillow = pillow()
        self.thumbs: OrderedDict[str, tk.PhotoImage | Any] = OrderedDict()
        self.thumb_waiting: dict[str, list[str]] = {}
        self.thumb_slots = threading.BoundedSemaphore(THUMB_FETCHES)
        self.thumb_cancel = threading.Event()
        self.line_seq = 0
        self._build()
        self.lag = LagProbe(root)
        self.dump = StateDump.from_env(self)
        root.after(POLL_MS, self.poll)
        root.after(ROOMS_POLL_MS, self.poll_rooms)
        root.protocol("WM_DELETE_WINDOW", self.quit)
        name, user = args.name, args.user
        for given in (user, name):
            if given and name_problem(given):
                self.show(LogLine(clock_of(None), ERROR, "", name_problem(given)))
        if user and not name_problem(user):
            password = env_password()
            if password:
                self.connect(login=Credentials(user, password, args.register))
                self.status_var.set(f"logging in as {user}")
            else:
                self.ask_name("Log in, register, or continue as a guest with a name")
                self.open_login(user)
        elif name and not name_problem(name):
            self.connect(name)
        else:
            self.ask_name("Log in, register, or continue as a guest with a name")
            self.open_login()

    # ---- widgets ---------------------------------------------------------------------------------

    def _build(self) -> None:
        root = self.root
        root.title("PyChat")
        root.geometry(self.args.geometry)
        root.minsize(640, 360)
        root.columnconfigure(1, weight=1)
        root.rowconfigure(0, weight=1)

        left = ttk.Frame(root, padding=(6, 6, 0, 0))
        left.grid(row=0, column=0, sticky="ns")
        left.rowconfigure(1, weight=1)
        ttk.Label(left, text="Rooms").grid(row=0, column=0, columnspan=2, sticky="w")
        self.rooms = tk.Listbox(left, width=16, exportselection=False, activestyle="none")
        self.rooms.grid(row=1, column=0, columnspan=2, sticky="ns")
        self.rooms.bind("<ButtonRelease-1>", self.on_room_click)
        self.new_room = ttk.Entry(left, width=10)
        self.new_room.insert(0, "#")
        self.new_room.grid(row=2, column=0, sticky="we", pady=(4, 0))
        self.new_room.bind("<Return>", self.on_join_typed)
        ttk.Button(left, text="Join", width=5, command=self.on_join_typed).grid(
            row=2, column=1, pady=(4, 0))

        mid = ttk.Frame(root, padding=6)
        mid.grid(row=0, column=1, sticky="nsew")
        mid.columnconfigure(0, weight=1)
        mid.rowconfigure(1, weight=1)
        self.topic_var = tk.StringVar(value="")  # the room's topic
        ttk.Label(mid, textvariable=self.topic_var, anchor="w", foreground="#37474f").grid(
            row=0, column=0, columnspan=2, sticky="we")
        self.log = tk.Text(mid, wrap="word", state="disabled", width=60, height=20,
                           font=("DejaVu Sans Mono", 10), padx=4, pady=4)
        self.log.grid(row=1, column=0, sticky="nsew")
        bar = ttk.Scrollbar(mid, command=self.log.yview)
        bar.grid(row=1, column=1, sticky="ns")
        self.log.configure(yscrollcommand=bar.set)
        tag_styles: dict[str, _TagStyle] = {
            "time": {"foreground": "#808080"},
            "who": {"foreground": "#1f5fa8", "font": ("DejaVu Sans Mono", 10, "bold")},
            "ownwho": {"foreground": "#2e7d32", "font": ("DejaVu Sans Mono", 10, "bold")},
            "ownline": {},
            "private": {"foreground": "#7b1fa2", "background": "#f6edf9"},
            "system": {"foreground": "#757575", "font": ("DejaVu Sans Mono", 10, "italic")},
            "error": {"foreground": "#c62828"},
            "history": {"foreground": "#8d8d8d"},
            "mention": {"background": "#fff59d"},
        }
        for tag, opts in tag_styles.items():
            self.log.tag_configure(tag, **opts)
        self.log.tag_configure("link", foreground="#1565c0", underline=True)
        self.log.tag_raise("mention")
        self.log.tag_bind("link", "<Button-1>", self.on_link)
        self.log.tag_bind("link", "<Button-3>", self.on_link_menu)
        self.log.tag_bind("link", "<Enter>", lambda _e: self.log.configure(cursor="hand2"))
        self.log.tag_bind("link", "<Leave>", lambda _e: self.log.configure(cursor=""))
        self.link_menu = tk.Menu(self.log, tearoff=False)
        self.menu_file: SharedFile | None = None
        for label, action in (("Save as...", self.save_as), ("Open", self.open_file),
                              ("Copy link", self.copy_link)):
            self.link_menu.add_command(label=label, command=self.menu_command(action))

        right = ttk.Frame(root, padding=(0, 6, 6, 0))
        right.grid(row=0, column=2, sticky="ns")
        right.rowconfigure(1, weight=1)
        self.users_label = ttk.Label(right, text="Users")
        self.users_label.grid(row=0, column=0, sticky="w")
        self.users = tk.Listbox(right, width=24, exportselection=False, activestyle="none")
        self.users.grid(row=1, column=0, sticky="ns")
        self.users.bind("<ButtonRelease-1>", self.on_user_click)

        bottom = ttk.Frame(root, padding=(6, 0, 6, 4))
        bottom.grid(row=1, column=0, columnspan=3, sticky="we")
        bottom.columnconfigure(1, weight=1)
        self.prompt_var = tk.StringVar(value="Name:")
        ttk.Label(bottom, textvariable=self.prompt_var, width=6).grid(row=0, column=0)
        self.entry = ttk.Entry(bottom)
        self.entry.grid(row=0, column=1, sticky="we", padx=4)
        self.entry.bind("<Return>", self.on_send)
        self.entry.bind("<<Paste>>", self.on_paste)
        self.send_button = ttk.Button(bottom, text="Send", command=self.on_send)
        self.send_button.grid(row=0, column=2)
        self.file_button = ttk.Button(bottom, text="Send file...", command=self.on_send_file)
        self.file_button.grid(row=0, column=3, padx=(4, 0))
        self.account_button = ttk.Button(bottom, text="Log in", command=self.on_account)
        self.account_button.grid(row=0, column=4, padx=(4, 0))
        status = ttk.Frame(root)
        status.grid(row=2, column=0, columnspan=3, sticky="we")
        status.columnconfigure(0, weight=1)
        self.status_var = tk.StringVar(value="starting")
        ttk.Label(status, textvariable=self.status_var, relief="sunken", anchor="w",
                  padding=(6, 1)).grid(row=0, column=0, sticky="we")
        self.transfer_var = tk.StringVar(value="")  # "sending cat.png 45%" while files move
        self.transfer_label = ttk.Label(status, textvariable=self.transfer_var, relief="sunken",
                                        anchor="e", padding=(6, 1))
        self.transfer_label.grid(row=0, column=3, sticky="e")
        self.progress = ttk.Progressbar(status, length=140, maximum=1.0, mode="determinate")
        self.progress.grid(row=0, column=4, sticky="e", padx=(2, 2))
        self.transfer_label.grid_remove()  # shown while a file moves
        self.progress.grid_remove()
        self.tls_var = tk.StringVar(value="")  # "TLS 1.3, verified" while on a TLS connection
        self.tls_label = ttk.Label(status, textvariable=self.tls_var, relief="sunken",
                                   anchor="e", padding=(6, 1), foreground="#2e7d32")
        self.tls_label.grid(row=0, column=1, sticky="e")
        self.tls_label.grid_remove()  # shown on a TLS connection only
        self.who_var = tk.StringVar(value="guest")  # who we are: "logged in as alice", "guest"
        ttk.Label(status, textvariable=self.who_var, relief="sunken", anchor="e",
                  padding=(6, 1)).grid(row=0, column=2, sticky="e")
        self.entry.focus_set()

    # ---- user actions ----------------------------------------------------------------------------

    def ask_name(self, why: str) -> None:
        self.need_name = True
        self.prompt_var.set("Name:")
        self.status_var.set(why)
        self.entry.focus_set()

    def connect(self, name: str = "", login: Credentials | None = None) -> None:
        self.need_name = False
        self.prompt_var.set("Say:")
        self.session = Session(self.args.host, self.args.port, self.events.put, name=name,
                               room=self.args.room, history=self.args.history,
                               login=login, tls=self.tls).start()

    # ---- logging in ------------------------------------------------------------------------------

    def open_login(self, name: str = "", message: str = "") -> None:
        """The login dialog (one at a time): ``name`` filled in, ``message`` shown. Opened once
        the window is on the screen: a modal dialog mapped before its window gets no keys."""
        self._login_due = (name, message)
        if self.dialog is None and not self.root.winfo_viewable():
            self.root.after(20, self._open_login_due)
            return
        self._open_login_due()

    def _open_login_due(self) -> None:
        if self._login_due is None:  # the user went on as a guest meanwhile
            return
        if self.dialog is None and not self.root.winfo_viewable():
            self.root.after(20, self._open_login_due)
            return
        (name, message), self._login_due = self._login_due, None
        if self.dialog is None:
            self.dialog = LoginDialog(self, name)
        elif name:
            self.dialog.name_var.set(name)
        self.dialog.say(message)

    def log_in(self, name: str, password: str, register: bool) -> None:
        """The dialog's Log in or Register: on the running session, or a new one."""
        if self.session is None:
            self.connect(login=Credentials(name, password, register))
        else:
            self.session.login(name, password, register)
        self.need_name = False
        self.prompt_var.set("Say:")

    def as_guest(self, name: str) -> None:
        """The dialog's Guest: with this name, or (none typed) asked for one in the window."""
        self.close_login()
        if not name:
            if not self.state.name:
                self.ask_name("Type your name and press Enter (or Log in)")
        elif self.session is None:
            self.connect(name)
        elif name != self.state.name:
            self.need_name = False
            self.prompt_var.set("Say:")
            self.session.set_name(name)
        self.entry.focus_set()

    def close_login(self) -> None:
        self._login_due = None
        if self.dialog is not None:
            focused = self.root.focus_get() is not None
            self.dialog.close()
            self.dialog = None
            # the keyboard back to the window's input: forced when the dialog had it, since
            # Tk forgets its focus with a grabbed window that dies (and X sees no change)
            if focused:
                self.entry.focus_force()
            else:
                self.entry.focus_set()

    def on_account(self) -> None:
        """The button beside Send: Log out when logged in, else the login dialog."""
        if self.state.account and self.session is not None:
            self.session.logout()
        else:
            self.open_login(self.state.name)

    def on_send(self, _event=None) -> str:
        text = self.entry.get().strip()
        if not text:
            return "break"
        self.entry.delete(0, "end")
        if self.need_name:
            self.close_login()  # a name typed in the window: a guest (the dialog's Guest)
            problem = name_problem(text)
            if problem:
                self.show(LogLine(clock_of(None), ERROR, "", problem))
            elif self.session is None:
                self.connect(text)
            else:
                self.need_name = False
                self.prompt_var.set("Say:")
                self.session.set_name(text)
            return "break"
        if text.split()[0].lower() in ("/quit", "/exit"):
            self.quit()
            return "break"
        # need_name is cleared only by connect() (which starts a session) or once a session is
        # running, so past the name prompt there is always one
        session = self.session
        assert session is not None, "no session once the name is given"
        if text.split()[0].lower() in FILE_WORDS:
            file_command(text, session, self.state, self.show)
            return "break"
        session.send(text, show=True)
        return "break"

    # ---- files -----------------------------------------------------------------------------------

    def on_send_file(self) -> None:
        """Send file...: a file dialog, then the file to the room."""
        if self.session is None or self.need_name:
            self.status_var.set("choose a name (or log in) before sending a file")
            return
        path = filedialog.askopenfilename(parent=self.root, title="Send a file")
        self.entry.focus_set()
        if path and self.session is not None:
            self.session.send_file(path)

    def on_paste(self, _event=None) -> str | None:
        """A file pasted into the empty input (a path, or a file manager's ``file://`` URI)
        becomes ``/send <path>``; anything else is pasted as text."""
        if self.entry.get().strip() or self.need_name:
            return None
        text = ""
        for kind in ("text/uri-list", "UTF8_STRING", "STRING"):
            try:
                text = self.root.clipboard_get(type=kind)
            except tk.TclError:
                continue
            if text:
                break
        path = transfer.file_uri_path(text)
        if not path:
            return None
        self.entry.insert(0, f"/send {path}")
        self.entry.icursor("end")
        return "break"

    def clicked_file(self) -> SharedFile | None:
        """The file whose link (or thumbnail) is under the mouse."""
        for tag in self.log.tag_names("current"):
            if tag.startswith("file") and tag[4:].isdigit():
                return self.state.file(int(tag[4:]))
        return None

    def on_link(self, _event=None) -> str:
        f = self.clicked_file()
        if f is not None:  # once the click is handled (the log's own binding takes the focus)
            self.root.after_idle(self.save_as, f)
        return "break"

    def on_link_menu(self, event) -> str:
        self.menu_file = self.clicked_file()
        if self.menu_file is not None:
            self.link_menu.tk_popup(event.x_root, event.y_root)
        return "break"

    def menu_command(self, action: Callable[[SharedFile], None]) -> Callable[[], None]:
        """A link menu entry's command: ``action`` on the file the menu was opened on."""
        def command() -> None:
            if self.menu_file is not None:
                action(self.menu_file)
        return command

    def save_as(self, f: SharedFile) -> None:
        """Save as: the file to the path chosen (never over an existing file: a name that is
        taken gets -1, -2..., and the log line says where it went)."""
        path = filedialog.asksaveasfilename(parent=self.root, title=f"Save {f.name} as",
                                            initialfile=f.name, confirmoverwrite=False)
        self.entry.focus_set()  # (a click in the log took the keyboard)
        if path and self.session is not None:
            self.session.download(f.url, path, f.name)

    def open_file(self, f: SharedFile) -> None:
        """Open: the file's URL in the desktop's browser (it shows images and text, and
        offers to save the rest); in a thread, since a browser may take its time to start."""
        threading.Thread(target=webbrowser.open, args=(f.url,), daemon=True).start()

    def copy_link(self, f: SharedFile) -> None:
        self.root.clipboard_clear()
        self.root.clipboard_append(f.url)

    def want_thumbnail(self, f: SharedFile, line_tag: str) -> None:
        """A thumbnail under the line tagged ``line_tag``: at once when it was made already,
        else once a thread has fetched and scaled it."""
        if f.url in self.thumbs:
            self.thumbs.move_to_end(f.url)
            self.put_thumbnail(f.url, line_tag)
            return
        waiting = self.thumb_waiting.setdefault(f.url, [])
        waiting.append(line_tag)
        if len(waiting) == 1:
            tls = self.session.tls if self.session is not None else self.tls
            threading.Thread(target=self._fetch_thumbnail, args=(f.url, f.name, tls),
                             name="pychat-thumbnail", daemon=True).start()

    def _fetch_thumbnail(self, url: str, name: str, tls: ssl.SSLContext | None) -> None:
        """A thumbnail thread: fetch, check, scale; the result goes on the events queue."""
        with self.thumb_slots:
            try:
                image = make_thumbnail(url, name, tls, self.thumb_cancel)
            except transfer.TransferError as e:
                self.events.put(ThumbReady(url, None, str(e)))
            except Exception as e:  # never a silent dead thread
                self.events.put(ThumbReady(url, None, repr(e)))
            else:
                self.events.put(ThumbReady(url, image))

    def thumbnail_ready(self, ev: ThumbReady) -> None:
        tags = self.thumb_waiting.pop(ev.url, [])
        if ev.image is None or self.pillow is None:
            for tag in tags:
                self.log.tag_delete(tag)
            return
        self.thumbs[ev.url] = self.pillow[1].PhotoImage(ev.image, master=self.root)
        while len(self.thumbs) > THUMBS_KEPT:
            self.thumbs.popitem(last=False)
        for tag in tags:
            self.put_thumbnail(ev.url, tag)

    def put_thumbnail(self, url: str, line_tag: str) -> None:
        """The thumbnail on a line of its own under its file's line (if still in the log)."""
        log = self.log
        ranges = log.tag_ranges(line_tag)
        file_tags = [t for t in log.tag_names(ranges[0]) if t.startswith("file")] if ranges \
            else []
        log.tag_delete(line_tag)
        if not ranges:
            return  # trimmed away meanwhile
        at_end = log.yview()[1] >= 0.999
        end = log.index(f"{ranges[1]} lineend")
        log.configure(state="normal")
        log.insert(end, "\n")
        where = log.index(f"{end} +1 line linestart")
        log.image_create(where, image=self.thumbs[url], padx=4, pady=2)
        log.tag_add("link", where)
        for tag in file_tags:
            log.tag_add(tag, where)
        log.configure(state="disabled")
        if at_end:
            log.see("end")

    def show_transfers(self) -> None:
        """The status bar's progress: the files moving now (their bytes together)."""
        moving = list(self.state.transfers.values())
        text, value = "", 0.0
        if moving:
            total = sum(t.total for t in moving)
            done = sum(t.done for t in moving)
            value = done / total if total else 0.0
            first = moving[0]
            verb = "sending" if first.kind == events.UPLOAD else "saving"
            more = f" (+{len(moving) - 1})" if len(moving) > 1 else ""
            text = f"{verb} {first.name}{more} {int(value * 100)}%"
        if self.transfer_var.get() != text:
            self.transfer_var.set(text)
            if text:
                self.transfer_label.grid()
                self.progress.grid()
            else:
                self.transfer_label.grid_remove()
                self.progress.grid_remove()
        self.progress["value"] = value

    def on_user_click(self, event) -> None:
        i = self.users.nearest(event.y)
        if 0 <= i < len(self.user_uids):
            self.entry.delete(0, "end")
            self.entry.insert(0, f"/msg {self.user_uids[i]} ")
            self.entry.icursor("end")
            self.entry.focus_set()

    def on_room_click(self, event) -> None:
        i = self.rooms.nearest(event.y)
        if (0 <= i < len(self.room_names) and self.session
                and self.room_names[i] != self.state.room):
            self.session.send(f"/join {self.room_names[i]}")

    def on_join_typed(self, _event=None) -> None:
        room = self.new_room.get().strip()
        if self.session and len(room) > 1:
            self.session.send(f"/join {room if room.startswith('#') else '#' + room}")
            self.new_room.delete(0, "end")
            self.new_room.insert(0, "#")

    def quit(self) -> None:
        self.thumb_cancel.set()
        if self.session:
            self.session.close(timeout=1.0)
        self.root.destroy()

    # ---- events from the session -----------------------------------------------------------------

    def poll(self) -> None:
        """Take what the session's thread queued, apply it, update the widgets once."""
        lines: list[LogLine] = []
        users_before, rooms_before = (self.state.users, dict(self.state.names)), self.state.rooms
        try:
            for _ in range(MAX_EVENTS_PER_POLL):
                ev = self.events.get_nowait()
                line = self.state.apply(ev)
                if line is not None:
                    lines.append(line)
                self._note(ev)
        except queue.Empty:
            pass
        if lines:
            self.show(*lines)
            if any(ln.mention or (ln.kind == PRIVATE and ln.who.startswith("from ")
                                  and not ln.history) for ln in lines):
                self.root.bell()  # someone named you or wrote to you: a notification
        if (self.state.users, self.state.names) != users_before:
            self.refresh_users()
        if self.state.rooms != rooms_before:
            self.refresh_rooms()
        self.show_transfers()
        tls = self.session.tls_info if self.session is not None and self.tls is not None else ""
        if tls and self.session is not None and self.session.state != events.CONNECTED:
            tls = ""  # (between connections: the next one says again)
        title = self.state.title() + (f" - {tls.split(',')[0]}" if tls else "")
        if self.tls_var.get() != tls:
            self.tls_var.set(tls)
            if tls:
                self.tls_label.grid()
            else:
                self.tls_label.grid_remove()
        if self.root.title() != title:
            self.root.title(title)
        topic = f"Topic: {self.state.topic}" if self.state.topic else ""
        if self.topic_var.get() != topic:
            self.topic_var.set(topic)
        who = f"logged in as {self.state.account}" if self.state.account else "guest"
        if self.who_var.get() != who:
            self.who_var.set(who)
            self.account_button.configure(text="Log out" if self.state.account else "Log in")
        self.root.after(POLL_MS, self.poll)

    def _note(self, ev) -> None:
        if isinstance(ev, ThumbReady):
            self.thumbnail_ready(ev)
        elif isinstance(ev, events.NameRefused):
            if ev.registered:
                self.ask_name(f"{ev.reason}: log in, or type another name and press Enter")
                self.open_login(ev.name, f"{ev.name} is an account: log in with its password, "
                                         "or continue as a guest with another name")
            else:
                self.ask_name(f"{ev.reason}: type another name and press Enter")
        elif isinstance(ev, events.LoggedIn):
            self.close_login()
            self.need_name = False
            self.prompt_var.set("Say:")
            self.status_var.set(f"logged in as {ev.name}")
            self.entry.focus_set()
        elif isinstance(ev, events.LoginRefused):
            if ev.restored:
                message = (f"Your login as {ev.name} could not be kept ({ev.reason}): log in "
                           "again, or continue as a guest")
            else:
                message = ev.reason
            if ev.final:
                self.close_login()
                self.status_var.set(ev.reason)
            else:
                self.open_login(ev.name, message)
                if self.dialog is not None and ev.code in (errors.NAME_REGISTERED,
                                                           errors.NAME_TAKEN,
                                                           errors.INVALID_NAME):
                    self.dialog.name_entry.focus_set()  # a new account needs another name
        elif isinstance(ev, TlsFailed):
            self.failed = ev.reason
            self.status_var.set(ev.reason)
            self.prompt_var.set("Closed")
            self.root.after_idle(self.notice, "PyChat: cannot connect", ev.reason)
        elif isinstance(ev, events.Status):
            if ev.state == events.CLOSED and self.failed:
                return  # the failure's own words stay in the status bar
            text = ev.text if not ev.attempt else f"{ev.text} - reconnect attempts: {ev.attempt}"
            if not self.need_name:
                self.status_var.set(text)
            if ev.state == events.CONNECTED and self.session:
                self.session.send("/rooms")
            elif ev.state == events.CLOSED:
                self.prompt_var.set("Closed")
        elif isinstance(ev, replies.RoomChanged) and self.session:
            self.session.send("/rooms")  # ROOM: changed: the counts did too

    def notice(self, title: str, text: str) -> None:
        """A small window saying ``text``, with OK (made here rather than tk_messageBox: a
        window Tk makes by itself is not one tkinter knows, and it would block the loop)."""
        top = tk.Toplevel(self.root)
        top.title(title)
        top.transient(self.root)
        top.geometry(f"+{self.root.winfo_rootx() + 160}+{self.root.winfo_rooty() + 120}")
        top.resizable(False, False)
        frame = ttk.Frame(top, padding=14)
        frame.grid(sticky="nsew")
        ttk.Label(frame, text=text, wraplength=420, foreground="#c62828").grid(
            row=0, column=0, sticky="w", pady=(0, 10))
        ok = ttk.Button(frame, text="OK", command=top.destroy)
        ok.grid(row=1, column=0)
        top.bind("<Return>", lambda _e: top.destroy())
        ok.focus_set()

    def poll_rooms(self) -> None:
        if self.session and self.session.state == events.CONNECTED:
            self.session.send("/rooms")
        self.root.after(ROOMS_POLL_MS, self.poll_rooms)

    # ---- widgets from the state ------------------------------------------------------------------

    def show(self, *lines: LogLine) -> None:
        log = self.log
        at_end = log.yview()[1] >= 0.999
        parts: list = []
        empty = log.index("end-1c") == "1.0"
        thumbs: list[tuple[SharedFile, str]] = []
        for ln in lines:
            self.lines_received += 1
            if parts or not empty:
                parts += ["\n", ()]
            parts += [f"{ln.clock} ", ("time",)]
            if ln.kind == FILE and ln.file is not None:
                f = ln.file
                base: tuple[str, ...] = ("history",) if ln.history else ()
                if self.pillow is not None and transfer.image_kind(f.name):
                    self.line_seq += 1
                    line_tag = f"fline{self.line_seq}"
                    base += (line_tag,)
                    thumbs.append((f, line_tag))
                parts += [ln.who, ("ownwho" if f.mine else "who",) + base, " sent ", base,
                          f.name, ("link", f"file{f.number}") + base,
                          f" ({f.size_text()}) #{f.number}", base]
                continue
            if ln.kind in (SYSTEM, ERROR):
                parts += [f"* {ln.text}", (ln.kind, "system")]
                continue
            line_tags: tuple[str, ...] = ("private",) if ln.kind == PRIVATE \
                else ("ownline",) if ln.kind == OWN else ()
            if ln.history:
                line_tags += ("history",)
            who_tag = "ownwho" if ln.kind == OWN else "who"
            parts += [ln.who, (who_tag,) + line_tags, ": ", line_tags,
                      ln.text, line_tags + (("mention",) if ln.mention else ())]
        log.configure(state="normal")
        log.insert("end", *parts)
        count = int(log.index("end-1c").split(".")[0])
        if count > self.log_limit + TRIM_SLACK or (count > self.log_limit and len(lines) < 5):
            log.delete("1.0", f"{count - self.log_limit + 1}.0")
        log.configure(state="disabled")
        for f, line_tag in thumbs:
            self.want_thumbnail(f, line_tag)
        if at_end:
            log.see("end")

    def refresh_users(self) -> None:
        rows = self.state.user_rows()
        self.user_uids = [uid for uid, _ in rows]
        self.users.delete(0, "end")
        for uid, label in rows:
            self.users.insert("end", label)
            if uid == self.state.uid:
                self.users.itemconfigure("end", foreground="#2e7d32")
        self.users_label.configure(text=f"Users in {self.state.room} ({len(rows)})")

    def refresh_rooms(self) -> None:
        rooms = dict(self.state.rooms)
        rooms.setdefault(LOBBY, 0)  # always a way back, even when nobody is there
        self.room_names = sorted(rooms)
        self.rooms.delete(0, "end")
        for room, n in sorted(rooms.items()):
            self.rooms.insert("end", f"{room} ({n})")
            if room == self.state.room:
                self.rooms.itemconfigure("end", background="#dbe9f7")


class LoginDialog:
    """The modal login dialog: Name, Password, and Log in, Register or Guest. Enter logs in
    when a password is typed, else continues as a guest; closing it is Guest. It stays open
    with the server's refusal until the login succeeds (``Gui`` closes it on ``LoggedIn``)."""

    def __init__(self, gui: Gui, name: str = ""):
        self.gui = gui
        self.closed = False
        root = gui.root
        top = self.top = tk.Toplevel(root)
        top.title("Log in")
        top.transient(root)
        top.resizable(False, False)
        top.geometry(f"+{root.winfo_rootx() + 160}+{root.winfo_rooty() + 120}")
        frame = ttk.Frame(top, padding=14)
        frame.grid(sticky="nsew")
        ttk.Label(frame, text="Log in to your account, make one (Register), or chat as a "
                              "guest.", wraplength=340).grid(row=0, column=0, columnspan=3,
                                                             sticky="w", pady=(0, 8))
        ttk.Label(frame, text="Name").grid(row=1, column=0, sticky="w")
        self.name_var = tk.StringVar(value=name)
        self.name_entry = ttk.Entry(frame, textvariable=self.name_var, width=28)
        self.name_entry.grid(row=1, column=1, columnspan=2, sticky="we", pady=2)
        ttk.Label(frame, text="Password").grid(row=2, column=0, sticky="w")
        self.password_entry = ttk.Entry(frame, show="*", width=28)
        self.password_entry.grid(row=2, column=1, columnspan=2, sticky="we", pady=2)
        self.message_var = tk.StringVar(value="")
        self.message = ttk.Label(frame, textvariable=self.message_var, foreground="#c62828",
                                 wraplength=340)
        self.message.grid(row=3, column=0, columnspan=3, sticky="w", pady=(6, 6))
        self.login_button = ttk.Button(frame, text="Log in", command=self.on_login)
        self.login_button.grid(row=4, column=0, sticky="we")
        self.register_button = ttk.Button(frame, text="Register", command=self.on_register)
        self.register_button.grid(row=4, column=1, sticky="we", padx=4)
        self.guest_button = ttk.Button(frame, text="Guest", command=self.on_guest)
        self.guest_button.grid(row=4, column=2, sticky="we")
        top.bind("<Return>", self.on_enter)
        top.protocol("WM_DELETE_WINDOW", self.on_guest)
        top.bind("<Map>", self._grab)
        (self.password_entry if name else self.name_entry).focus_set()

    def _grab(self, _event=None) -> None:
        """Modal once it is on the screen (a grab needs a viewable window)."""
        if self.closed:
            return
        try:
            self.top.grab_set()
        except tk.TclError:
            self.top.after(50, self._grab)
            return
        (self.password_entry if self.name_var.get() else self.name_entry).focus_set()

    def say(self, message: str, error: bool = True) -> None:
        self.message_var.set(message)
        self.message.configure(foreground="#c62828" if error else "#37474f")
        if error and message:  # refused: ready for another try
            self.login_button.state(["!disabled"])
            self.register_button.state(["!disabled"])
            self.password_entry.delete(0, "end")
            self.password_entry.focus_set()

    def _fields(self, new: bool) -> tuple[str, str] | None:
        """Name and password, or None (and why, in the dialog) when they cannot be sent."""
        name, password = self.name_var.get().strip(), self.password_entry.get()
        problem = name_problem(name) if name else "type your name"
        if not problem:
            problem = (password_problem(password) if new
                       else "" if password else "type your password")
        if problem:
            self.say(problem)
            return None
        return name, password

    def _send(self, register: bool) -> None:
        fields = self._fields(new=register)
        if fields is None:
            return
        name, password = fields
        self.login_button.state(["disabled"])
        self.register_button.state(["disabled"])
        self.say(f"{'Registering' if register else 'Logging in as'} {name}...", error=False)
        self.gui.log_in(name, password, register)

    def on_login(self, _event=None) -> None:
        self._send(register=False)

    def on_register(self, _event=None) -> None:
        self._send(register=True)

    def on_guest(self, _event=None) -> None:
        name = self.name_var.get().strip()
        if name and name_problem(name):
            self.say(name_problem(name))
            self.name_entry.focus_set()
            return
        self.gui.as_guest(name)

    def on_enter(self, _event=None) -> str:
        if self.password_entry.get():
            self.on_login()
        else:
            self.on_guest()
        return "break"

    def close(self) -> None:
        self.closed = True
        try:
            self.top.grab_release()
            self.top.destroy()
        except tk.TclError:
            pass


def main(argv: list[str] | None = None) -> int:
    args = client_parser("pychat gui", "The PyChat desktop client (Tk).").parse_args(argv)
    try:
        tls = tls_context(args)
    except ValueError as e:
        print(f"pychat gui: {e}", file=sys.stderr)
        return 2
    try:
        root = tk.Tk()
    except tk.TclError as e:
        print(f"pychat gui: cannot open a window: {e}", file=sys.stderr)
        return 1
    Gui(root, args, tls)
    root.mainloop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
