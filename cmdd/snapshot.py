"""A derived snapshot of the compacted journal, so that a restart is quick.

The JSON-lines journal stays the one source of truth. When compaction
rewrites it, it also writes C{journal.snapshot}: the same jobs, one compact
row per job (not three checksummed event lines), plus the journal's other
records as they are. At start-up the snapshot is used only if it describes
the journal exactly (the size, line count and CRC-32 of the compacted part
of the journal, which later appends leave alone); the lines after that
part are then replayed as usual. A snapshot that is missing, damaged, of
another version or of another journal is ignored, and the whole journal is
replayed: nothing is lost, start-up is only slower. See docs/journal.md,
"The snapshot".

Rows and the trailer are pure; the file I/O is at the bottom.
"""

from __future__ import annotations

import os
import threading
import zlib
from collections.abc import Iterable, Iterator
from typing import Any

import attrs
import orjson
from twisted.logger import Logger

from cmdd.codec import Item, decode, encode, spec_fields
from cmdd.files import (
    REAL_OPS,
    FileOps,
    fsync_directory,
    open_replacement,
    remove_quietly,
    write_all,
)
from cmdd.jobs import CallbackDone, Idempotency, Job, Outcome, State
from cmdd.spec import JobSpec

log = Logger()

SNAPSHOT_NAME = "journal.snapshot"
SNAPSHOT_FORMAT = "cmdd-snapshot"
SNAPSHOT_VERSION = 1
_TEMPORARY_SUFFIX = ".new"


class SnapshotUnusable(ValueError):  # noqa: N818 (reads better at the raise site)
    """The snapshot cannot stand in for the journal; replay the journal."""


@attrs.frozen
class JournalPrefix:
    """The part of the journal a snapshot stands for: its first C{size}
    bytes (C{lines} lines, CRC-32 C{crc}), whose records end at C{seq}."""

    size: int
    lines: int
    crc: int
    seq: int
    next_id: int


# --- rows (pure) ---------------------------------------------------------


def job_row(job: Job) -> list[Any]:
    """A job as one snapshot row (a JSON array; see docs/journal.md)."""
    outcome = job.outcome
    return [
        job.id,
        job.created,
        job.owner,
        spec_fields(job.spec),
        job.state.value,
        job.started,
        job.completed,
        None
        if outcome is None
        else [
            outcome.state.value,
            outcome.exit_code,
            outcome.signal,
            outcome.reason,
            outcome.stdout_bytes,
            outcome.stderr_bytes,
            outcome.stdout_truncated,
            outcome.stderr_truncated,
            outcome.cancelled_by,
            outcome.output_error,
        ],
        None if job.idempotency is None else [job.idempotency.key, job.idempotency.fingerprint],
        job.host,
        [
            [c.at, c.sequence, c.delivered, c.attempts, c.status_code, c.error]
            for c in job.callbacks_done
        ],
        job.released,
        job.schedule_id,
        job.slurm_job_id,
    ]


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


_STATES = {state.value: state for state in State}


class RowDecoder:
    """Turns rows into jobs, sharing the strings many jobs repeat (owner,
    host, reason): a million finished jobs keep a handful of those, not a
    million copies."""

    def __init__(self) -> None:
        self._strings: dict[str, str] = {}

    def _shared(self, value: Any) -> str | None:
        if value is None:
            return None
        if type(value) is not str:
            raise TypeError(f"expected a string, got {value!r}")
        return self._strings.setdefault(value, value)

    def _owner(self, value: Any) -> str:
        if type(value) is not str:
            raise TypeError(f"the owner is not a string: {value!r}")
        return self._strings.setdefault(value, value)

    def job(self, row: list[Any]) -> Job:
        """The job a row holds.

        @raise ValueError, TypeError, KeyError, IndexError: not a version 1 row.
        """
        (job_id, created, owner, spec, state, started, completed, outcome, idem, host,
         callbacks, released, schedule_id, slurm_job_id) = row  # fmt: skip
        return Job(
            int(job_id),
            _spec(spec),
            _STATES[state],
            float(created),
            self._owner(owner),
            _float(started),
            _float(completed),
            None if outcome is None else self._outcome(outcome),
            None if idem is None else Idempotency(str(idem[0]), str(idem[1])),
            self._shared(host),
            tuple(
                CallbackDone(job_id, float(c[0]), int(c[1]), bool(c[2]), int(c[3]), c[4], c[5])
                for c in callbacks
            ),
            _float(released),
            None if schedule_id is None else int(schedule_id),
            None if slurm_job_id is None else str(slurm_job_id),
        )

    def _outcome(self, fields: list[Any]) -> Outcome:
        (state, exit_code, signal, reason, out, err, out_cut, err_cut, cancelled_by,
         output_error) = fields  # fmt: skip
        return Outcome(
            _STATES[state], exit_code, signal, self._shared(reason), int(out), int(err),
            bool(out_cut), bool(err_cut), self._shared(cancelled_by), output_error,
        )  # fmt: skip


def _spec(fields: Any) -> JobSpec:
    # The row's spec is spec_fields() of a JobSpec: its keys are the
    # attribute names. Not decode_spec's checks: this file's checksum
    # already vouches for it, and this runs a million times per start.
    if type(fields) is not dict:
        raise TypeError("spec is not an object")
    line = fields.get("command_line")
    if line is not None:
        fields["command_line"] = tuple(line)
    spec = JobSpec(**fields)
    if (spec.command is None) == (spec.command_line is None):
        raise ValueError("a stored spec has exactly one of command and command_line")
    return spec


def job_from_row(row: list[Any]) -> Job:
    """The job a row holds (see L{RowDecoder})."""
    return RowDecoder().job(row)


def snapshot_rows(jobs: Iterable[Job], extra: Iterable[Item], seq: int) -> Iterator[bytes]:
    """The body of a snapshot: a line per job, then the other records as
    journal lines (JSON strings), in the compacted journal's order."""
    for job in jobs:
        yield orjson.dumps(job_row(job)) + b"\n"
    for item in extra:
        yield orjson.dumps(encode(seq, item)[:-1].decode("utf-8")) + b"\n"


def trailer(prefix: JournalPrefix, jobs: int, body_size: int, body_crc: int) -> bytes:
    """The snapshot's last line: what it stands for, and its own checksum."""
    fields = {
        "format": SNAPSHOT_FORMAT,
        "v": SNAPSHOT_VERSION,
        "journal_bytes": prefix.size,
        "journal_lines": prefix.lines,
        "journal_crc": f"{prefix.crc:08x}",
        "seq": prefix.seq,
        "next_id": prefix.next_id,
        "jobs": jobs,
        "body_bytes": body_size,
        "body_crc": f"{body_crc:08x}",
    }
    return orjson.dumps(fields) + b"\n"


def parse_trailer(data: bytes) -> tuple[JournalPrefix, int, int, int]:
    """The prefix, job count, body size and body CRC a trailer line states.

    @raise SnapshotUnusable: not a snapshot trailer of this version.
    """
    try:
        fields = orjson.loads(data)
        if fields["format"] != SNAPSHOT_FORMAT or fields["v"] != SNAPSHOT_VERSION:
            raise SnapshotUnusable(f"format {fields['format']!r} version {fields['v']!r}")
        prefix = JournalPrefix(
            int(fields["journal_bytes"]),
            int(fields["journal_lines"]),
            int(fields["journal_crc"], 16),
            int(fields["seq"]),
            int(fields["next_id"]),
        )
        return prefix, int(fields["jobs"]), int(fields["body_bytes"]), int(fields["body_crc"], 16)
    except (ValueError, KeyError, TypeError) as e:
        if isinstance(e, SnapshotUnusable):
            raise
        raise SnapshotUnusable(f"bad trailer: {e}") from None


@attrs.define
class Loaded:
    """A snapshot's jobs and other records, checked, not yet in any store."""

    prefix: JournalPrefix
    jobs: list[Job]
    items: list[Item]


def parse_body(data: bytes, end: int, prefix: JournalPrefix, count: int) -> Loaded:
    """Decode every row of a snapshot body (C{data[:end]}, already checksummed).

    Row by row through a memoryview: no copy of the body, and each row's
    parsed lists are freed before the next, so they leave no holes in the
    heap the jobs live in.

    @raise SnapshotUnusable: a row that does not decode.
    """
    loaded = Loaded(prefix, [], [])
    position = 0
    view = memoryview(data)
    rows = RowDecoder()
    try:
        while position < end:
            newline = data.index(b"\n", position, end)
            row = orjson.loads(view[position:newline])
            position = newline + 1
            if isinstance(row, str):
                loaded.items.append(decode(row.encode("utf-8")).item)
            else:
                loaded.jobs.append(rows.job(row))
    except (ValueError, KeyError, TypeError, IndexError) as e:
        raise SnapshotUnusable(f"row {len(loaded.jobs) + len(loaded.items) + 1}: {e}") from None
    if len(loaded.jobs) != count:
        raise SnapshotUnusable(f"{len(loaded.jobs)} jobs, the trailer says {count}")
    return loaded


# --- files ---------------------------------------------------------------


def snapshot_path(journal_path: str) -> str:
    """Where the snapshot of the journal at C{journal_path} lives."""
    return os.path.join(os.path.dirname(journal_path), SNAPSHOT_NAME)


def write_snapshot(
    journal_path: str, rows: Iterable[bytes], prefix: JournalPrefix, jobs: int, ops: FileOps
) -> None:
    """Write the snapshot of the journal prefix C{prefix} beside the journal:
    a temporary file, fsync, rename, fsync of the directory. A failure
    leaves the old snapshot (which no longer matches: it is ignored)."""
    path = snapshot_path(journal_path)
    temporary = path + _TEMPORARY_SUFFIX
    fd = open_replacement(path, temporary, ops)
    try:
        try:
            crc = size = 0
            buffer: list[bytes] = []
            for row in rows:
                buffer.append(row)
                if len(buffer) >= 4096:
                    chunk = b"".join(buffer)
                    crc, buffer = zlib.crc32(chunk, crc), []
                    size += write_all(fd, chunk, ops)
            chunk = b"".join(buffer)
            crc = zlib.crc32(chunk, crc)
            size += write_all(fd, chunk, ops)
            write_all(fd, trailer(prefix, jobs, size, crc), ops)
            ops.fsync(fd)
        finally:
            ops.close(fd)
        ops.replace(temporary, path)
    except BaseException:
        remove_quietly(temporary, ops)
        raise
    fsync_directory(os.path.dirname(path), ops)


def remove_snapshot(journal_path: str, ops: FileOps = REAL_OPS) -> None:
    """Remove the snapshot (and a temporary one a crash left)."""
    path = snapshot_path(journal_path)
    remove_quietly(path + _TEMPORARY_SUFFIX, ops)
    remove_quietly(path, ops)


def _journal_crc(journal_path: str, size: int, result: list[int | BaseException]) -> None:
    try:
        crc = 0
        with open(journal_path, "rb", buffering=0) as journal:
            left = size
            while left > 0:
                chunk = journal.read(min(left, 1 << 24))
                if not chunk:
                    break
                crc = zlib.crc32(chunk, crc)
                left -= len(chunk)
        result.append(crc if left == 0 else ValueError(f"the journal is shorter than {size}"))
    except OSError as e:
        result.append(e)


def read_snapshot(journal_path: str) -> Loaded:
    """The snapshot's contents, once checked against itself and the journal.

    The journal's CRC is computed on another thread while this one decodes
    the rows: zlib and file reads release the GIL, so on two CPUs the check
    costs almost nothing in wall time.

    @raise SnapshotUnusable: missing, damaged, or not this journal's.
    """
    try:
        with open(snapshot_path(journal_path), "rb") as snapshot:
            data = snapshot.read()
    except FileNotFoundError:
        raise SnapshotUnusable("no snapshot") from None
    except OSError as e:
        raise SnapshotUnusable(str(e)) from None
    last = data.rfind(b"\n", 0, len(data) - 1) + 1
    prefix, count, body_size, body_crc = parse_trailer(data[last:])
    body = memoryview(data)[:last]
    if len(body) != body_size or zlib.crc32(body) != body_crc:
        raise SnapshotUnusable("its checksum does not match (damaged)")
    try:
        journal_size = os.path.getsize(journal_path)
    except OSError as e:
        raise SnapshotUnusable(str(e)) from None
    if journal_size < prefix.size:
        raise SnapshotUnusable(f"the journal is {journal_size} bytes, shorter than {prefix.size}")
    crc: list[int | BaseException] = []
    check = threading.Thread(target=_journal_crc, args=(journal_path, prefix.size, crc))
    check.start()
    try:
        loaded = parse_body(data, last, prefix, count)
    finally:
        check.join()
    if crc[0] != prefix.crc:
        raise SnapshotUnusable(f"it is not this journal's ({crc[0]})")
    return loaded
