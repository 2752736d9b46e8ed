"""Bringing the history back at start-up: the snapshot, then the journal.

The snapshot (L{cmdd.snapshot}) stands for the compacted start of the
journal when it matches it exactly; only the lines after that are replayed.
Without a usable snapshot the whole journal is replayed, as before: the
journal is always the truth, the snapshot only a shortcut.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable

from twisted.logger import Logger

from cmdd.codec import Record
from cmdd.replay import ReplayReport, replay
from cmdd.snapshot import Loaded, SnapshotUnusable, read_snapshot, snapshot_path
from cmdd.store import JobStore

log = Logger()


def load_snapshot(
    journal_path: str, store: JobStore, apply: Callable[[Record], None]
) -> Loaded | None:
    """Fill the empty C{store} from the journal's snapshot, if it is usable;
    its other records go to C{apply}. C{None}: replay the whole journal."""
    try:
        loaded = read_snapshot(journal_path)
    except SnapshotUnusable as e:
        if os.path.exists(snapshot_path(journal_path)):
            log.warn(
                "journal snapshot {path} not used ({why}); replaying the whole journal "
                "(the next compaction writes a new snapshot)",
                path=snapshot_path(journal_path),
                why=str(e),
            )
        return None
    store.load(loaded.jobs)
    store.reserve_ids_below(loaded.prefix.next_id)
    for item in loaded.items:
        apply(Record(loaded.prefix.seq, item))
    return loaded


def restore(
    journal_path: str, store: JobStore, apply: Callable[[Record], None], *, recover: bool = False
) -> ReplayReport:
    """Rebuild the history into C{store} (records go to C{apply}, which
    applies them to it); returns what the journal replay found.

    The cyclic GC is off meanwhile (jobs are acyclic, and collections over a
    heap that grows by millions of objects are wasted work), and the result
    is frozen: the history lives as long as the daemon, so no later full
    collection should walk it again on the reactor.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        loaded = load_snapshot(journal_path, store, apply)
        if loaded is None:
            return replay(journal_path, apply, recover=recover)
        prefix = loaded.prefix
        report = replay(
            journal_path, apply, recover=recover, offset=prefix.size, lines_before=prefix.lines
        )
        report.last_seq = max(report.last_seq, prefix.seq)
        report.next_id = max(report.next_id, prefix.next_id)
        report.records += prefix.lines
        report.snapshot_bytes = prefix.size
        log.info(
            "journal snapshot: {jobs} jobs loaded, {lines} journal lines after it replayed",
            jobs=len(loaded.jobs),
            lines=report.records - prefix.lines,
        )
        return report
    finally:
        if enabled:
            gc.enable()
        gc.freeze()
