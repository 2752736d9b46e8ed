"""HTTP plumbing under the API: bounded request bodies, JSON in and out.

Kept apart from the routes so every handler shares one definition of "a JSON
request" and "a JSON response".
"""

from __future__ import annotations

import hashlib
import io
import json
from http import HTTPStatus
from typing import Any

from twisted.web.http import RESPONSES
from twisted.web.iweb import IRequest
from twisted.web.server import Request, Site

from cmdd.errors import ClientError

JSON_TYPE = b"application/json; charset=utf-8"
DEFAULT_MAX_BODY = 1024 * 1024


class LimitedRequest(Request):
    """A request whose body is kept in memory up to C{max_body} bytes.

    A larger body is read and discarded (never spooled to a temporary file on
    the reactor thread) and the handler answers 413.
    """

    max_body = DEFAULT_MAX_BODY
    body_too_large = False

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > self.max_body:
            self.body_too_large = True
        self.content = io.BytesIO()

    def handleContentChunk(self, data: bytes) -> None:
        if self.body_too_large:
            return
        assert self.content is not None
        if self.content.tell() + len(data) > self.max_body:
            self.body_too_large = True
            self.content = io.BytesIO()
            return
        self.content.write(data)


def make_site(resource: Any, max_body: int, idle_timeout: float) -> Site:
    """A Site that uses L{LimitedRequest} and drops idle connections."""
    site = Site(resource, timeout=idle_timeout)

    class _Request(LimitedRequest):
        pass

    _Request.max_body = max_body
    site.requestFactory = _Request
    return site


def reason_phrase(status: int) -> bytes:
    """The standard reason phrase of C{status}.

    Twisted's table lacks some (429, 422), and its status line would then
    read "429 Unknown Status"; Python's C{HTTPStatus} fills the gaps.
    """
    phrase = RESPONSES.get(status)
    if phrase is None:
        try:
            phrase = HTTPStatus(status).phrase.encode("ascii")
        except ValueError:
            phrase = b"Unknown Status"
    return phrase


def encode_json(value: Any) -> bytes:
    """Compact UTF-8 JSON with a final newline (friendly to curl users).

    C{backslashreplace} turns a lone surrogate (possible in a client's echoed
    field name) into a valid JSON C{\\uXXXX} escape instead of failing.
    """
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return (text + "\n").encode("utf-8", "backslashreplace")


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
    content_type = request.getHeader("content-type")
    media_type, _, params = (content_type or "").partition(";")
    media_type = media_type.strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise ClientError(
            "UNSUPPORTED_MEDIA_TYPE",
            "send the body as JSON with Content-Type: application/json",
            status=415,
        )
    charset = params.strip().lower()
    if charset.startswith("charset=") and charset[8:].strip('"') not in ("utf-8", "utf8"):
        raise ClientError("UNSUPPORTED_MEDIA_TYPE", "the body must be UTF-8 JSON", status=415)
    assert request.content is not None
    raw = request.content.read()
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ClientError("INVALID_JSON", f"the body is not valid UTF-8 (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise ClientError(
            "INVALID_JSON",
            f"the body is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}",
        ) from None
    except RecursionError:
        raise ClientError("INVALID_JSON", "the body is nested too deeply") from None
