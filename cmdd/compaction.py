"""Writing a compacted journal (and its snapshot) beside the live one.

Used by L{cmdd.journal.JournalWriter} on its thread and by C{cmdd journal
compact}. The compacted journal is the source of truth; the snapshot
(L{cmdd.snapshot}) is derived from the same jobs, and a failure to write it
only costs the next start-up its speed.
"""

from __future__ import annotations

import os
import time
import zlib
from collections.abc import Iterable, Iterator, Sequence

from twisted.logger import Logger

from cmdd.codec import Item, Meta, encode, job_events
from cmdd.files import (
    REAL_OPS,
    FileOps,
    fsync_directory,
    open_replacement,
    remove_quietly,
    write_all,
)
from cmdd.jobs import Job
from cmdd.snapshot import JournalPrefix, remove_snapshot, snapshot_rows, write_snapshot

log = Logger()

COMPACT_SUFFIX = ".compact"


def snapshot_lines(
    jobs: Iterable[Job], seq: int, at: float, next_id: int, extra: Iterable[Item] = ()
) -> Iterable[bytes]:
    """The lines of a compacted journal holding exactly C{jobs} (and the
    sections' C{extra} records, such as the schedules)."""
    yield encode(seq, Meta(at, next_id))
    for job in jobs:
        for event in job_events(job):
            yield encode(seq, event)
    for item in extra:
        yield encode(seq, item)


def _write_lines(path: str, lines: Iterable[bytes], ops: FileOps) -> tuple[str, int, int, int]:
    """Write C{lines} to C{path}'s temporary file and fsync it.

    On any failure, an interruption included, the temporary file is removed:
    a compaction that did not finish leaves nothing behind.

    @return: the temporary file's name, size, CRC-32 and number of lines.
    """
    temporary = path + COMPACT_SUFFIX
    size = crc = count = 0
    fd = open_replacement(path, temporary, ops)
    try:
        try:
            buffer: list[bytes] = []
            buffered = 0
            for line in lines:
                buffer.append(line)
                buffered += len(line)
                if buffered >= 1 << 20:
                    chunk = b"".join(buffer)
                    crc, count = zlib.crc32(chunk, crc), count + len(buffer)
                    size += write_all(fd, chunk, ops)
                    buffer, buffered = [], 0
            chunk = b"".join(buffer)
            crc, count = zlib.crc32(chunk, crc), count + len(buffer)
            size += write_all(fd, chunk, ops)
            ops.fsync(fd)
        finally:
            ops.close(fd)
    except BaseException:
        remove_quietly(temporary, ops)
        raise
    return temporary, size, crc, count


def paced(jobs: Sequence[Job], every: int = 32, pause: float = 0.0002) -> Iterator[Job]:
    """C{jobs}, with a short sleep every C{every} of them.

    Encoding is pure Python: a thread doing it for a minute keeps the GIL
    but for the interpreter's forced switches (every 5 ms), and each of the
    reactor's and the journal thread's wake-ups then waits for one. The
    sleeps hand the GIL over, so appends keep their latency while the
    compaction runs; they cost it a few percent of its time.
    """
    for index, job in enumerate(jobs):
        if index % every == every - 1:
            time.sleep(pause)
        yield job


def write_aside(
    path: str,
    jobs: Sequence[Job],
    seq: int,
    at: float,
    next_id: int,
    extra: Sequence[Item],
    ops: FileOps = REAL_OPS,
    *,
    pace: bool = False,
) -> tuple[str, int]:
    """Write the compacted journal of C{jobs} beside C{path} (fsync'd, not
    yet renamed), then the snapshot that stands for it.

    The snapshot goes first in place: if a crash comes before the journal's
    rename, the snapshot describes a file that never became the journal,
    and its checksum makes start-up ignore it. With C{pace} (in the daemon),
    the encoding leaves the GIL to other threads often (see L{paced}).

    @return: the compacted file's temporary name and size.
    """
    temporary, size, crc, lines = _write_lines(
        path, snapshot_lines(paced(jobs) if pace else jobs, seq, at, next_id, extra), ops
    )
    prefix = JournalPrefix(size, lines, crc, seq, next_id)
    try:
        rows = snapshot_rows(paced(jobs) if pace else jobs, extra, seq)
        write_snapshot(path, rows, prefix, len(jobs), ops)
    except OSError as e:
        log.warn(
            "journal snapshot not written ({why}); the next start replays the whole journal",
            why=str(e),
        )
        try:
            remove_snapshot(path, ops)
        except OSError:
            pass  # a stale snapshot does not match the new journal: it is ignored
    return temporary, size


def write_atomically(path: str, lines: Iterable[bytes], ops: FileOps = REAL_OPS) -> int:
    """Replace C{path} with C{lines}: temp file, fsync, rename, fsync dir.

    The new file keeps the old one's owner when root writes it (C{cmdd
    journal compact} as root): see L{cmdd.files.open_replacement}. A failure
    or an interruption (Ctrl-C) leaves the old file and no temporary one.

    @return: the new file's size.
    """
    temporary, size, _, _ = _write_lines(path, lines, ops)
    return _rename_into_place(temporary, path, ops, size)


def compact_atomically(
    path: str, jobs: Sequence[Job], seq: int, at: float, next_id: int, extra: Sequence[Item]
) -> int:
    """Replace the journal at C{path} with the compacted C{jobs} and write
    their snapshot (C{cmdd journal compact}); returns the new size."""
    temporary, size = write_aside(path, jobs, seq, at, next_id, extra)
    return _rename_into_place(temporary, path, REAL_OPS, size)


def _rename_into_place(temporary: str, path: str, ops: FileOps, size: int) -> int:
    try:
        ops.replace(temporary, path)
    except BaseException:
        remove_quietly(temporary, ops)
        raise
    fsync_directory(os.path.dirname(path), ops)
    return size
