"""The schedule service on a fake clock: fires, policies, deadline, restart, one timer."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from fakes import FakeExecutor, InlineIO
from twisted.internet.task import Clock

from cmdd.codec import Record, decode, encode
from cmdd.history import History, MemoryLog
from cmdd.jobs import State
from cmdd.manager import JobManager, Limits
from cmdd.schedule import Schedule, ScheduleBook, parse_schedule
from cmdd.schedules import ScheduleService
from cmdd.store import JobStore
from cmdd.timefmt import format_rfc3339

T0 = datetime(2026, 3, 2, 12, 0, 30, tzinfo=ZoneInfo("UTC")).timestamp()


class World:
    """A manager and the schedule service on a fake clock, replayable."""

    def __init__(self, tmp_path: Path, now: float = T0, items: list[Any] | None = None) -> None:
        self.clock = Clock()
        self.clock.advance(now)
        self.executor = FakeExecutor()
        self.store = JobStore()
        self.log = MemoryLog()
        self.history = History(self.store, self.log, self.clock)
        self.manager = JobManager(
            self.history, self.executor, InlineIO(), self.clock,  # type: ignore[arg-type]
            str(tmp_path), Limits(max_running=100),
        )
        self.schedules = ScheduleService(self.manager, self.clock)
        for seq, item in enumerate(items or [], 1):
            # Through the codec, as a restart reads them.
            self.history.load(decode(encode(seq, item)[:-1]))
        self.log.items = list(items or [])  # a restart's journal holds the old lines too
        self.manager.adopt_history()
        self.manager.startService()
        self.schedules.startService()

    def create(self, body: dict[str, Any], owner: str = "alice") -> Schedule:
        fields = parse_schedule(body, self.clock.seconds())
        done: list[Schedule] = []
        self.schedules.create(fields, owner).addCallback(done.append)
        return done[0]

    def jobs(self, schedule_id: int) -> list[int]:
        return [job.id for job in self.store.oldest_first() if job.schedule_id == schedule_id]

    def minutes(self, count: int) -> None:
        for _ in range(count):
            self.clock.advance(60)
            self.clock.advance(0)

    def restart(self, tmp_path: Path, now: float) -> World:
        return World(tmp_path, now, list(self.log.items))


def test_a_schedule_fires_a_job_each_minute_naming_itself(tmp_path: Path) -> None:
    """Each fire creates one job from the spec, carrying the schedule's id."""
    world = World(tmp_path)
    schedule = world.create({"cron": "* * * * *", "job": {"command": "true"}})
    world.minutes(3)
    assert world.jobs(schedule.id) == [1, 2, 3]
    current = world.schedules.current(schedule.id)
    assert current is not None and current.fired == 3 and current.skipped == 0


def test_next_run_is_exact_across_spring_forward(tmp_path: Path) -> None:
    """`30 2 * * *` in Berlin on spring-forward day fires once at 03:00 local (01:00Z)."""
    start = datetime(2026, 3, 28, 12, 0, tzinfo=ZoneInfo("UTC")).timestamp()
    world = World(tmp_path, now=start)
    schedule = world.create(
        {"cron": "30 2 * * *", "timezone": "Europe/Berlin", "job": {"command": "true"}}
    )
    next_run = schedule.next_run()
    assert next_run is not None and format_rfc3339(next_run) == "2026-03-29T01:00:00.000Z"
    world.clock.advance(next_run - world.clock.seconds())
    world.clock.advance(0)
    assert world.jobs(schedule.id) == [1]
    after = world.schedules.current(schedule.id)
    assert after is not None and after.next_run() is not None
    assert format_rfc3339(after.next_run() or 0) == "2026-03-30T00:30:00.000Z"


def test_ten_thousand_schedules_hold_one_timer(tmp_path: Path) -> None:
    """However many schedules exist, the reactor holds one timer for all of them."""
    world = World(tmp_path)
    baseline = len(world.clock.getDelayedCalls())
    for i in range(10_000):
        world.create({"cron": f"{i % 60} {i % 24} * * *", "job": {"command": "true"}})
    assert len(world.clock.getDelayedCalls()) <= baseline + 1
    assert len(world.schedules.table) == 10_000


def test_forbid_skips_while_the_previous_job_runs(tmp_path: Path) -> None:
    """forbid: a fire is skipped (and counted) while the previous job has not ended."""
    world = World(tmp_path)
    schedule = world.create(
        {"cron": "* * * * *", "concurrency_policy": "forbid", "job": {"command": "sleep 1000"}}
    )
    world.minutes(3)
    assert world.jobs(schedule.id) == [1]
    current = world.schedules.current(schedule.id)
    assert current is not None and (current.fired, current.skipped) == (1, 2)
    world.executor.by_job(1).finish(0)
    world.minutes(1)
    assert world.jobs(schedule.id) == [1, 2]


def test_replace_cancels_the_previous_job_and_starts_the_new(tmp_path: Path) -> None:
    """replace: the running previous job is cancelled (by the schedule), the new one starts."""
    world = World(tmp_path)
    schedule = world.create(
        {"cron": "* * * * *", "concurrency_policy": "replace", "job": {"command": "sleep 1000"}}
    )
    world.minutes(1)
    first = world.executor.by_job(1)
    world.minutes(1)
    assert first.signals  # SIGTERM sent
    first.finish(None, signal=15)
    job = world.store.get(1)
    assert job is not None and job.state is State.CANCELLED
    assert job.outcome is not None and job.outcome.cancelled_by == f"schedule {schedule.id}"
    assert world.jobs(schedule.id) == [1, 2]
    second = world.store.get(2)
    assert second is not None and second.state is State.RUNNING


def test_a_fire_missed_while_down_runs_once_at_start(tmp_path: Path) -> None:
    """After an hour down, a minute schedule fires once at start, the rest counted skipped."""
    world = World(tmp_path)
    schedule = world.create({"cron": "* * * * *", "job": {"command": "true"}})
    world.minutes(2)
    again = world.restart(tmp_path, now=world.clock.seconds() + 3600)
    again.clock.advance(0)
    again.clock.advance(0)
    assert again.jobs(schedule.id) == [1, 2, 3]
    current = again.schedules.current(schedule.id)
    assert current is not None and (current.fired, current.skipped) == (3, 59)
    # And the slot it fired is never fired again by another restart.
    third = again.restart(tmp_path, now=again.clock.seconds() + 1)
    third.clock.advance(0)
    assert third.jobs(schedule.id) == [1, 2, 3]


def test_starting_deadline_skips_a_late_fire(tmp_path: Path) -> None:
    """A fire later than starting_deadline is skipped and counted, like Kubernetes."""
    world = World(tmp_path)
    schedule = world.create(
        {"cron": "* * * * *", "starting_deadline": 30, "job": {"command": "true"}}
    )
    again = world.restart(tmp_path, now=world.clock.seconds() + 675)  # 45 s after 12:11
    again.clock.advance(0)
    assert again.jobs(schedule.id) == []
    current = again.schedules.current(schedule.id)
    assert current is not None and (current.fired, current.skipped) == (0, 11)


def test_paused_schedules_do_not_fire(tmp_path: Path) -> None:
    """paused: no fires; unpausing counts from then (missed fires are not made up)."""
    world = World(tmp_path)
    schedule = world.create({"cron": "* * * * *", "paused": True, "job": {"command": "true"}})
    world.minutes(5)
    assert world.jobs(schedule.id) == [] and len(world.schedules.table) == 0
    world.schedules.update(schedule.id, {"paused": False})
    world.minutes(1)
    assert world.jobs(schedule.id) == [1]


def test_compaction_keeps_schedules_and_never_reuses_ids(tmp_path: Path) -> None:
    """Compaction writes the live schedules; a deleted schedule's id is not issued again."""
    world = World(tmp_path)
    world.create({"cron": "* * * * *", "job": {"command": "true"}})
    second = world.create({"cron": "0 * * * *", "job": {"command": "true"}})
    world.schedules.delete(second.id, by="alice")
    records = world.schedules.snapshot(world.clock.seconds())
    book = ScheduleBook()
    for item in records:
        assert book.load(decode(encode(1, item)[:-1]).item)
    assert sorted(book.schedules) == [1] and book.max_id == 2
    again = World(tmp_path, items=list(records))
    assert again.create({"cron": "* * * * *", "job": {"command": "true"}}).id == 3


def test_schedule_record_round_trips(tmp_path: Path) -> None:
    """A schedule line decodes to the same schedule."""
    world = World(tmp_path)
    schedule = world.create({
        "cron": "*/5 9-17 * * 1-5", "timezone": "America/New_York",
        "job": {"command": "true", "labels": {"a": "b"}}, "concurrency_policy": "forbid",
        "starting_deadline": 120,
    })  # fmt: skip
    record = decode(encode(9, world.log.items[0])[:-1])
    assert isinstance(record, Record) and record.item.schedule == schedule  # type: ignore[union-attr]


def test_offline_compaction_keeps_schedules(tmp_path: Path) -> None:
    """cmdd journal compact rewrites the journal with its live schedules and id floor."""
    from cmdd import offline
    from cmdd.history import load_record
    from cmdd.jobs import Created
    from cmdd.journal import replay
    from cmdd.schedule import ScheduleDeleted, ScheduleSaved
    from cmdd.spec import JobSpec

    world = World(tmp_path)
    one = world.create({"cron": "* * * * *", "job": {"command": "true"}})
    two = world.create({"cron": "0 * * * *", "job": {"command": "true"}})
    items: list[Any] = [
        ScheduleSaved(T0, one), ScheduleSaved(T0, two), ScheduleSaved(T0 + 1, two),
        ScheduleDeleted(T0 + 2, two.id, "alice"),
        Created(1, T0 + 60, JobSpec(command="true"), "alice", schedule_id=one.id),
    ]  # fmt: skip
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o700)
    journal = data_dir / "journal.jsonl"
    journal.write_bytes(b"".join(encode(seq, item) for seq, item in enumerate(items, 1)))
    offline.compact(str(data_dir))
    lines = [decode(line).item for line in journal.read_bytes().splitlines()]
    assert [type(item).__name__ for item in lines] == [
        "Meta", "Created", "ScheduleSaved", "ScheduleDeleted",
    ]  # fmt: skip
    store, book = JobStore(), ScheduleBook()
    replay(str(journal), lambda record: load_record(store, record, [book]))
    assert list(book.schedules) == [one.id] and book.max_id == two.id
    job = store.get(1)
    assert job is not None and job.schedule_id == one.id


def test_history_compaction_asks_sections_for_their_records(tmp_path: Path) -> None:
    """A live compaction writes the schedules (with those in flight) after the jobs."""
    from twisted.internet.defer import Deferred, succeed

    class Capture(MemoryLog):
        extra: list[Any] = []

        def compact(self, jobs: Any, at: float, next_id: int, extra: Any = ()) -> Deferred[int]:
            Capture.extra = list(extra)
            return succeed(0)

    world = World(tmp_path)
    world.history._log = Capture()
    schedule = world.create({"cron": "* * * * *", "job": {"command": "true"}})
    world.history.compact()
    assert [item.schedule for item in Capture.extra] == [schedule]


def test_a_removed_or_re_created_owner_s_schedule_creates_no_job(tmp_path: Path) -> None:
    """A schedule acts for its owner: once the owner is removed (or removed
    and added again, a new generation), its fires create no job and are
    counted as skipped; the schedule stays for an admin to see or delete."""
    from cmdd.auth import RunAsPolicy
    from cmdd.scheduleroutes import schedule_refusal
    from cmdd.users import User

    users = {"alice": User("alice", "user", "x", generation="g1")}
    world = World(tmp_path)
    world.schedules.generation_of = lambda owner: users[owner].generation
    world.schedules.owner_check = lambda s: schedule_refusal(s, users, RunAsPolicy())
    schedule = world.create({"cron": "* * * * *", "job": {"command": "true"}})
    assert schedule.owner_generation == "g1"
    world.minutes(1)
    assert world.jobs(schedule.id) == [1]
    users["alice"] = User("alice", "user", "y", generation="g2")  # removed, added again
    world.minutes(1)
    del users["alice"]
    world.minutes(1)
    assert world.jobs(schedule.id) == [1]
    current = world.schedules.current(schedule.id)
    assert current is not None and (current.fired, current.skipped) == (1, 2)
    # The generation survives the journal (a restart still knows it).
    again = world.restart(tmp_path, world.clock.seconds())
    restored = again.schedules.current(schedule.id)
    assert restored is not None and restored.owner_generation == "g1"


def test_a_withdrawn_run_as_grant_stops_the_schedule_s_jobs() -> None:
    from cmdd.auth import RunAsPolicy
    from cmdd.schedule import Schedule
    from cmdd.scheduleroutes import schedule_refusal
    from cmdd.spec import JobSpec
    from cmdd.users import User

    users = {"alice": User("alice", "user", "x")}
    schedule = Schedule(1, "alice", "* * * * *", "UTC", JobSpec(command="id", user="www"), 0.0)
    granted = RunAsPolicy(frozenset({("alice", "www")}), daemon_is_root=True)
    assert schedule_refusal(schedule, users, granted) is None
    refusal = schedule_refusal(schedule, users, RunAsPolicy(daemon_is_root=True))
    assert refusal is not None and "www" in refusal
