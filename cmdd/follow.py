"""Live output: stream a job's spool file to a client as it grows.

Reads the file in chunks on a thread, never holds more than one chunk per
follower in memory, and writes only while the client keeps up (the request
pauses us as a push producer when its buffer fills). Plain bytes (chunked
transfer) or Server-Sent Events for browsers' C{EventSource}.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.task import deferLater
from twisted.web.iweb import IRequest
from zope.interface import implementer

from cmdd.errors import ClientError
from cmdd.jobs import Job, outcome_to_json
from cmdd.spool import read_output

CHUNK = 64 * 1024
#: After new output, wait this long for more before reading (batches lines).
COALESCE_SECONDS = 0.05
#: ASCII digits (re's \d also takes other scripts' digits), at most 19 of
#: them (int() refuses more than 4300, and no file is that large anyway).
_RANGE = re.compile(r"bytes=([0-9]{0,19})-([0-9]{0,19})\Z")


def parse_range(header: str, size: int) -> tuple[int, int]:
    """The inclusive byte range a C{Range} header asks for, within C{size}.

    @raise ClientError: 416 for a range outside the data or a form we do not
        serve (several ranges).
    """
    match = _RANGE.match(header.strip())
    first_text, last_text = match.groups() if match else ("", "")
    if match is None or (not first_text and not last_text):
        raise _unsatisfiable(size)
    if not first_text:
        first, last = max(0, size - int(last_text)), size - 1
    else:
        first = int(first_text)
        last = min(int(last_text), size - 1) if last_text else size - 1
    if first > last or first >= size:
        raise _unsatisfiable(size)
    return first, last


def _unsatisfiable(size: int) -> ClientError:
    return ClientError(
        "RANGE_NOT_SATISFIABLE",
        f"the output has {size} bytes; ask for one range within it",
        status=416,
        headers={"Content-Range": f"bytes */{size}"},
    )


@implementer(IPushProducer)
class Flow:
    """Tracks whether the client's connection wants more data (a push
    producer registered on the request; also used by L{cmdd.results})."""

    def __init__(self) -> None:
        self.paused = False
        self.stopped = False
        self._waiters: list[Deferred[None]] = []

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def stopProducing(self) -> None:
        self.stopped = True
        self.resumeProducing()

    async def drained(self) -> None:
        if self.paused and not self.stopped:
            waiter: Deferred[None] = Deferred()
            self._waiters.append(waiter)
            await waiter


def sse_event(event: str, data: str) -> bytes:
    """One Server-Sent Event with C{data} as its one C{data:} line.

    C{data} must hold no line end: the SSE format ends a line at CR, LF or
    CRLF, so a raw C{\\r} in job output would cut the event for a browser.
    """
    assert not any(end in data for end in "\r\n"), "SSE data must be one line"
    return f"event: {event}\ndata: {data}\n\n".encode()


def sse_text(event: str, text: str) -> bytes:
    """An output event: C{text} as one JSON string, so every byte of it
    (CR, LF, other control characters) survives any conforming SSE parser."""
    return sse_event(event, json.dumps(text, ensure_ascii=False))


async def follow(
    request: IRequest,
    streams: list[tuple[str, str]],
    job_id: int,
    *,
    current: Callable[[int], Job | None],
    changed: Callable[[int], Deferred[None]],
    run_blocking: Callable[..., Deferred[Any]],
    sse: bool,
    clock: IReactorTime,
) -> bytes:
    """Write the output of C{streams} (name, spool path) as it is produced;
    return once the job has ended and everything was sent (or the client
    went away).

    Raw bytes follow one stream. As Server-Sent Events several streams share
    one connection, each chunk an event named after its stream whose data is
    the text as a JSON string, in the order it was read, then one C{end}
    event with the job's outcome (a JSON object).
    """
    assert sse or len(streams) == 1, "raw output follows one stream"
    flow = Flow()
    consumer: Any = request  # twisted.web's Request is an IConsumer; IRequest omits it
    consumer.registerProducer(flow, True)
    offsets = dict.fromkeys((name for name, _ in streams), 0)
    decoders = {name: codecs.getincrementaldecoder("utf-8")("replace") for name, _ in streams}
    try:
        while not flow.stopped:
            job = current(job_id)
            ended = job is None or job.state.final
            # Ask to be told of new output before looking, so none slips by.
            more = None if ended else changed(job_id)
            full = False
            wrote = False
            for name, path in streams:
                chunk: bytes = await run_blocking(read_output, path, offsets[name], CHUNK)
                if not chunk:
                    continue
                offsets[name] += len(chunk)
                wrote = True
                full = full or len(chunk) == CHUNK
                text = decoders[name].decode(chunk)
                request.write(sse_text(name, text) if sse else chunk)
                await flow.drained()
                if flow.stopped:
                    break
            if wrote and (full or more is None):
                # More may be there already (or the job ended): read on.
                if more is not None:
                    more.addErrback(lambda _: None)
                    more.cancel()
                continue
            if more is None:
                break
            # At the end of the files: wait for the next write (or the end),
            # then let a few more writes gather so a chatty job costs one
            # read per interval rather than one per line.
            await more
            await deferLater(clock, COALESCE_SECONDS, lambda: None)
        if sse and not flow.stopped:
            for name, _ in streams:
                tail = decoders[name].decode(b"", final=True)
                if tail:
                    request.write(sse_text(name, tail))
            end = json.dumps(_end(current(job_id), job_id), ensure_ascii=False)
            request.write(sse_event("end", end))
    finally:
        consumer.unregisterProducer()
    return b""


def _end(job: Job | None, job_id: int) -> dict[str, Any]:
    """The C{end} event's fields: the job's final state and outcome."""
    end: dict[str, Any] = {"id": job_id, "state": job.state.value if job else "deleted"}
    if job is not None and job.outcome is not None:
        end.update(outcome_to_json(job.outcome))
    return end
