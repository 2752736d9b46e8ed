"""The journal file: appends with group commit, and compaction (replay is in cmdd.replay).

All writes and fsyncs happen on one dedicated thread, in submission order:
an fsync takes milliseconds and must never stall the reactor. Appends that
arrive while a write is in flight wait and go out together in the next one,
so many requests share one fsync (group commit).

A write that fails (a full disk, an I/O error, a short write, a failed
fsync) never leaves part of a line behind: the file is cut back to the last
size a successful write (and fsync) confirmed, and that batch and every
record queued behind it are refused, so nothing that depended on a refused
record is written either. A failed fsync is not retried: its records are
refused and cut off, and the cut is synced before anything else is
written. If the cut fails too, the writer refuses every record until the
daemon restarts. See docs/journal.md, "Full disk and I/O errors".
"""

from __future__ import annotations

import collections
import contextlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import attrs
from twisted.internet.defer import Deferred, fail
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from cmdd.codec import Item, encode
from cmdd.compaction import COMPACT_SUFFIX, write_aside
from cmdd.compaction import snapshot_lines as snapshot_lines
from cmdd.compaction import write_atomically as write_atomically
from cmdd.files import REAL_OPS, FileOps, fsync_directory, remove_quietly, write_all
from cmdd.jobs import Job
from cmdd.replay import JOURNAL_NAME as JOURNAL_NAME
from cmdd.replay import QUARANTINE_NAME as QUARANTINE_NAME
from cmdd.replay import DataDirLocked as DataDirLocked
from cmdd.replay import JournalCorrupt as JournalCorrupt
from cmdd.replay import ReplayReport as ReplayReport
from cmdd.replay import lock_data_dir as lock_data_dir
from cmdd.replay import replay as replay

log = Logger()

#: Bytes of tail the swap may copy while appends wait (~5,000 lines).
_SWAP_TAIL = 1 << 20


class JournalFailed(Exception):  # noqa: N818 (reads better at the raise site)
    """The journal refused a record: nothing of it is in the file."""


@attrs.define
class _Append:
    line: bytes
    waiter: Deferred[None]


@attrs.define
class _Compaction:
    jobs: list[Job]
    seq: int
    at: float
    next_id: int
    waiter: Deferred[int]
    extra: Sequence[Item] = ()
    #: The old file's size once every record up to C{seq} was in it.
    mark: int = 0


@attrs.define
class _Swap:
    """Put a compacted file written aside in place (on the journal thread)."""

    compaction: _Compaction
    temporary: str
    size: int
    #: The old file's bytes up to here are already copied after C{size}.
    copied: int


class JournalWriter:
    """Appends records to the journal on its own thread, with group commit.

    C{append} returns a Deferred that fires once the record is on disk
    (fsync'd when C{fsync} is true; written to the OS otherwise), or fails
    with L{JournalFailed} when the journal refused it.

    Work goes to the thread one task at a time: a batch of appends or a
    compaction. When a task fails, the reactor learns it before anything
    else is sent, and refuses everything queued behind it too.

    @param reactor: runs the thread's results in the reactor.
    @param path: the journal file.
    @param fsync: whether a record is durable only once fsync'd.
    @param seq: the sequence number of the last record already in the file.
    @param ops: the file operations (a test makes them fail).
    """

    def __init__(
        self,
        reactor: Any,
        path: str,
        *,
        fsync: bool = True,
        seq: int = 0,
        ops: FileOps = REAL_OPS,
        on_write: Callable[[float], None] | None = None,
    ) -> None:
        self._reactor = reactor
        #: Told the seconds each batch's write and fsync took (on the thread).
        self._on_write = on_write
        self.path = path
        self._fsync = fsync
        self._ops = ops
        self.seq = seq
        self._pool = ThreadPool(minthreads=1, maxthreads=1, name="cmdd-journal")
        # Compaction writes its new file on a thread of its own, for tens of
        # seconds with a big history, while appends go on in the old file.
        self._aside_pool = ThreadPool(minthreads=0, maxthreads=1, name="cmdd-compact")
        #: The compaction whose new file is being written aside.
        self._aside: _Compaction | None = None
        self._fd: int | None = None
        #: The file's size as the last successful write (and fsync) left it;
        #: owned by the thread while a task runs.
        self._good = 0
        self._queue: collections.deque[_Append | _Compaction | _Swap] = collections.deque()
        self._busy = False
        #: Open L{together} blocks: appends wait for the last one to end.
        self._held = 0
        self._idle_waiters: list[Deferred[None]] = []
        #: Why every append is refused until restart, once the journal
        #: could not be put back into a known state.
        self.broken: str | None = None
        #: Why the last write was refused, until a later one succeeds.
        self.failing: str | None = None
        self.size = 0
        self.batches = 0
        self.refused = 0

    def open(self) -> None:
        """Open the file for appending (creating it durably) and start the thread.

        A compaction's temporary file left by a crash is removed.
        """
        remove_quietly(self.path + COMPACT_SUFFIX, self._ops)
        created = not os.path.exists(self.path)
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
        self._fd = self._ops.open(self.path, flags, 0o600)
        if created:
            fsync_directory(os.path.dirname(self.path), self._ops)
        self.size = self._good = os.fstat(self._fd).st_size
        self._pool.start()
        self._aside_pool.start()

    def append(self, item: Item) -> Deferred[None]:
        """Queue a record; the Deferred fires once it is durable."""
        if self.broken is not None or self._fd is None:
            self.refused += 1
            return fail(JournalFailed(self.broken or "the journal is closed"))
        self.seq += 1
        waiter: Deferred[None] = Deferred()
        self._queue.append(_Append(encode(self.seq, item), waiter))
        self._kick()
        return waiter

    @contextlib.contextmanager
    def together(self) -> Iterator[None]:
        """Appends made inside the block go to the thread in one batch (one
        write, one fsync) once it ends: durable together, or refused together."""
        self._held += 1
        try:
            yield
        finally:
            self._held -= 1
            self._kick()

    def compact(
        self, jobs: list[Job], at: float, next_id: int, extra: Sequence[Item] = ()
    ) -> Deferred[int]:
        """Rewrite the journal as C{jobs} (a snapshot taken now), atomically.

        Every record appended before this call is written to the old file
        first. The new file is then written aside while later appends go on
        in the old one; the swap copies those (already durable) lines after
        the snapshot and renames the new file in, so none is lost or
        doubled, and appends wait only for that tail copy. If one of the
        earlier records is refused, the compaction is refused too (its
        snapshot holds that record).
        """
        if self.broken is not None or self._fd is None:
            return fail(JournalFailed(self.broken or "the journal is closed"))
        waiter: Deferred[int] = Deferred()
        self._queue.append(_Compaction(jobs, self.seq, at, next_id, waiter, extra))
        self._kick()
        return waiter

    @property
    def refusing(self) -> str | None:
        """Why appends are refused now (a broken journal, or the last write failed)."""
        return self.broken or self.failing

    def _kick(self) -> None:
        if self._busy or self._held:
            return
        if not self._queue:
            if self._aside is None:
                idle, self._idle_waiters = self._idle_waiters, []
                for idle_waiter in idle:
                    idle_waiter.callback(None)
            return
        head = self._queue[0]
        if isinstance(head, _Compaction):
            if self._aside is not None:
                return  # one at a time: this one, and what is behind it, waits
            self._queue.popleft()
            self._start_aside(head)
            self._kick()
            return
        self._busy = True
        if isinstance(head, _Swap):
            self._queue.popleft()
            self._run(self._swap, head).addCallbacks(
                self._compaction_done,
                self._compaction_failed,
                callbackArgs=(head,),
                errbackArgs=(head,),
            )
            return
        batch: list[_Append] = []
        while self._queue and isinstance(self._queue[0], _Append):
            entry = self._queue.popleft()
            assert isinstance(entry, _Append)
            batch.append(entry)
        data = b"".join(entry.line for entry in batch)
        self._run(self._write_batch, data).addCallbacks(
            self._batch_done, self._batch_failed, callbackArgs=(batch,), errbackArgs=(batch,)
        )

    def _start_aside(self, compaction: _Compaction) -> None:
        # Not busy: the journal thread is idle, so _good is the reactor's to read.
        compaction.mark = self._good
        self._aside = compaction
        deferToThreadPool(
            self._reactor, self._aside_pool, self._write_aside, compaction
        ).addCallbacks(
            self._aside_written,
            self._aside_failed,
            callbackArgs=(compaction,),
            errbackArgs=(compaction,),
        )

    def _run(self, fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        return deferToThreadPool(self._reactor, self._pool, fn, *args)

    # --- on the thread -------------------------------------------------------

    def _write_batch(self, data: bytes) -> int:
        assert self._fd is not None
        good = self._good
        began = time.monotonic()
        try:
            write_all(self._fd, data, self._ops)
            if self._fsync:
                self._ops.fdatasync(self._fd)
        except OSError as e:
            # Never leave part of a batch: a torn line with the next batch
            # glued on would be damage in the middle of the file. A failed
            # fsync is not retried: those records are cut and refused.
            self._cut(good)
            raise JournalFailed(f"cannot write the journal {self.path}: {e}") from e
        self._good = good + len(data)
        if self._on_write is not None:
            self._on_write(time.monotonic() - began)
        return len(data)

    def _cut(self, good: int) -> None:
        """Put the file back to C{good} bytes, durably; else refuse all."""
        assert self._fd is not None
        try:
            self._ops.ftruncate(self._fd, good)
            if self._fsync:
                self._ops.fdatasync(self._fd)
            size = os.fstat(self._fd).st_size
            if size != good:
                raise OSError(f"the file is {size} bytes after cutting it to {good}")
        except OSError as e:
            self.broken = (
                f"the journal {self.path} could not be cut back after a failed write ({e}); "
                "it refuses every record until cmdd restarts"
            )

    def _write_aside(self, compaction: _Compaction) -> tuple[str, int, int]:
        """On the compaction thread: write the new file, then copy into it
        the old file's lines appended meanwhile (durable, so immutable)."""
        try:
            temporary, size = write_aside(
                self.path,
                compaction.jobs,
                compaction.seq,
                compaction.at,
                compaction.next_id,
                compaction.extra,
                self._ops,
                pace=True,
            )
            try:
                # _good only grows past bytes already fsync'd (a failed write
                # cuts back to it, never below): reading it here is safe.
                copied = compaction.mark
                # Catch up until little is left for the swap, which appends
                # wait for (appends go on meanwhile: a few rounds at most).
                for _ in range(8):
                    copied = self._copy_tail(temporary, copied, self._good)
                    if self._good - copied < _SWAP_TAIL:
                        break
            except BaseException:
                remove_quietly(temporary, self._ops)
                raise
        except OSError as e:
            raise JournalFailed(f"cannot compact the journal {self.path}: {e}") from e
        return temporary, size, copied

    def _copy_tail(self, temporary: str, start: int, end: int, fd: int | None = None) -> int:
        """Append the old file's bytes [start, end) to C{temporary}; returns C{end}."""
        if end <= start:
            return start
        source = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        target = fd
        try:
            if target is None:
                target = self._ops.open(temporary, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
            position = start
            while position < end:
                chunk = os.pread(source, min(end - position, 1 << 22), position)
                if not chunk:
                    raise OSError(f"the journal ends at {position}, before {end}")
                write_all(target, chunk, self._ops)
                position += len(chunk)
        finally:
            os.close(source)
            if fd is None and target is not None:
                self._ops.close(target)
        return end

    def _swap(self, swap: _Swap) -> int:
        """On the journal thread (appends wait): copy the last of the tail,
        fsync, rename the new file in and append to it from now on."""
        assert self._fd is not None
        try:
            # Open the new file before it replaces the old one: if anything
            # fails before the rename, appends simply go on in the old file.
            try:
                new = self._ops.open(
                    swap.temporary, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC, 0o600
                )
            except BaseException:
                remove_quietly(swap.temporary, self._ops)
                raise
            good = self._good
            try:
                self._copy_tail(swap.temporary, swap.copied, good, new)
                self._ops.fsync(new)
                self._ops.replace(swap.temporary, self.path)
            except BaseException:
                self._ops.close(new)
                remove_quietly(swap.temporary, self._ops)
                raise
        except OSError as e:
            raise JournalFailed(f"cannot compact the journal {self.path}: {e}") from e
        size = swap.size + good - swap.compaction.mark
        old, self._fd, self._good = self._fd, new, size
        try:
            self._ops.close(old)
        except OSError:
            pass
        try:
            fsync_directory(os.path.dirname(self.path), self._ops)
        except OSError as e:
            # The rename may not be durable: appends to the new file could
            # vanish with a power loss. Not retried (see _write_batch).
            self.broken = (
                f"the journal's directory could not be synced after compaction ({e}); "
                "the journal refuses every record until cmdd restarts"
            )
            raise JournalFailed(self.broken) from e
        return size

    # --- back in the reactor -------------------------------------------------

    def _batch_done(self, written: int, batch: list[_Append]) -> None:
        self._busy = False
        self.batches += 1
        self.size += written
        self.failing = None
        for entry in batch:
            entry.waiter.callback(None)
        self._kick()

    def _batch_failed(self, failure: Failure, batch: list[_Append]) -> None:
        self.failing = failure.getErrorMessage()
        log.error(
            "journal: refused {count} record(s): {why}",
            count=len(batch),
            why=failure.getErrorMessage(),
        )
        self._refuse_all(failure, batch)

    def _refuse_all(self, failure: Failure, first: list[_Append]) -> None:
        # Everything queued behind the failed task was queued before its
        # failure was known, and may depend on it: refused too, in order.
        behind, self._queue = self._queue, collections.deque()
        self._busy = False
        if not failure.check(JournalFailed):
            failure = Failure(JournalFailed(failure.getErrorMessage()))
        if self.broken is not None:
            log.critical("{why}", why=self.broken)
        for entry in [*first, *behind]:
            self.refused += isinstance(entry, _Append)
            if isinstance(entry, _Swap):
                self._aside = None
                self._discard(entry.temporary)
                entry.compaction.waiter.errback(failure)
            else:
                entry.waiter.errback(failure)
        self._kick()

    def _aside_written(self, written: tuple[str, int, int], compaction: _Compaction) -> None:
        temporary, size, copied = written
        if self.broken is not None or self._fd is None:
            self._aside = None
            self._discard(temporary)
            compaction.waiter.errback(JournalFailed(self.broken or "the journal is closed"))
            self._kick()
            return
        # First in line: the appends queued now go to the old file first and
        # are copied by the swap, or wait for it and go to the new one.
        self._queue.appendleft(_Swap(compaction, temporary, size, copied))
        self._kick()

    def _aside_failed(self, failure: Failure, compaction: _Compaction) -> None:
        # Nothing changed: the old file is the journal, appends went on in it.
        self._aside = None
        compaction.waiter.errback(failure)
        self._kick()

    def _discard(self, temporary: str) -> None:
        deferToThreadPool(
            self._reactor, self._aside_pool, remove_quietly, temporary, self._ops
        ).addErrback(lambda _: None)

    def _compaction_done(self, size: int, swap: _Swap) -> None:
        self._busy = False
        self._aside = None
        self.size = size
        swap.compaction.waiter.callback(size)
        self._kick()

    def _compaction_failed(self, failure: Failure, swap: _Swap) -> None:
        # A compaction that fails before its rename changes nothing: the
        # appends behind it go on in the old file. One that leaves the
        # journal broken refuses them.
        self._busy = False
        self._aside = None
        swap.compaction.waiter.errback(failure)
        if self.broken is not None:
            self._refuse_all(failure, [])
            return
        self._kick()

    def when_idle(self) -> Deferred[None]:
        """Fires when everything appended so far is on disk (or refused)."""
        waiter: Deferred[None] = Deferred()
        if not self._busy and not self._queue and self._aside is None:
            waiter.callback(None)
        else:
            self._idle_waiters.append(waiter)
        return waiter

    async def close(self) -> None:
        """Write what is pending, then close the file and stop the thread."""
        await self.when_idle()
        if self._fd is not None:
            fd, self._fd = self._fd, None
            self._pool.stop()
            self._aside_pool.stop()
            self._ops.close(fd)
