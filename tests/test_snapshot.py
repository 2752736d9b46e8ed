"""The journal snapshot: written by compaction, used at start-up only when it
matches the journal exactly, ignored (whole journal replayed) otherwise."""

from __future__ import annotations

import errno
import os
from functools import partial
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cmdd.compaction import compact_atomically, write_aside
from cmdd.history import load_record
from cmdd.jobs import (
    CallbackDone,
    Created,
    Deleted,
    Ended,
    Event,
    Idempotency,
    Outcome,
    Released,
    Started,
    State,
    Submitted,
)
from cmdd.journal import replay
from cmdd.offline import verify
from cmdd.restore import load_snapshot, restore
from cmdd.schedule import ScheduleBook
from cmdd.snapshot import SNAPSHOT_NAME, job_from_row, job_row
from cmdd.spec import parse_spec
from cmdd.store import JobStore
from tests.faults import FaultyOps

PLAIN = parse_spec({"command": "echo привет", "labels": {"team": "ops"}, "timeout": 5})
HOOKED = parse_spec(
    {"command_line": ["/bin/true", "x"], "webhooks": {"ended": "https://example.com/h"}}
)
LATER = parse_spec({"command": "date", "run_at": "2030-01-01T00:00:00Z"})


def history_events() -> list[Event]:
    """Jobs in every state, with every optional field some job uses."""
    failed = Outcome(State.FAILED, exit_code=2, signal=None, reason="x", stdout_bytes=5,
                     stderr_bytes=7, stdout_truncated=True, cancelled_by="bob",
                     output_error="disk full")  # fmt: skip
    return [
        Created(1, 10.0, PLAIN, "alice", Idempotency("k1", "f" * 64)),
        Started(1, 11.0, "host-a"),
        Ended(1, 12.5, failed),
        Created(2, 13.0, HOOKED, "ci", schedule_id=4),
        Started(2, 14.0),
        Ended(2, 15.0, Outcome(State.SUCCEEDED, exit_code=0)),
        CallbackDone(2, 16.0, 1, True, 1, 204, None),
        CallbackDone(2, 17.0, 2, False, 9, None, "timed out"),
        Created(3, 18.0, PLAIN),
        Created(4, 19.0, LATER),
        Created(5, 20.0, LATER),
        Released(5, 21.0),
        Started(5, 22.0),
        Submitted(5, 22.5, "4711"),
        Created(6, 23.0, PLAIN),
        Ended(6, 24.0, Outcome(State.SUCCEEDED, exit_code=0)),
        Deleted(6, 25.0, "admin"),
    ]


def build(events: list[Event]) -> JobStore:
    store = JobStore()
    for event in events:
        store.record(event)
    return store


def replayed(path: Path) -> JobStore:
    store = JobStore()
    replay(str(path), partial(load_record, store, sections=[ScheduleBook()]))
    return store


def restored(path: Path) -> tuple[JobStore, bool]:
    """The store a start-up rebuilds, and whether it used the snapshot."""
    store = JobStore()
    apply = partial(load_record, store, sections=[ScheduleBook()])
    used = load_snapshot(str(path), JobStore(), partial(load_record, JobStore())) is not None
    restore(str(path), store, apply)
    return store, used


def compacted(tmp_path: Path, store: JobStore, seq: int = 20) -> Path:
    path = tmp_path / "journal.jsonl"
    compact_atomically(str(path), list(store.oldest_first()), seq, 30.0, store.peek_next_id(), [])
    return path


def same(a: JobStore, b: JobStore) -> None:
    assert list(a.oldest_first()) == list(b.oldest_first())
    assert a.peek_next_id() == b.peek_next_id()
    assert a.counts == b.counts
    for state in State:
        assert list(a.narrowest_index([state]) or []) == list(b.narrowest_index([state]) or [])


def test_rows_rebuild_every_field() -> None:
    """A snapshot row holds the whole job: every state and optional field."""
    for job in build(history_events()).oldest_first():
        assert job_from_row(job_row(job)) == job


def test_start_up_from_the_snapshot_rebuilds_the_same_history(tmp_path: Path) -> None:
    """After a compaction, start-up loads the snapshot, replays only the
    lines appended since, and serves exactly what the journal holds."""
    store = build(history_events())
    path = compacted(tmp_path, store)
    assert (tmp_path / SNAPSHOT_NAME).exists()
    later = [Created(7, 40.0, PLAIN), Started(3, 41.0), Ended(3, 42.0, Outcome(State.LOST))]
    from cmdd.codec import encode

    with open(path, "ab") as journal:
        for seq, event in enumerate(later, 21):
            journal.write(encode(seq, event))
            store.record(event)
    fast, used = restored(path)
    assert used
    same(fast, store)
    same(fast, replayed(path))
    assert [job.id for job in fast.newest_first()][:1] == [7]


@pytest.mark.parametrize(
    "damage",
    ["flip a byte of the snapshot", "cut the snapshot", "journal replaced", "journal cut"],
)
def test_a_snapshot_that_does_not_match_is_ignored(tmp_path: Path, damage: str) -> None:
    """A damaged snapshot, or one of another journal, is never believed: the
    whole journal is replayed and the history is the journal's."""
    store = build(history_events())
    path = compacted(tmp_path, store)
    snapshot = tmp_path / SNAPSHOT_NAME
    data = snapshot.read_bytes()
    if damage == "flip a byte of the snapshot":
        index = data.index(b"ops")
        snapshot.write_bytes(data[:index] + b"opz" + data[index + 3 :])
    elif damage == "cut the snapshot":
        snapshot.write_bytes(data[: len(data) // 2])
    elif damage == "journal replaced":
        # The same jobs, compacted again (a later time): another file.
        saved = data
        compact_atomically(str(path), list(store.oldest_first()), 20, 31.0, 7, [])
        snapshot.write_bytes(saved)
        store = build(history_events())
    else:
        journal = path.read_bytes()
        path.write_bytes(journal[: journal.rindex(b"\n", 0, len(journal) - 1) + 1])
        store = replayed(path)
    fast, used = restored(path)
    assert not used
    same(fast, store)


def test_a_crash_before_the_journal_rename_keeps_the_old_journal(tmp_path: Path) -> None:
    """Compaction writes the snapshot before it renames the new journal in:
    a crash between the two leaves the old journal and a snapshot that does
    not match it, which start-up ignores."""
    old = build(history_events()[:3])
    path = compacted(tmp_path, old)
    newer = build(history_events())
    temporary, _ = write_aside(
        str(path), list(newer.oldest_first()), 20, 30.0, newer.peek_next_id(), []
    )
    os.unlink(temporary)  # the crash: the rename never happened
    fast, used = restored(path)
    assert not used
    same(fast, old)


def test_a_snapshot_that_cannot_be_written_costs_only_speed(tmp_path: Path) -> None:
    """A full disk while writing the snapshot does not fail the compaction,
    and leaves no snapshot that could be believed."""

    class SnapshotFull(FaultyOps):
        def open(self, path: str, flags: int, mode: int = 0o600) -> int:
            if os.path.basename(path).startswith(SNAPSHOT_NAME):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
            return super().open(path, flags, mode)

    store = build(history_events())
    path = compacted(tmp_path, build(history_events()[:3]))
    temporary, _ = write_aside(
        str(path), list(store.oldest_first()), 20, 30.0, store.peek_next_id(), [],
        SnapshotFull("enospc"),
    )  # fmt: skip
    os.replace(temporary, path)
    assert not (tmp_path / SNAPSHOT_NAME).exists()
    fast, used = restored(path)
    assert not used
    same(fast, store)


def test_verify_checks_the_snapshot_too(tmp_path: Path) -> None:
    """C{cmdd journal verify} says whether the snapshot matches the journal."""
    store = build(history_events())
    path = compacted(tmp_path, store)
    result = verify(str(tmp_path))
    assert result.ok and result.snapshot.startswith("matches"), result.snapshot
    data = (tmp_path / SNAPSHOT_NAME).read_bytes()
    (tmp_path / SNAPSHOT_NAME).write_bytes(data.replace(b'"ops"', b'"opz"', 1))
    result = verify(str(tmp_path))
    assert result.ok and result.snapshot.startswith("not used"), result.snapshot
    assert path.exists()


event_plans = st.lists(
    st.tuples(st.sampled_from(["end", "start", "delete", "cancel"]), st.integers(0, 9)),
    max_size=40,
)


@settings(deadline=None, max_examples=40)
@given(event_plans, st.integers(0, 40))
def test_any_history_restores_exactly(
    tmp_path_factory: pytest.TempPathFactory, plan: list[tuple[str, int]], split: int
) -> None:
    """Any history, compacted at any point with more appended after,
    restores from the snapshot to exactly what a full replay gives."""
    from cmdd.codec import encode

    store = JobStore()
    events: list[Event] = []
    at = 1.0
    for action, pick in plan:
        at += 1
        alive = list(store.oldest_first())
        target = alive[pick % len(alive)] if alive and pick < 8 else None
        event: Event
        if target is None:
            event = Created(store.peek_next_id(), at, PLAIN)
        elif action == "start" and target.state is State.QUEUED:
            event = Started(target.id, at)
        elif action in ("end", "cancel") and not target.state.final:
            state = State.CANCELLED if action == "cancel" else State.SUCCEEDED
            event = Ended(target.id, at, Outcome(state, exit_code=0))
        elif action == "delete" and target.state.final:
            event = Deleted(target.id, at)
        else:
            continue
        store.record(event)
        events.append(event)
    split = min(split, len(events))
    directory = tmp_path_factory.mktemp("snap")
    path = compacted(directory, build(events[:split]), seq=split)
    with open(path, "ab") as journal:
        for seq, event in enumerate(events[split:], split + 1):
            journal.write(encode(seq, event))
    fast, used = restored(path)
    assert used
    same(fast, store)
