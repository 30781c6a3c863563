"""The IRC door's translator (acceptor/irc.py), pure: IRC bytes in, PyChat lines and IRC lines
out; PyChat server lines in, IRC lines out. Compliance cases in the manner of irctest."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pychat.acceptor.irc import MAX_LINE, START, IrcDoor, parse_irc, split_text

ME = "100001"
BOB = "200002"


def numerics(lines: list[str]) -> list[str]:
    return [line.split()[1] for line in lines if line.startswith(":pychat ")]


def started() -> IrcDoor:
    """A door whose session has its ID and the core's answer to START."""
    d = IrcDoor()
    assert d.from_core(f"ID:{ME}\nUSERS:{BOB},{ME}\nNAMES:{BOB}=bob") == []
    assert d.from_core("OK cap time codes end deltas") == []
    assert d.from_core("END cap") == []
    return d


def registered(nick: str = "alice") -> IrcDoor:
    d = started()
    core, out = d.receive(f"NICK {nick}\r\nUSER a 0 * :Alice A\r\n".encode())
    assert (core, out) == ([f"/nick {nick}".encode()], [])
    out = d.from_core(f"OK nick {nick}")
    out += d.from_core(f"NAMES:{BOB}=bob,{ME}={nick}")
    out += d.from_core("END nick")
    assert d.registered
    return d


def test_the_core_is_asked_for_its_capabilities_first():
    assert START == b"/cap time codes end deltas"


@pytest.mark.parametrize("order", [("NICK alice", "USER a 0 * :A"),
                                   ("USER a 0 * :A", "NICK alice")])
def test_registration_in_either_order_then_the_welcome(order):
    d = started()
    core, out = d.receive(f"{order[0]}\r\n".encode())
    assert (core, out) == ([], [])
    core, out = d.receive(f"{order[1]}\r\n".encode())
    assert core == [b"/nick alice"] and out == []
    out = d.from_core("OK nick alice")
    assert numerics(out)[:6] == ["001", "002", "003", "004", "005", "422"]
    assert out[0] == ":pychat 001 alice :Welcome to PyChat, alice"
    isupport = out[4]
    for token in ("CHANTYPES=#", "NICKLEN=24", "CHANNELLEN=33", "CASEMAPPING=ascii",
                  "PREFIX=()", "NETWORK=PyChat"):
        assert f" {token} " in isupport
    assert f":alice!{ME}@pychat JOIN #lobby" in out
    names = [line for line in out if " 353 " in line]
    assert names == [":pychat 353 alice = #lobby :bob alice"]
    assert out[-1] == ":pychat 366 alice #lobby :End of /NAMES list"


def test_cap_ls_holds_registration_until_cap_end():
    d = started()
    core, out = d.receive(b"CAP LS 302\r\nNICK alice\r\nUSER a 0 * :A\r\n")
    assert core == []
    assert out == [":pychat CAP * LS :server-time message-tags sasl"]
    core, out = d.receive(b"CAP REQ :server-time message-tags\r\n")
    assert out == [":pychat CAP alice ACK :server-time message-tags"]
    core, out = d.receive(b"CAP REQ :server-time batch\r\n")
    assert out == [":pychat CAP alice NAK :server-time batch"]
    assert core == []
    core, out = d.receive(b"CAP END\r\n")
    assert core == [b"/nick alice"]


def test_server_time_tags_chat_lines_when_asked():
    d = registered()
    d.caps.add("server-time")
    stamp = "2026-12-06T20:00:00.123Z"
    assert d.from_core(f"@time={stamp} [Private] {BOB}: psst") == [
        f"@time={stamp} :bob!{BOB}@pychat PRIVMSG alice :psst"]
    assert d.public(stamp, BOB, "hi") == [f"@time={stamp} :bob!{BOB}@pychat PRIVMSG #lobby :hi"]
    d.caps.clear()
    assert d.public(stamp, BOB, "hi") == [f":bob!{BOB}@pychat PRIVMSG #lobby :hi"]


@pytest.mark.parametrize("nick", ["bad!nick", "u123456", "123456", "x" * 25])
def test_an_invalid_nick_is_432_and_registration_waits(nick):
    d = started()
    core, out = d.receive(f"USER a 0 * :A\r\nNICK {nick}\r\n".encode())
    assert core == [] and numerics(out) == ["432"]
    core, out = d.receive(b"NICK good\r\n")
    assert core == [b"/nick good"]


def test_a_taken_nick_is_433_and_registration_waits_for_another():
    d = started()
    core, out = d.receive(b"NICK bob\r\nUSER a 0 * :A\r\n")
    assert core == [b"/nick bob"]
    out = d.from_core("@code=name-taken ERROR: name bob is taken")
    assert out == [":pychat 433 * bob :Nickname is already in use"]
    assert d.from_core("END nick") == []
    assert not d.registered
    core, out = d.receive(b"NICK carol\r\n")
    assert core == [b"/nick carol"]
    assert numerics(d.from_core("OK nick carol"))[0] == "001"


def test_a_taken_nick_after_registration_is_433():
    d = registered()
    core, _ = d.receive(b"NICK bob\r\n")
    assert core == [b"/nick bob"]
    assert d.from_core("@code=name-taken ERROR: name bob is taken") == [
        ":pychat 433 alice bob :Nickname is already in use"]


def test_missing_parameters_are_461():
    d = started()
    _, out = d.receive(b"USER a\r\n")
    assert out == [":pychat 461 * USER :Not enough parameters"]
    d = registered()
    for line in (b"JOIN\r\n", b"PART\r\n", b"KICK #lobby\r\n", b"TOPIC\r\n"):
        assert numerics(d.receive(line)[1]) == ["461"], line


def test_unknown_commands_are_421_and_commands_before_registration_451():
    d = started()
    core, out = d.receive(b"JOIN #dev\r\nFROB x\r\n")
    assert core == [] and numerics(out) == ["451", "451"]
    d = registered()
    core, out = d.receive(b"FROB x\r\n")
    assert core == [] and out == [":pychat 421 alice FROB :Unknown command"]


def test_ping_is_answered_by_the_door_at_once():
    d = IrcDoor()
    assert d.receive(b"PING :abc def\r\n") == ([], [":pychat PONG pychat :abc def"])


def test_a_line_split_across_packets_is_one_line():
    d = started()
    core: list[bytes] = []
    for piece in (b"NI", b"CK ali", b"ce\r", b"\nUSER a 0 ", b"* :A\n"):
        c, out = d.receive(piece)
        core += c
        assert out == []
    assert core == [b"/nick alice"]


def test_a_line_over_512_bytes_is_417_and_dropped_and_the_next_is_read():
    d = registered()
    longest = b"PRIVMSG #lobby :" + b"x" * (MAX_LINE - 2 - 16)
    core, out = d.receive(longest + b"\r\n")
    assert out == [] and core == [b"x" * (MAX_LINE - 18)]
    core, out = d.receive(longest + b"y\r\nPRIVMSG #lobby :after\r\n")
    assert out == [":pychat 417 alice :Input line was too long"] and core == [b"after"]
    # the longest line, its CRLF split from it
    assert d.receive(longest + b"\r") == ([], [])
    assert d.receive(b"\n") == ([b"x" * (MAX_LINE - 18)], [])
    # one that never ends: said once, dropped up to its end, in whatever pieces it comes
    _, out = d.receive(b"PRIVMSG #lobby :" + b"z" * 600)
    assert numerics(out) == ["417"]
    assert d.receive(b"z" * 600) == ([], [])
    assert d.receive(b"zz\r\nPRIVMSG #lobby :next\r\n") == ([b"next"], [])


def test_utf8_split_across_packets_and_latin1_fallback():
    d = registered()
    data = "PRIVMSG #lobby :héllo wörld ✓\r\n".encode()
    cut = data.index("✓".encode()) + 1  # inside the three bytes of the check mark
    assert d.receive(data[:cut]) == ([], [])
    assert d.receive(data[cut:]) == (["héllo wörld ✓".encode()], [])
    assert d.receive(b"PRIVMSG #lobby :caf\xe9\r\n") == (["café".encode()], [])


def test_messages_cross_as_pychat_lines():
    d = registered()
    assert d.receive(b"PRIVMSG #lobby :hello\r\n")[0] == [b"hello"]
    assert d.receive(b"PRIVMSG #lobby :/not a command\r\n")[0] == [b"//not a command"]
    assert d.receive(b"PRIVMSG bob :psst\r\n")[0] == [b"/msg bob psst"]
    assert d.receive(f"PRIVMSG u{BOB} :psst\r\n".encode())[0] == [f"/msg {BOB} psst".encode()]
    assert d.receive(b"PRIVMSG #other :hi\r\n") == (
        [], [":pychat 404 alice #other :Cannot send to channel"])
    assert d.receive(b"NOTICE #other :hi\r\n") == ([], [])
    assert d.receive(b"QUIT :gone\r\n")[0] == [b"/quit gone"]


def test_errors_of_a_notice_are_not_answered():
    d = registered()
    assert d.receive(b"NOTICE nobody :hi\r\n")[0] == [b"/msg nobody hi"]
    assert d.from_core("@code=no-such-user ERROR: no such user nobody") == []
    assert d.from_core("END msg") == []
    assert d.receive(b"PRIVMSG nobody :hi\r\n")[0] == [b"/msg nobody hi"]
    assert d.from_core("@code=no-such-user ERROR: no such user nobody") == [
        ":pychat 401 alice nobody :No such nick/channel"]


def test_own_echoes_are_not_sent_back():
    d = registered()
    assert d.from_core(f"{ME}: hello") == []
    assert d.from_core(f"[Private] To {BOB}: psst") == []
    assert d.from_core(f"{BOB}: hi") == [f":bob!{BOB}@pychat PRIVMSG #lobby :hi"]


def test_a_long_pychat_line_is_split_within_512_bytes():
    d = registered()
    out = d.public(None, BOB, "é" * 1000)
    assert len(out) > 1
    assert all(len(line.encode()) + 2 <= MAX_LINE for line in out)
    assert "".join(line.split(" :", 1)[1] for line in out) == "é" * 1000
    assert split_text("abc", 10) == ["abc"]


def test_joining_a_room_parts_the_old_one_and_names_the_new():
    d = registered()
    assert d.receive(b"JOIN #a,#dev\r\n")[0] == [b"/join #dev"]  # the last one counts
    out = d.from_core("ROOM:#dev")
    assert out == [f":alice!{ME}@pychat PART #lobby", f":alice!{ME}@pychat JOIN #dev"]
    assert d.from_core(f"USERS:{ME}") == []
    assert d.from_core(f"NAMES:{ME}=alice") == [":pychat 353 alice = #dev :alice",
                                                 ":pychat 366 alice #dev :End of /NAMES list"]
    assert d.from_core("END join") == []
    # others arrive, take a name, leave: JOIN, NICK, PART
    assert d.from_core(f"JOINED:{BOB}") == [f":u{BOB}!{BOB}@pychat JOIN #dev"]
    assert d.from_core(f"NAMED:{BOB}=bob") == [f":u{BOB}!{BOB}@pychat NICK :bob"]
    assert d.from_core(f"LEFT:{BOB}") == [f":bob!{BOB}@pychat PART #dev"]
    # PART goes back to the lobby
    assert d.receive(b"PART #dev\r\n")[0] == [b"/join #lobby"]
    assert d.from_core("ROOM:#lobby")[-1] == f":alice!{ME}@pychat JOIN #lobby"


def test_who_whois_names_mode_away_list_topic():
    d = registered()
    _, out = d.receive(b"WHO #lobby\r\n")
    assert numerics(out) == ["352", "352", "315"]
    _, out = d.receive(b"WHOIS bob\r\nWHOIS nobody\r\n")
    assert numerics(out) == ["311", "319", "318", "401", "318"]
    _, out = d.receive(b"MODE #lobby\r\nMODE alice\r\nMODE alice +i\r\nMODE #lobby +o bob\r\n")
    assert numerics(out) == ["324", "221", "501", "472"]
    _, out = d.receive(b"AWAY :lunch\r\nAWAY\r\n")
    assert numerics(out) == ["306", "305"]
    core, _ = d.receive(b"LIST\r\n")
    assert core == [b"/rooms"]
    assert numerics(d.from_core("ROOMS:#dev=1,#lobby=2")) == ["321", "322", "322", "323"]
    d.from_core("END rooms")
    core, _ = d.receive(b"TOPIC #lobby\r\n")
    assert core == [b"/topic"]
    assert d.from_core("TOPIC:#lobby") == [":pychat 331 alice #lobby :No topic is set"]
    d.from_core("END topic")
    core, _ = d.receive(b"TOPIC #lobby :new topic\r\n")
    assert core == [b"/topic new topic"]
    assert d.from_core("TOPIC:#lobby new topic") == [":pychat TOPIC #lobby :new topic"]


def test_bye_closes_the_link_and_unknown_lines_are_notices():
    d = registered()
    assert d.from_core("BYE") == ["ERROR :Closing link"]
    assert d.from_core("HELP: /nick <name>") == [":pychat NOTICE alice :HELP: /nick <name>"]


def test_parse_irc_drops_tags_and_prefix():
    assert parse_irc("@label=1 :nick!u@h PRIVMSG #a :hi there") == ("PRIVMSG", ["#a", "hi there"])
    assert parse_irc("privmsg #a hi") == ("PRIVMSG", ["#a", "hi"])
    assert parse_irc("") == ("", [])


_irc_like = st.lists(st.sampled_from([b"NICK ", b"USER ", b"CAP ", b"LS", b"REQ :", b"END",
                                      b"JOIN ", b"PRIVMSG ", b"#a", b"u123456", b":", b" ",
                                      b"\r", b"\n", b"\xc3", b"\xa9", b"x" * 300, b"@t=1 ",
                                      b"MODE ", b"PART ", b"WHOIS ", b"TOPIC ", b"KICK "]))


@given(st.lists(st.one_of(st.binary(), _irc_like.map(b"".join))))
def test_any_bytes_give_lines_for_the_core_and_the_client_never_an_exception(chunks):
    d = started()
    for chunk in chunks:
        core, out = d.receive(chunk)
        assert all(isinstance(line, bytes) and b"\n" not in line for line in core)
        assert all("\n" not in line and "\r" not in line for line in out)
        if not d.registered and d.sent_nick:  # the core says yes: registered from then on
            d.from_core(f"OK nick {d.sent_nick}")


# ---- SASL PLAIN ------------------------------------------------------------------------------

def _plain(authzid: str, authcid: str, password: str) -> bytes:
    import base64
    return base64.b64encode(f"{authzid}\0{authcid}\0{password}".encode())


def test_sasl_plain_logs_in_through_the_core_and_the_nick_is_the_account():
    d = started()
    core, out = d.receive(b"CAP LS 302\r\nNICK whoever\r\nUSER a 0 * :A\r\nCAP REQ :sasl\r\n")
    assert out[-1] == ":pychat CAP whoever ACK :sasl"
    core, out = d.receive(b"AUTHENTICATE PLAIN\r\n")
    assert (core, out) == ([], ["AUTHENTICATE +"])
    core, out = d.receive(b"AUTHENTICATE " + _plain("", "alice", "correct-horse-9") + b"\r\n")
    assert core == [b"/login alice correct-horse-9"] and out == []
    out = d.from_core("OK login alice")
    out += d.from_core(f"NAMES:{BOB}=bob,{ME}=alice")
    out += d.from_core("END login")
    assert numerics(out) == ["900", "903"]
    assert out[0] == (f":pychat 900 whoever whoever!{ME}@pychat alice "
                      f":You are now logged in as alice")
    core, out = d.receive(b"CAP END\r\n")
    assert core == []  # no /nick: the account's name is the nick
    assert out[0] == ":pychat 001 alice :Welcome to PyChat, alice"
    assert f":alice!{ME}@pychat JOIN #lobby" in out


@pytest.mark.parametrize("payload", [
    _plain("", "alice", "wrong-password"),  # the core says no
])
def test_sasl_with_a_wrong_password_is_904_and_registration_goes_on_as_a_guest(payload):
    d = started()
    d.receive(b"CAP LS\r\nNICK guest1\r\nUSER a 0 * :A\r\nCAP REQ sasl\r\n")
    d.receive(b"AUTHENTICATE PLAIN\r\n")
    core, _ = d.receive(b"AUTHENTICATE " + payload + b"\r\n")
    assert core == [b"/login alice wrong-password"]
    out = d.from_core("@code=login-failed ERROR: login failed")
    out += d.from_core("END login")
    assert out == [":pychat 904 guest1 :SASL authentication failed"]
    core, out = d.receive(b"CAP END\r\n")
    assert core == [b"/nick guest1"]


@pytest.mark.parametrize("lines, expected", [
    ([b"AUTHENTICATE SCRAM-SHA-256"], ["908", "904"]),
    ([b"AUTHENTICATE PLAIN", b"AUTHENTICATE !!notbase64!!"], ["904"]),
    ([b"AUTHENTICATE PLAIN", b"AUTHENTICATE " + _plain("bob", "alice", "pw-pw-pw-pw")],
     ["904"]),  # as someone else: no
    ([b"AUTHENTICATE PLAIN", b"AUTHENTICATE " + _plain("", "not a name", "pw-pw-pw-pw")],
     ["904"]),
    ([b"AUTHENTICATE PLAIN", b"AUTHENTICATE *"], ["906"]),
    ([b"AUTHENTICATE PLAIN"] + [b"AUTHENTICATE " + b"A" * 400] * 6, ["905"]),
    ([b"AUTHENTICATE"], ["461"]),
])
def test_sasl_refusals_never_reach_the_core(lines, expected):
    d = started()
    d.receive(b"CAP LS\r\nNICK carol\r\n")
    got_core, got = [], []
    for line in lines:
        core, out = d.receive(line + b"\r\n")
        got_core += core
        got += out
    assert got_core == []
    assert numerics(got) == expected


def test_a_long_sasl_payload_comes_in_400_byte_pieces():
    d = started()
    d.receive(b"CAP LS\r\nNICK dave\r\nUSER a 0 * :A\r\n")
    d.receive(b"AUTHENTICATE PLAIN\r\n")
    password = "p" * 300  # 300 + names: more than one piece of base64
    payload = _plain("dave", "dave", password)
    pieces = [payload[i:i + 400] for i in range(0, len(payload), 400)]
    if len(pieces[-1]) == 400:
        pieces.append(b"+")
    core = []
    for piece in pieces:
        core += d.receive(b"AUTHENTICATE " + piece + b"\r\n")[0]
    assert core == [f"/login dave {password}".encode()]


def test_a_room_entered_with_server_time_plays_its_history_back():
    d = started()
    d.receive(b"CAP LS\r\nNICK alice\r\nUSER a 0 * :A\r\nCAP REQ server-time\r\nCAP END\r\n")
    d.from_core("OK nick alice")
    assert d.to_core == [b"/history 20"]  # the lobby's, on registration
    d.to_core.clear()
    d.from_core(f"NAMES:{BOB}=bob,{ME}=alice")
    d.from_core("END nick")
    out = d.from_core("ROOM:#dev")
    assert out[-1] == f":alice!{ME}@pychat JOIN #dev" and d.to_core == [b"/history 20"]
    d.from_core(f"USERS:{ME}\nNAMES:{ME}=alice")
    d.from_core("END join")
    out = d.from_core("HISTORY:2\n@time=2026-12-06T10:00:00.000Z 555555: before you came\n"
                      f"@time=2026-12-06T10:00:01.000Z {ME}: and your own line")
    assert out == [
        "@time=2026-12-06T10:00:00.000Z :u555555!555555@pychat PRIVMSG #dev :before you came",
        f"@time=2026-12-06T10:00:01.000Z :alice!{ME}@pychat PRIVMSG #dev :and your own line"]
    assert d.from_core("END history") == []
    assert d.from_core(f"@time=2026-12-06T10:00:02.000Z {ME}: live echo") == []  # not played


def test_without_server_time_no_history_is_asked():
    d = registered()
    d.from_core("ROOM:#dev")
    assert d.to_core == []



def test_a_push_shows_each_change_once_with_the_names_it_ends_with():
    d = registered()
    out = d.from_core("JOINED:333333\nNAMED:333333=carol")  # arrived and named: one JOIN
    assert out == [":carol!333333@pychat JOIN #lobby"]
    # left and came back (its name comes again, as for every arrival): nothing
    assert d.from_core("LEFT:333333\nJOINED:333333\nNAMED:333333=carol") == []
    assert d.from_core("NAMED:333333=caz") == [":carol!333333@pychat NICK :caz"]
    assert d.from_core("JOINED:444444\nLEFT:444444") == []  # came and went: nothing
    assert d.from_core("LEFT:333333") == [":caz!333333@pychat PART #lobby"]
    assert list(d.roster.uids) == [BOB, ME] and d.roster.names == {BOB: "bob", ME: "alice"}
    # a whole list (after a restart) is diffed against the one the door has
    out = d.from_core(f"USERS:{ME},555555\nNAMES:{ME}=alice,555555=eve")
    assert out == [":bob!%s@pychat PART #lobby" % BOB, ":eve!555555@pychat JOIN #lobby"]


@pytest.mark.parametrize("line, expected", [
    (b"PRIVMSG\r\n", ["411"]),  # no recipient
    (b"PRIVMSG #lobby\r\n", ["412"]),  # no text
    (b"PRIVMSG #elsewhere :hi\r\n", ["404"]),  # a channel the user is not in
    (b"PART #elsewhere\r\n", ["442"]),
    (b"USER again 0 * :Again\r\n", ["462"]),  # already registered
    (b"NICK\r\n", ["431"]),
    (b"MODE bob\r\n", ["502"]),  # another user's modes
    (b"CAP FROB\r\n", ["410"]),  # an unknown CAP subcommand
    (b"NOTICE #elsewhere :hi\r\n", []),  # a NOTICE is never answered with an error
])
def test_numerics_for_bad_input_after_registration(line, expected):
    """irctest-style: each bad command gets its RFC 2812 numeric (or, for NOTICE, nothing),
    reaches nothing in the core, and the next command still works."""
    d = registered()
    core, out = d.receive(line)
    assert core == [] and numerics(out) == expected, (line, out)
    assert d.receive(b"PING :next\r\n")[1] == [":pychat PONG pychat :next"]


def test_a_room_the_core_refuses_is_403():
    d = registered()
    core, _ = d.receive(b"JOIN #bad!name\r\n")
    assert core == [b"/join #bad!name"]
    out = d.from_core("@code=invalid-room ERROR: invalid room #bad!name: letters, digits, - "
                      "and _ only")
    out += d.from_core("END join")
    assert numerics(out) == ["403"] and " #bad!name " in out[0]


def test_cap_negotiation_ls_req_nak_list_end():
    d = started()
    _, out = d.receive(b"CAP LS 302\r\n")
    assert out == [":pychat CAP * LS :server-time message-tags sasl"]
    _, out = d.receive(b"CAP REQ :server-time frobnicate\r\n")  # one unknown: all refused
    assert out == [":pychat CAP * NAK :server-time frobnicate"]
    _, out = d.receive(b"CAP REQ :server-time message-tags\r\n")
    assert out == [":pychat CAP * ACK :server-time message-tags"]
    _, out = d.receive(b"CAP LIST\r\n")
    assert out == [":pychat CAP * LIST :message-tags server-time"]
    core, out = d.receive(b"NICK carol\r\nUSER c 0 * :Carol\r\n")
    assert core == [] and out == []  # registration waits for CAP END
    core, out = d.receive(b"CAP END\r\n")
    assert core == [b"/nick carol"]


def test_members_in_step_see_the_same_lines_for_a_change_applied_quietly():
    """Output._roster_doors translates a push once for the room's IRC members in step and only
    applies it to the others' lists: that must be what each would have made itself."""
    import copy

    from pychat.acceptor.output import uids_named
    from pychat.wire import replies

    a, b = registered("alice"), registered("alice")  # (two members: their own uid is not named)
    assert a.in_step() and b.in_step()
    b_alone = copy.deepcopy(b)
    delta = "JOINED:300003,300004\nNAMED:300003=dave,200002=bobby\nLEFT:300004"
    events = [replies.parse_server_line(line) for line in delta.split("\n")]
    assert uids_named(events) == {"300003", "300004", "200002"}
    made = a.from_core(delta, shared=True)
    a.share(a.roster)
    b.share(a.roster)
    assert b_alone.from_core(delta) == made  # what b would have shown: the same lines
    assert made == [":bob!200002@pychat NICK :bobby", ":dave!300003@pychat JOIN #lobby"]
    assert b.roster is a.roster
    assert b.roster.uids == b_alone.roster.uids and b.roster.names == b_alone.roster.names
    # the next shared change: applied once, seen by both
    assert a.from_core("LEFT:300003", shared=True) == [":dave!300003@pychat PART #lobby"]
    assert "300003" not in b.roster.uids
    # a change of b's own (a whole list: b re-entered, say) leaves a's list alone
    b.from_core(f"USERS:{ME}")
    assert b.roster is not a.roster and list(b.roster.uids) == [ME]
    assert "200002" in a.roster.uids
