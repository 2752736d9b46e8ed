"""HTTP plumbing under the API: bounded request bodies, JSON in and out.

Kept apart from the routes so every handler shares one definition of "a JSON
request" and "a JSON response". Requests Twisted itself would answer (at the
connection level) are answered in L{cmdd.channel}; requests no route should
see (a bad Host, a URL that is not UTF-8) are answered here, before routing,
and anything that escapes a resource is a JSON 500 here too.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
from typing import Any
from urllib.parse import unquote_to_bytes

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import combinedLogFormatter
from twisted.web.iweb import IRequest
from twisted.web.server import Request, Site
from werkzeug.datastructures import MIMEAccept
from werkzeug.http import parse_accept_header, parse_options_header

from cmdd.channel import RECEIVE_TIMEOUT, JsonChannel
from cmdd.errors import ClientError
from cmdd.principal import IPrincipal
from cmdd.wirejson import JSON_TYPE, encode_json, reason_phrase

log = Logger()

DEFAULT_MAX_BODY = 1024 * 1024
#: Request bodies held in memory across all connections (C{body_budget_bytes}).
DEFAULT_BODY_BUDGET = 32 * 1024 * 1024
#: Open connections; the next one gets a JSON 503 (C{max_connections}).
DEFAULT_MAX_CONNECTIONS = 1024
#: JSON numbers must be exact as a double (JavaScript's safe integers).
MAX_JSON_INTEGER = 2**53
#: A Host header: a DNS name (labels of at most 63 characters; "_" allowed),
#: an IPv4 address or a bracketed IPv6 literal, and an optional port.
_HOST = re.compile(
    r"(?:(?:[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.)*"
    r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.?"
    r"|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?\Z"
)


class BodyBudget:
    """Bytes of request bodies in memory, across every connection of a site."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, size: int) -> bool:
        """Reserve C{size} bytes, or say no (and reserve nothing)."""
        if self.used + size > self.limit:
            return False
        self.used += size
        return True

    def give_back(self, size: int) -> None:
        """Release bytes taken earlier."""
        self.used -= size


class LimitedRequest(Request):
    """A request whose body is kept in memory up to C{max_body} bytes.

    A larger body is read and discarded (never spooled to a temporary file on
    the reactor thread) and the handler answers 413.
    """

    max_body = DEFAULT_MAX_BODY
    budget = BodyBudget(DEFAULT_BODY_BUDGET)
    body_too_large = False
    _held = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # cmdd reads JSON only: Twisted must not parse form or multipart
        # bodies into request.args (a bad multipart body was its bare 400).
        kwargs["parsePOSTFormSubmission"] = False
        super().__init__(*args, **kwargs)

    def gotLength(self, length: int | None) -> None:
        self.content = io.BytesIO()
        if length is not None and length > self.max_body:
            self._too_large()

    def handleContentChunk(self, data: bytes) -> None:
        if self.body_too_large:
            return
        assert self.content is not None
        if self.content.tell() + len(data) > self.max_body:
            self.content = io.BytesIO()
            self._release()
            self._too_large()
            return
        if not self.budget.take(len(data)):
            self._release()
            self.content = io.BytesIO()
            self.body_too_large = True
            refuse = getattr(self.channel, "refuse", None)
            if refuse is not None:
                refuse(
                    ClientError(
                        "SERVER_BUSY",
                        "the server holds too many request bodies; try again shortly",
                        status=503,
                        headers={"Retry-After": "1"},
                    )
                )
            return
        self._held += len(data)
        self.content.write(data)

    def _too_large(self) -> None:
        """Answer 413 now, before (the rest of) the body is read, and close.

        A declared C{Content-Length} over the limit is refused as soon as the
        headers are in; a chunked body as soon as it passes the limit.
        """
        self.body_too_large = True
        refuse = getattr(self.channel, "refuse", None)
        if refuse is not None:
            refuse(
                ClientError(
                    "BODY_TOO_LARGE", f"the request body is over {self.max_body} bytes", status=413
                )
            )

    def _release(self) -> None:
        self.budget.give_back(self._held)
        self._held = 0

    def finish(self) -> Any:
        self._release()
        return super().finish()

    def connectionLost(self, reason: Failure) -> None:
        self._release()
        super().connectionLost(reason)

    def process(self) -> None:
        """Refuse what no route should see, then route."""
        try:
            check_request(self)
        except ClientError as error:
            self.site = self.channel.site  # type: ignore[attr-defined]  # Site sets it
            self.write(respond_json(self, error.to_json(), error.status, error.headers))
            self.finish()
            return
        super().process()

    def processingFailed(self, reason: Failure) -> None:
        """Whatever escaped a resource is a JSON 500 (Twisted's is HTML)."""
        log.failure("unhandled error in {method} {uri}", reason, method=self.method, uri=self.uri)
        if self.startedWriting:
            # Too late for a status: end the response so the client notices.
            self.channel.loseConnection()
            return
        error = ClientError("INTERNAL_ERROR", "the server failed; see its log", status=500)
        self.write(respond_json(self, error.to_json(), 500))
        self.finish()


def check_request(request: IRequest) -> None:
    """What every request must get right before it is routed.

    @raise ClientError: 400 for a missing (HTTP/1.1), repeated or malformed
        Host (RFC 9112 section 3.2), a path or query that is not UTF-8 once
        percent-decoded, or a header value that is not UTF-8.
    """
    hosts = request.requestHeaders.getRawHeaders(b"host") or []
    if len(hosts) > 1 or (not hosts and getattr(request, "clientproto", None) == b"HTTP/1.1"):
        raise ClientError("INVALID_HOST", "send exactly one Host header")
    if hosts and not _HOST.match(hosts[0].decode("latin-1")):
        raise ClientError("INVALID_HOST", "the Host header is not a valid host[:port]")
    target = request.uri
    if target.startswith(b"/"):
        path, _, query = target.partition(b"?")
        try:
            unquote_to_bytes(path).decode("utf-8")
            for part in query.replace(b"+", b" ").split(b"&"):
                unquote_to_bytes(part).decode("utf-8")
        except UnicodeDecodeError:
            raise ClientError(
                "INVALID_URL", "the path and query must be UTF-8 once percent-decoded"
            ) from None
    for name, values in request.requestHeaders.getAllRawHeaders():
        for value in values:
            try:
                value.decode("utf-8")
            except UnicodeDecodeError:
                raise ClientError(
                    "BAD_HEADER",
                    f"the {name.decode('latin-1')} header is not UTF-8 text",
                ) from None


_LOGGABLE_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}\Z")


def access_line(timestamp: str, request: IRequest) -> str:
    """The combined log format, with the authenticated user in its user field
    (C{-} before authentication or when it failed)."""
    line: str = combinedLogFormatter(timestamp, request)
    getter = getattr(request, "getComponent", None)
    name = getattr(None if getter is None else getter(IPrincipal), "name", None)
    if not isinstance(name, str) or not _LOGGABLE_NAME.match(name):
        return line
    # combinedLogFormatter writes '"address" - - [time] ...': ident, then user.
    address, separator, rest = line.partition(" - - ")
    return f"{address} - {name} {rest}" if separator else line


class JsonSite(Site):
    """A Site whose connections are L{JsonChannel}s, at most C{max_connections}."""

    max_connections = DEFAULT_MAX_CONNECTIONS
    receive_timeout = RECEIVE_TIMEOUT
    connections = 0

    @staticmethod
    def _channel() -> JsonChannel:
        return JsonChannel()

    # Twisted's factory calls self.protocol(); cmdd serves HTTP/1.1 only (no
    # h2 is installed, and cmdd's TLS offers no ALPN), so no HTTP/2 wrapper.
    protocol = _channel  # type: ignore[assignment]


def make_site(
    resource: Any,
    max_body: int,
    idle_timeout: float,
    *,
    body_budget: int = DEFAULT_BODY_BUDGET,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    receive_timeout: float = RECEIVE_TIMEOUT,
) -> Site:
    """A L{JsonSite} that uses L{LimitedRequest} and drops idle connections.

    @param max_body: bytes one request body may have (more: 413).
    @param idle_timeout: seconds a connection may sit idle.
    @param body_budget: bytes of request bodies in memory across connections
        (more: 503 with Retry-After).
    @param max_connections: open connections (more: 503 with Retry-After).
    @param receive_timeout: seconds from a request's first byte to its last
        (more: 408).
    """
    site = JsonSite(resource, timeout=idle_timeout, logFormatter=access_line)

    class _Request(LimitedRequest):
        pass

    _Request.budget = BodyBudget(body_budget)
    site.requestFactory = _Request
    set_site_limits(site, max_body, idle_timeout, body_budget, max_connections, receive_timeout)
    return site


def set_site_limits(
    site: Any,
    max_body: int,
    idle_timeout: float,
    body_budget: int,
    max_connections: int,
    receive_timeout: float,
) -> None:
    """Set (or change, on SIGHUP) the limits of a site from L{make_site};
    connections already open keep the idle timeout they started with."""
    site.timeOut = idle_timeout
    site.max_connections = max_connections
    site.receive_timeout = receive_timeout
    site.requestFactory.max_body = max_body
    site.requestFactory.budget.limit = body_budget


def respond_json(
    request: IRequest,
    value: Any,
    status: int = 200,
    headers: dict[str, str] | None = None,
    *,
    etag: bool = False,
) -> bytes:
    """Set status and headers for a JSON body and return the body.

    With C{etag}, the body's hash is its ETag, and a request whose
    C{If-None-Match} names it gets C{304 Not Modified} and no body.
    """
    body = encode_json(value)
    if etag:
        tag = f'"{hashlib.blake2b(body, digest_size=12).hexdigest()}"'
        request.setHeader(b"etag", tag.encode("ascii"))
        wanted = request.getHeader("if-none-match") or ""
        if tag in (t.strip().removeprefix("W/") for t in wanted.split(",")) or wanted == "*":
            request.setResponseCode(304)
            return b""
    request.setResponseCode(status, reason_phrase(status))
    request.setHeader(b"content-type", JSON_TYPE)
    # A length instead of chunked encoding: simpler for every client.
    request.setHeader(b"content-length", b"%d" % len(body))
    for name, header_value in (headers or {}).items():
        request.setHeader(name.encode("ascii"), header_value.encode("ascii"))
    return body


def read_json(request: IRequest) -> Any:
    """The request's body as JSON.

    @raise ClientError: 413 too large, 415 not JSON, 400 undecodable.
    """
    if getattr(request, "body_too_large", False):
        limit = getattr(request, "max_body", DEFAULT_MAX_BODY)
        raise ClientError("BODY_TOO_LARGE", f"the request body is over {limit} bytes", status=413)
    media_type, params = parse_options_header(request.getHeader("content-type"))
    media_type = media_type.lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise ClientError(
            "UNSUPPORTED_MEDIA_TYPE",
            "send the body as JSON with Content-Type: application/json",
            status=415,
        )
    charset = params.get("charset", "utf-8").lower()
    if charset not in ("utf-8", "utf8"):
        raise ClientError("UNSUPPORTED_MEDIA_TYPE", "the body must be UTF-8 JSON", status=415)
    assert request.content is not None
    raw = request.content.read()
    try:
        return strict_json(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ClientError("INVALID_JSON", f"the body is not valid UTF-8 (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise ClientError(
            "INVALID_JSON",
            f"the body is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}",
        ) from None
    except _NotStrictError as e:
        raise ClientError("INVALID_JSON", f"the body is not accepted: {e}") from None
    except ValueError:
        # Python refuses integers of more than 4300 digits.
        raise ClientError("INVALID_JSON", "the body has a number out of range") from None
    except RecursionError:
        raise ClientError("INVALID_JSON", "the body is nested too deeply") from None


class _NotStrictError(ValueError):
    """JSON that Python's parser accepts but RFC 8259 interoperability rules out."""


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _NotStrictError(f"the key {key!r} appears twice in one object")
            seen.add(key)
    return out


def _integer(text: str) -> int:
    value = int(text)
    if abs(value) > MAX_JSON_INTEGER:
        raise _NotStrictError(f"the number {text[:20]} is out of range (at most 2**53)")
    return value


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NotStrictError(f"the number {text[:20]} is out of range")
    return value


def _constant(name: str) -> Any:
    raise _NotStrictError(f"{name} is not JSON")


def strict_json(text: str) -> Any:
    """Decode JSON strictly: no duplicate keys, no NaN or Infinity, and
    numbers that a double holds (integers up to 2**53, no overflow to inf).

    @raise ValueError: (or a subclass) for anything else.
    """
    return json.loads(
        text,
        object_pairs_hook=_pairs,
        parse_int=_integer,
        parse_float=_float,
        parse_constant=_constant,
    )


def wants_event_stream(accept: str | None) -> bool:
    """Whether C{Accept} prefers Server-Sent Events to raw bytes.

    Parsed with werkzeug (qualities and wildcards count): C{*/*} keeps raw
    bytes, C{text/event-stream;q=0} refuses events.
    """
    if not accept:
        return False
    offered = parse_accept_header(accept, MIMEAccept)
    return offered.best_match(["application/octet-stream", "text/event-stream"]) == (
        "text/event-stream"
    )

