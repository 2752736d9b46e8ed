"""The journal file: replay at start, appends with group commit, compaction.

All writes and fsyncs happen on one dedicated thread, in submission order:
an fsync takes milliseconds and must never stall the reactor. Appends that
arrive while a write is in flight wait and go out together in the next one,
so many requests share one fsync (group commit).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterable
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from cmdd.codec import CorruptLine, Meta, Record, decode, encode, job_events
from cmdd.files import fsync_directory, open_replacement, write_all
from cmdd.jobs import Event, Job

log = Logger()

JOURNAL_NAME = "journal.jsonl"
QUARANTINE_NAME = "journal.quarantine"


class JournalCorrupt(Exception):  # noqa: N818 (reads better at the raise site)
    """A damaged line in the middle of the journal; start-up must not guess."""

    def __init__(self, path: str, line_number: int, why: str) -> None:
        super().__init__(
            f"{path} line {line_number}: {why}. The journal is damaged before its last "
            "line. Start with --journal-recover to move bad lines to "
            f"{QUARANTINE_NAME} and go on, or restore the file from a backup."
        )
        self.path = path
        self.line_number = line_number


@attrs.define
class ReplayReport:
    """What replaying a journal found."""

    records: int = 0
    last_seq: int = 0
    next_id: int = 1
    torn_bytes: int = 0
    torn_line: int | None = None
    quarantined: list[int] = attrs.Factory(list)
    bytes: int = 0


Damage = Callable[[int, bytes, str], None]


def replay(
    path: str,
    apply: Callable[[Record], None],
    *,
    recover: bool = False,
    repair: bool = True,
    on_damage: Damage | None = None,
) -> ReplayReport:
    """Feed every record of the journal at C{path} to C{apply}, in order.

    A damaged last line (a write torn by a crash) is cut off the file (when
    C{repair}). A damaged line before the end raises L{JournalCorrupt},
    unless C{recover} (it is then copied to the quarantine file and skipped)
    or C{on_damage} is given (it is told and the line skipped). C{apply} may
    raise C{ValueError} (an impossible event): such a line is damaged too.
    """
    report = ReplayReport()
    try:
        journal = open(path, "rb")
    except FileNotFoundError:
        return report
    good_end = position = 0
    bad: list[tuple[int, bytes, str]] = []
    with journal:
        line_number = 0
        for line in journal:
            line_number += 1
            # Counted, not tell()'d: tell() per line costs more than the sum.
            position += len(line)
            try:
                if not line.endswith(b"\n"):
                    raise CorruptLine("line is truncated")
                record = decode(line[:-1])
                apply(record)
            except (CorruptLine, ValueError) as e:
                bad.append((line_number, line, str(e)))
                continue
            if bad:
                # A good line after a bad one: the bad one was not a torn tail.
                number, _, why = bad[0]
                if on_damage is not None:
                    for damaged in bad:
                        on_damage(*damaged)
                elif recover:
                    _quarantine(path, bad)
                else:
                    raise JournalCorrupt(path, number, why)
                report.quarantined.extend(n for n, _, _ in bad)
                bad = []
            report.records += 1
            report.last_seq = max(report.last_seq, record.seq)
            if isinstance(record.item, Meta):
                report.next_id = max(report.next_id, record.item.next_id)
            good_end = position
        total = position
    if bad:
        # Only damaged lines at the end: a torn final write. Cut it.
        report.torn_bytes = total - good_end
        report.torn_line = bad[0][0]
        log.warn(
            "journal {path}: cut {count} damaged byte(s) at its end "
            "(line {line}: {why}; a write torn by a crash)",
            path=path,
            count=report.torn_bytes,
            line=bad[0][0],
            why=bad[0][2],
        )
        if repair:
            with open(path, "r+b") as journal_file:
                journal_file.truncate(good_end)
                os.fsync(journal_file.fileno())
    report.bytes = good_end
    return report


def _quarantine(journal_path: str, bad: list[tuple[int, bytes, str]]) -> None:
    path = os.path.join(os.path.dirname(journal_path), QUARANTINE_NAME)
    with open(path, "ab") as out:
        for number, line, why in bad:
            log.error(
                "journal {path} line {number}: {why}; moved to {quarantine}",
                path=journal_path,
                number=number,
                why=why,
                quarantine=path,
            )
            out.write(line if line.endswith(b"\n") else line + b"\n")
        out.flush()
        os.fsync(out.fileno())


class DataDirLocked(Exception):  # noqa: N818 (reads better at the raise site)
    """Another cmdd process is using this data directory."""


def lock_data_dir(data_dir: str) -> int:
    """Take the data directory's exclusive lock; returns the fd that holds it.

    Two daemons (or a daemon and an offline compaction) on one journal would
    corrupt it; the lock makes the second one fail at once.
    """
    fd = os.open(os.path.join(data_dir, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DataDirLocked(
            f"another cmdd process is using {data_dir} (it holds {data_dir}/lock)"
        ) from None
    return fd


def snapshot_lines(jobs: Iterable[Job], seq: int, at: float, next_id: int) -> Iterable[bytes]:
    """The lines of a compacted journal holding exactly C{jobs}."""
    yield encode(seq, Meta(at, next_id))
    for job in jobs:
        for event in job_events(job):
            yield encode(seq, event)


def write_atomically(path: str, lines: Iterable[bytes]) -> int:
    """Replace C{path} with C{lines}: temp file, fsync, rename, fsync dir.

    The new file keeps the old one's owner when root writes it (C{cmdd
    journal compact} as root): see L{cmdd.files.open_replacement}.

    @return: the new file's size.
    """
    temporary = path + ".compact"
    size = 0
    fd = open_replacement(path, temporary)
    try:
        buffer: list[bytes] = []
        buffered = 0
        for line in lines:
            buffer.append(line)
            buffered += len(line)
            if buffered >= 1 << 20:
                size += write_all(fd, b"".join(buffer))
                buffer, buffered = [], 0
        size += write_all(fd, b"".join(buffer))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)
    fsync_directory(os.path.dirname(path))
    return size


class JournalWriter:
    """Appends records to the journal on its own thread, with group commit.

    C{append} returns a Deferred that fires once the record is on disk
    (fsync'd when C{fsync} is true; written to the OS otherwise).
    """

    def __init__(self, reactor: Any, path: str, *, fsync: bool = True, seq: int = 0) -> None:
        self._reactor = reactor
        self.path = path
        self._fsync = fsync
        self.seq = seq
        self._pool = ThreadPool(minthreads=1, maxthreads=1, name="cmdd-journal")
        self._fd: int | None = None
        self._pending: list[bytes] = []
        self._waiters: list[Deferred[None]] = []
        self._outstanding = 0
        self._idle_waiters: list[Deferred[None]] = []
        self.size = 0
        self.batches = 0

    def open(self) -> None:
        """Open the file for appending (creating it durably) and start the thread."""
        created = not os.path.exists(self.path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        if created:
            fsync_directory(os.path.dirname(self.path))
        self.size = os.fstat(self._fd).st_size
        self._pool.start()

    def append(self, item: Event | Meta) -> Deferred[None]:
        """Queue a record; the Deferred fires once it is durable."""
        self.seq += 1
        self._pending.append(encode(self.seq, item))
        waiter: Deferred[None] = Deferred()
        self._waiters.append(waiter)
        if self._outstanding == 0:
            self._submit_pending()
        return waiter

    def _submit_pending(self) -> None:
        data = b"".join(self._pending)
        waiters = self._waiters
        self._pending, self._waiters = [], []
        self._run(self._write_batch, data).addCallbacks(
            self._batch_done, self._batch_failed, callbackArgs=(waiters,), errbackArgs=(waiters,)
        )

    def _run(self, fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        self._outstanding += 1
        d: Deferred[Any] = deferToThreadPool(self._reactor, self._pool, fn, *args)
        return d.addBoth(self._task_done)

    def _task_done(self, result: object) -> object:
        self._outstanding -= 1
        return result

    def _write_batch(self, data: bytes) -> int:
        assert self._fd is not None
        write_all(self._fd, data)
        if self._fsync:
            os.fdatasync(self._fd)
        return len(data)

    def _batch_done(self, written: int, waiters: list[Deferred[None]]) -> None:
        self.batches += 1
        self.size += written
        for waiter in waiters:
            waiter.callback(None)
        self._after_task()

    def _batch_failed(self, failure: Failure, waiters: list[Deferred[None]]) -> None:
        log.failure("cannot write the journal {path}", failure, path=self.path)
        for waiter in waiters:
            waiter.errback(failure)
        self._after_task()

    def _after_task(self) -> None:
        if self._outstanding:
            return
        if self._pending:
            self._submit_pending()
            return
        idle, self._idle_waiters = self._idle_waiters, []
        for waiter in idle:
            waiter.callback(None)

    def compact(self, jobs: list[Job], at: float, next_id: int) -> Deferred[int]:
        """Rewrite the journal as C{jobs} (a snapshot taken now), atomically.

        Every record appended before this call is written to the old file
        first (the thread runs tasks in order); every later one goes to the
        new file, so none is lost or doubled.
        """
        if self._pending:
            self._submit_pending()
        seq = self.seq
        return self._run(self._compact_in_thread, jobs, seq, at, next_id).addBoth(
            self._compaction_done
        )

    def _compact_in_thread(self, jobs: list[Job], seq: int, at: float, next_id: int) -> int:
        size = write_atomically(self.path, snapshot_lines(jobs, seq, at, next_id))
        old, self._fd = (
            self._fd,
            os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC, 0o600),
        )
        if old is not None:
            os.close(old)
        return size

    def _compaction_done(self, result: object) -> object:
        if isinstance(result, int):
            self.size = result
        self._after_task()
        return result

    def when_idle(self) -> Deferred[None]:
        """Fires when everything appended so far is on disk."""
        waiter: Deferred[None] = Deferred()
        if self._outstanding == 0 and not self._pending:
            waiter.callback(None)
        else:
            self._idle_waiters.append(waiter)
        return waiter

    async def close(self) -> None:
        """Write what is pending, then close the file and stop the thread."""
        await self.when_idle()
        self._pool.stop()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
