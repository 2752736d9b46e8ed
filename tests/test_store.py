"""The in-memory job index: ids, events, newest-first pages."""

from __future__ import annotations

from cmdd.jobs import Created, Deleted, Ended, Event, Job, Outcome, State
from cmdd.spec import parse_spec
from cmdd.store import JobStore

SPEC = parse_spec({"command": "true"})


def store_with(count: int) -> JobStore:
    store = JobStore()
    for _ in range(count):
        store.record(Created(store.allocate_id(), 1.0, SPEC))
    return store


def test_ids_are_never_reused_after_delete() -> None:
    """Deleting the newest job does not free its id."""
    store = store_with(2)
    store.record(Ended(2, 2.0, Outcome(State.CANCELLED)))
    store.record(Deleted(2, 3.0))
    assert store.get(2) is None
    assert store.allocate_id() == 3


def test_replayed_ids_move_the_counter() -> None:
    """Recording a job created elsewhere (replay) keeps ids ahead of it."""
    store = JobStore()
    store.record(Created(41, 1.0, SPEC))
    assert store.allocate_id() == 42


def test_counts_by_state_follow_events() -> None:
    """Per-state counts (for /metrics) follow every event."""
    store = store_with(3)
    store.record(Ended(1, 2.0, Outcome(State.CANCELLED)))
    store.record(Deleted(1, 3.0))
    assert store.counts[State.QUEUED] == 2
    assert store.counts[State.CANCELLED] == 0
    assert len(store) == 2


def test_listeners_see_every_event() -> None:
    """Listeners get each event and the job as it is after it."""
    store = JobStore()
    seen: list[tuple[Event, Job | None]] = []
    store.add_listener(lambda event, job: seen.append((event, job)))
    event = Created(1, 1.0, SPEC)
    job = store.record(event)
    assert seen == [(event, job)]


def test_indexes_follow_every_event() -> None:
    """The state, owner and label indexes always hold exactly the matching ids,
    sorted, through creation, state changes and deletion."""
    import random

    rng = random.Random(5)
    store = JobStore()
    for _ in range(400):
        alive = list(store.oldest_first())
        job = rng.choice(alive) if alive and rng.random() < 0.7 else None
        if job is None:
            spec = parse_spec({"command": "x", "labels": {"k": rng.choice("ab")}})
            store.record(Created(store.allocate_id(), 1.0, spec, rng.choice(["u1", "u2"])))
        elif job.state is State.QUEUED:
            store.record(Ended(job.id, 2.0, Outcome(rng.choice([State.CANCELLED,
                                                                 State.NOT_EXECUTED]))))
        elif job.state.final:
            store.record(Deleted(job.id, 3.0))
    jobs = list(store.oldest_first())
    for state in State:
        assert list(store.narrowest_index([state]) or []) == [
            j.id for j in jobs if j.state is state]
    for owner in ("u1", "u2", "nobody"):
        assert list(store.narrowest_index(owner=owner) or []) == [
            j.id for j in jobs if j.owner == owner]
    assert list(store.narrowest_index(labels=[("k", "a")]) or []) == [
        j.id for j in jobs if j.spec.labels["k"] == "a"]
    assert store.narrowest_index() is None
