"""A finished job's result as JSON, streamed from its output files.

The result embeds the output it kept (up to C{max_output_bytes} per
stream) as JSON strings, but never holds it in memory: each stream is read
in L{CHUNK}-byte pieces on a worker thread, decoded as UTF-8 (undecodable
bytes become U+FFFD, as before) and JSON-escaped there, and written to the
client only while it keeps up (the request pauses us as a push producer).
So a response costs one chunk and its escaped form (at most 6 bytes per
byte, for control characters), whatever the output's size, and the reactor
thread only writes. The metadata comes first, then C{stdout} and
C{stderr}; the body is sent chunked (its length is not known up front).
"""

from __future__ import annotations

import codecs
import hashlib
import json
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.web.iweb import IRequest

from cmdd.follow import Flow
from cmdd.spool import read_output
from cmdd.wirejson import JSON_TYPE, encode_json

#: Bytes of output read, decoded and escaped at a time.
CHUNK = 64 * 1024


class _Escaper:
    """Reads one output file in chunks and returns its JSON-escaped text."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._offset = 0
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self.done = False

    def next_piece(self) -> bytes:
        """The next chunk as escaped UTF-8 (no quotes); runs on a worker thread."""
        data = read_output(self._path, self._offset, CHUNK)
        self._offset += len(data)
        final = len(data) < CHUNK
        text = self._decoder.decode(data, final=final)
        self.done = final
        return json.dumps(text, ensure_ascii=False)[1:-1].encode("utf-8")


def result_etag(head: bytes) -> str:
    """The ETag of a result: a job's output never changes once it is final,
    so its metadata (ids, timestamps, byte counts) identifies the body."""
    return f'"r{hashlib.blake2b(head, digest_size=12).hexdigest()}"'


def _not_modified(request: IRequest, tag: str) -> bool:
    wanted = request.getHeader("if-none-match") or ""
    return wanted == "*" or tag in (t.strip().removeprefix("W/") for t in wanted.split(","))


async def stream_result(
    request: IRequest,
    head: dict[str, Any],
    streams: Sequence[tuple[str, str, int]],
    run_blocking: Callable[..., Deferred[Any]],
) -> bytes:
    """Write C{head} (the result without output) with each stream's text
    added as a string member, read from its file.

    @param streams: C{(name, path, bytes kept)} per stream; a stream with
        no bytes is an empty string and its file is not opened.
    @param run_blocking: runs a blocking function on a worker thread.
    @return: C{b""} once everything is written (or the client went away).
    """
    opening = encode_json(head).rstrip(b"\n")
    assert opening.endswith(b"}")
    tag = result_etag(opening)
    request.setHeader(b"etag", tag.encode("ascii"))
    if _not_modified(request, tag):
        request.setResponseCode(304)
        return b""
    request.setResponseCode(200)
    request.setHeader(b"content-type", JSON_TYPE)
    if request.method == b"HEAD":
        return b""  # the headers are the answer; do not read the files
    flow = Flow()
    consumer: Any = request  # twisted.web's Request is an IConsumer; IRequest omits it
    consumer.registerProducer(flow, True)
    try:
        request.write(opening[:-1])
        separator = b"," if head else b""  # no comma after an empty head
        for name, path, size in streams:
            request.write(separator + b'"' + name.encode("ascii") + b'":"')
            separator = b","
            escaper = _Escaper(path)
            while size and not escaper.done and not flow.stopped:
                piece: bytes = await run_blocking(escaper.next_piece)
                if piece:
                    request.write(piece)
                await flow.drained()
            if flow.stopped:
                return b""
            request.write(b'"')
        request.write(b"}\n")
    finally:
        consumer.unregisterProducer()
    return b""


async def stream_raw(
    request: IRequest, path: str, size: int, run_blocking: Callable[..., Deferred[Any]]
) -> bytes:
    """Write the first C{size} bytes of an output file as the body, in
    L{CHUNK}-byte reads on a worker thread, while the client keeps up.

    The caller set C{Content-Length: size}. Should the file hold fewer bytes
    than that (the job was deleted meanwhile), the connection is closed, so
    the client sees a short body instead of waiting for the rest.
    """
    if request.method == b"HEAD" or size == 0:
        return b""
    flow = Flow()
    consumer: Any = request  # twisted.web's Request is an IConsumer; IRequest omits it
    consumer.registerProducer(flow, True)
    offset = 0
    try:
        while offset < size and not flow.stopped:
            piece: bytes = await run_blocking(read_output, path, offset, min(CHUNK, size - offset))
            if not piece:
                request.channel.loseConnection()  # type: ignore[attr-defined]  # a Request
                return b""
            request.write(piece)
            offset += len(piece)
            await flow.drained()
    finally:
        consumer.unregisterProducer()
    return b""
