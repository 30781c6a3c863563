"""The IRC door's translator: IRC lines in, PyChat command lines out; PyChat server lines in,
IRC lines out. Pure: no asyncio, no sockets (``IrcSession`` in acceptor/irc_session.py pumps it).

A door is a translator around the same ``Connection`` (acceptor/connection.py) every door
shares: ``IrcDoor.receive(data)`` frames IRC's lines (``\\r\\n`` or ``\\n``, at most
``MAX_LINE`` bytes with the line end: a longer one gets 417 and is dropped) and returns the
PyChat lines for the core (fed to ``Connection.receive_line``: flood, limits and order are the
core's) and the IRC lines this door answers itself; ``IrcDoor.from_core(text)`` takes what the
core or the router would send a line-protocol client (one line, or several joined by ``\\n``)
and returns the IRC lines for this client.

Invariants: the core is asked ``/cap time codes end deltas`` first (``START``), invisibly, so
every error has a code and every command reply ends with ``END``; ``expect`` holds the words
of the commands sent to the core whose ``END`` has not come, oldest first. A PyChat user
without a name is the nick ``u<uid>``; the session is always in exactly one room (``room``),
shown as the one channel it has joined. State is the session's own: the room's members
(``roster``), names, its registration.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections import deque
from sys import intern

from pychat.wire import errors, replies
from pychat.wire.commands import valid_name
from pychat.wire.framing import sanitize

SERVER = "pychat"
MAX_LINE = 512  # bytes, with the line end (RFC 1459)
CAPS = ("server-time", "message-tags", "sasl")
SASL_CHUNK = 400  # AUTHENTICATE's payload comes in pieces of this size (the last shorter, or +)
HISTORY_ON_JOIN = 20  # lines of a room's history played back on joining it (with server-time)
SASL_MAX = 2048  # bytes of base64: an account name and a password are far less
START = b"/cap time codes end deltas"
NICKLEN = 24
CHANNELLEN = 33
ISUPPORT = (f"CHANTYPES=# NICKLEN={NICKLEN} CHANNELLEN={CHANNELLEN} CASEMAPPING=ascii "
            "PREFIX=() NETWORK=PyChat")
STAND_IN = re.compile(r"[uU](\d{6})\Z")
# what an error is about: "name bob is taken", "invalid name x:", "no such user 123456"...
_SUBJECT = re.compile(r"(?:^name|^invalid name|^invalid room|^no such user) (\S+?)(?::|\s|$)")
# the error codes of the core that have an IRC numeric
_NUMERIC = {errors.NAME_TAKEN: "433", errors.NAME_REGISTERED: "433",
            errors.INVALID_NAME: "432", errors.NO_SUCH_USER: "401",
            errors.INVALID_ROOM: "403", errors.NOT_ALLOWED: "482"}


def stand_in(uid: str) -> str:
    """The nick of a PyChat user without a name."""
    return f"u{uid}"


def parse_irc(line: str) -> tuple[str, list[str]]:
    """An IRC line (no line end) to (COMMAND, params); tags and a prefix are dropped."""
    if line.startswith("@"):
        line = line.partition(" ")[2].lstrip(" ")
    if line.startswith(":"):
        line = line.partition(" ")[2].lstrip(" ")
    params: list[str] = []
    head, sep, trailing = line.partition(" :")
    words = head.split()
    if not words:
        return "", []
    params = words[1:]
    if sep:
        params.append(trailing)
    return words[0].upper(), params


def split_text(text: str, budget: int) -> list[str]:
    """``text`` in pieces of at most ``budget`` UTF-8 bytes, cut between characters."""
    data = text.encode("utf-8")
    if len(data) <= budget:
        return [text]
    out = []
    while data:
        cut = min(budget, len(data))
        while cut < len(data) and (data[cut] & 0xC0) == 0x80:  # not inside a character
            cut -= 1
        out.append(data[:cut].decode("utf-8"))
        data = data[cut:]
    return out


class IrcDoor:
    __slots__ = ("account", "away", "buffer", "cap_ls", "caps", "discarding", "expect",
                 "history_left", "names_due", "nick", "parting", "quiet", "registered", "room",
                 "roster", "sasl", "sasl_data", "sent_nick", "shared", "to_core", "uid", "user")

    def __init__(self) -> None:
        self.buffer = b""
        self.discarding = False  # inside an over-long line: drop up to its end
        self.nick = ""  # as registered (or asked, before)
        self.sent_nick = ""  # the nick asked of the core, not answered yet
        self.user = False
        self.cap_ls = False  # CAP LS: registration waits for CAP END
        self.caps: set[str] = set()
        self.registered = False
        self.uid = ""
        self.room = ""
        self.roster = DoorRoster()
        self.shared = False  # ``roster`` is the room's one list, shared with members in step
        self.names_due = False  # entered a room: its names go out when its lists are in
        self.parting = False
        self.away = False
        self.account = ""  # the account SASL logged in to ("": none)
        self.sasl = ""  # "PLAIN": its payload is coming; "checking": the core has the /login
        self.sasl_data = ""
        self.history_left = 0  # lines of a HISTORY: block still to come (played back)
        self.to_core: list[bytes] = []  # lines for the core that a server line led to
        # words of the core commands whose END has not come, and whether their errors are quiet
        self.expect: deque[str] = deque(["cap"])
        self.quiet: deque[bool] = deque([True])

    # ---- names ---------------------------------------------------------------------------------

    def nick_of(self, uid: str) -> str:
        if uid == self.uid and self.registered:
            return self.nick
        return self.roster.names.get(uid) or stand_in(uid)

    def source(self, uid: str) -> str:
        return f"{self.nick_of(uid)}!{uid}@{SERVER}"

    def me(self) -> str:
        return self.nick or "*"

    def num(self, code: str, *params: str) -> str:
        *middle, last = params if params else ("",)
        head = " ".join((f":{SERVER}", code, self.me(), *middle))
        return f"{head} :{last}"

    # ---- input: bytes from the IRC client ------------------------------------------------------

    def receive(self, data: bytes) -> tuple[list[bytes], list[str]]:
        """Bytes from the client: (lines for the core, IRC lines to the client)."""
        core: list[bytes] = []
        out: list[str] = []
        buf = self.buffer + data
        while True:
            end = buf.find(b"\n")
            if end < 0:
                break
            raw, buf = buf[:end], buf[end + 1:]
            if self.discarding:
                self.discarding = False
                continue
            if raw.endswith(b"\r"):
                raw = raw[:-1]
            if len(raw) + 2 > MAX_LINE:
                out.append(self.num("417", "Input line was too long"))
                continue
            self.line(raw, core, out)
        if len(buf) - buf.endswith(b"\r") + 2 > MAX_LINE:  # too long already: said once
            if not self.discarding:
                out.append(self.num("417", "Input line was too long"))
            self.discarding = True
            buf = b""
        self.buffer = buf
        return core, out

    def line(self, raw: bytes, core: list[bytes], out: list[str]) -> None:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("latin-1")  # what IRC clients without UTF-8 send
        text = sanitize(text)
        cmd, params = parse_irc(text)
        if not cmd:
            return
        handler = getattr(self, "on_" + cmd.lower(), None) if cmd.isalpha() else None
        if handler is None:
            if self.registered:
                out.append(self.num("421", cmd, "Unknown command"))
            else:
                out.append(self.num("451", "You have not registered"))
            return
        if not self.registered and cmd not in ("CAP", "NICK", "USER", "PASS", "PING", "QUIT",
                                               "PONG", "AUTHENTICATE"):
            out.append(self.num("451", "You have not registered"))
            return
        handler(params, core, out)

    def _need(self, params: list[str], n: int, cmd: str, out: list[str]) -> bool:
        if len(params) < n or not all(params[:n]):
            out.append(self.num("461", cmd, "Not enough parameters"))
            return False
        return True

    def _send(self, line: str, word: str, core: list[bytes], quiet: bool = False) -> None:
        """A command line for the core; ``word``: its END's ("": a text line, no END)."""
        core.append(line.encode("utf-8"))
        if word:
            self.expect.append(word)
            self.quiet.append(quiet)

    # registration

    def on_pass(self, params, core, out) -> None:
        pass  # accounts over SASL/PASS: not yet

    def on_cap(self, params, core, out) -> None:
        if not self._need(params, 1, "CAP", out):
            return
        sub = params[0].upper()
        if sub == "LS":
            if not self.registered:
                self.cap_ls = True
            out.append(f":{SERVER} CAP {self.me()} LS :{' '.join(CAPS)}")
        elif sub == "LIST":
            out.append(f":{SERVER} CAP {self.me()} LIST :{' '.join(sorted(self.caps))}")
        elif sub == "REQ":
            wanted = params[1].split() if len(params) > 1 else []
            ok = bool(wanted) and all(c.lstrip("-") in CAPS for c in wanted)
            if ok:
                for c in wanted:
                    if c.startswith("-"):
                        self.caps.discard(c[1:])
                    else:
                        self.caps.add(c)
            out.append(f":{SERVER} CAP {self.me()} {'ACK' if ok else 'NAK'} :"
                       f"{' '.join(wanted)}")
        elif sub == "END":
            if not self.registered:
                self.cap_ls = False
                self._register(core, out)
        else:
            out.append(self.num("410", params[0], "Invalid CAP command"))

    def on_nick(self, params, core, out) -> None:
        if not params or not params[0]:
            out.append(self.num("431", "No nickname given"))
            return
        nick = params[0]
        if not valid_name(nick) or STAND_IN.match(nick):
            out.append(self.num("432", nick, "Erroneous nickname"))
            return
        if self.registered:
            if nick != self.nick:
                self._send(f"/nick {nick}", "nick", core)
            return
        if self.sent_nick:  # one at a time before the welcome
            out.append(self.num("433", nick, "Nickname is already in use"))
            return
        self.nick = nick
        self._register(core, out)

    def on_user(self, params, core, out) -> None:
        if not self._need(params, 4, "USER", out):
            return
        if self.registered:
            out.append(self.num("462", "You may not reregister"))
            return
        self.user = True
        self._register(core, out)

    def _register(self, core: list[bytes], out: list[str]) -> None:
        if not (self.nick and self.user and not self.cap_ls and not self.sent_nick) \
                or self.sasl == "checking":
            return
        if self.account:  # logged in by SASL: the account's name is the nick
            self._nick_ok(self.account, out)
            return
        self.sent_nick = self.nick
        self._send(f"/nick {self.nick}", "nick", core)

    # SASL PLAIN (IRCv3): an account of PROTOCOL Part 3, logged in through the core's /login

    def on_authenticate(self, params, core, out) -> None:
        if not self._need(params, 1, "AUTHENTICATE", out):
            return
        arg = params[0]
        if arg == "*":
            if self.sasl:
                self.sasl, self.sasl_data = "", ""
                out.append(self.num("906", "SASL authentication aborted"))
            return
        if self.account:
            out.append(self.num("907", "You have already authenticated using SASL"))
        elif not self.sasl:
            if arg.upper() != "PLAIN":
                out.append(self.num("908", "PLAIN", "are available SASL mechanisms"))
                out.append(self.num("904", "SASL authentication failed"))
                return
            self.sasl = "PLAIN"
            out.append("AUTHENTICATE +")
        elif self.sasl == "PLAIN":
            self.sasl_data += "" if arg == "+" else arg
            if len(self.sasl_data) > SASL_MAX:
                self._sasl_failed(out, "905", "SASL message too long")
            elif len(arg) < SASL_CHUNK:
                self._sasl_plain(core, out)

    def _sasl_plain(self, core: list[bytes], out: list[str]) -> None:
        """authzid NUL authcid NUL password: log in as authcid (an authzid, if any, must be
        the same: nobody logs in as someone else here)."""
        try:
            fields = base64.b64decode(self.sasl_data, validate=True).decode("utf-8").split("\0")
        except (binascii.Error, UnicodeDecodeError):
            fields = []
        self.sasl_data = ""
        if len(fields) != 3 or not fields[1] or (fields[0] and fields[0] != fields[1]) \
                or not valid_name(fields[1]) or not fields[2] or any(
                    c.isspace() for c in fields[2]):
            self._sasl_failed(out)
            return
        self.sasl = "checking"
        self._send(f"/login {fields[1]} {fields[2]}", "login", core)

    def _sasl_failed(self, out: list[str], code: str = "904",
                     text: str = "SASL authentication failed") -> None:
        self.sasl, self.sasl_data = "", ""
        out.append(self.num(code, text))

    def _welcome(self) -> list[str]:
        nick = self.nick
        return [self.num("001", f"Welcome to PyChat, {nick}"),
                self.num("002", f"Your host is {SERVER}, running PyChat"),
                self.num("003", "This server has no creation date"),
                f":{SERVER} 004 {nick} {SERVER} pychat i t",
                self.num("005", *ISUPPORT.split(), "are supported by this server"),
                self.num("422", "MOTD File is missing")]

    # always allowed

    def on_ping(self, params, core, out) -> None:
        if self._need(params, 1, "PING", out):
            out.append(f":{SERVER} PONG {SERVER} :{params[0]}")

    def on_pong(self, params, core, out) -> None:
        pass

    def on_quit(self, params, core, out) -> None:
        reason = params[0] if params else ""
        self._send(f"/quit {reason}".rstrip(), "quit", core)

    # once registered

    def on_join(self, params, core, out) -> None:
        if not self._need(params, 1, "JOIN", out):
            return
        room = params[0].split(",")[-1]  # one room at a time: the last one counts
        if room == "0":
            self.on_part([self.room], core, out)
            return
        self._send(f"/join {room}", "join", core)

    def on_part(self, params, core, out) -> None:
        if not self._need(params, 1, "PART", out):
            return
        for room in params[0].split(","):
            if room.lower() != self.room:
                out.append(self.num("442", room, "You're not on that channel"))
                continue
            self.parting = True
            self._send("/join #lobby", "join", core)

    def _message(self, params, core, out, quiet: bool) -> None:
        cmd = "NOTICE" if quiet else "PRIVMSG"
        if not params or not params[0]:
            if not quiet:
                out.append(self.num("411", f"No recipient given ({cmd})"))
            return
        if len(params) < 2 or not params[1]:
            if not quiet:
                out.append(self.num("412", "No text to send"))
            return
        target, text = params[0], params[1]
        if text.startswith("\x01") or not text.strip():
            return  # CTCP: not carried (sanitizing would strip its markers)
        if target.startswith("#"):
            if target.lower() != self.room:
                if not quiet:
                    out.append(self.num("404", target, "Cannot send to channel"))
                return
            self._send("/" + text if text.startswith("/") else text, "", core)
            return
        m = STAND_IN.match(target)
        self._send(f"/msg {m.group(1) if m else target} {text}", "msg", core, quiet)

    def on_privmsg(self, params, core, out) -> None:
        self._message(params, core, out, False)

    def on_notice(self, params, core, out) -> None:
        self._message(params, core, out, True)

    def on_names(self, params, core, out) -> None:
        if params and params[0].lower() != self.room:
            out.append(self.num("366", params[0], "End of /NAMES list"))
            return
        out.extend(self._names())

    def _names(self) -> list[str]:
        nicks = [self.nick_of(u) for u in self.roster.uids]
        out = []
        line: list[str] = []
        for nick in nicks:
            line.append(nick)
            if len(line) == 20:
                out.append(self.num("353", "=", self.room, " ".join(line)))
                line = []
        if line or not out:
            out.append(self.num("353", "=", self.room, " ".join(line)))
        out.append(self.num("366", self.room, "End of /NAMES list"))
        return out

    def on_who(self, params, core, out) -> None:
        mask = params[0] if params else "*"
        if mask.lower() == self.room:
            for uid in self.roster.uids:
                nick = self.nick_of(uid)
                out.append(self.num("352", self.room, uid, SERVER, SERVER, nick, "H",
                                    f"0 {nick}"))
        out.append(self.num("315", mask, "End of /WHO list"))

    def on_whois(self, params, core, out) -> None:
        if not self._need(params, 1, "WHOIS", out):
            return
        nick = params[-1]
        found = next((u for u in self.roster.uids
                      if self.nick_of(u).lower() == nick.lower()), None)
        if found is None:
            out.append(self.num("401", nick, "No such nick/channel"))
        else:
            out.append(self.num("311", self.nick_of(found), found, SERVER, "*",
                                self.nick_of(found)))
            out.append(self.num("319", self.nick_of(found), self.room))
        out.append(self.num("318", nick, "End of /WHOIS list"))

    def on_list(self, params, core, out) -> None:
        self._send("/rooms", "rooms", core)

    def on_topic(self, params, core, out) -> None:
        if not self._need(params, 1, "TOPIC", out):
            return
        if params[0].lower() != self.room:
            out.append(self.num("442", params[0], "You're not on that channel"))
            return
        if len(params) < 2:
            self._send("/topic", "topic?", core)
        else:
            self._send(f"/topic {params[1] or '-'}", "topic", core)

    def on_kick(self, params, core, out) -> None:
        if not self._need(params, 2, "KICK", out):
            return
        m = STAND_IN.match(params[1])
        target = m.group(1) if m else params[1]
        reason = params[2] if len(params) > 2 else ""
        self._send(f"/kick {target} {reason}".rstrip(), "kick", core)

    def on_mode(self, params, core, out) -> None:
        if not self._need(params, 1, "MODE", out):
            return
        target = params[0]
        if target.startswith("#"):
            if len(params) == 1:
                out.append(self.num("324", target, "+"))
            elif params[1] in ("b", "+b"):
                out.append(self.num("368", target, "End of channel ban list"))
            else:
                out.append(self.num("472", params[1].lstrip("+-")[:1] or params[1],
                                    "is unknown mode char to me"))
        elif target.lower() != self.nick.lower():
            out.append(self.num("502", "Cant change mode for other users"))
        elif len(params) == 1:
            out.append(self.num("221", "+"))
        else:
            out.append(self.num("501", "Unknown MODE flag"))

    def on_away(self, params, core, out) -> None:
        self.away = bool(params and params[0])
        out.append(self.num("306", "You have been marked as being away") if self.away
                   else self.num("305", "You are no longer marked as being away"))

    # ---- output: what the core sends, as IRC lines --------------------------------------------

    def from_core(self, text: str, shared: bool = False) -> list[str]:
        """A PyChat server line (or several joined by ``\\n``) as IRC lines for this client.
        List changes cost what changed, not the room's size: a push's changes are gathered as
        they are applied and shown at the end as JOIN, PART and NICK lines (in a room of
        1,000 every member takes every arrival: copying and diffing the list per push made a
        room filling up cost the cube of its size). A list shared with other members is
        copied before a change of this member's own, unless ``shared``: the change is the
        room's, for all of them (``Output._roster_doors``)."""
        out: list[str] = []
        room, due = self.room, self.names_due  # entering a room: its lists are no change
        changes: Changes | None = None
        for line in text.split("\n"):
            event = replies.parse_server_line(line)
            if type(event) in ROSTER_EVENTS:
                if changes is None:
                    changes = Changes()
                if self.shared and not shared:  # this member's own list from now on
                    self.roster, self.shared = self.roster.copy(), False
                self.roster.apply(event, changes)
                if isinstance(event, replies.NameList) and self.names_due:
                    self._names_now(out)
                continue
            self._event(event, out)
        if (changes is not None and self.registered and not due and not self.names_due
                and self.room == room):
            self._announce(changes, out)
        return out

    def in_step(self) -> bool:
        """Would a list change reach this client as JOIN/PART/NICK lines (and nothing else)?"""
        return self.registered and not self.names_due

    def share(self, roster: DoorRoster) -> None:
        """Take the room's one list (another member in step applied the push to it and made
        the lines this member would have made: ``Output._roster_doors``)."""
        self.roster = roster
        self.shared = True

    def _announce(self, changes: Changes, out: list[str]) -> None:
        me, room = self.uid, self.room
        for uid, name in changes.left.items():
            if uid != me:
                out.append(f":{name or stand_in(uid)}!{uid}@{SERVER} PART {room}")
        for uid, old in changes.renamed.items():
            if uid != me and uid not in changes.joined and uid in self.roster.uids:
                was, is_ = old or stand_in(uid), self.nick_of(uid)
                if was != is_:
                    out.append(f":{was}!{uid}@{SERVER} NICK :{is_}")
        for uid in changes.joined:
            if uid != me:
                out.append(f":{self.source(uid)} JOIN {room}")

    def _names_now(self, out: list[str]) -> None:
        self.names_due = False
        if self.registered:
            out.extend(self._names())

    def _tag(self, stamp: str | None) -> str:
        return f"@time={stamp} " if stamp and "server-time" in self.caps else ""

    def _event(self, event: replies.Event, out: list[str]) -> None:
        kind = type(event)
        if kind is replies.Chat:
            assert isinstance(event, replies.Chat)
            self._chat(event, out)
        elif kind is replies.FileShared:  # a room's come through fan_out: here, played back
            assert isinstance(event, replies.FileShared)  # history, or a private file
            played = self.history_left > 0
            if played:
                self.history_left -= 1
            out.extend(self.file_lines(event, played))
        elif kind is replies.IdAssigned:
            assert isinstance(event, replies.IdAssigned)
            self.uid = event.uid
        elif kind is replies.Ok:
            assert isinstance(event, replies.Ok)
            if event.what.startswith("nick "):
                self._nick_ok(event.what[5:], out)
            elif event.what.startswith("login "):
                self._logged_in(event.what[6:], out)
        elif kind is replies.End:
            assert isinstance(event, replies.End)
            if self.expect:
                self.expect.popleft()
                self.quiet.popleft()
            if event.word == "join" and self.names_due:
                self._names_now(out)
        elif kind is replies.Error:
            assert isinstance(event, replies.Error)
            self._error(event, out)
        elif kind is replies.RoomChanged:
            assert isinstance(event, replies.RoomChanged)
            self._room(event.room, out)
        elif kind is replies.RoomList:
            assert isinstance(event, replies.RoomList)
            out.append(self.num("321", "Channel", "Users  Name"))
            for room, n in event.rooms:
                out.append(self.num("322", room, str(n), ""))
            out.append(self.num("323", "End of /LIST"))
        elif kind is replies.Topic:
            assert isinstance(event, replies.Topic)
            asked = bool(self.expect) and self.expect[0] == "topic?"
            if event.text and (asked or self.names_due):
                out.append(self.num("332", event.room, event.text))
            elif asked:
                out.append(self.num("331", event.room, "No topic is set"))
            elif not self.names_due:
                out.append(f":{SERVER} TOPIC {event.room} :{event.text}")
        elif kind is replies.Kicked:
            assert isinstance(event, replies.Kicked)
            out.append(f":{SERVER} KICK {event.room} {self.nick} :{event.reason}")
            self.room = ""
        elif kind is replies.Bye:
            assert isinstance(event, replies.Bye)
            reason = f": {event.reason}" if event.reason else ""
            out.append(f"ERROR :Closing link{reason}")
        elif kind is replies.HistoryStart:
            assert isinstance(event, replies.HistoryStart)
            self.history_left = event.count
        elif kind in (replies.Welcome, replies.Pong):
            pass
        elif self.registered and event.raw:
            out.append(f":{SERVER} NOTICE {self.nick} :{event.raw}")

    def _logged_in(self, account: str, out: list[str]) -> None:
        """SASL's /login succeeded: 900 and 903; the nick is the account's name (the welcome
        comes at CAP END, or a NICK change now for a client already registered)."""
        self.account = account
        self.sasl = ""
        nick = self.nick or "*"
        out.append(self.num("900", f"{nick}!{self.uid}@{SERVER}", account,
                            f"You are now logged in as {account}"))
        out.append(self.num("903", "SASL authentication successful"))
        if self.registered and account != self.nick:
            out.append(f":{self.nick}!{self.uid}@{SERVER} NICK :{account}")
            self.nick = account
        elif not self.registered and self.nick and self.user and not self.cap_ls:
            self._nick_ok(account, out)  # its CAP END came before the answer

    def _nick_ok(self, nick: str, out: list[str]) -> None:
        if not self.registered:
            self.registered = True
            self.nick = nick
            self.sent_nick = ""
            out.extend(self._welcome())
            self.room = ""
            self._room("#lobby", out)
            if self.roster.uids:  # the lobby's lists came before: its names now
                self._names_now(out)
        else:
            out.append(f":{self.nick}!{self.uid}@{SERVER} NICK :{nick}")
            self.nick = nick

    def _room(self, room: str, out: list[str]) -> None:
        if not self.registered:
            self.room = room
            return
        if room == self.room and not self.parting:
            return  # joined where it is: nothing changes
        me = f":{self.nick}!{self.uid}@{SERVER}"
        if self.room:
            out.append(f"{me} PART {self.room}")
        self.parting = False
        self.room = room
        out.append(f"{me} JOIN {room}")
        self.names_due = True
        if "server-time" in self.caps:  # the room's recent lines, played back with their times
            self.to_core.append(f"/history {HISTORY_ON_JOIN}".encode())
            self.expect.append("history")
            self.quiet.append(True)

    def _error(self, event: replies.Error, out: list[str]) -> None:
        quiet = bool(self.quiet) and self.quiet[0]
        word = self.expect[0] if self.expect else ""
        code = event.code or ""
        message = event.message
        if word == "login" and self.sasl == "checking":  # wrong password, throttled, banned
            self._sasl_failed(out)
            if code in (errors.LOGIN_THROTTLED, errors.BANNED, errors.BUSY):
                out.append(f":{SERVER} NOTICE {self.me()} :{message}")
            return
        if not self.registered and word == "nick" and self.sent_nick:
            nick, self.sent_nick = self.sent_nick, ""
            self.nick = ""
            out.append(self.num("432" if code == errors.INVALID_NAME else "433", nick,
                                "Erroneous nickname" if code == errors.INVALID_NAME
                                else "Nickname is already in use"))
            return
        if quiet:
            return
        numeric = _NUMERIC.get(code)
        m = _SUBJECT.search(message)
        subject = m.group(1) if m else "*"
        if numeric == "433":
            out.append(self.num("433", subject, "Nickname is already in use"))
        elif numeric == "432":
            out.append(self.num("432", subject, "Erroneous nickname"))
        elif numeric == "401":
            out.append(self.num("401", stand_in(subject) if subject.isdigit() else subject,
                                "No such nick/channel"))
        elif numeric == "403":
            out.append(self.num("403", subject, "No such channel"))
        elif numeric == "482":
            out.append(self.num("482", self.room, message))
        else:
            out.append(f":{SERVER} NOTICE {self.me()} :{message}")

    def _chat(self, event: replies.Chat, out: list[str]) -> None:
        tag = self._tag(event.time)
        if self.history_left and not event.private:  # played back: our own lines too
            self.history_left -= 1
            out.extend(chat_lines(tag, self.source(event.uid), self.room, event.text))
            return
        if event.to is not None:
            return  # our own private echo
        if event.private:
            source = (self.source(event.uid) if event.uid.isdigit()
                      else f"{event.uid}!{event.uid}@{SERVER}")
            out.extend(chat_lines(tag, source, self.nick, event.text))
        elif event.uid != self.uid:
            out.extend(chat_lines(tag, self.source(event.uid), self.room, event.text))

    def file_lines(self, event: replies.FileShared, room: bool) -> list[str]:
        """A file sent to the room (or privately to us): its name, size and URL, as a PRIVMSG
        from its sender, so IRC clients show it and make the URL a link."""
        return chat_lines(self._tag(event.stamp), self.source(event.uid),
                          self.room if room else self.nick, file_text(event))

    def public(self, stamp: str | None, uid: str, text: str) -> list[str]:
        """A room's chat line as the room's IRC members see it (all the same)."""
        return chat_lines(self._tag(stamp), self.source(uid), self.room, text)


def file_text(event: replies.FileShared) -> str:
    """What a shared file says as a PRIVMSG: its name, size and URL."""
    return f"sent a file: {event.name} ({human_size(event.size)}) {event.url}"


def human_size(n: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return f"{n} bytes"


def chat_lines(tag: str, source: str, target: str, text: str) -> list[str]:
    """PRIVMSG lines within IRC's 512 bytes (the tag apart): a long text in several."""
    head = f":{source} PRIVMSG {target} :"
    budget = MAX_LINE - 2 - len(head.encode("utf-8"))
    return [f"{tag}{head}{piece}" for piece in split_text(text, budget)]


ROSTER_EVENTS = (replies.UserList, replies.NameList, replies.Joined, replies.Left, replies.Named)


class Changes:
    """What a push changed in a room's list, gathered while it is applied: who left (with the
    name they had), who arrived, whose name changed (with the first name they had)."""
    __slots__ = ("gone", "joined", "left", "renamed")

    def __init__(self) -> None:
        self.joined: dict[str, None] = {}
        self.left: dict[str, str | None] = {}
        self.renamed: dict[str, str | None] = {}
        self.gone: dict[str, str | None] = {}  # the names of those who left (even if back)

    def arrived(self, uid: str) -> None:
        if uid in self.left:  # left and came back within one push: no change
            del self.left[uid]
        else:
            self.joined[uid] = None

    def departed(self, uid: str, name: str | None) -> None:
        self.gone.setdefault(uid, name)
        if uid in self.joined:  # came and went within one push: nothing to show
            del self.joined[uid]
        else:
            self.left[uid] = name

    def named(self, uid: str, old: str | None) -> None:
        self.renamed.setdefault(uid, old if old is not None else self.gone.get(uid))


class DoorRoster:
    """A room's members as the door keeps them: ``uids`` an ordered set (a dict), ``names``.
    A change (``JOINED:``, ``LEFT:``, ``NAMED:``) costs what it changes; a whole list
    (``USERS:``, ``NAMES:``: a session's first, or after a restart) is diffed."""
    __slots__ = ("names", "uids")

    def __init__(self) -> None:
        self.uids: dict[str, None] = {}
        self.names: dict[str, str] = {}

    def copy(self) -> DoorRoster:
        other = DoorRoster()
        other.uids, other.names = dict(self.uids), dict(self.names)
        return other

    def apply(self, event: replies.Event, changes: Changes) -> None:
        uids, names = self.uids, self.names
        if isinstance(event, replies.UserList):
            new = dict.fromkeys(event.uids)
            for uid in uids:
                if uid not in new:
                    changes.departed(uid, names.get(uid))
            for uid in new:
                if uid not in uids:
                    changes.arrived(uid)
            self.uids = new
            self.names = {u: n for u, n in names.items() if u in new}
        elif isinstance(event, replies.NameList):
            new_names = {u: n for u, n in event.names if n}
            for uid in names.keys() | new_names.keys():
                if names.get(uid) != new_names.get(uid):
                    changes.named(uid, names.get(uid))
            self.names = new_names
        elif isinstance(event, replies.Left):
            for uid in event.uids:
                if uid in uids:
                    del uids[uid]
                    changes.departed(uid, names.pop(uid, None))
        elif isinstance(event, replies.Joined):
            for uid in event.uids:
                if uid in uids:
                    del uids[uid]  # (back at the end, in the room's order)
                else:
                    changes.arrived(uid)
                uids[intern(uid)] = None  # one string for every member's copy
        elif isinstance(event, replies.Named):
            for uid, name in event.names:
                old = names.get(uid)
                if name:
                    names[intern(uid)] = intern(name)
                else:
                    names.pop(uid, None)
                if old != (name or None):
                    changes.named(uid, old)

