"""``python -m support.lint``: ruff and mypy over the repository, as CI runs them.

ruff reads the folders as they are. mypy needs the installed import names (``pychat.acceptor``
is the folder ``acceptor/``), and it cannot see through the import hook of setuptools' editable
installs, so it checks a temporary tree of symbolic links laid out as ``pip install .`` would
lay the package out, made from the ``package-dir`` table of pyproject.toml (the one place that
mapping is written). Its messages name files by their installed path (``pychat/acceptor/...``).
Exit status: non-zero when either tool finds anything.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import tomllib

from .procs import ROOT


def package_dirs() -> dict[str, str]:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["tool"]["setuptools"]["package-dir"]


def link_tree(into: str) -> str:
    """The installed layout of the package under ``into``, as links to this checkout."""
    for package, folder in sorted(package_dirs().items()):
        target = os.path.join(into, *package.split("."))
        os.makedirs(target, exist_ok=True)
        source = os.path.join(ROOT, folder)
        for name in os.listdir(source):
            if name.endswith(".py") or name == "py.typed":
                os.symlink(os.path.join(source, name), os.path.join(target, name))
    return into


def ruff() -> int:
    return subprocess.call([sys.executable, "-m", "ruff", "check", ROOT])


def mypy() -> int:
    with tempfile.TemporaryDirectory(prefix="pychat-mypy-") as tmp:
        link_tree(tmp)
        return subprocess.call([sys.executable, "-m", "mypy", "--config-file",
                                os.path.join(ROOT, "pyproject.toml"), "-p", "pychat"], cwd=tmp)


def main() -> int:
    return max(ruff(), mypy())


if __name__ == "__main__":
    sys.exit(main())
