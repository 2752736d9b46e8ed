"""TLS: the self-signed certificate of a fresh install, and the server settings."""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.internet.ssl import AcceptableCiphers, CertificateOptions, TLSVersion
from zope.interface import implementer

from cmdd.files import write_private_file

CERT_NAME = "cert.pem"
KEY_NAME = "key.pem"

#: The TLS 1.2 suites offered: ECDHE key exchange with an AEAD cipher
#: (AES-GCM or ChaCha20-Poly1305): Mozilla's "intermediate" TLS 1.2 list
#: without its DHE suites. Twisted's default list also allows CBC
#: (LUCKY13-prone), CCM, DHE and static-RSA suites. TLS 1.3 suites are not
#: set here: OpenSSL's defaults are all AEAD and stay as they are.
TLS12_CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    )
)
_ACCEPTABLE = AcceptableCiphers.fromOpenSSLCipherString(TLS12_CIPHERS)


def fingerprint(cert_pem: bytes) -> str:
    """The certificate's SHA-256 fingerprint as colon-separated hex."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def ensure_self_signed(tls_dir: str, days: int = 825) -> tuple[str, str, bool]:
    """Create C{tls_dir}/cert.pem and key.pem (0600) unless both exist.

    @return: (certificate path, key path, whether they were just created).
    """
    os.makedirs(tls_dir, mode=0o700, exist_ok=True)
    cert_path = os.path.join(tls_dir, CERT_NAME)
    key_path = os.path.join(tls_dir, KEY_NAME)
    if os.path.exists(cert_path) and os.path.exists(key_path):
        return cert_path, key_path, False
    key = ec.generate_private_key(ec.SECP256R1())
    hostname = socket.gethostname()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"cmdd on {hostname}")])
    now = datetime.datetime.now(datetime.UTC)
    alt_names: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    if hostname and hostname != "localhost":
        alt_names.append(x509.DNSName(hostname))
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    write_private_file(
        key_path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    write_private_file(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path, True


@implementer(IOpenSSLServerConnectionCreator)
class ReloadableTLS:
    """Server TLS settings whose certificate can be swapped without a restart.

    TLS 1.2 minimum, TLS 1.2 suites limited to L{TLS12_CIPHERS} (TLS 1.3's
    as OpenSSL offers them), no compression, no renegotiation; optionally
    client certificates signed by C{client_ca}.
    L{reload} re-reads the files: new connections get the new certificate,
    open ones keep theirs, and the listening socket is never closed.
    """

    def __init__(
        self,
        key_path: str,
        cert_path: str,
        chain_path: str | None = None,
        client_ca: str | None = None,
    ) -> None:
        self.key_path = key_path
        self.cert_path = cert_path
        self.chain_path = chain_path
        self.client_ca = client_ca
        self._context = self._load()

    def _load(self) -> SSL.Context:
        with open(self.key_path, "rb") as key_file:
            key = crypto.load_privatekey(crypto.FILETYPE_PEM, key_file.read())
        with open(self.cert_path, "rb") as cert_file:
            certs = _pem_certificates(cert_file.read())
        chain = certs[1:]
        if self.chain_path:
            with open(self.chain_path, "rb") as chain_file:
                chain += _pem_certificates(chain_file.read())
        verify: dict[str, object] = {}
        if self.client_ca:
            with open(self.client_ca, "rb") as ca_file:
                verify = {
                    "verify": True,
                    "requireCertificate": True,
                    "caCerts": _pem_certificates(ca_file.read()),
                }
        options = CertificateOptions(
            privateKey=key,
            certificate=certs[0],
            extraCertChain=chain or None,
            raiseMinimumTo=TLSVersion.TLSv1_2,
            acceptableCiphers=_ACCEPTABLE,
            **verify,  # type: ignore[arg-type]  # the verify keywords above
        )
        context: SSL.Context = options.getContext()
        context.set_options(SSL.OP_NO_RENEGOTIATION)
        return context

    def reload(self) -> None:
        """Re-read key and certificates; on any error keep serving the old ones."""
        self._context = self._load()

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        return SSL.Connection(self._context, None)


def _pem_certificates(data: bytes) -> list[crypto.X509]:
    marker = b"-----END CERTIFICATE-----"
    blocks = [block + marker for block in data.split(marker) if b"-----BEGIN" in block]
    if not blocks:
        raise ValueError("no PEM certificate found")
    return [crypto.load_certificate(crypto.FILETYPE_PEM, block) for block in blocks]


def peer_common_name(transport: object) -> str | None:
    """The CN of a verified client certificate on this transport, if any."""
    get_certificate = getattr(transport, "getPeerCertificate", None)
    if get_certificate is None:
        return None
    try:
        certificate = get_certificate()
    except Exception:
        return None
    if certificate is None:
        return None
    common_name = certificate.get_subject().commonName
    return str(common_name) if common_name else None
