"""Read docker-compose.yml and the Dockerfile the way Docker would, for tests without Docker.

``services()`` gives each service's argv (entrypoint + command, the image's where the service
sets none), its environment (the image's ``ENV`` under the service's ``environment``), its
healthcheck argv (none where it is disabled), its named-volume mounts (and which are read-only),
its tmpfs mounts and what it depends on, after compose's variable
interpolation (``$$``, ``$VAR``, ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``,
``${VAR:?error}``, ``${VAR?error}``) against an environment we pass: by default an empty one,
which is a fresh clone with nothing set in the shell.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from dataclasses import dataclass, field

import yaml

from support.procs import ROOT

COMPOSE = os.path.join(ROOT, "docker-compose.yml")
DOCKERFILE = os.path.join(ROOT, "Dockerfile")

_VAR = re.compile(r"\$(?:(\$)|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}"
                  r"|([A-Za-z_][A-Za-z0-9_]*))")


def interpolate(text: str, env: dict[str, str]) -> str:
    def one(m: re.Match) -> str:
        dollar, name, op, arg, bare = m.groups()
        if dollar:
            return "$"
        name = name or bare
        value = env.get(name)
        if op in (":-", ":?"):
            missing = not value
        else:
            missing = value is None
        if op in (":-", "-"):
            return arg if missing else value
        if op in (":?", "?") and missing:
            raise ValueError(f"required variable {name} is missing: {arg}")
        return value or ""
    return _VAR.sub(one, text)


def interpolate_tree(node, env: dict[str, str]):
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [interpolate_tree(v, env) for v in node]
    if isinstance(node, dict):
        return {k: interpolate_tree(v, env) for k, v in node.items()}
    return node


@dataclass
class Image:
    """The final stage of the Dockerfile: what a container of it starts with."""
    env: dict[str, str] = field(default_factory=dict)
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    healthcheck: list[str] = field(default_factory=list)


def _exec_form(text: str) -> list[str]:
    text = text.strip()
    return json.loads(text) if text.startswith("[") else ["/bin/sh", "-c", text]


def read_dockerfile(path: str = DOCKERFILE) -> Image:
    with open(path) as f:
        raw = f.read()
    lines, cur = [], ""
    for line in raw.splitlines():
        if not cur and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            cur += line.rstrip()[:-1] + " "
            continue
        lines.append(cur + line)
        cur = ""
    image = Image()
    for line in lines:
        word, _, rest = line.strip().partition(" ")
        word = word.upper()
        if word == "FROM":  # a new stage: only the last one is the image
            image = Image()
        elif word == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                image.env[key] = value
        elif word == "ENTRYPOINT":
            image.entrypoint = _exec_form(rest)
        elif word == "CMD":
            image.cmd = _exec_form(rest)
        elif word == "HEALTHCHECK":
            rest = re.sub(r"--\S+=\S+\s+", "", rest.strip())
            kind, _, test = rest.partition(" ")
            image.healthcheck = _exec_form(test) if kind.upper() == "CMD" else []
    return image


@dataclass
class Service:
    name: str
    argv: list[str]
    env: dict[str, str]
    healthcheck: list[str]
    volumes: dict[str, str]  # named volume -> mount point
    depends_on: dict[str, str]  # service -> condition
    raw: dict
    read_only_mounts: set[str] = field(default_factory=set)  # mount points mounted :ro
    tmpfs: list[str] = field(default_factory=list)  # mount points

    @property
    def read_only(self) -> bool:
        """`read_only: true`: the root filesystem is read-only."""
        return bool(self.raw.get("read_only"))


def _as_list(value) -> list[str]:
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def _env(value) -> dict[str, str]:
    if isinstance(value, list):
        return dict(item.split("=", 1) for item in value)
    return {k: "" if v is None else str(v) for k, v in (value or {}).items()}


def load(path: str = COMPOSE, shell_env: dict[str, str] | None = None) -> dict:
    with open(path) as f:
        doc = yaml.safe_load(f)
    return interpolate_tree(doc, shell_env or {})


def services(path: str = COMPOSE, shell_env: dict[str, str] | None = None,
             image: Image | None = None) -> dict[str, Service]:
    doc = load(path, shell_env)
    image = image or read_dockerfile()
    out = {}
    for name, svc in doc["services"].items():
        entry = _as_list(svc["entrypoint"]) if "entrypoint" in svc else image.entrypoint
        cmd = _as_list(svc["command"]) if "command" in svc else image.cmd
        env = dict(image.env)
        env.update(_env(svc.get("environment")))
        test = svc.get("healthcheck", {}).get("test")
        if svc.get("healthcheck", {}).get("disable"):
            check: list[str] = []
        elif test is None:
            check = image.healthcheck
        elif isinstance(test, str):
            check = ["/bin/sh", "-c", test]
        elif test[0] == "CMD-SHELL":
            check = ["/bin/sh", "-c", test[1]]
        else:
            check = list(test[1:]) if test[0] == "CMD" else []
        vols, ro = {}, set()
        for v in svc.get("volumes", []):
            if isinstance(v, str):
                source, _, rest = v.partition(":")
                target, _, mode = rest.partition(":")
                readonly = "ro" in mode.split(",")
            else:
                source, target = v.get("source", ""), v["target"]
                readonly = bool(v.get("read_only"))
            if source in (doc.get("volumes") or {}):
                vols[source] = target
                if readonly:
                    ro.add(target)
        tmpfs = svc.get("tmpfs") or []
        tmpfs = [t.split(":")[0] for t in ([tmpfs] if isinstance(tmpfs, str) else tmpfs)]
        deps = svc.get("depends_on") or {}
        if isinstance(deps, list):
            deps = dict.fromkeys(deps, "service_started")
        else:
            deps = {d: (c or {}).get("condition", "service_started") for d, c in deps.items()}
        out[name] = Service(name, entry + cmd, env, check, vols, deps, svc, ro, tmpfs)
    return out


def start_order(svcs: dict[str, Service]) -> list[str]:
    """Services in an order where each comes after what it depends on."""
    order: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in order:
            return
        if name in path:
            raise ValueError(f"depends_on cycle: {' -> '.join(path + (name,))}")
        for dep in svcs[name].depends_on:
            visit(dep, path + (name,))
        order.append(name)

    for name in svcs:
        visit(name, ())
    return order
