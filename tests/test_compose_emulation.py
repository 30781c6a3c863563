"""`docker compose up` without Docker: each service of docker-compose.yml started as a local
process, with the command and environment the file gives it, and two clients chatting.

What a container would have, read from the files (tests/compose_file.py): the argv is the
image's ENTRYPOINT (`pychat`, run here as `python -m pychat` from this checkout) plus the
service's `command`; the environment is the image's ENV under the service's `environment`,
interpolated as compose does with nothing set in the shell, and no other PYCHAT_* variable.
Services start in `depends_on` order; one that others wait for as `service_healthy` must pass
its own healthcheck command (run with its environment) first, and one they wait for as
`service_completed_successfully` (the keys) runs to its end and must exit 0.

What this machine needs changed, and nothing else (``rewrite``):
- service names resolve to 127.0.0.1 (Docker's DNS): `tcp://router:` becomes
  `tcp://127.0.0.1:`; and `0.0.0.0` (a container's own network) becomes 127.0.0.1;
- the ports inside the containers (65431, 65432) become free ports, so parallel tests never
  collide; clients connect to the acceptor's port directly (the published mapping is 1:1);
- a named volume is a fresh folder (one per volume, shared by the services that mount it),
  replacing its mount point wherever a path in the environment or the command starts with it;
  a tmpfs is a fresh folder per service, and one at /tmp is the service's TMPDIR;
- `read_only: true`: Python's own writes anywhere but the service's writable volumes and its
  tmpfs fail with EROFS (tests/read_only_root/sitecustomize.py, an audit hook), as they would
  on the container's read-only root;
- PYCHAT_NTP, when the shell names servers, becomes an unused UDP port on 127.0.0.1, so nothing
  leaves this machine; the router then says no NTP server answered and uses the host clock.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from pychat.serve import auto_acceptors
from support.procs import ROOT, Proc, free_port

from .compose_file import Service, services, start_order

pytestmark = pytest.mark.e2e

READY = {"router": r"router bound to", "serve": r"pychat: serving on"}
READ_ONLY_SITE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "read_only_root")


def free_udp_port() -> int:
    import socket
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def in_mounts(value: str, mounts: dict[str, str]) -> str:
    """``value`` with a container path under a mount point made the local folder's."""
    for target, local in mounts.items():
        if value == target or value.startswith(target + "/"):
            return local + value[len(target):]
    return value


def rewrite(svcs: dict[str, Service], volumes_root) -> tuple[dict[int, int], int]:
    """Point every service at this machine (see the module's docstring); returns the port map
    (container port -> local port) and the UDP port NTP is sent to (nothing listens there)."""
    ports: dict[int, int] = {}

    def local_port(p: str) -> str:
        if int(p) not in ports:
            ports[int(p)] = free_port()
        return str(ports[int(p)])

    ntp = free_udp_port()
    for svc in svcs.values():
        mounts = {target: str(volumes_root / name) for name, target in svc.volumes.items()}
        # (paths in the file name no tmpfs: it is only where the service's TMPDIR points)
        tmpfs = {target: str(volumes_root / "tmpfs" / svc.name / target.strip("/"))
                 for target in svc.tmpfs}
        for path in [*mounts.values(), *tmpfs.values()]:
            os.makedirs(path, exist_ok=True)
        for key, value in svc.env.items():
            value = re.sub(r"tcp://([\w.-]+):(\d+)",
                           lambda m: "tcp://" + ("127.0.0.1" if m.group(1) in svcs or
                                                 m.group(1) == "0.0.0.0" else m.group(1))
                                     + ":" + local_port(m.group(2)), value)
            if key in ("PYCHAT_PORT", "PYCHAT_WEB_PORT"):
                value = local_port(value)
            if key == "PYCHAT_HOST" and value == "0.0.0.0":
                value = "127.0.0.1"
            if key == "PYCHAT_NTP" and value:
                value = f"127.0.0.1:{ntp}"
            svc.env[key] = in_mounts(value, mounts)
        svc.argv = [in_mounts(word, mounts) for word in svc.argv]
        if "/tmp" in tmpfs:
            svc.env["TMPDIR"] = tmpfs["/tmp"]
        if svc.read_only:
            writable = [local for target, local in mounts.items()
                        if target not in svc.read_only_mounts] + list(tmpfs.values())
            svc.env["READ_ONLY_ROOT_WRITABLE"] = os.pathsep.join(writable)
            svc.env["PYTHONPATH"] = READ_ONLY_SITE
    # nothing may point past this machine any more
    for svc in svcs.values():
        for key, value in svc.env.items():
            for host in re.findall(r"tcp://([\w.-]+):", value):
                assert host == "127.0.0.1", (svc.name, key, value)
        assert svc.env.get("PYCHAT_HOST", "127.0.0.1") == "127.0.0.1"
        for path in svc.volumes.values():
            assert not [v for v in [*svc.env.values(), *svc.argv]
                        if v == path or v.startswith(path + "/")], (svc.name, path)
    return ports, ntp


def argv_here(argv: list[str]) -> list[str]:
    """The container's programs, from this checkout: `pychat` -> python -m pychat."""
    if argv[0] == "pychat":
        return [sys.executable, "-m", "pychat", *argv[1:]]
    if argv[0] == "python":
        return [sys.executable, *argv[1:]]
    return argv


def container_env(svc: Service) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("PYCHAT_")},
            **svc.env}


def healthcheck(svc: Service) -> subprocess.CompletedProcess:
    return subprocess.run(argv_here(svc.healthcheck), env=container_env(svc), cwd=ROOT,
                          capture_output=True, text=True, timeout=30)


@pytest.fixture
def container_env_only(monkeypatch):
    """Proc starts from os.environ: remove every PYCHAT_* (conftest sets PYCHAT_DATA_DIR), so a
    service sees only what its container would."""
    for key in list(os.environ):
        if key.startswith("PYCHAT_"):
            monkeypatch.delenv(key)


def one_shots(svcs: dict[str, Service]) -> set[str]:
    """Services others wait for to exit 0 (`service_completed_successfully`)."""
    return {dep for svc in svcs.values() for dep, condition in svc.depends_on.items()
            if condition == "service_completed_successfully"}


def compose_up(svcs: dict[str, Service], procs: list[Proc]) -> dict[str, Proc]:
    """Start every service; returns the long-running ones (a one-shot has exited 0)."""
    running: dict[str, Proc] = {}
    once = one_shots(svcs)
    for name in start_order(svcs):
        svc = svcs[name]
        for dep, condition in svc.depends_on.items():
            if condition == "service_healthy":
                r = healthcheck(svcs[dep])
                assert r.returncode == 0, f"{dep} unhealthy: {r.stdout}{r.stderr}"
        if name in once:
            r = subprocess.run(argv_here(svc.argv), env=container_env(svc), cwd=ROOT,
                               capture_output=True, text=True, timeout=60)
            assert r.returncode == 0, f"{name} exited {r.returncode}: {r.stdout}{r.stderr}"
            continue
        p = Proc(argv_here(svc.argv), env=svc.env, name=f"service {name}")
        procs.append(p)
        running[name] = p
        p.wait_for(READY[svc.argv[1]])
    return running


def said(p: Proc, pattern: str) -> re.Match | None:
    """A line the process has printed already (wait_for only sees lines not yet waited past)."""
    for line in list(p.output):
        m = re.search(pattern, line)
        if m:
            return m
    return None


def compose_down(running: dict[str, Proc]) -> None:
    """`docker compose down`: SIGTERM, dependents first."""
    for p in reversed(list(running.values())):
        assert p.stop() == 0, "\n".join(p.output[-20:])


def checked(svcs: dict[str, Service]) -> list[Service]:
    """The services with a healthcheck (the keys one-shot has none)."""
    return [svc for svc in svcs.values() if svc.healthcheck]


def acceptors_in(acceptor: Service) -> int:
    """The acceptor container's acceptors: PYCHAT_ACCEPTORS, whose default, auto, gives every
    core (its router is in a container of its own)."""
    want = acceptor.env["PYCHAT_ACCEPTORS"]
    return auto_acceptors(router=False) if want == "auto" else int(want)


def test_compose_up_gives_a_working_server(tmp_path, procs, connect, container_env_only):
    svcs = services()
    ports, _ntp = rewrite(svcs, tmp_path / "volumes")
    acceptor = svcs["acceptor"]
    port = int(acceptor.env["PYCHAT_PORT"])
    assert port == ports[65432]
    for svc in checked(svcs):  # nothing runs yet: every healthcheck fails
        assert healthcheck(svc).returncode == 1

    running = compose_up(svcs, procs)
    assert set(running) == {"router", "acceptor"}
    want = acceptors_in(acceptor)
    serving = said(running["acceptor"], r"serving on 127\.0\.0\.1:(\d+) \((\d+) acceptors?, "
                                        r"bus (\S+), web http://127\.0\.0\.1:(\d+)/\)")
    assert serving.groups() == (str(port), str(want), f"tcp://127.0.0.1:{ports[65431]}",
                                str(ports[65433]))
    assert "started router" not in "\n".join(running["acceptor"].output)  # no second router
    # the bus has the keys the keys service made in its volume, on both ends
    keys = svcs["keys"].argv[-2]
    assert sorted(os.listdir(keys)) == ["acceptor-1.key_secret", "authorized", "router.key",
                                        "router.key_secret", "status.key_secret"]
    assert said(running["router"], r"bus: CurveZMQ on; 1 authorised acceptor keys and a status")
    assert said(running["acceptor"], r"router tcp://\S+ \(CurveZMQ\)")
    for _ in range(want):  # every acceptor process joined the router
        running["router"].wait_for(r"acceptor \S+ joined")
    assert said(running["router"], r"clock: the host clock \(no --ntp\)")  # NTP off by default
    for svc in checked(svcs):
        r = healthcheck(svc)
        assert r.returncode == 0, r.stdout + r.stderr
    assert "healthy: router" in healthcheck(svcs["router"]).stdout  # its loop answered

    a, b = connect(port), connect(port)
    a.handshake()
    b.handshake()
    a.send("/nick alice")
    a.expect("OK nick alice")
    a.send("hello from compose")
    assert b.expect_prefix(f"{a.uid}:") == f"{a.uid}: hello from compose"
    b.send(f"/msg {a.uid} psst")
    assert a.expect_prefix("[Private]") == f"[Private] {b.uid}: psst"
    alice = a.uid
    a.close()
    b.close()

    # `docker compose down` then `up` again: the history is on the named volume, and the keys
    # service finds its keys and leaves them as they are
    compose_down(running)
    for svc in checked(svcs):
        assert healthcheck(svc).returncode == 1
    data = svcs["router"].env["PYCHAT_DATA_DIR"]
    assert os.path.isfile(os.path.join(data, "history.sqlite3"))
    with open(os.path.join(keys, "router.key")) as f:
        router_key = f.read()
    compose_up(svcs, procs)
    with open(os.path.join(keys, "router.key")) as f:
        assert f.read() == router_key
    c = connect(port)
    c.handshake()
    c.send("/history 5")
    n = int(c.expect_prefix("HISTORY:")[len("HISTORY:"):])
    assert [line for line in (c.read_line() for _ in range(n))
            if line.endswith(f"{alice}: hello from compose")]


def test_shell_overrides_reach_the_processes(tmp_path, procs, connect, container_env_only):
    """PYCHAT_ACCEPTORS=3 PYCHAT_MAX_LINE=100 PYCHAT_NTP=... docker compose up: the file passes
    them on (the NTP servers named are pointed at a silent loopback port here)."""
    svcs = services(shell_env={"PYCHAT_ACCEPTORS": "3", "PYCHAT_MAX_LINE": "100",
                               "PYCHAT_HISTORY": "memory",
                               "PYCHAT_NTP": "ntp1.example.org,ntp2.example.org"})
    assert svcs["router"].env["PYCHAT_NTP"] == "ntp1.example.org,ntp2.example.org"
    _ports, ntp = rewrite(svcs, tmp_path / "volumes")
    running = compose_up(svcs, procs)
    assert said(running["acceptor"], r"\(3 acceptors,")
    running["router"].wait_for(rf"using local clock: no NTP server answered.*127\.0\.0\.1:{ntp}",
                               timeout=30)
    assert said(running["router"], r"history: in memory only")
    c = connect(int(svcs["acceptor"].env["PYCHAT_PORT"]))
    c.handshake()
    c.send("x" * 101)
    assert c.read_line() == "ERROR: line too long (max 100 bytes)"


def test_the_read_only_root_is_emulated_and_the_tmpfs_is_needed(tmp_path, procs,
                                                                 container_env_only):
    """The emulation does refuse a write outside the writable mounts; and without its tmpfs
    the acceptor's `pychat serve` (which makes a temporary folder) cannot start."""
    svcs = services()
    rewrite(svcs, tmp_path / "volumes")
    router = svcs["router"]
    outside = tmp_path / "outside.txt"
    probe = subprocess.run([sys.executable, "-c", f"open({str(outside)!r}, 'w')"],
                           env=container_env(router), capture_output=True, text=True, timeout=30)
    assert probe.returncode != 0 and "Read-only file system" in probe.stderr
    assert not outside.exists()
    inside = os.path.join(router.env["PYCHAT_DATA_DIR"], "inside.txt")
    probe = subprocess.run([sys.executable, "-c", f"open({inside!r}, 'w')"],
                           env=container_env(router), capture_output=True, text=True, timeout=30)
    assert probe.returncode == 0, probe.stderr
    # the keys volume is read-only where it is mounted :ro
    keys_dir = svcs["keys"].argv[-2]
    probe = subprocess.run([sys.executable, "-c",
                            f"open({os.path.join(keys_dir, 'x')!r}, 'w')"],
                           env=container_env(router), capture_output=True, text=True, timeout=30)
    assert probe.returncode != 0 and "Read-only file system" in probe.stderr

    running = compose_up({k: v for k, v in svcs.items() if k != "acceptor"}, procs)
    acceptor = svcs["acceptor"]
    rootfs = tmp_path / "rootfs"  # where /tmp would be without the tmpfs: the read-only root
    rootfs.mkdir()
    p = Proc(argv_here(acceptor.argv), env={**acceptor.env, "TMPDIR": str(rootfs)},
             name="acceptor without its tmpfs")
    procs.append(p)
    assert p.proc.wait(30) != 0
    p.stop()
    assert any("read_only emulation:" in line for line in p.output), p.output[-10:]
    assert os.listdir(rootfs) == []
    assert running["router"].alive()


def test_a_restarted_router_container_gets_its_sessions_back(tmp_path, procs, connect,
                                                              container_env_only):
    """`restart: unless-stopped` brings a killed router back (here: started again by the test,
    as Docker would). Each acceptor process resyncs it: users keep uid, name and room. A line
    sent while it was down is handled once its own acceptor has resynced (its sender sees it);
    members behind an acceptor that has not resynced yet at that moment miss it, so this test
    asserts delivery to others only after both have."""
    svcs = services()
    rewrite(svcs, tmp_path / "volumes")
    running = compose_up(svcs, procs)
    port = int(svcs["acceptor"].env["PYCHAT_PORT"])
    a, b = connect(port), connect(port)
    a.handshake()
    b.handshake()
    a.send("/nick alice")
    a.expect("OK nick alice")
    for c in (a, b):
        c.send("/join #ops")
        c.expect("ROOM:#ops")

    running["router"].kill()  # SIGKILL: nothing saved, nothing said
    b.send("sent while the router was down")
    router = Proc(argv_here(svcs["router"].argv), env=svcs["router"].env,
                  name="service router (restarted)")
    procs.append(router)
    router.wait_for(r"router bound to")
    assert b.expect_prefix(f"{b.uid}:", timeout=15) == f"{b.uid}: sent while the router was down"
    # every acceptor has resynced once the new router has handled each one's hello (a hello and
    # its sessions' syncs travel in one batch, which the router handles whole before the next)
    for _ in range(acceptors_in(svcs["acceptor"])):
        router.wait_for(r"acceptor \S+ joined")
    b.send("/msg alice still there?")
    assert a.expect_prefix("[Private]") == f"[Private] {b.uid}: still there?"
    a.send("/users")
    assert set(a.expect_prefix("USERS:")[6:].split(",")) == {a.uid, b.uid}
    a.send("back in ops")
    assert b.expect_prefix(f"{a.uid}:") == f"{a.uid}: back in ops"


def test_your_own_curvezmq_keys_through_the_file(tmp_path, procs, connect, container_env_only):
    """The recipe in docs/OPERATIONS.md (Keys): keys of your own, each service's named in the
    shell, the secret keys by role. Here the paths are on this machine instead of a /keys
    mount; the keys service still runs, and its keys go unused."""
    keys = tmp_path / "keys"
    r = subprocess.run([sys.executable, "-m", "pychat", "keys", str(keys)], capture_output=True,
                       text=True, timeout=30, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    svcs = services(shell_env={"PYCHAT_ROUTER_CURVE_SECRET": f"{keys}/router.key_secret",
                               "PYCHAT_CURVE_CLIENTS": f"{keys}/authorized",
                               "PYCHAT_ACCEPTOR_CURVE_SECRET": f"{keys}/acceptor-1.key_secret",
                               "PYCHAT_STATUS_CURVE_SECRET": f"{keys}/status.key_secret",
                               "PYCHAT_CURVE_SERVER": f"{keys}/router.key"})
    assert svcs["router"].env["PYCHAT_CURVE_SECRET"] == f"{keys}/router.key_secret"
    assert svcs["acceptor"].env["PYCHAT_CURVE_SECRET"] == f"{keys}/acceptor-1.key_secret"
    rewrite(svcs, tmp_path / "volumes")
    running = compose_up(svcs, procs)
    assert said(running["router"], rf"bus: CurveZMQ on; 1 authorised acceptor keys and a "
                                   rf"status key in {re.escape(str(keys))}/authorized")
    for _ in range(acceptors_in(svcs["acceptor"])):
        running["router"].wait_for(r"acceptor \S+ joined")
    port = int(svcs["acceptor"].env["PYCHAT_PORT"])
    a, b = connect(port), connect(port)
    a.handshake()
    b.handshake()
    a.send("over curve")
    assert b.expect_prefix(f"{a.uid}:") == f"{a.uid}: over curve"


def test_a_plain_bus_needs_insecure_bus_said_in_the_shell(tmp_path, procs, container_env_only):
    """Keys emptied in the shell: the router refuses 0.0.0.0 (a usage error, exit 2) until
    PYCHAT_INSECURE_BUS=on says the network is trusted."""
    plain = {"PYCHAT_ROUTER_CURVE_SECRET": "", "PYCHAT_CURVE_CLIENTS": ""}
    svcs = services(shell_env=plain)
    router = svcs["router"]
    assert router.env["PYCHAT_ROUTER_BIND"] == "tcp://0.0.0.0:65431"
    # only the port is made local: the check must see the wildcard address the file binds
    router.env["PYCHAT_ROUTER_BIND"] = f"tcp://0.0.0.0:{free_port()}"
    r = subprocess.run(argv_here(router.argv), env=container_env(router), cwd=ROOT,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "refusing to bind tcp://0.0.0.0:" in r.stderr, r.stderr
    svcs = services(shell_env={**plain, "PYCHAT_INSECURE_BUS": "on"})
    rewrite(svcs, tmp_path / "volumes")
    router = svcs["router"]
    bind = f"tcp://0.0.0.0:{free_port()}"
    p = Proc(argv_here(router.argv), env={**router.env, "PYCHAT_ROUTER_BIND": bind},
             name="router on a plain bus")
    procs.append(p)
    p.wait_for(rf"router bound to {re.escape(bind)}")
    assert said(p, r"neither encrypted nor authenticated \(--insecure-bus\)")
    assert not said(p, r"CurveZMQ on")
