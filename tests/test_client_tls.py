"""Our own clients over TLS (``--tls``, ``--ca FILE``): `pychat console` in pipe mode, the
reconnecting ``Session`` under it, and `pychat loadtest`, against `pychat serve --tls-cert
--tls-key` with a certificate made per module (tests/test_tls_e2e.py's ``make_certificates``: a
CA, and a server certificate for 127.0.0.1 as an IP SAN).

The certificate is verified, and so is the name in it (``--host``); a refusal of any kind is one
line on stderr and exit status 7, never a traceback and never an endless retry: a certificate
from another CA, a name the certificate does not carry, a plain-text client on the TLS port
(the server closes it at once), a TLS client on a plain port. The GUI's side is
tests/test_client_tls_gui.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time

import pytest

from pychat.clients import events
from pychat.clients.options import client_parser, tls_context
from pychat.clients.session import Session, TlsFailed
from pychat.wire import replies
from support.procs import ROOT, python_m, start_acceptor, start_router, start_serve

from .test_client_core import Collector
from .test_tls_e2e import make_certificates

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

TLS_STATUS = 7  # pipe mode's exit status for a TLS failure (clients/console.py)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    """(ca, cert, key) of the server; and a CA of the same shape that did not sign it."""
    ca, cert, key = make_certificates(tmp_path_factory.mktemp("tls"))
    other_ca, _, _ = make_certificates(tmp_path_factory.mktemp("other"))
    return ca, cert, key, other_ca


@pytest.fixture(scope="module")
def tls_serve(certs):
    """A `pychat serve` that requires TLS; yields its port."""
    _, cert, key, _ = certs
    p, port = start_serve("--tls-cert", cert, "--tls-key", key)
    yield port
    p.stop()


def console(port: int, stdin: str, *args: str, timeout: float = 40) -> subprocess.CompletedProcess:
    return subprocess.run(python_m("pychat", "console", "--port", str(port), "--history", "0",
                                   *args),
                          input=stdin, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def one_line_failure(r: subprocess.CompletedProcess, pattern: str) -> str:
    """Status 7, and the reason once, in one stderr line; no traceback, nothing on stdout."""
    assert r.returncode == TLS_STATUS, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    found = [line for line in r.stderr.splitlines() if re.search(pattern, line)]
    assert len(found) == 1, r.stderr
    assert found[0].startswith("pychat console: ")
    assert r.stdout == ""
    return found[0]


def test_console_with_the_ca_chats_over_tls_and_says_so(tls_serve, certs):
    ca = certs[0]
    r = console(tls_serve, "over tls\n", "--name", "tina", "--room", "#tls", "--ca", ca)
    assert r.returncode == 0, r.stderr
    assert re.search(rf"pychat console: connected to 127\.0\.0\.1:{tls_serve} "
                     r"\(TLS 1\.[23], verified\) as \d{6}", r.stderr), r.stderr
    assert re.search(r"\] tina: over tls$", r.stdout, re.M), r.stdout  # out and back


def test_the_variables_say_it_as_well_as_the_flags(tls_serve, certs, monkeypatch):
    ca = certs[0]
    monkeypatch.setenv("PYCHAT_TLS_CA", ca)
    args = client_parser("pychat console", "").parse_args([])
    assert args.ca == ca and tls_context(args) is not None  # --ca implies --tls
    monkeypatch.delenv("PYCHAT_TLS_CA")
    monkeypatch.setenv("PYCHAT_TLS", "1")
    args = client_parser("pychat gui", "").parse_args([])
    assert args.tls is True and args.ca == ""
    r = subprocess.run(python_m("pychat", "console", "--port", str(tls_serve), "--name", "vic",
                                "--history", "0"),
                       input="by variable\n", capture_output=True, text=True, timeout=40,
                       cwd=ROOT, env=dict(os.environ, PYCHAT_TLS_CA=ca))
    assert r.returncode == 0 and "(TLS 1." in r.stderr, r.stderr


def test_a_certificate_from_another_ca_is_refused_in_one_line(tls_serve, certs):
    other_ca = certs[3]
    began = time.monotonic()
    r = console(tls_serve, "never sent\n", "--name", "mallory", "--ca", other_ca)
    line = one_line_failure(r, "certificate")
    assert line == (f"pychat console: TLS to 127.0.0.1:{tls_serve}: the server's certificate "
                    "was refused: unable to get local issuer certificate")
    assert time.monotonic() - began < 15  # at once: no retrying for 30 s


def test_the_system_store_does_not_know_the_test_ca(tls_serve):
    line = one_line_failure(console(tls_serve, "x\n", "--name", "sys", "--tls"), "certificate")
    assert "certificate was refused" in line


def test_the_name_checked_is_the_host_given(tls_serve, certs):
    """The certificate names 127.0.0.1 only: reached as localhost, it is refused."""
    r = console(tls_serve, "x\n", "--name", "hostcheck", "--ca", certs[0], "--host", "localhost")
    line = one_line_failure(r, "certificate")
    assert re.search(r"Hostname mismatch, certificate is not valid for 'localhost'", line), line


def test_a_plain_client_on_the_tls_port_is_told_to_use_tls(tls_serve):
    began = time.monotonic()
    r = console(tls_serve, "plain\n", "--name", "plain")
    line = one_line_failure(r, "TLS")
    assert line == (f"pychat console: 127.0.0.1:{tls_serve}: the server closed the connection "
                    "without a word: does it want TLS? (--tls, or --ca FILE)")
    assert time.monotonic() - began < 8  # at once, not at the server's handshake timeout (10 s)


def test_a_tls_client_on_a_plain_port_is_told_so(serve, certs):
    r = console(serve, "x\n", "--name", "tlsplain", "--ca", certs[0])
    line = one_line_failure(r, "TLS")
    assert line == (f"pychat console: TLS to 127.0.0.1:{serve}: the server does not speak TLS "
                    "(it answered in plain text): drop --tls/--ca")


def test_a_ca_file_that_is_not_one_is_a_usage_error(tmp_path):
    bogus = tmp_path / "ca.pem"
    bogus.write_text("not a certificate\n")
    r = console(1, "x\n", "--ca", str(bogus))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().startswith(f"pychat console: --ca {bogus}: not a CA or certificate")
    r = console(1, "x\n", "--ca", str(tmp_path / "missing.pem"))
    assert r.returncode == 2
    assert r.stderr.strip() == f"pychat console: --ca {tmp_path / 'missing.pem'}: no such file"


def test_reconnects_keep_tls(procs, certs, sessions):
    """An acceptor with TLS killed, a new one on the same port: the session is back over TLS
    (and would refuse a plain one: its context goes with every connection)."""
    ca, cert, key, _ = certs
    router, endpoint = start_router()
    procs.append(router)
    acceptor, port = start_acceptor(endpoint, "--tls-cert", cert, "--tls-key", key)
    procs.append(acceptor)
    got = Collector()
    s = Session("127.0.0.1", port, got, name="rita", room="#again", backoff_first=0.1,
                tls=tls_context(client_parser("pychat console", "").parse_args(["--ca", ca])))
    sessions.append(s.start())
    first = got.wait(lambda ev: isinstance(ev, events.Status) and ev.state == events.CONNECTED)
    assert re.fullmatch(rf"connected to 127\.0\.0\.1:{port} \(TLS 1\.[23], verified\) as \d{{6}}",
                        first.text), first.text
    got.wait(lambda ev: isinstance(ev, replies.RoomChanged) and ev.room == "#again")
    old_uid = s.uid

    acceptor.kill()
    got.wait(lambda ev: isinstance(ev, events.Status) and ev.state == events.RECONNECTING)
    from support.procs import Proc
    again = Proc(python_m("pychat.acceptor", "--port", str(port), "--router", endpoint,
                          "--tls-cert", cert, "--tls-key", key), name=f"acceptor :{port}")
    procs.append(again)
    again.wait_for(r"router \w+ is alive")
    back = got.wait(lambda ev: isinstance(ev, events.Status) and ev.state == events.CONNECTED
                    and ev.text.startswith("connected to"), timeout=30)
    assert "(TLS 1." in back.text and "verified" in back.text
    got.wait(lambda ev: isinstance(ev, events.Status) and ev.text == "reconnected as rita in "
             "#again", timeout=30)
    assert s.uid != old_uid and s.tls_info.endswith(", verified")
    assert not any(isinstance(ev, TlsFailed) for ev in got.all)


def test_loadtest_over_tls_runs_and_prints_its_summary(tls_serve, certs):
    r = subprocess.run(
        python_m("pychat", "loadtest", "--port", str(tls_serve), "--tls", "--ca", certs[0],
                 "--clients", "12", "--senders", "3", "--rate", "100", "--count", "60",
                 "--sample", "3", "--json"),
        capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["connected"] == 12 and out["sent"] == 60
    assert out["delivered"] == out["expected"] == 60 * 12 and out["lost"] == 0
    assert out["latency_ms"]["count"] == 3 * 60
    # the sampled receivers decrypt through memory buffers: the kernel's stamps are kept
    assert out["stamp"] == "kernel" and out["loadgen_delay_ms"]["count"] == 3 * 60
    # stderr is not a terminal: progress lines, whole, no carriage returns
    assert "\r" not in r.stderr


def test_loadtest_with_the_wrong_ca_says_why_in_one_line(tls_serve, certs):
    r = subprocess.run(
        python_m("pychat", "loadtest", "--port", str(tls_serve), "--ca", certs[3],
                 "--clients", "3", "--senders", "1", "--count", "5", "--quiet"),
        capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    assert f"loadtest: 3 clients failed to connect to 127.0.0.1:{tls_serve}: TLS: the " \
           "server's certificate was refused: unable to get local issuer certificate" \
           in r.stderr.splitlines()


def test_loadtest_without_tls_on_the_tls_port_says_it_may_want_tls(tls_serve):
    began = time.monotonic()
    r = subprocess.run(
        python_m("pychat", "loadtest", "--port", str(tls_serve), "--clients", "3", "--senders",
                 "1", "--count", "5", "--quiet"),
        capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    assert f"loadtest: 3 clients failed to connect to 127.0.0.1:{tls_serve}: the server closed " \
           "the connection without a word: does it want TLS? (--tls, or --ca FILE)" \
           in r.stderr.splitlines()
    assert time.monotonic() - began < 8  # at once, not at the handshake timeout
