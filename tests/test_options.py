"""The option table (pychat/options.py): one row per setting, and everything made from it.

Every program's parser must be exactly its rows; ``pychat serve`` must hand its children every
option they share with it (checked by parsing the children's argv back with their own parsers);
the README's configuration table must be the rendered one.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
from collections.abc import Callable
from dataclasses import fields

import pytest

from pychat.acceptor.__main__ import build_parser as acceptor_parser
from pychat.acceptor.limits import Limits
from pychat.clients.loadtest import build_parser as loadtest_parser
from pychat.clients.options import client_parser
from pychat.keys import build_parser as keys_parser
from pychat.options import (
    ACCEPTOR,
    CLIENTS,
    CONSOLE,
    GUI,
    KEYS,
    LIMIT_OPTIONS,
    LOADTEST,
    OPTIONS,
    PROGRAMS,
    ROUTER,
    SERVE,
    SERVERS,
    STATUS,
    Forward,
    Option,
    add_options,
    limit_values,
    markdown,
    options_of,
    readme_with_table,
)
from pychat.options import main as options_main
from pychat.router.__main__ import build_parser as router_parser
from pychat.serve import CURVE_KEYS, BusKeys, Supervisor, auto_acceptors, bus_keys
from pychat.serve import build_parser as serve_parser
from pychat.status import build_parser as status_parser
from support.procs import ROOT

PARSERS: dict[str, Callable[[], argparse.ArgumentParser]] = {
    SERVE: serve_parser, ROUTER: router_parser, ACCEPTOR: acceptor_parser,
    STATUS: status_parser, KEYS: keys_parser, LOADTEST: loadtest_parser,
    GUI: lambda: client_parser("pychat gui", ""),
    CONSOLE: lambda: client_parser("pychat console", ""),
}
# The modules that build parsers, and pychat/config.py, whose option() the table uses.
PARSER_MODULES = ("pychat/serve.py", "pychat/status.py", "pychat/keys.py", "pychat/metrics.py",
                  "pychat/config.py", "acceptor/__main__.py", "router/__main__.py",
                  "clients/options.py", "clients/loadtest.py")


@pytest.fixture(autouse=True)
def no_pychat_variables(monkeypatch):
    """Defaults as a fresh shell has them (conftest sets PYCHAT_DATA_DIR)."""
    for key in [k for k in os.environ if k.startswith("PYCHAT_")]:
        monkeypatch.delenv(key)


def options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """flag -> action, for the options (not -h, the internal --ready-fd, or positionals)."""
    return {a.option_strings[0]: a for a in parser._actions
            if a.option_strings and a.dest not in ("help", "ready_fd")}


# ---- the table itself ----------------------------------------------------------------------------

def test_one_row_per_variable_and_one_flag_per_program():
    names = [row.env for row in OPTIONS if row.env is not None]
    assert len(names) == len(set(names)), "a variable declared twice"
    assert all(re.fullmatch(r"PYCHAT_[A-Z0-9_]+", name) for name in names)
    for program in PROGRAMS:
        flags = [row.flag for row in OPTIONS if program in row.programs]
        assert flags, program
        assert len(flags) == len(set(flags)), f"{program}: a flag declared twice"
    for row in OPTIONS:
        assert row.programs and set(row.programs) <= set(PROGRAMS), row.flag
        assert set(row.variants) <= set(row.programs), f"{row.flag}: variant of a non-taker"
        assert row.flag.startswith("--") and row.flag == row.flag.lower(), row.flag
        if row.forward is not Forward.NOWHERE:
            assert SERVE in row.programs, f"{row.flag}: serve forwards what it does not take"
        if row.env is None:  # switches for one run: never a server setting
            assert not set(row.programs) & set(SERVERS), row.flag


# Options serve shares with a child by name but not by meaning, and why serve keeps them.
NOT_HANDED_ON = {
    (ROUTER, "curve_secret"): "serve's is the acceptors' key; the router serve starts gets its "
                              "own from --curve-keys (serve.bus_keys)",
}


def test_serve_hands_on_or_sets_every_option_it_shares_with_a_child():
    for row in options_of(SERVE):
        for child in (ROUTER, ACCEPTOR):
            if child in row.programs and (child, row.dest) not in NOT_HANDED_ON:
                assert row.forward.reaches(child) or row.forward is Forward.BY_SERVE, \
                    f"serve takes {row.flag} but does not pass it on to its {child}"
    for dest in CURVE_KEYS:  # the keys serve passes on only when bus_keys() says so
        assert [row.forward for row in OPTIONS if row.dest == dest and SERVE in row.programs] \
            == [Forward.ACCEPTORS]


def test_heartbeat_is_declared_once():
    rows = [row for row in OPTIONS if row.flag == "--heartbeat"]
    assert len(rows) == 1
    assert set(rows[0].programs) == {SERVE, ROUTER, ACCEPTOR}
    for program in rows[0].programs:
        action = options(PARSERS[program]())["--heartbeat"]
        assert action.default == rows[0].default == 1.0
        assert "[env PYCHAT_HEARTBEAT; default 1.0]" in action.help
    for path in PARSER_MODULES:
        with open(os.path.join(ROOT, path), encoding="utf-8") as f:
            text = f.read()
        assert "PYCHAT_HEARTBEAT" not in text and '"--heartbeat"' not in text, path


def test_no_parser_module_adds_an_option_of_its_own():
    """Options come from the table: only pychat/options.py calls config.option()."""
    for path in PARSER_MODULES:
        with open(os.path.join(ROOT, path), encoding="utf-8") as f:
            calls = [line for line in f if re.search(r"(?<![\w.])option\(", line)
                     and not line.lstrip().startswith("def ")]
        assert not calls, f"{path}: {calls}"


def test_the_limit_rows_are_the_fields_of_limits():
    assert [row.dest for row in LIMIT_OPTIONS] != []
    assert {row.dest for row in LIMIT_OPTIONS} == {f.name for f in fields(Limits)}
    for row in LIMIT_OPTIONS:
        assert set(row.programs) == {SERVE, ACCEPTOR} and row.forward is Forward.ACCEPTORS
        assert row.on(SERVE).default == row.on(ACCEPTOR).default == getattr(Limits(), row.dest)
    assert Limits(**limit_values(acceptor_parser().parse_args([]))) == Limits()
    args = acceptor_parser().parse_args(["--max-line", "100", "--idle-timeout", "5"])
    assert Limits(**limit_values(args)) == Limits(max_line=100, idle_timeout=5.0)


# ---- parsers -------------------------------------------------------------------------------------

def expected_help(row: Option) -> str:
    if row.env is None:
        return f"{row.help} [env: none]"
    return f"{row.help} [env {row.env}; default {row.default_value()!r}]"


@pytest.mark.parametrize("program", PROGRAMS)
def test_every_parser_is_its_rows_of_the_table(program):
    acts = options(PARSERS[program]())
    rows = {row.flag: row for row in options_of(program)}
    assert list(acts) == list(rows)  # the same options, in the table's order
    for flag, row in rows.items():
        a = acts[flag]
        assert a.dest == row.dest
        assert a.help == expected_help(row)
        if row.type is bool:
            assert a.default is row.default and a.nargs == 0, flag
            continue
        assert a.default == (list(row.default) if row.repeat else row.default_value()), flag
        assert a.type is row.type, flag
        assert list(a.choices or ()) == list(row.choices), flag


def test_variants_are_what_each_program_takes():
    serve, acceptor = options(serve_parser()), options(acceptor_parser())
    assert serve["--router"].default == "" and acceptor["--router"].default.startswith("tcp://")
    assert serve_parser().parse_args(["--router", ""]).router == ""
    with pytest.raises(SystemExit):
        acceptor_parser().parse_args(["--router", ""])
    assert "3 missed" in options(router_parser())["--heartbeat"].help
    assert "3 missed" not in acceptor["--heartbeat"].help
    # one flag, two settings in programs that share no row
    assert options(router_parser())["--history"].choices == ["sqlite", "memory"]
    for program in CLIENTS:
        assert options(PARSERS[program]())["--history"].default == 20


def test_the_flag_wins_then_the_variable_then_the_default(monkeypatch, capsys):
    p = argparse.ArgumentParser()
    add_options(p, ACCEPTOR)
    assert p.parse_args([]).heartbeat == 1.0
    monkeypatch.setenv("PYCHAT_HEARTBEAT", "0.5")
    monkeypatch.setenv("PYCHAT_REUSE_PORT", "yes")
    p = argparse.ArgumentParser()
    add_options(p, ACCEPTOR)
    args = p.parse_args([])
    assert (args.heartbeat, args.reuse_port) == (0.5, True)
    args = p.parse_args(["--heartbeat", "2", "--no-reuse-port"])
    assert (args.heartbeat, args.reuse_port) == (2.0, False)
    assert "[env PYCHAT_HEARTBEAT; default 1.0]" in " ".join(p.format_help().split())
    monkeypatch.setenv("PYCHAT_HEARTBEAT", "nan")
    with pytest.raises(SystemExit) as e:
        add_options(argparse.ArgumentParser(), ACCEPTOR)
    assert e.value.code == 2 and "$PYCHAT_HEARTBEAT" in capsys.readouterr().err


def test_a_program_outside_the_table_is_refused():
    with pytest.raises(ValueError):
        options_of("nosuch")
    with pytest.raises(ValueError):
        client_parser("pychat nosuch", "")


# ---- pychat serve's children ---------------------------------------------------------------------

# A value unlike the default for every option of serve, as it is typed on the command line.
SAMPLES = {
    "host": "127.0.0.2", "port": "40999", "irc_port": "40998", "web": "off", "web_port": "40997",
    "web_origins": "https://chat.example.org", "ping_after": "5", "acceptors": "3",
    "web_url": "https://chat.example.org", "transfer_stall": "7", "transfer_mbps": "0",
    "upload_ttl": "60",
    "files": "memory", "files_max_mb": "5", "files_quota_mb": "50", "files_per_hour": "10",
    "files_total_gb": "1", "files_max_age": "3",
    "bus": "ipc://pychat-test-bus",
    "max_line": "1000", "send_queue": "1000", "send_queue_hard": "2000", "stall_check": "0.5",
    "sndbuf": "0", "flood_burst": "7", "flood_rate": "2.5", "lines_per_turn": "3",
    "coalesce_ms": "0", "coalesce_factor": "2", "max_connections": "99", "max_per_address": "5",
    "per_address_exempt": "none", "idle_timeout": "60", "partial_line_timeout": "0",
    "piece_idle": "0.25", "flood_bytes": "4096", "connect_burst": "3", "connect_rate": "0.5",
    "tls_handshake_timeout": "2.5",
    "keepalive_idle": "30", "keepalive_interval": "5", "keepalive_count": "3",
    "tls_cert": "cert.pem", "tls_key": "key.pem", "curve_secret": "acceptor-1.key_secret",
    "curve_server": "router.key", "heartbeat": "0.25", "ntp": "ntp.example.org:1123",
    "ntp_interval": "60", "ntp_timeout": "0.5", "history": "memory", "data_dir": "some/dir",
    "history_per_room": "5", "history_max_age": "0", "history_private": "on",
    "history_private_per_sender": "7", "history_cache_rooms": "9", "history_cache_mb": "3",
    "durable": "on", "ntp_max_offset": "0", "accounts": "memory", "require_login": "on",
    "password_pepper_file": "pepper", "login_workers": "2", "token_days": "7",
    "curve_keys": "keys", "insecure_bus": "on",
    "metrics_port": "9100", "metrics_host": "127.0.0.3", "log_level": "debug",
    "log_format": "json",
}


def serve_args(router: str) -> argparse.Namespace:
    argv = [f"--router={router}"]
    for row in options_of(SERVE):
        if row.dest != "router":
            value = SAMPLES[row.dest]
            argv += row.argv(value == "on") if row.type is bool else [row.flag, value]
    return serve_parser().parse_args(argv)


def test_the_samples_are_every_option_of_serve_and_none_is_its_default():
    assert set(SAMPLES) | {"router"} == {row.dest for row in options_of(SERVE)}
    defaults, args = serve_parser().parse_args([]), serve_args("tcp://10.0.0.9:7000")
    for row in options_of(SERVE):
        assert getattr(args, row.dest) != getattr(defaults, row.dest), row.dest


def test_acceptors_auto_leaves_the_router_a_core():
    assert [auto_acceptors(n) for n in (1, 2, 3, 4, 9, 64)] == [1, 1, 2, 3, 8, 8]
    # with --router (a router elsewhere) the acceptors have every core
    assert [auto_acceptors(n, router=False) for n in (1, 2, 3, 9)] == [1, 2, 3, 8]
    parse = serve_parser().parse_args
    assert parse([]).acceptors == parse(["--acceptors", "AUTO"]).acceptors == "auto"
    assert parse(["--acceptors", "3"]).acceptors == 3
    args = serve_args("")
    args.acceptors = "auto"
    sup = Supervisor(args)
    try:
        sup.keys = bus_keys(args, sup.bus)
        sup.plan()
        n = auto_acceptors() if hasattr(socket, "SO_REUSEPORT") else 1
        assert [c.role for c in sup.children] == ["router"] + [f"acceptor {i + 1}"
                                                              for i in range(n)]
    finally:
        sup.stop_all()


@pytest.mark.parametrize("router", ["", "tcp://10.0.0.9:7000"])
def test_serve_forwards_every_option_a_child_takes(router):
    """The children's argv, parsed by their own parsers, give back serve's values: forwarded,
    set by serve, or (what serve does not take) the child's default. With ``--router`` there
    is no router child, and the acceptors get the CurveZMQ keys (bus_keys)."""
    args = serve_args(router)
    if router:  # --curve-keys is for serve's own router
        args.curve_keys = ""
    sup = Supervisor(args)
    try:
        sup.keys = bus_keys(args, sup.bus)
        assert sup.keys.on == bool(router)
        sup.plan()
        roles = [c.role for c in sup.children]
        n = int(SAMPLES["acceptors"]) if hasattr(socket, "SO_REUSEPORT") else 1
        assert roles == (["router"] if not router else []) + [f"acceptor {i + 1}"
                                                              for i in range(n)]
        names = set()
        for child in sup.children:
            program = ROUTER if child.role == "router" else ACCEPTOR
            assert child.argv[0] == f"pychat.{program}"
            got = vars(PARSERS[program]().parse_args(child.argv[1:]))
            want = vars(PARSERS[program]().parse_args([]))
            for row in options_of(SERVE):
                if row.forward.reaches(program) and (sup.keys.on or row.dest not in CURVE_KEYS):
                    value = getattr(args, row.dest)
                    want[row.dest] = os.path.abspath(value) if row.path else value
            i = 0 if program == ROUTER else int(child.role.split()[1])
            want["metrics_port"] = args.metrics_port + i
            if program == ROUTER:
                want["bind"] = sup.bus
            else:
                want.update(port=args.port, router=sup.bus,
                            reuse_port=hasattr(socket, "SO_REUSEPORT"), name=got["name"])
                names.add(got["name"])
            assert got == want, child.role
        assert len(names) == n and "" not in names
    finally:
        sup.stop_all()
        sup._wake_r.close()
        sup._wake_w.close()


def test_a_value_like_a_flag_reaches_the_child_as_a_value():
    row = next(r for r in OPTIONS if r.dest == "data_dir")
    assert router_parser().parse_args(row.argv("-odd")).data_dir == "-odd"


# ---- the README ----------------------------------------------------------------------------------

def test_the_readme_table_is_the_rendered_table():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    assert readme_with_table(text) == text, \
        "README.md's options table is stale: python -m pychat.options --update-readme README.md"
    assert markdown() in text


def test_the_rendered_table_has_every_server_option_and_only_those():
    table = markdown().splitlines()
    assert table[0] == "| flag | variable | default | meaning |"
    documented = [re.match(r"\| `(--[a-z-]+)` \| `(PYCHAT_\w+)` \|", line).groups()
                  for line in table[2:]]
    assert documented == [(row.flag, row.env) for row in OPTIONS
                          if row.env is not None and set(row.programs) & set(SERVERS)]
    assert ("--name", "PYCHAT_NAME") not in documented  # the clients' options are not server's


def test_the_table_is_printed_and_a_readme_without_markers_is_refused(tmp_path, capsys):
    assert options_main(["--markdown"]) == 0
    assert capsys.readouterr().out == markdown()
    readme = tmp_path / "README.md"
    readme.write_text("# no table here\n")
    with pytest.raises(SystemExit) as e:
        options_main(["--update-readme", str(readme)])
    assert e.value.code == 2 and "markers" in capsys.readouterr().err


# ---- the bus's keys under pychat serve (serve.bus_keys) ------------------------------------------

def child_args(sup: Supervisor) -> list[tuple[str, argparse.Namespace]]:
    return [(c.role, PARSERS[ROUTER if c.role == "router" else ACCEPTOR]().parse_args(c.argv[1:]))
            for c in sup.children]


def test_serve_gives_its_own_tcp_router_and_acceptors_the_keys_of_curve_keys():
    args = serve_parser().parse_args(["--bus", "tcp://127.0.0.1:7000", "--curve-keys", "k"])
    sup = Supervisor(args)
    try:
        sup.keys = bus_keys(args, sup.bus)
        sup.plan()
        got = child_args(sup)
    finally:
        sup.stop_all()
    k = os.path.abspath("k")
    assert got[0][0] == "router"
    assert (got[0][1].curve_secret, got[0][1].curve_clients) == (f"{k}/router.key_secret",
                                                                f"{k}/authorized")
    assert len(got) > 1
    for _, acceptor in got[1:]:  # one host: every acceptor has acceptor-1's key
        assert (acceptor.curve_secret, acceptor.curve_server) == (f"{k}/acceptor-1.key_secret",
                                                                  f"{k}/router.key")


@pytest.mark.parametrize("argv, refused", [
    (["--bus", "tcp://0.0.0.0:7000"], True),
    (["--bus", "tcp://*:7000"], True),
    (["--bus", "tcp://10.0.0.5:7000"], True),
    (["--bus", "tcp://[::]:7000"], True),
    (["--bus", "tcp://eth0:7000"], True),  # an interface name: whatever its address is
    (["--bus", "tcp://chat.example.org:7000"], True),
    # keys acceptors would have used toward a router elsewhere do not protect serve's own
    (["--bus", "tcp://0.0.0.0:7000", "--curve-secret", "a.key_secret",
      "--curve-server", "r.key"], True),
    (["--bus", "tcp://127.0.0.1:7000"], False),
    (["--bus", "tcp://127.9.8.7:7000"], False),
    (["--bus", "tcp://[::1]:7000"], False),
    (["--bus", "tcp://localhost:7000"], False),
    (["--bus", "ipc:///run/pychat/bus"], False),
    ([], False),  # the private ipc:// bus
    (["--bus", "tcp://0.0.0.0:7000", "--curve-keys", "k"], False),
    (["--bus", "tcp://0.0.0.0:7000", "--insecure-bus"], False),
    (["--router", "tcp://10.0.0.5:7000"], False),  # connecting to it: that router decides
])
def test_serve_refuses_an_open_bus_without_keys(argv, refused):
    args = serve_parser().parse_args(argv)
    if refused:
        with pytest.raises(ValueError, match=r"pychat keys.*--curve-keys DIR.*--insecure-bus"):
            bus_keys(args, args.router or args.bus or "ipc://")
    else:
        assert isinstance(bus_keys(args, args.router or args.bus or "ipc://"), BusKeys)


def test_the_router_refuses_an_open_bus_without_keys_before_anything(capsys, monkeypatch):
    from pychat.router.__main__ import main as router_main
    with pytest.raises(SystemExit) as e:
        router_main(["--bind", "tcp://0.0.0.0:7000"])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert "refusing to bind tcp://0.0.0.0:7000 without CurveZMQ keys" in err
    assert "pychat keys" in err and "--curve-secret DIR/router.key_secret" in err
    assert "--insecure-bus (PYCHAT_INSECURE_BUS=1)" in err
    # the variable says it as well as the flag
    monkeypatch.setenv("PYCHAT_INSECURE_BUS", "1")
    assert router_parser().parse_args(["--bind", "tcp://0.0.0.0:7000"]).insecure_bus is True


def test_serve_hands_insecure_bus_to_its_router():
    args = serve_parser().parse_args(["--bus", "tcp://0.0.0.0:7000", "--insecure-bus"])
    sup = Supervisor(args)
    try:
        sup.keys = bus_keys(args, sup.bus)
        sup.plan()
        (role, router), *_ = child_args(sup)
    finally:
        sup.stop_all()
    assert role == "router" and router.insecure_bus is True and router.curve_secret == ""


def test_curve_keys_is_for_serves_own_router_only():
    args = serve_parser().parse_args(["--router", "tcp://10.0.0.5:7000", "--curve-keys", "k"])
    with pytest.raises(ValueError, match="--curve-keys is for the router serve starts"):
        bus_keys(args, args.router)


@pytest.mark.parametrize("name", ["a b", "x" * 256, "tab\there", "é"])
def test_an_acceptor_name_the_bus_would_drop_is_refused_at_start(name, capsys):
    """The router drops a Hello whose acceptor name is not a bus token: such an acceptor would
    listen and never reach the router. It is refused where it is given instead."""
    with pytest.raises(SystemExit):
        acceptor_parser().parse_args(["--name", name])
    assert "not a name the bus takes" in capsys.readouterr().err
    assert acceptor_parser().parse_args(["--name", "host-1.a:b@c+d_e"]).name == "host-1.a:b@c+d_e"
