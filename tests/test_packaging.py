"""What `pip install .` puts into site-packages: one import package, `pychat`.

The repository keeps its folders at the top (acceptor/, router/, clients/, wire/) and
pyproject.toml maps each to a subpackage of `pychat` (setuptools' package-dir). A real wheel is
built from this checkout and its file list read: nothing generic (`router`, `clients`, `wire`,
`acceptor`, `support`, `tests`, `bench`) may land at the top of site-packages.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile

import pytest
import tomllib

from support.procs import ROOT


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    """Built from a copy of the checkout: setuptools writes build/ and *.egg-info into the
    source folder, and two xdist workers building in the same one collide there."""
    out = tmp_path_factory.mktemp("wheel")
    source = tmp_path_factory.mktemp("source") / "pychat"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "__pycache__", ".hypothesis", ".pytest_cache",
        ".mypy_cache", ".ruff_cache"))
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet",
                        "--wheel-dir", str(out), str(source)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    (path,) = out.glob("pychat-*.whl")
    return zipfile.ZipFile(path)


def test_the_wheel_installs_one_top_level_package(wheel):
    tops = {name.split("/")[0] for name in wheel.namelist()}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"pychat"}


def test_every_mapped_folder_is_in_the_wheel_under_pychat(wheel):
    with open(f"{ROOT}/pyproject.toml", "rb") as f:
        mapping = tomllib.load(f)["tool"]["setuptools"]["package-dir"]
    names = set(wheel.namelist())
    for package, folder in mapping.items():
        assert f"{package.replace('.', '/')}/__init__.py" in names, (package, folder)
    for must in ("pychat/acceptor/server.py", "pychat/router/state.py", "pychat/wire/bus.py",
                 "pychat/clients/gui.py", "pychat/cli.py",
                 # the browser client, served from the package by the web door
                 "pychat/acceptor/web/index.html", "pychat/acceptor/web/app.js",
                 "pychat/acceptor/web/style.css"):
        assert must in names
    # test support stays out of the installed package
    assert not any(n.startswith(("pychat/support", "support/", "tests/")) for n in names)


def test_the_entry_point_is_pychat_cli(wheel):
    meta = next(n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt"))
    assert "pychat = pychat.cli:main" in wheel.read(meta).decode()
