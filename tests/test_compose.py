"""docker-compose.yml and the Dockerfile, checked without a Docker engine.

Two validators: Debian's docker-compose v1.29 (`docker-compose config -q`, which needs no
daemon) and check-jsonschema's copy of the current compose-spec schema (offline). Each test is
skipped, saying so, only when its tool is not installed; in CI (CI=true), where .ci/run installs
both, a missing tool fails it instead. Then what the
issue asks of the file, read from it: a named volume at the router's data folder, healthchecks,
restart policies, the published port, every setting a PYCHAT_* variable with a default.
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

from pychat.options import ACCEPTOR, ROUTER, SERVE, variables
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
    assert set(svcs) == {"router", "acceptor"}
    router, acceptor = svcs["router"], svcs["acceptor"]
    # the router keeps its history on a named volume mounted where PYCHAT_DATA_DIR points
    assert list(router.volumes.values()) == [router.env["PYCHAT_DATA_DIR"]]
    assert router.env["PYCHAT_ROUTER_BIND"] == "tcp://0.0.0.0:65431"
    # the acceptor reaches the router by its service name and publishes 65432
    assert acceptor.env["PYCHAT_ROUTER"] == "tcp://router:65431"
    assert acceptor.env["PYCHAT_HOST"] == "0.0.0.0"
    assert acceptor.raw["ports"] == ["65432:65432"]
    assert acceptor.depends_on == {"router": "service_healthy"}
    for svc in svcs.values():
        assert svc.raw["restart"] in ("unless-stopped", "always")
        assert svc.healthcheck[:3] == ["python", "-m", "pychat.healthcheck"]
        assert svc.argv[0] == "pychat"


# Options a service's command has that the file leaves out on purpose, and why.
NOT_IN_THE_FILE = {
    "acceptor": {
        # `pychat serve --router` starts no router and no private bus: these would be unused
        "PYCHAT_BUS", "PYCHAT_NTP", "PYCHAT_NTP_INTERVAL", "PYCHAT_NTP_TIMEOUT",
        "PYCHAT_HISTORY", "PYCHAT_DATA_DIR", "PYCHAT_HISTORY_PER_ROOM",
        "PYCHAT_HISTORY_MAX_AGE", "PYCHAT_HISTORY_PRIVATE",
        # serve gives each acceptor child its own --name and --reuse-port
        "PYCHAT_ACCEPTOR_NAME", "PYCHAT_REUSE_PORT",
    },
    "router": set(),
}
# Fixed by the deployment, not taken from the shell: container paths and in-container ports.
FIXED = {"PYCHAT_DATA_DIR", "PYCHAT_HOST", "PYCHAT_PORT"}
# Shell variables named after the role where the two services need different values.
RENAMED = {("router", "PYCHAT_CURVE_SECRET"): "PYCHAT_ROUTER_CURVE_SECRET",
           ("acceptor", "PYCHAT_CURVE_SECRET"): "PYCHAT_ACCEPTOR_CURVE_SECRET"}


def test_every_setting_is_a_pychat_variable_with_a_default():
    """Each option of a service's command is in its environment as ${PYCHAT_X:-default}, unless
    listed above with a reason: a new option fails this test until the file has it too."""
    with open(COMPOSE) as f:
        raw = yaml.safe_load(f)
    # the acceptor service runs `pychat serve --router`, whose acceptor children inherit its
    # environment: options of either count
    known = {"router": variables(ROUTER), "acceptor": variables(SERVE) | variables(ACCEPTOR)}
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
    assert re.search(r"^FROM python:3\.\d+-slim$", final, re.M)
    assert re.search(r"^USER pychat$", final, re.M)
    assert "[speed]" in final and "[test]" not in text  # runtime extras only
    for build_tool in ("gcc", "build-essential", "apt-get install"):
        assert build_tool not in text
