"""Per-job output files, written off the reactor thread, capped per stream.

Writes go to one dedicated I/O thread (a single-thread pool keeps them in
order): a slow disk must never stall the reactor. Output beyond the cap is
counted and discarded, never left unread, so a chatty child never blocks on a
full pipe.

Only the file cmdd created is ever written or served: the writer creates it
afresh (C{O_EXCL}) and checks on every later write that the name still
refers to it; readers refuse a symlink (C{O_NOFOLLOW}), anything but a
regular file and a file another user owns, and serve such a file as empty
output, with a warning in the log.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorFromThreads, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from cmdd.files import REAL_OPS, FileOps, write_all

log = Logger()

T = TypeVar("T")

STREAMS = ("stdout", "stderr")

#: Unwritten bytes per stream above which the child's pipes stop being read
#: (the kernel then blocks the child), until the I/O thread catches up.
HIGH_WATER = 1024 * 1024

#: Errors that pass (too many open files, memory, a disk being cleaned up):
#: a write that fails with one is tried again after each of these delays,
#: with the job's pipes paused, before its output is given up as lost.
TRANSIENT_ERRORS = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EAGAIN, errno.ENOSPC, errno.EDQUOT}
)
RETRY_DELAYS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0)


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


#: The file a spool wrote: (st_dev, st_ino, bytes written so far).
Written = tuple[int, int, int]

_NO_FOLLOW = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def _append(
    path: str, data: bytes, written: Written | None, ops: FileOps = REAL_OPS
) -> Written:
    """Append C{data} to the file this spool has C{written}, or create it if None.

    Creating first removes whatever has the name (a stale file, a planted
    symlink or hard link: unlinking never touches what a link points to),
    then creates a new file exclusively. A later write that finds anything
    else under the name (a symlink, which C{O_NOFOLLOW} refuses, or a file
    of another inode or size) fails rather than write into it. A write that
    fails (a full disk) is cut off again: the file then holds exactly what
    the spool counts as kept.
    """
    if written is None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | _NO_FOLLOW
    else:
        flags = os.O_WRONLY | os.O_APPEND | _NO_FOLLOW
    fd = ops.open(path, flags, 0o600)
    try:
        info = os.fstat(fd)
        found = (info.st_dev, info.st_ino, info.st_size)
        if written is not None and found != written:
            raise OSError(errno.EEXIST, "no longer the output file cmdd created", path)
        try:
            write_all(fd, data, ops)
        except OSError:
            try:
                ops.ftruncate(fd, found[2])
            except OSError:
                pass
            raise
    finally:
        ops.close(fd)
    return (found[0], found[1], found[2] + len(data))


def _refusal(info: os.stat_result) -> str | None:
    """Why a stream's file is not one cmdd wrote, or None if it may be."""
    if stat.S_ISLNK(info.st_mode):
        return "it is a symbolic link"
    if not stat.S_ISREG(info.st_mode):
        return "it is not a regular file"
    if info.st_uid != os.geteuid():
        return f"it is owned by uid {info.st_uid}, not by the daemon"
    return None


def _refuse(path: str, why: str) -> None:
    log.warn("not serving output file {path}: {why}; treated as empty", path=path, why=why)


def _open_output(path: str) -> int | None:
    """A read-only descriptor for a stream's file, or None if there is none or
    it is not the file cmdd wrote (then a warning is logged)."""
    try:
        fd = os.open(path, os.O_RDONLY | _NO_FOLLOW)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:
            _refuse(path, "it is a symbolic link")
            return None
        if e.errno in (errno.EACCES, errno.EPERM):
            _refuse(path, "the daemon may not read it")
            return None
        raise
    try:
        why = _refusal(os.fstat(fd))
    except BaseException:
        os.close(fd)
        raise
    if why is not None:
        os.close(fd)
        _refuse(path, why)
        return None
    return fd


def read_output(path: str, offset: int = 0, limit: int | None = None) -> bytes:
    """A stream's spooled bytes from C{offset} (up to C{limit}); empty if
    nothing was written (yet) or the file is not the one cmdd wrote."""
    fd = _open_output(path)
    if fd is None:
        return b""
    with os.fdopen(fd, "rb") as spooled:
        spooled.seek(offset)
        return spooled.read(-1 if limit is None else limit)


def output_size(path: str) -> int:
    """Bytes kept in a stream's file; 0 if nothing was written or the file is
    not the one cmdd wrote."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return 0
    why = _refusal(info)
    if why is not None:
        _refuse(path, why)
        return 0
    return info.st_size


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
        ops: FileOps = REAL_OPS,
        clock: IReactorTime | None = None,
    ) -> None:
        self._io = io
        #: Times retries of transient failures; without one, none is retried.
        self._clock = clock
        self._retries = 0
        self._writing = b""
        self.path = path
        self._cap = cap
        self._ops = ops
        #: Why output was lost (the file could not be written), if it was.
        self.error: str | None = None
        self._pause: Callable[[], None] = _nothing
        self._resume: Callable[[], None] = _nothing
        self.total = 0
        self.kept = 0
        #: Called after each write reaches the file (live followers listen).
        self.on_flushed: Callable[[], None] = _nothing
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._in_flight: Deferred[Written] | None = None
        #: The file this spool created and how much is in it, once it has.
        self._file: Written | None = None
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
        self._writing = data
        self._in_flight = self._io.run(_append, self.path, data, self._file, self._ops)
        self._in_flight.addCallbacks(self._written, self._write_failed)

    def _written(self, file: Written) -> None:
        self._file = file
        self._retries = 0
        self._write_done()

    def _write_done(self) -> None:
        self._in_flight = None
        self.on_flushed()
        if self._pending:
            self._flush()
        elif self._closers:
            closers, self._closers = self._closers, []
            for closer in closers:
                closer.callback(None)

    def _write_failed(self, failure: Failure) -> None:
        error = failure.value
        if (
            self._clock is not None
            and isinstance(error, OSError)
            and error.errno in TRANSIENT_ERRORS
            and self._retries < len(RETRY_DELAYS)
        ):
            # The failed write was cut back out of the file: write it again
            # later, the child blocked meanwhile, instead of losing it.
            delay = RETRY_DELAYS[self._retries]
            self._retries += 1
            log.warn(
                "cannot write output to {path} ({why}); trying again in {delay} s",
                path=self.path,
                why=str(error),
                delay=delay,
            )
            self._pending.insert(0, self._writing)
            self._pending_bytes += len(self._writing)
            if not self._paused:
                self._paused = True
                self._pause()
            self._in_flight = Deferred()  # busy: no other write starts meanwhile
            self._clock.callLater(delay, self._flush)
            return
        # A full or broken disk: keep counting output, stop spooling it, and
        # say so: what is kept is what is in the file, the rest is truncated.
        why = failure.getErrorMessage()
        log.error("cannot write output to {path}: {why}", path=self.path, why=why)
        self.failed = True
        stream = os.path.basename(self.path).rsplit(".", 1)[-1]
        self.error = f"{stream} output lost: its file could not be written ({why})"
        self.kept = 0 if self._file is None else self._file[2]
        self._pending = []
        self._pending_bytes = 0
        if self._paused:
            self._paused = False
            self._resume()
        self._write_done()

    def close(self) -> Deferred[None]:
        """Fires once every kept byte is in the file."""
        if self._in_flight is None and not self._pending:
            return succeed(None)
        closer: Deferred[None] = Deferred()
        self._closers.append(closer)
        return closer
