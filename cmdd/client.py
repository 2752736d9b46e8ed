"""The HTTP side of the C{cmdd} client: requests to the daemon with treq.

Every way a request can go wrong becomes a L{ClientFailure} whose message is
one line a person can act on: a wrong URL, an untrusted certificate (and how
to pin it), a refused token (and how to log in), the daemon's own JSON error.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import treq
from OpenSSL import SSL, crypto
from treq.client import HTTPClient
from twisted.internet import ssl
from twisted.internet.error import ConnectError, DNSLookupError, TimeoutError
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IReactorTCP
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    BrowserLikePolicyForHTTPS,
    HTTPConnectionPool,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import IPolicyForHTTPS, IResponse
from zope.interface import implementer

from cmdd.clientconfig import ClientSettings

TRUST_HINT = (
    "trust it with CMDD_CACERT=PATH (the daemon's tls/cert.pem) or "
    "CMDD_FINGERPRINT=SHA256 (the fingerprint the daemon logs at start)"
)


class ClientFailure(Exception):  # noqa: N818 (reads better at the raise site)
    """A request that did not get what the client asked for; one line for people."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


@implementer(IOpenSSLClientConnectionCreator)
class _PinnedCertificate:
    """TLS that trusts exactly one certificate, named by its SHA-256.

    The pin replaces the CA and host-name checks (as C{ssh} host keys do):
    a self-signed daemon certificate is trusted without copying its file.
    """

    def __init__(self, hostname: str, fingerprint: str) -> None:
        self._hostname = hostname
        self._fingerprint = fingerprint
        self._context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        self._context.set_min_proto_version(SSL.TLS1_2_VERSION)
        self._context.set_verify(SSL.VERIFY_PEER, self._verify)

    def _verify(
        self,
        connection: SSL.Connection,
        certificate: crypto.X509,
        errno: int,
        depth: int,
        ok: int,
    ) -> bool:
        if depth > 0:
            return True  # the chain above the leaf does not matter: the leaf is pinned
        digest = certificate.digest("sha256").decode("ascii").replace(":", "").lower()
        return digest == self._fingerprint

    def clientConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        connection = SSL.Connection(self._context, None)
        connection.set_app_data(tlsProtocol)
        if self._hostname and not _is_address(self._hostname):
            connection.set_tlsext_host_name(self._hostname.encode("idna"))
        connection.set_connect_state()
        return connection


def _is_address(host: str) -> bool:
    return host.replace(".", "").isdigit() or ":" in host


@implementer(IPolicyForHTTPS)
class _Trust:
    """The TLS policy the settings ask for: a pin, a CA file, or the system's."""

    def __init__(self, settings: ClientSettings) -> None:
        self._settings = settings
        self._root: ssl.Certificate | None = None
        if settings.cacert is not None:
            try:
                with open(settings.cacert, "rb") as f:
                    self._root = ssl.Certificate.loadPEM(f.read())
            except (OSError, crypto.Error, SSL.Error) as e:
                raise ClientFailure(f"cannot use CMDD_CACERT {settings.cacert}: {e}") from None
        self._system = BrowserLikePolicyForHTTPS()

    def creatorForNetloc(self, hostname: bytes, port: int) -> IOpenSSLClientConnectionCreator:
        host = hostname.decode("ascii")
        if self._settings.fingerprint is not None:
            return _PinnedCertificate(host, self._settings.fingerprint)
        if self._root is not None:
            return ssl.optionsForClientTLS(host, trustRoot=self._root)
        return self._system.creatorForNetloc(hostname, port)


class Client:
    """Authenticated JSON requests to one daemon."""

    def __init__(self, reactor: IReactorTCP, settings: ClientSettings) -> None:
        self.settings = settings
        self.base = settings.url
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = 2
        agent = Agent(reactor, contextFactory=_Trust(settings), pool=pool, connectTimeout=15)
        self._http = HTTPClient(agent)
        self._pool = pool

    def close(self) -> Any:
        """Close idle connections (a Deferred)."""
        return self._pool.closeCachedConnections()

    def _headers(self, extra: dict[str, str] | None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self.settings.token:
            headers["Authorization"] = f"Bearer {self.settings.token}"
        headers.update(extra or {})
        return headers

    async def send(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        headers: dict[str, str] | None = None,
        params: dict[str, list[str]] | None = None,
        basic: tuple[str, str] | None = None,
        expect: tuple[int, ...] = (200,),
    ) -> tuple[IResponse, Any]:
        """Send a request; return the response and its decoded JSON body.

        @raise ClientFailure: a connection problem or a status not in C{expect}.
        """
        all_headers = self._headers(headers)
        if basic is not None:
            pair = f"{basic[0]}:{basic[1]}".encode()
            all_headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            all_headers["Content-Type"] = "application/json"
        response = await self.open(method, path, data, all_headers, params)
        raw = await treq.content(response)
        decoded = _json_or_none(raw)
        if response.code not in expect:
            raise failure_for(response.code, decoded, self.base)
        return response, decoded

    async def open(
        self,
        method: str,
        path: str,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
        params: dict[str, list[str]] | None = None,
    ) -> IResponse:
        """The response to a request, its body not read yet (for streams)."""
        try:
            response: IResponse = await self._http.request(
                method,
                self.base + path,
                data=data,
                headers=Headers(
                    {k: [v] for k, v in (headers or self._headers(None)).items()}
                ),
                params=params,
                allow_redirects=False,
                unbuffered=True,
            )
        except Exception as e:  # every failure is explained below
            raise ClientFailure(explain_connection_failure(Failure(e), self.base)) from None
        return response

    async def stream(
        self, path: str, receive: Callable[[bytes], None], headers: dict[str, str]
    ) -> None:
        """GET C{path} and hand its body to C{receive} as it arrives."""
        response = await self.open("GET", path, headers=self._headers(headers))
        if response.code != 200:
            raise failure_for(response.code, _json_or_none(await treq.content(response)), self.base)
        try:
            await treq.collect(response, receive)
        except ResponseFailed as e:
            raise ClientFailure(f"the connection to {self.base} broke: {e}") from None


def _json_or_none(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


def failure_for(status: int, body: Any, base: str) -> ClientFailure:
    """The one-line failure for an unexpected status and its JSON error body."""
    error = body.get("error") if isinstance(body, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    if status == 401:
        return ClientFailure(
            f"{base} refused the token ({message or 'unauthenticated'}): log in with "
            "`cmdd login` or set CMDD_TOKEN / CMDD_TOKEN_FILE",
            status,
            code,
        )
    text = message or f"the daemon answered {status}"
    return ClientFailure(f"{text} ({status} {code})" if code else text, status, code)


def explain_connection_failure(failure: Failure, base: str) -> str:
    """One line for a request that got no response at all."""
    host = urlsplit(base).netloc
    reasons = [failure]
    if failure.check(ResponseNeverReceived, ResponseFailed):
        reasons = list(failure.value.reasons) or reasons  # type: ignore[union-attr]
    for reason in reasons:
        if reason.check(SSL.Error):
            return f"the certificate of {host} is not trusted; {TRUST_HINT}"
        if reason.check(DNSLookupError):
            return f"cannot find the host of {base} (check CMDD_URL)"
        if reason.check(TimeoutError):
            return f"{base} did not answer in time"
        if reason.check(ConnectError):
            return f"cannot connect to {base} (is the daemon running? check CMDD_URL)"
    if failure.check(ClientFailure):
        return str(failure.value)
    why = reasons[0].getErrorMessage() or type(reasons[0].value).__name__
    if "VerificationError" in type(reasons[0].value).__name__ or "certificate" in why.lower():
        return f"the certificate of {host} does not match ({why}); {TRUST_HINT}"
    return f"no answer from {base}: {why}"
