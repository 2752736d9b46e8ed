"""Journal tools for a stopped daemon: verify and compact (C{cmdd journal})."""

from __future__ import annotations

import os
import time
from collections import Counter
from functools import partial

import attrs

from cmdd.compaction import compact_atomically
from cmdd.history import load_record
from cmdd.journal import JOURNAL_NAME, lock_data_dir, replay
from cmdd.restore import restore
from cmdd.schedule import ScheduleBook
from cmdd.snapshot import SnapshotUnusable, read_snapshot, snapshot_path
from cmdd.store import JobStore


@attrs.define
class Problem:
    """One damaged line."""

    line: int
    why: str


@attrs.define
class Verification:
    """What C{cmdd journal verify} found."""

    path: str
    records: int = 0
    bytes: int = 0
    jobs: int = 0
    next_id: int = 1
    by_state: dict[str, int] = attrs.Factory(dict)
    problems: list[Problem] = attrs.Factory(list)
    torn_tail_line: int | None = None
    #: What became of the snapshot (see L{cmdd.snapshot}): a start-up shortcut.
    snapshot: str = "none"

    @property
    def ok(self) -> bool:
        """No damage anywhere (a torn tail is repaired at start, but still reported)."""
        return not self.problems and self.torn_tail_line is None


def verify(data_dir: str) -> Verification:
    """Read the journal without changing it and report on every line."""
    path = os.path.join(data_dir, JOURNAL_NAME)
    result = Verification(path=path)
    if not os.path.exists(path):
        result.problems.append(Problem(0, "no journal file"))
        return result
    store = JobStore()
    report = replay(
        path,
        partial(load_record, store, sections=[ScheduleBook()]),
        repair=False,
        on_damage=lambda line, _, why: result.problems.append(Problem(line, why)),
    )
    result.records = report.records
    result.bytes = os.path.getsize(path)
    result.jobs = len(store)
    result.next_id = store.peek_next_id()
    result.by_state = dict(Counter(job.state.value for job in store.oldest_first()))
    result.torn_tail_line = report.torn_line
    if not result.problems and report.torn_line is None:
        result.snapshot = _check_snapshot(path, store)
        if result.snapshot.startswith("DIFFERS"):
            result.problems.append(Problem(0, f"snapshot {result.snapshot}"))
    return result


def _check_snapshot(path: str, replayed: JobStore) -> str:
    """Whether a start-up from the snapshot rebuilds exactly the jobs the
    whole journal does (C{replayed})."""
    if not os.path.exists(snapshot_path(path)):
        return "none"
    try:
        read_snapshot(path)
    except SnapshotUnusable as e:
        return f"not used at start-up ({e}); the next compaction replaces it"
    store = JobStore()
    restore(path, store, partial(load_record, store, sections=[ScheduleBook()]))
    if list(store.oldest_first()) != list(replayed.oldest_first()):
        return "DIFFERS from the journal: it would start with other jobs"
    if store.peek_next_id() != replayed.peek_next_id():
        return "DIFFERS from the journal: another next id"
    return f"matches the journal ({len(store)} jobs)"


def compact(data_dir: str) -> tuple[int, int, int]:
    """Rewrite a stopped daemon's journal as its live jobs.

    @return: (jobs, bytes before, bytes after).
    @raise cmdd.journal.DataDirLocked: the daemon is running.
    @raise cmdd.journal.JournalCorrupt: damage before the last line.
    """
    path = os.path.join(data_dir, JOURNAL_NAME)
    lock = lock_data_dir(data_dir)
    try:
        store, book = JobStore(), ScheduleBook()
        before = os.path.getsize(path) if os.path.exists(path) else 0
        report = replay(path, partial(load_record, store, sections=[book]))
        now = time.time()
        after = compact_atomically(
            path,
            list(store.oldest_first()),
            report.last_seq,
            now,
            store.peek_next_id(),
            book.snapshot(now),
        )
        return len(store), before, after
    finally:
        os.close(lock)
