"""The HTTP/1.1 connection: Twisted's own answers become JSON, costs are bounded.

Twisted's L{HTTPChannel} answers some requests itself, before any resource
sees them: a bad request line or header gets a bare C{400} with no body, an
over-long line or header section gets no answer at all (the connection is
just closed). L{JsonChannel} gives each of those the JSON error model with
the status that names the cause (400, 414, 431), in one place, so that a new
case Twisted adds is still JSON.

It also bounds what a connection can cost before a request is admitted:

 - a request (line, headers and body) must arrive within the site's
   C{receive_timeout} seconds (L{RECEIVE_TIMEOUT} by default), however
   slowly it trickles in (Twisted's idle timeout restarts on every byte, so
   a slow upload could hold memory forever): C{408};
 - request bodies in memory across all connections are capped at the site's
   C{body_budget} (each request is already capped at C{max_body}): beyond it
   a request gets C{503} with C{Retry-After} instead of more memory;
 - open connections are capped at the site's C{max_connections}: the next
   one gets C{503} with C{Retry-After} and is closed.

Every refusal is written whole, then the connection lingers for at most
L{LINGER_SECONDS}, discarding what the client still sends, so that the
client reads the answer instead of a reset (closing a socket with unread
data in it resets the connection).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel, datetimeToString

from cmdd.errors import ClientError
from cmdd.wirejson import JSON_TYPE, encode_json, reason_phrase

#: Seconds from a request's first byte to its last (line, headers, body), by
#: default (the C{receive_timeout} setting).
RECEIVE_TIMEOUT = 30.0
#: Seconds a refused connection may keep sending before it is closed.
LINGER_SECONDS = 2.0
#: Requests' header fields (Twisted allows 500).
MAX_HEADERS = 100


def json_response(status: int, error: ClientError) -> bytes:
    """A whole HTTP/1.1 response carrying C{error} as JSON; the connection closes."""
    body = encode_json(error.to_json())
    head = [
        b"HTTP/1.1 %d %s" % (status, reason_phrase(status)),
        b"Date: " + datetimeToString(),
        b"Content-Type: " + JSON_TYPE,
        b"Content-Length: %d" % len(body),
        b"Connection: close",
    ]
    head += [f"{name}: {value}".encode("ascii") for name, value in error.headers.items()]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


class JsonChannel(HTTPChannel):
    """An L{HTTPChannel} whose own refusals are JSON and whose costs are bounded."""

    maxHeaders = MAX_HEADERS
    #: Set by the site's buildProtocol (a L{cmdd.web.JsonSite}).
    site: Any = None
    _receive_timer: IDelayedCall | None = None
    _refused = False
    _linger: IDelayedCall | None = None

    # --- what Twisted answers itself ---------------------------------------

    def _respondToBadRequestAndDisconnect(self) -> None:
        """Twisted's one answer for every malformed request, made specific."""
        if not hasattr(self, "_command"):
            self.refuse(
                ClientError("BAD_REQUEST_LINE", "the request line is not METHOD TARGET HTTP/1.x")
            )
        elif self.line_mode:
            self.refuse(
                ClientError(
                    "BAD_HEADER",
                    "a header field is malformed (no colon, a bad name, or NUL, CR or LF "
                    "in its value) or the body's length is unclear",
                )
            )
        else:
            self.refuse(ClientError("BAD_BODY_ENCODING", "the chunked body is malformed"))

    def lineReceived(self, line: bytes) -> None:
        if self._receivedHeaderSize + len(line) > self.totalHeadersSize:
            self.refuse(
                ClientError(
                    "HEADERS_TOO_LARGE",
                    f"the request line and headers are over {self.totalHeadersSize} bytes",
                    status=431,
                )
            )
            return
        super().lineReceived(line)

    def headerReceived(self, line: bytes) -> bool:
        if self._receivedHeaderCount >= self.maxHeaders:
            self.refuse(
                ClientError(
                    "TOO_MANY_HEADERS",
                    f"a request may have at most {self.maxHeaders} header fields",
                    status=431,
                )
            )
            return False
        return bool(super().headerReceived(line))

    def lineLengthExceeded(self, line: bytes) -> None:
        if not hasattr(self, "_command"):
            self.refuse(
                ClientError(
                    "URI_TOO_LONG",
                    f"the request line is over {self.MAX_LENGTH} bytes",
                    status=414,
                )
            )
        else:
            self.refuse(
                ClientError(
                    "HEADERS_TOO_LARGE",
                    f"a header field is over {self.MAX_LENGTH} bytes",
                    status=431,
                )
            )

    # --- bounds ---------------------------------------------------------------

    def connectionMade(self) -> None:
        super().connectionMade()
        site = self.site
        site.connections += 1
        if site.connections > site.max_connections:
            self.refuse(
                ClientError(
                    "TOO_MANY_CONNECTIONS",
                    "the server has too many open connections; try again shortly",
                    status=503,
                    headers={"Retry-After": "1"},
                )
            )

    def dataReceived(self, data: bytes) -> None:
        if self._refused:
            return  # lingering: the answer is out, the rest is discarded
        if data and self._receive_timer is None and not self._handlingRequest:
            self._receive_timer = self.callLater(self._receive_timeout(), self._receive_timed_out)
        super().dataReceived(data)

    def allContentReceived(self) -> None:
        self._stop_receive_timer()
        if self._refused:
            # The chunk that was refused (the body budget) also ended the
            # body: the 503 is the answer, the request is not processed.
            return
        super().allContentReceived()

    def _send100Continue(self) -> None:
        # A request refused on its headers (a body over the limit) gets no
        # "100 Continue" after its answer.
        if not self._refused:
            super()._send100Continue()

    def _receive_timeout(self) -> float:
        return float(getattr(self.site, "receive_timeout", RECEIVE_TIMEOUT))

    def _receive_timed_out(self) -> None:
        self._receive_timer = None
        self.refuse(
            ClientError(
                "REQUEST_TIMEOUT",
                f"the request did not arrive within {self._receive_timeout():g} seconds",
                status=408,
            )
        )

    def _stop_receive_timer(self) -> None:
        if self._receive_timer is not None:
            if self._receive_timer.active():
                self._receive_timer.cancel()
            self._receive_timer = None

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._stop_receive_timer()
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        site = self.site
        site.connections -= 1
        super().connectionLost(reason)

    # --- refusing -----------------------------------------------------------------

    def refuse(self, error: ClientError) -> None:
        """Answer C{error} as JSON, stop reading requests, close soon.

        Only for a connection that is not answering a request: the response
        must not interleave with another one.
        """
        transport: Any = self.transport
        if self._refused or transport is None or transport.disconnecting:
            return
        self._refused = True
        self._stop_receive_timer()
        self.setTimeout(None)
        transport.write(json_response(error.status, error))
        # Stop parsing: whatever is still buffered or arrives is discarded.
        self.setRawMode()
        self.rawDataReceived = lambda data: None  # type: ignore[method-assign]
        self._networkProducer.resumeProducing()
        self._linger = self.callLater(LINGER_SECONDS, self._close_refused)

    def _close_refused(self) -> None:
        self._linger = None
        # As Twisted's idle timeout does: close, and abort if that hangs.
        self._abortingCall = self.callLater(self.abortTimeout, self.forceAbortClient)
        self.loseConnection()
