"""`pychat gui` over TLS, driven for real under a private Xvfb (as tests/test_gui_login_xvfb.py):
with ``--ca`` it chats with a `pychat serve --tls-cert` and says the connection is encrypted
(the title ends `` - TLS 1.x``, the status bar ``(TLS 1.x, verified)``); with a CA that did not
sign the server's certificate it says why, in its status bar and in a dialog, and does not
retry. Screenshots go to ``artifacts/``.
"""

from __future__ import annotations

import os
import re

import pytest

from support.gui import GuiProc
from support.procs import start_serve
from support.xvfb import ARTIFACTS, needs_x

from .test_tls_e2e import make_certificates

pytestmark = [pytest.mark.e2e, needs_x, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    ca, cert, key = make_certificates(tmp_path_factory.mktemp("tls"))
    other_ca, _, _ = make_certificates(tmp_path_factory.mktemp("other"))
    return ca, cert, key, other_ca


@pytest.fixture
def tls_serve(certs, procs):
    _, cert, key, _ = certs
    p, port = start_serve("--tls-cert", cert, "--tls-key", key)
    procs.append(p)
    return port


def test_the_gui_chats_over_tls_and_shows_it(xvfb, tls_serve, certs, tmp_path, procs):
    g = GuiProc(xvfb, tls_serve, tmp_path, "--ca", certs[0], "--name", "tess", "--room", "#tls",
                "--history", "0")
    procs.append(g.proc)
    st = g.wait(lambda st: re.fullmatch(r"PyChat - tess - ID \d{6} - #tls - TLS 1\.[23]",
                                        st["title"]) is not None, "TLS in the title")
    assert re.search(rf"connected to 127\.0\.0\.1:{tls_serve} \(TLS 1\.[23], verified\)",
                     "\n".join(st["log"])), st["log"]
    g.type_line("hello over tls")
    st = g.log_has("tess: hello over tls")
    assert re.fullmatch(r"PyChat - tess - ID \d{6} - #tls - TLS 1\.[23]", st["title"])
    g.x.screenshot(os.path.join(ARTIFACTS, "gui-tls.png"))


def test_the_gui_says_why_a_certificate_is_refused(xvfb, tls_serve, certs, tmp_path, procs):
    g = GuiProc(xvfb, tls_serve, tmp_path, "--ca", certs[3], "--name", "mal")
    procs.append(g.proc)
    why = (f"TLS to 127.0.0.1:{tls_serve}: the server's certificate was refused: unable to get "
           "local issuer certificate")
    st = g.wait(lambda st: st["status"] == why, "the refusal in the status bar")
    assert st["input_label"] == "Closed" and "TLS" not in st["title"]
    g.x.find_window("^PyChat: cannot connect$")  # and in a dialog
    shot = g.x.screenshot(os.path.join(ARTIFACTS, "gui-tls-refused.png"))
    assert os.path.getsize(shot) > 0
    st = g.state()
    assert st["status"] == why  # it stays: no retry, no later status over it
    assert not [line for line in st["log"] if "reconnecting" in line]
