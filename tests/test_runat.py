"""Jobs with a run_at: one timer for all of them, exact across restarts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fakes import FakeExecutor, InlineIO
from twisted.internet.task import Clock

from cmdd.alarm import Alarm
from cmdd.codec import Record
from cmdd.history import History, MemoryLog, load_record
from cmdd.jobs import Job, State
from cmdd.manager import JobManager, Limits
from cmdd.runat import RunAtService
from cmdd.spec import parse_spec
from cmdd.store import JobStore
from cmdd.timefmt import format_rfc3339
from cmdd.timetable import Timetable

T0 = 1_800_000_000.0


def at(seconds: float) -> str:
    """The RFC 3339 text of T0 + seconds."""
    return format_rfc3339(T0 + seconds, "microseconds")


class World:
    """A manager and its run_at service on a fake clock."""

    def __init__(self, tmp_path: Path, store: JobStore | None = None, now: float = T0) -> None:
        self.clock = Clock()
        self.clock.advance(now)
        self.executor = FakeExecutor()
        self.store = store or JobStore()
        self.log = MemoryLog()
        self.history = History(self.store, self.log, self.clock)
        self.manager = JobManager(
            self.history, self.executor, InlineIO(), self.clock,  # type: ignore[arg-type]
            str(tmp_path), Limits(max_running=4),
        )
        self.run_at = RunAtService(self.manager, self.clock)
        self.manager.startService()
        self.run_at.startService()

    def submit(self, body: dict[str, Any]) -> Job:
        results: list[Job] = []
        spec = parse_spec(body, now=self.clock.seconds())
        self.manager.submit(spec).addCallback(results.append)
        return results[0]

    def state(self, job_id: int) -> State:
        job = self.store.get(job_id)
        assert job is not None
        return job.state


def test_timetable_gives_keys_earliest_first_and_forgets_moved_ones() -> None:
    """Due keys come out in time order; a moved or removed key is not due at its old time."""
    table = Timetable()
    table.set(1, 30.0)
    table.set(2, 10.0)
    table.set(3, 20.0)
    table.set(2, 40.0)
    table.discard(3)
    assert table.earliest() == 30.0
    assert table.pop_due(35.0) == [1]
    assert table.pop_due(100.0) == [2]
    assert table.earliest() is None and len(table) == 0


def test_timetable_memory_stays_proportional_to_live_keys() -> None:
    """Moving one key a million times does not grow the heap without bound."""
    table = Timetable()
    for i in range(100_000):
        table.set(7, float(i))
    assert len(table._heap) < 300
    assert table.pop_due(1e9) == [7]


def test_alarm_holds_one_delayed_call_whatever_it_is_moved_to() -> None:
    """Re-arming moves the one call; it rings once, at the last time set."""
    clock = Clock()
    rings: list[float] = []
    alarm = Alarm(clock, lambda: rings.append(clock.seconds()))
    for when in (50.0, 20.0, 30.0):
        alarm.arm(when)
    assert len(clock.getDelayedCalls()) == 1
    clock.pump([10.0] * 10)
    assert rings == [30.0]


def test_a_run_at_job_is_scheduled_until_its_time_then_runs(tmp_path: Path) -> None:
    """Scheduled until run_at, then queued and started as usual, released once."""
    world = World(tmp_path)
    job = world.submit({"command": "true", "run_at": at(60)})
    assert job.state is State.SCHEDULED
    world.clock.advance(59.9)
    assert world.state(1) is State.SCHEDULED and world.executor.started == []
    world.clock.advance(0.1)
    world.clock.advance(0)
    assert world.state(1) is State.RUNNING
    released = world.store.get(1)
    assert released is not None and released.released == T0 + 60
    assert [type(item).__name__ for item in world.log.items] == ["Created", "Released", "Started"]


def test_ten_thousand_scheduled_jobs_hold_one_timer(tmp_path: Path) -> None:
    """However many jobs are scheduled, the reactor holds one timer for them."""
    world = World(tmp_path)
    world.manager.limits.max_queued = 1
    baseline = len(world.clock.getDelayedCalls())
    for i in range(10_000):
        world.submit({"command": "true", "run_at": at(3600 - i * 0.25)})
    assert len(world.run_at.table) == 10_000
    assert len(world.clock.getDelayedCalls()) <= baseline + 1
    assert world.run_at._alarm.armed_for == T0 + 3600 - 9999 * 0.25


def test_cancel_before_start_ends_a_scheduled_job(tmp_path: Path) -> None:
    """A scheduled job can be cancelled; it never runs and its timer is dropped."""
    world = World(tmp_path)
    world.submit({"command": "true", "run_at": at(60)})
    done: list[Job] = []
    world.manager.cancel(1, by="alice").addCallback(done.append)
    assert done[0].state is State.CANCELLED
    assert done[0].outcome is not None and done[0].outcome.cancelled_by == "alice"
    assert len(world.run_at.table) == 0
    world.clock.advance(120)
    assert world.executor.started == []


def test_a_run_at_passed_while_down_runs_at_start(tmp_path: Path) -> None:
    """Replayed scheduled jobs are armed again; one whose time passed is released at once."""
    first = World(tmp_path)
    first.submit({"command": "true", "run_at": at(10)})
    first.submit({"command": "true", "run_at": at(1000)})
    store = JobStore()
    for seq, item in enumerate(first.log.items, 1):
        load_record(store, Record(seq, item))
    again = World(tmp_path, store=store, now=T0 + 100)
    again.clock.advance(0)
    again.clock.advance(0)
    assert again.state(1) is State.RUNNING and again.state(2) is State.SCHEDULED
    job = again.store.get(1)
    assert job is not None and job.released == T0 + 100
    assert again.run_at._alarm.armed_for == T0 + 1000


def test_modifying_run_at_re_arms_the_timer(tmp_path: Path) -> None:
    """A new run_at moves the job's time; a queued job given one is scheduled again."""
    world = World(tmp_path)
    world.submit({"command": "true", "run_at": at(60)})
    spec = parse_spec({"command": "true", "run_at": at(30)})
    world.manager.modify(1, spec)
    assert world.run_at._alarm.armed_for == T0 + 30
    world.manager.limits.max_running = 0
    world.submit({"command": "true"})
    world.manager.modify(2, parse_spec({"command": "true", "run_at": at(90)}))
    assert world.state(2) is State.SCHEDULED and world.manager.queued_count == 0
    world.manager.limits.max_running = 4
    world.clock.advance(30)
    world.clock.advance(0)
    assert world.state(1) is State.RUNNING and world.state(2) is State.SCHEDULED


def test_too_many_scheduled_jobs_are_refused_with_503(tmp_path: Path) -> None:
    """The scheduled jobs are bounded: beyond the limit a submit is a 503."""
    from cmdd.errors import ClientError

    world = World(tmp_path)
    world.manager.limits.max_scheduled = 2
    for _ in range(2):
        world.submit({"command": "true", "run_at": at(60)})
    with pytest.raises(ClientError) as info:
        world.submit({"command": "true", "run_at": at(60)})
    assert info.value.status == 503 and info.value.code == "TOO_MANY_SCHEDULED"


def test_new_events_round_trip_and_compaction_rebuilds_the_job_exactly() -> None:
    """released/modified lines decode to the same events; compaction keeps run_at exactly."""
    from cmdd.codec import decode, encode, job_events
    from cmdd.jobs import Created, Modified, Released, Started, apply_event

    spec = parse_spec({"command": "true", "run_at": at(0.1234567)})
    events = [
        Created(1, T0, spec, "alice", schedule_id=7),
        Modified(1, T0 + 1, parse_spec({"command": "x", "run_at": at(5.5), "labels": {"a": "b"}})),
        Released(1, T0 + 9),
        Started(1, T0 + 10),
    ]
    job = None
    for seq, event in enumerate(events, 1):
        assert decode(encode(seq, event)[:-1]).item == event
        job = apply_event(job, event)
    assert job is not None and job.schedule_id == 7 and job.released == T0 + 9
    rebuilt = None
    for event in job_events(job):
        rebuilt = apply_event(rebuilt, decode(encode(1, event)[:-1]).item)  # type: ignore[arg-type]
    assert rebuilt == job


def test_released_jobs_keep_their_concurrency_key(tmp_path: Path) -> None:
    """Released into the keyed queue: two jobs with one key and one run_at run one at a time."""
    world = World(tmp_path)
    for _ in range(2):
        world.submit({"command": "true", "run_at": at(5), "concurrency_key": "db"})
    world.clock.advance(5)
    world.clock.advance(0)
    assert (world.state(1), world.state(2)) == (State.RUNNING, State.QUEUED)
    world.executor.by_job(1).finish(0)
    world.clock.advance(0)
    assert world.state(2) is State.RUNNING


def test_timetable_agrees_with_a_plain_dict_model() -> None:
    """Any mix of set/discard/pop_due gives what a naive sorted scan gives."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    operation = st.one_of(
        st.tuples(st.just("set"), st.integers(0, 20), st.integers(0, 50)),
        st.tuples(st.just("discard"), st.integers(0, 20), st.just(0)),
        st.tuples(st.just("pop"), st.just(0), st.integers(0, 50)),
    )

    @settings(max_examples=300, deadline=None)
    @given(st.lists(operation, max_size=60))
    def check(operations: list[tuple[str, int, int]]) -> None:
        table, model = Timetable(), {}
        for name, key, when in operations:
            if name == "set":
                table.set(key, float(when))
                model[key] = float(when)
            elif name == "discard":
                table.discard(key)
                model.pop(key, None)
            else:
                due = sorted((w, k) for k, w in model.items() if w <= when)
                assert table.pop_due(float(when)) == [k for _, k in due]
                for _, k in due:
                    del model[k]
            assert table.earliest() == (min(model.values()) if model else None)
            assert len(table) == len(model)

    check()
