"""Per-job output files, written off the reactor thread, capped per stream.

Writes go to one dedicated I/O thread (a single-thread pool keeps them in
order): a slow disk must never stall the reactor. Output beyond the cap is
counted and discarded, never left unread, so a chatty child never blocks on a
full pipe.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

log = Logger()

T = TypeVar("T")

STREAMS = ("stdout", "stderr")

#: Bytes of each stream's beginning kept in memory.
HEAD_BYTES = 512

#: Unwritten bytes per stream above which the child's pipes stop being read
#: (the kernel then blocks the child), until the I/O thread catches up.
HIGH_WATER = 1024 * 1024


class IOWorker:
    """A single thread for blocking file work, in submission order."""

    def __init__(self, reactor: IReactorFromThreads, name: str = "cmdd-io") -> None:
        self._reactor = reactor
        self._pool = ThreadPool(minthreads=1, maxthreads=1, name=name)

    def start(self) -> None:
        """Start the thread."""
        self._pool.start()

    def stop(self) -> None:
        """Finish queued work, then stop the thread."""
        self._pool.stop()

    def run(self, fn: Callable[..., T], *args: Any) -> Deferred[T]:
        """Run C{fn(*args)} on the I/O thread; the result arrives in the reactor."""
        return deferToThreadPool(self._reactor, self._pool, fn, *args)


def output_path(output_dir: str, job_id: int, stream: str) -> str:
    """Where a job's stream is spooled."""
    return os.path.join(output_dir, f"{job_id}.{stream}")


def _append(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
    finally:
        os.close(fd)


def read_output(path: str, offset: int = 0, limit: int | None = None) -> bytes:
    """A stream's spooled bytes from C{offset} (up to C{limit}); empty if
    nothing was written (yet)."""
    try:
        with open(path, "rb") as spooled:
            spooled.seek(offset)
            return spooled.read(-1 if limit is None else limit)
    except FileNotFoundError:
        return b""


def output_size(path: str) -> int:
    """Bytes kept in a stream's file; 0 if nothing was written."""
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


def remove_outputs(output_dir: str, job_id: int) -> None:
    """Delete a job's output files, if any."""
    for stream in STREAMS:
        try:
            os.unlink(output_path(output_dir, job_id, stream))
        except FileNotFoundError:
            pass


def _nothing() -> None:
    pass


class OutputSpool:
    """One stream of one job: counts every byte, keeps the first C{cap}.

    The file is created on the first byte, so silent jobs cost no file.
    """

    def __init__(
        self,
        io: IOWorker,
        path: str,
        cap: int,
    ) -> None:
        self._io = io
        self.path = path
        self._cap = cap
        self._pause: Callable[[], None] = _nothing
        self._resume: Callable[[], None] = _nothing
        self.total = 0
        self.kept = 0
        #: The first bytes, kept in memory for a cheap look (exec errors).
        self.head = b""
        #: Called after each write reaches the file (live followers listen).
        self.on_flushed: Callable[[], None] = _nothing
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._in_flight: Deferred[None] | None = None
        self._paused = False
        self._closers: list[Deferred[None]] = []
        self.failed = False

    def set_flow(self, pause: Callable[[], None], resume: Callable[[], None]) -> None:
        """Stop and restart reading the producer when the disk falls behind."""
        self._pause = pause
        self._resume = resume

    @property
    def truncated(self) -> bool:
        """Whether output beyond the cap was discarded."""
        return self.total > self.kept

    def write(self, data: bytes) -> None:
        """Take a chunk from the child."""
        if len(self.head) < HEAD_BYTES:
            self.head += data[: HEAD_BYTES - len(self.head)]
        self.total += len(data)
        room = self._cap - self.kept
        if room <= 0 or self.failed:
            return
        chunk = data if len(data) <= room else data[:room]
        self.kept += len(chunk)
        self._pending.append(chunk)
        self._pending_bytes += len(chunk)
        if self._in_flight is None:
            self._flush()
        elif self._pending_bytes > HIGH_WATER and not self._paused:
            self._paused = True
            self._pause()

    def _flush(self) -> None:
        data = b"".join(self._pending)
        self._pending = []
        self._pending_bytes = 0
        if self._paused:
            self._paused = False
            self._resume()
        self._in_flight = self._io.run(_append, self.path, data)
        self._in_flight.addCallbacks(self._written, self._write_failed)

    def _written(self, _: object) -> None:
        self._in_flight = None
        self.on_flushed()
        if self._pending:
            self._flush()
        elif self._closers:
            closers, self._closers = self._closers, []
            for closer in closers:
                closer.callback(None)

    def _write_failed(self, failure: Failure) -> None:
        # A full or broken disk: keep counting output, stop spooling it.
        log.failure("cannot write output to {path}", failure, path=self.path)
        self.failed = True
        self._pending = []
        self._pending_bytes = 0
        self._written(None)

    def close(self) -> Deferred[None]:
        """Fires once every kept byte is in the file."""
        if self._in_flight is None and not self._pending:
            return succeed(None)
        closer: Deferred[None] = Deferred()
        self._closers.append(closer)
        return closer
