"""TLS for clients, end to end: `pychat serve --tls-cert/--tls-key` with a certificate the test
makes (the ``cryptography`` package: a CA, and a server certificate for 127.0.0.1 signed by it).

TLS clients verify the server against that CA and chat; a plain-text client on the TLS port fails
its handshake and is closed, and the TLS clients go on as if nothing happened.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import ssl
import subprocess
import time

import pytest
from cryptography import x509  # the test extra has it: certificates made per test
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pychat.wire.framing import LineBuffer
from support.procs import ROOT, python_m, start_serve

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

WAIT = 10.0


def make_certificates(folder) -> tuple[str, str, str]:
    """(ca.pem, server.pem, server.key): a CA and a server certificate for 127.0.0.1."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "PyChat test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = [os.path.join(folder, n) for n in ("ca.pem", "server.pem", "server.key")]
    with open(paths[0], "wb") as f:
        f.write(ca.public_bytes(serialization.Encoding.PEM))
    with open(paths[1], "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(paths[2], "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return paths[0], paths[1], paths[2]


class TlsClient:
    """A blocking TLS client that verifies the server against the test's CA."""

    def __init__(self, port: int, ca: str):
        ctx = ssl.create_default_context(cafile=ca)
        raw = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        self.sock = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
        self.buf = LineBuffer(1 << 20)
        self.lines: list[str] = []
        self.uid = ""

    def send(self, line: str) -> None:
        self.sock.sendall(line.encode() + b"\n")

    def read_line(self) -> str:
        while not self.lines:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed")
            self.lines += [item.decode() for item in self.buf.feed(data)]
        return self.lines.pop(0)

    def expect(self, prefix: str) -> str:
        while True:
            line = self.read_line()
            if line.startswith(prefix):
                return line

    def handshake(self) -> str:
        assert self.read_line() == "Welcome to PyChat Server!"
        self.uid = self.expect("ID:")[3:]
        return self.uid

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certificates(tmp_path_factory.mktemp("tls"))


def test_tls_clients_chat_and_a_plain_client_fails_cleanly(procs, certs):
    ca, cert, key = certs
    p, port = start_serve("--tls-cert", cert, "--tls-key", key)
    procs.append(p)
    a, b = TlsClient(port, ca), TlsClient(port, ca)
    try:
        a.handshake()
        b.handshake()
        assert a.sock.version() in ("TLSv1.2", "TLSv1.3")
        a.send("over tls")
        assert b.expect(f"{a.uid}:") == f"{a.uid}: over tls"
        # plain text on the TLS port: the handshake fails and the connection closes, nothing
        # of the chat leaks to it in clear
        for plain_line in (b"hello\n", b"\x16\x03\x01\x00\x05hello\n", b"/quit\n"):
            plain = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
            plain.sendall(plain_line)
            got = b""
            try:
                while chunk := plain.recv(4096):
                    got += chunk
            except ConnectionResetError:
                pass
            plain.close()
            assert b"Welcome" not in got and b"over tls" not in got, got
        b.send("/msg %s still fine" % a.uid)
        assert a.expect("[Private]") == f"[Private] {b.uid}: still fine"
        a.send("/ping done")
        assert a.expect("PONG") == "PONG done"
    finally:
        a.close()
        b.close()
    assert not [line for line in p.output if "Traceback" in line or "bug while" in line]


def test_a_client_that_does_not_trust_the_certificate_is_refused(procs, certs):
    _, cert, key = certs
    p, port = start_serve("--tls-cert", cert, "--tls-key", key, acceptors=1)
    procs.append(p)
    ctx = ssl.create_default_context()  # the system CAs: our test CA is not among them
    raw = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    with pytest.raises(ssl.SSLCertVerificationError):
        ctx.wrap_socket(raw, server_hostname="127.0.0.1")
    raw.close()


@pytest.mark.parametrize("args, says", [
    (["--tls-cert", "/nonexistent/cert.pem"], "cannot use TLS certificate"),
    (["--tls-key", "/tmp/x.key"], "--tls-key needs --tls-cert"),
])
def test_unusable_tls_files_are_refused_before_anything_starts(args, says):
    for prog in (["pychat", "serve"], ["acceptor"]):
        r = subprocess.run(python_m(*prog, *args), capture_output=True, text=True, timeout=30,
                           cwd=ROOT)
        assert r.returncode == 2 and says in r.stderr, r.stderr


def test_a_key_that_does_not_match_the_certificate_is_refused(certs, tmp_path):
    _, cert, _ = certs
    _, _, other_key = make_certificates(tmp_path)
    r = subprocess.run(python_m("pychat", "serve", "--tls-cert", cert, "--tls-key", other_key),
                       capture_output=True, text=True, timeout=30, cwd=ROOT,
                       env=dict(os.environ))
    assert r.returncode == 2 and "cannot use TLS certificate" in r.stderr, r.stderr


def test_connections_that_never_handshake_count_from_their_accept_and_meet_a_deadline(
        procs, certs):
    """300 connections that never start a TLS handshake used to stay open, uncounted, for
    seconds each. Now each counts against its address from its accept: past
    --max-per-address the next one is closed at once (no line: it speaks no plain text), a
    real TLS client from that address too, until the silent ones reach the handshake deadline
    and are closed; then a TLS client gets in."""
    ca, cert, key = certs
    p, port = start_serve("--tls-cert", cert, "--tls-key", key, "--max-per-address", "5",
                          "--per-address-exempt", "none", "--connect-burst", "50",
                          "--tls-handshake-timeout", "2", acceptors=1)
    procs.append(p)
    began = time.monotonic()
    silent = [socket.create_connection(("127.0.0.1", port), timeout=WAIT) for _ in range(5)]
    extra = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    assert extra.recv(100) == b""  # closed at once, without waiting for any deadline
    assert time.monotonic() - began < 1.5
    extra.close()
    with pytest.raises((ssl.SSLError, OSError)):
        TlsClient(port, ca)  # the address is full of handshakes that have not happened
    for s in silent:  # closed by the server at the deadline, not before
        assert s.recv(100) == b""
        took = time.monotonic() - began
        assert 1.5 <= took <= 2.0 + WAIT, took
        s.close()
    c = TlsClient(port, ca)  # their places are free again
    try:
        c.handshake()
    finally:
        c.close()
