"""Real TLS: hardened defaults, certificate reload on SIGHUP, mutual TLS.

A real twistd, certificates from trustme, and real clients: treq with a
proper trust root, Python's ssl module and openssl s_client.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted
import trustme
from daemons import wait_listening

pytestmark = pytest.mark.integration

TWISTD = str(Path(sys.executable).parent / "twistd")


class TLSDaemon:
    """twistd cmdd serving TLS with a trustme certificate."""

    def __init__(self, tmp_path: Path, client_ca: bool = False) -> None:
        self.ca = trustme.CA()
        self.tmp = tmp_path
        self.key = tmp_path / "server.key"
        self.cert = tmp_path / "server.pem"
        self.issue_server_cert()
        args = [TWISTD, "-n", "--pidfile=", "cmdd", "--data-dir", str(tmp_path / "data"),
                "--listen", f"ssl:0:interface=127.0.0.1:privateKey={self.key}"
                f":certKey={self.cert}"]
        if client_ca:
            self.ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
            args += ["--client-ca", str(tmp_path / "ca.pem")]
        self.log = open(tmp_path / "daemon.log", "wb")
        self.process = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)
        (self.port,) = wait_listening(self.process, tmp_path / "data", tmp_path / "daemon.log")
        self.token = (tmp_path / "data" / "admin.token").read_text().strip()

    def issue_server_cert(self) -> trustme.LeafCert:
        leaf = self.ca.issue_cert("localhost", "127.0.0.1")
        leaf.private_key_pem.write_to_path(str(self.key))
        leaf.cert_chain_pems[0].write_to_path(str(self.cert))
        return leaf

    def client_context(self, **kw: object) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        for name, value in kw.items():
            setattr(context, name, value)
        return context

    def served_certificate(self) -> bytes:
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as raw, \
                self.client_context().wrap_socket(raw, server_hostname="localhost") as tls:
            der = tls.getpeercert(binary_form=True)
            assert der is not None
            return der

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
        self.log.close()


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[TLSDaemon]:
    d = TLSDaemon(tmp_path)
    yield d
    d.stop()


@pytest_twisted.ensureDeferred
async def test_treq_with_a_proper_trust_root(daemon: TLSDaemon) -> None:
    """A client that trusts only the CA verifies the server and gets JSON."""
    import treq
    from twisted.internet import reactor
    from twisted.internet.ssl import Certificate, optionsForClientTLS
    from twisted.web.client import Agent, BrowserLikePolicyForHTTPS

    trust = Certificate.loadPEM(daemon.ca.cert_pem.bytes())
    agent = Agent(reactor, contextFactory=BrowserLikePolicyForHTTPS(trustRoot=trust))
    response = await treq.get(
        f"https://localhost:{daemon.port}/api/jobs",
        headers={"Authorization": f"Bearer {daemon.token}"},
        agent=agent,
        timeout=10,
    )
    assert response.code == 200
    assert await response.json() == {"jobs": [], "next": None}
    del optionsForClientTLS


# The client side must offer the old versions on purpose; Python warns about that.
@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_old_tls_versions_are_refused(daemon: TLSDaemon) -> None:
    """TLS 1.0 and 1.1 handshakes fail; TLS 1.2 and 1.3 work."""
    for version in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
        context = daemon.client_context(minimum_version=version, maximum_version=version)
        # Let this client offer the old protocol at all (OpenSSL 3 forbids it by default).
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
        with socket.create_connection(("127.0.0.1", daemon.port), timeout=5) as raw:
            with pytest.raises(ssl.SSLError):
                context.wrap_socket(raw, server_hostname="localhost").close()
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        context = daemon.client_context(minimum_version=version, maximum_version=version)
        with socket.create_connection(("127.0.0.1", daemon.port), timeout=5) as raw, \
                context.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.version() in ("TLSv1.2", "TLSv1.3")


def test_openssl_s_client_sees_no_tls_1_1(daemon: TLSDaemon) -> None:
    """openssl s_client: -tls1_1 fails, -tls1_2 negotiates a modern cipher and
    is refused when it offers only a CBC suite."""
    ca = daemon.tmp / "ca.pem"
    daemon.ca.cert_pem.write_to_path(str(ca))
    base = ["openssl", "s_client", "-connect", f"127.0.0.1:{daemon.port}", "-CAfile", str(ca),
            "-servername", "localhost"]
    old = subprocess.run([*base, "-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0"],
                         input=b"", capture_output=True, timeout=20)
    assert old.returncode != 0
    modern = subprocess.run([*base, "-tls1_2"], input=b"", capture_output=True, timeout=20)
    out = modern.stdout.decode()
    assert modern.returncode == 0, modern.stderr.decode()
    assert "Verify return code: 0 (ok)" in out
    assert "Protocol  : TLSv1.2" in out or "Protocol: TLSv1.2" in out
    assert "Compression: NONE" in out
    cipher = next(line for line in out.splitlines() if "Cipher is" in line)
    assert "GCM" in cipher or "CHACHA20" in cipher, cipher
    cbc = subprocess.run([*base, "-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA256"],
                         input=b"", capture_output=True, timeout=20)
    assert cbc.returncode != 0, "a CBC suite must not be agreed"


def test_certificate_reload_on_sighup(daemon: TLSDaemon) -> None:
    """After new certificate files and SIGHUP, new connections get the new
    certificate; the listener never closes and a bad file keeps the old one."""
    before = daemon.served_certificate()
    daemon.issue_server_cert()
    assert daemon.served_certificate() == before, "no reload before SIGHUP"
    daemon.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while daemon.served_certificate() == before:
        assert time.monotonic() < deadline, "certificate not reloaded"
        time.sleep(0.05)
    after = daemon.served_certificate()
    daemon.cert.write_text("not a certificate")
    daemon.process.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    assert daemon.served_certificate() == after
    assert daemon.process.poll() is None


def test_mutual_tls(tmp_path: Path) -> None:
    """With --client-ca, a client without a certificate is refused; one with a
    certificate whose CN is a cmdd user acts as that user, without a token."""
    daemon = TLSDaemon(tmp_path, client_ca=True)
    try:
        with socket.create_connection(("127.0.0.1", daemon.port), timeout=5) as raw:
            with pytest.raises((ssl.SSLError, ConnectionError)):
                tls = daemon.client_context().wrap_socket(raw, server_hostname="localhost")
                tls.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
                assert tls.recv(100) == b"", "server must not answer without a certificate"
                raise ConnectionError("closed")
        client = daemon.ca.issue_cert("admin.clients.test", common_name="admin")
        context = daemon.client_context()
        client.configure_cert(context)
        with socket.create_connection(("127.0.0.1", daemon.port), timeout=5) as raw, \
                context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"GET /api/jobs HTTP/1.0\r\nHost: localhost\r\n\r\n")
            reply = b""
            while chunk := tls.recv(65536):
                reply += chunk
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.0 200"), head
        assert json.loads(body) == {"jobs": [], "next": None}
    finally:
        daemon.stop()
    assert os.path.exists(tmp_path / "data" / "users")


def _tls12_handshake(port: int, ca: trustme.CA, ciphers: str) -> str:
    """Connect offering only C{ciphers} over TLS 1.2; the suite agreed, or the error."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    # SECLEVEL=0: this client really offers what it is told to, weak or not.
    context.set_ciphers(f"{ciphers}:@SECLEVEL=0")
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                context.wrap_socket(raw, server_hostname="localhost") as tls:
            cipher = tls.cipher()
            assert cipher is not None
            return cipher[0]
    except (ssl.SSLError, ConnectionError) as e:
        return f"refused: {e}"


@pytest.mark.parametrize(
    ("key_type", "accepted", "refused"),
    [
        (
            "RSA",
            ["ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES256-GCM-SHA384",
             "ECDHE-RSA-CHACHA20-POLY1305"],
            ["ECDHE-RSA-AES128-SHA256", "ECDHE-RSA-AES256-SHA384", "ECDHE-RSA-AES128-SHA",
             "AES128-SHA", "AES128-GCM-SHA256", "AES256-SHA256"],
        ),
        (
            "ECDSA",
            ["ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384",
             "ECDHE-ECDSA-CHACHA20-POLY1305"],
            ["ECDHE-ECDSA-AES128-SHA256", "ECDHE-ECDSA-AES256-SHA", "ECDHE-ECDSA-AES128-CCM",
             "ECDHE-ECDSA-AES256-CCM8"],
        ),
    ],
)
@pytest_twisted.ensureDeferred
async def test_tls12_offers_only_ecdhe_with_aead(
    tmp_path: Path, key_type: str, accepted: list[str], refused: list[str]
) -> None:
    """Over TLS 1.2 only ECDHE with AES-GCM or ChaCha20-Poly1305 is agreed (as
    README says): a client offering only a CBC suite (LUCKY13), a CCM suite or
    static-RSA key exchange fails the handshake. A real listener on a free port."""
    from twisted.internet import reactor
    from twisted.internet.protocol import Factory, Protocol
    from twisted.internet.threads import deferToThread

    from cmdd.tls import ReloadableTLS

    ca = trustme.CA(key_type=trustme.KeyType[key_type])
    leaf = ca.issue_cert("localhost", "127.0.0.1", key_type=trustme.KeyType[key_type])
    leaf.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    leaf.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    tls = ReloadableTLS(str(tmp_path / "key.pem"), str(tmp_path / "cert.pem"))
    port = reactor.listenSSL(  # type: ignore[attr-defined]
        0, Factory.forProtocol(Protocol), tls, interface="127.0.0.1"
    )
    try:
        number = port.getHost().port
        agreed = {c: await deferToThread(_tls12_handshake, number, ca, c) for c in accepted}
        denied = {c: await deferToThread(_tls12_handshake, number, ca, c) for c in refused}
    finally:
        await port.stopListening()
    assert agreed == {c: c for c in accepted}
    assert all(outcome.startswith("refused") for outcome in denied.values()), denied


def test_the_offered_suites_are_tls13_defaults_and_the_tls12_list() -> None:
    """The server's whole list: OpenSSL's TLS 1.3 suites (all AEAD), then
    exactly the six ECDHE AEAD suites of TLS 1.2."""
    from cmdd.tls import TLS12_CIPHERS, ReloadableTLS

    ca = trustme.CA()
    leaf = ca.issue_cert("localhost")
    with leaf.private_key_pem.tempfile() as key, leaf.cert_chain_pems[0].tempfile() as cert:
        tls = ReloadableTLS(key, cert)
    offered = tls.serverConnectionForTLS(None).get_cipher_list()
    tls13 = [name for name in offered if name.startswith("TLS_")]
    assert tls13 and all("GCM" in name or "CHACHA20" in name for name in tls13)
    assert offered[len(tls13):] == TLS12_CIPHERS.split(":")
