"""docker-compose.yml, the Dockerfile and .dockerignore, checked without a Docker engine.

Two validators: Debian's docker-compose v1.29 (`docker-compose config -q`, which needs no
daemon) and check-jsonschema's copy of the current compose-spec schema (offline). Each test is
skipped, saying so, only when its tool is not installed; in CI (CI=true), where .ci/run installs
both, a missing tool fails it instead. Then what the issues ask of the file, read from it: a
named volume at the router's data folder, keys made once into a volume of their own and used
by both ends of the bus, healthchecks, restart policies, the published port, every setting a
PYCHAT_* variable with a default, no public NTP server by default, and every container
hardened (read-only root with a tmpfs, no capabilities, no new privileges). Of the image: a
pinned base, a user, and a build context without the work tree's clutter or secrets.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys

import pytest
import yaml

from pychat.options import ACCEPTOR, KEYS, ROUTER, SERVE, variables
from support.procs import ROOT

from .compose_file import COMPOSE, DOCKERFILE, load, read_dockerfile, services


def absent(name: str) -> None:
    """Skip, saying why; but in CI (CI=true) the validators must run, so fail instead."""
    why = f"{name} is not installed (.ci/run installs it)"
    if os.environ.get("CI"):
        pytest.fail(why)
    pytest.skip(why)


def docker_compose() -> list[str]:
    path = shutil.which("docker-compose")
    if path is None:
        absent("docker-compose")
    return [path]


def check_jsonschema() -> list[str]:
    """From this Python's environment (the test extra installs it; the README's test command
    does not put the venv's bin/ on PATH)."""
    if importlib.util.find_spec("check_jsonschema") is None:
        absent("check-jsonschema")
    return [sys.executable, "-m", "check_jsonschema"]


def clean_env() -> dict[str, str]:
    """The shell of a fresh clone: no PYCHAT_* set (conftest sets PYCHAT_DATA_DIR)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PYCHAT_")}


def test_docker_compose_config_accepts_the_file():
    r = subprocess.run([*docker_compose(), "-f", COMPOSE, "config", "-q"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60, env=clean_env())
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""  # no warnings either (an unset variable without a default warns)


def test_compose_spec_schema_accepts_the_file():
    r = subprocess.run([*check_jsonschema(), "--builtin-schema", "vendor.compose-spec",
                        COMPOSE], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ok -- validation done" in r.stdout


def test_the_validators_do_reject_a_broken_file(tmp_path):
    """So that a pass above means something: each validator fails a file with a typo."""
    broken = tmp_path / "docker-compose.yml"
    with open(COMPOSE) as f:
        broken.write_text(f.read().replace("healthcheck:", "helthcheck:", 1))
    r = subprocess.run([*docker_compose(), "-f", str(broken), "config", "-q"],
                       capture_output=True, text=True, timeout=60, env=clean_env())
    assert r.returncode != 0 and "helthcheck" in r.stderr
    r = subprocess.run([*check_jsonschema(), "--builtin-schema", "vendor.compose-spec",
                        str(broken)], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "helthcheck" in r.stdout + r.stderr


def test_our_interpolation_matches_docker_compose(tmp_path):
    """The emulation test reads the file with tests/compose_file.py; docker-compose must read
    the same commands and environments, with nothing set and with overrides in the shell."""
    exe = docker_compose()
    for shell in ({}, {"PYCHAT_ACCEPTORS": "4", "PYCHAT_NTP": "", "PYCHAT_PORT": "7000"}):
        r = subprocess.run([*exe, "-f", COMPOSE, "config"], cwd=ROOT, capture_output=True,
                           text=True, timeout=60, env={**clean_env(), **shell})
        assert r.returncode == 0, r.stderr
        theirs = yaml.safe_load(r.stdout)["services"]
        ours = load(shell_env=shell)["services"]
        for name, svc in ours.items():
            assert theirs[name]["command"] == svc["command"]
            assert theirs[name]["environment"] == {k: str(v) for k, v in
                                                   svc["environment"].items()}
            assert [(p["published"], p["target"]) for p in theirs[name].get("ports", [])] == \
                [tuple(int(x) for x in p.split(":")) for p in svc.get("ports", [])]


def test_the_services_are_what_the_issue_asks():
    svcs = services()
    assert set(svcs) == {"keys", "router", "acceptor"}
    router, acceptor = svcs["router"], svcs["acceptor"]
    # the router keeps its history on a named volume mounted where PYCHAT_DATA_DIR points
    assert router.volumes["pychat-data"] == router.env["PYCHAT_DATA_DIR"]
    assert router.env["PYCHAT_ROUTER_BIND"] == "tcp://0.0.0.0:65431"
    # the acceptor reaches the router by its service name and publishes 65432, and the web
    # door's 65433
    assert acceptor.env["PYCHAT_ROUTER"] == "tcp://router:65431"
    assert acceptor.env["PYCHAT_HOST"] == "0.0.0.0"
    assert acceptor.raw["ports"] == ["65432:65432", "65433:65433"]
    assert acceptor.env["PYCHAT_WEB_PORT"] == "65433"
    assert acceptor.depends_on == {"router": "service_healthy"}
    for svc in (router, acceptor):
        assert svc.raw["restart"] in ("unless-stopped", "always")
        assert svc.healthcheck[:3] == ["python", "-m", "pychat.healthcheck"]
    for svc in svcs.values():
        assert svc.argv[0] == "pychat"
    # the router's check asks the router itself, not the kernel for a listening socket
    assert router.healthcheck == ["python", "-m", "pychat.healthcheck", "router"]


def test_the_bus_has_keys_made_once_into_their_own_volume():
    """The router binds 0.0.0.0 on the compose network, which `pychat router` refuses without
    keys: the keys service makes them on the first `up` (and leaves them on later ones), the
    router and the acceptor read them from the volume, read-only, and nothing says
    PYCHAT_INSECURE_BUS."""
    svcs = services()
    keys, router, acceptor = svcs["keys"], svcs["router"], svcs["acceptor"]
    assert keys.argv == ["pychat", "keys", "/keys", "--if-missing"]
    assert keys.raw["restart"] == "no" and keys.healthcheck == []
    assert keys.volumes == {"pychat-keys": "/keys"} and not keys.read_only_mounts
    assert router.depends_on == {"keys": "service_completed_successfully"}
    for svc in (router, acceptor):
        assert svc.volumes["pychat-keys"] == "/keys" and "/keys" in svc.read_only_mounts
    assert router.env["PYCHAT_CURVE_SECRET"] == "/keys/router.key_secret"
    assert router.env["PYCHAT_CURVE_CLIENTS"] == "/keys/authorized"
    assert router.env["PYCHAT_INSECURE_BUS"] == "off"
    assert router.env["PYCHAT_STATUS_CURVE_SECRET"] == "/keys/status.key_secret"
    assert router.env["PYCHAT_STATUS_CURVE_SERVER"] == "/keys/router.key"
    assert acceptor.env["PYCHAT_CURVE_SECRET"] == "/keys/acceptor-1.key_secret"
    assert acceptor.env["PYCHAT_CURVE_SERVER"] == "/keys/router.key"
    # an operator may still choose: empty keys and PYCHAT_INSECURE_BUS=on in the shell
    plain = services(shell_env={"PYCHAT_ROUTER_CURVE_SECRET": "", "PYCHAT_CURVE_CLIENTS": "",
                                "PYCHAT_INSECURE_BUS": "on"})["router"]
    assert plain.env["PYCHAT_CURVE_SECRET"] == "" and plain.env["PYCHAT_INSECURE_BUS"] == "on"


def test_every_container_is_hardened():
    for svc in services().values():
        assert svc.raw.get("read_only") is True, svc.name
        assert svc.raw.get("cap_drop") == ["ALL"], svc.name
        assert svc.raw.get("security_opt") == ["no-new-privileges:true"], svc.name
        if svc.name != "keys":  # a long-running process: its temporary files go to a tmpfs
            assert svc.tmpfs == ["/tmp"], svc.name


def test_ntp_is_off_unless_the_operator_names_servers():
    with open(COMPOSE) as f:
        text = f.read()
    assert "pool.ntp.org" not in text
    assert services()["router"].env["PYCHAT_NTP"] == ""
    named = services(shell_env={"PYCHAT_NTP": "ntp1.example.org,10.0.0.2:123"})
    assert named["router"].env["PYCHAT_NTP"] == "ntp1.example.org,10.0.0.2:123"


# Options a service's command has that the file leaves out on purpose, and why.
NOT_IN_THE_FILE = {
    "acceptor": {
        # `pychat serve --router` starts no router and no private bus: these would be unused
        "PYCHAT_BUS", "PYCHAT_NTP", "PYCHAT_NTP_INTERVAL", "PYCHAT_NTP_TIMEOUT",
        "PYCHAT_HISTORY", "PYCHAT_DATA_DIR", "PYCHAT_HISTORY_PER_ROOM",
        "PYCHAT_HISTORY_MAX_AGE", "PYCHAT_HISTORY_PRIVATE", "PYCHAT_HISTORY_PRIVATE_PER_SENDER",
        "PYCHAT_HISTORY_CACHE_ROOMS", "PYCHAT_HISTORY_CACHE_MB", "PYCHAT_DURABLE",
        "PYCHAT_NTP_MAX_OFFSET", "PYCHAT_ACCOUNTS", "PYCHAT_REQUIRE_LOGIN",
        "PYCHAT_PASSWORD_PEPPER_FILE", "PYCHAT_LOGIN_WORKERS", "PYCHAT_TOKEN_DAYS",
        "PYCHAT_FILES", "PYCHAT_UPLOAD_TTL", "PYCHAT_FILES_MAX_MB", "PYCHAT_FILES_QUOTA_MB",
        "PYCHAT_FILES_PER_HOUR", "PYCHAT_FILES_TOTAL_GB", "PYCHAT_FILES_MAX_AGE",
        # serve gives each acceptor child its own --name and --reuse-port
        "PYCHAT_ACCEPTOR_NAME", "PYCHAT_REUSE_PORT",
        # for a router serve starts on a tcp:// bus; the acceptors use the router service's
        "PYCHAT_CURVE_KEYS", "PYCHAT_INSECURE_BUS",
    },
    "router": set(),
    "keys": set(),
}
# Fixed by the deployment, not taken from the shell: container paths and in-container ports.
FIXED = {"PYCHAT_DATA_DIR", "PYCHAT_HOST", "PYCHAT_PORT", "PYCHAT_WEB_PORT"}
# Shell variables named after the role where the two services need different values.
RENAMED = {("router", "PYCHAT_CURVE_SECRET"): "PYCHAT_ROUTER_CURVE_SECRET",
           ("acceptor", "PYCHAT_CURVE_SECRET"): "PYCHAT_ACCEPTOR_CURVE_SECRET",
           # the router's public key: one shell variable for whoever needs it
           ("router", "PYCHAT_STATUS_CURVE_SERVER"): "PYCHAT_CURVE_SERVER"}
# Variables of the router's healthcheck (pychat status's keys), beside the router's own.
HEALTHCHECK_VARIABLES = {"router": {"PYCHAT_STATUS_CURVE_SECRET", "PYCHAT_STATUS_CURVE_SERVER"}}


def test_every_setting_is_a_pychat_variable_with_a_default():
    """Each option of a service's command is in its environment as ${PYCHAT_X:-default}, unless
    listed above with a reason: a new option fails this test until the file has it too."""
    with open(COMPOSE) as f:
        raw = yaml.safe_load(f)
    # the acceptor service runs `pychat serve --router`, whose acceptor children inherit its
    # environment: options of either count
    known = {"router": variables(ROUTER) | HEALTHCHECK_VARIABLES["router"],
             "acceptor": variables(SERVE) | variables(ACCEPTOR), "keys": variables(KEYS)}
    for name, svc in raw["services"].items():
        env = svc["environment"]
        missing = known[name] - NOT_IN_THE_FILE[name] - set(env)
        assert not missing, f"{name}: options missing from docker-compose.yml: {missing}"
        for key, value in env.items():
            assert key in known[name], f"{name}: {key} is not an option of that command"
            assert key not in NOT_IN_THE_FILE[name], key
            m = re.fullmatch(r"\$\{(PYCHAT_\w+):?-([^}]*)\}", str(value))
            if m:
                assert m.group(1) == RENAMED.get((name, key), key), (name, key, value)
            else:
                assert key in FIXED, (name, key, value)


def test_the_dockerfile_runs_as_a_user_with_a_healthcheck():
    with open(DOCKERFILE) as f:
        text = f.read()
    image = read_dockerfile()
    assert image.entrypoint == ["pychat"]
    assert image.healthcheck == ["python", "-m", "pychat.healthcheck", "clients"]
    final = text[text.rindex("\nFROM "):]
    assert re.search(r"^USER pychat$", final, re.M)
    assert "[speed]" in final and "[test]" not in text  # runtime extras only
    for build_tool in ("gcc", "build-essential", "apt-get install"):
        assert build_tool not in text
    # the mount points of the volumes belong to the user; the keys' is private
    assert "install -d -m 0700 -o pychat -g pychat /keys" in text
    assert "install -d -m 0755 -o pychat -g pychat /data" in text


def test_the_base_image_is_pinned_to_an_exact_release():
    """Both stages from one ARG, an exact Python release and Debian suite (a digest may follow),
    never a moving tag such as python:3.12-slim."""
    with open(DOCKERFILE) as f:
        text = f.read()
    pin = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M).group(1)
    assert re.fullmatch(r"python:3\.\d+\.\d+-slim-[a-z]+(@sha256:[0-9a-f]{64})?", pin), pin
    assert re.findall(r"^FROM (\S+)", text, re.M) == ["${PYTHON_IMAGE}", "${PYTHON_IMAGE}"]


def dockerignored(patterns: list[str], path: str) -> bool:
    """Whether Docker leaves ``path`` (relative to the context) out: a pattern matches the path
    or a folder above it (`*` within a name, `**` any number of folders)."""
    def rx(p: str) -> str:
        out, i = "", 0
        while i < len(p):
            if p.startswith("**/", i):
                out, i = out + "(?:.*/)?", i + 3
            elif p[i] == "*":
                out, i = out + "[^/]*", i + 1
            elif p[i] == "?":
                out, i = out + "[^/]", i + 1
            else:
                out, i = out + re.escape(p[i]), i + 1
        return out
    parts = path.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    return any(re.fullmatch(rx(p), prefix) for p in patterns for prefix in prefixes)


def test_the_build_context_leaves_out_clutter_and_secrets_but_nothing_the_build_copies():
    with open(os.path.join(ROOT, ".dockerignore")) as f:
        patterns = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    assert not [p for p in patterns if p.startswith("!")]  # the matcher above has no negation
    for path in (".git/HEAD", ".venv/bin/python", "bench/results/x.json", "artifacts/a.png",
                 "tests/test_compose.py", "router/__pycache__/state.cpython-312.pyc",
                 "build/lib/pychat/cli.py", "pychat.egg-info/PKG-INFO", ".pytest_cache/v",
                 "keys/router.key_secret", "somewhere/acceptor-1.key_secret", ".env"):
        assert dockerignored(patterns, path), path
    with open(DOCKERFILE) as f:
        copied = [w for line in f if line.startswith("COPY ") and "--from" not in line
                  for w in line.split()[1:-1]]
    assert {"pyproject.toml", "README.md", "LICENSE", "pychat", "wire", "router"} <= set(copied)
    for source in copied:
        full = os.path.join(ROOT, source)
        assert os.path.exists(full), source
        files = [source] if os.path.isfile(full) else [
            os.path.relpath(os.path.join(d, name), ROOT) for d, _, names in os.walk(full)
            for name in names if name.endswith(".py")]
        assert files, source
        for path in files:
            assert not dockerignored(patterns, path), path


def test_the_license_pyproject_names_is_there():
    with open(os.path.join(ROOT, "pyproject.toml")) as f:
        assert 'license = { text = "MIT" }' in f.read()
    with open(os.path.join(ROOT, "LICENSE")) as f:
        text = f.read()
    assert text.startswith("MIT License") and "Copyright (c) PyChat contributors" in text
