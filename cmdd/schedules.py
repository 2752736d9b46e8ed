"""The schedule service: recurring schedules fire jobs, with one timer for all.

Schedules live in the journal beside the jobs (their own record types, see
docs/journal.md); this service is the journal section that replays and
compacts them. Each fire is journaled (the schedule's C{since} moves to the
slot) before the job it creates, so a restart never fires a slot twice.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from cmdd.alarm import Alarm
from cmdd.codec import Item
from cmdd.errors import ClientError, not_found
from cmdd.jobs import Created, Event, Job
from cmdd.manager import JobManager
from cmdd.schedule import (
    Plan,
    Schedule,
    ScheduleBook,
    ScheduleDeleted,
    ScheduleRecord,
    ScheduleSaved,
    after_plan,
    changed,
    plan,
    snapshot_records,
)
from cmdd.timetable import Timetable

log = Logger()

MAX_SCHEDULES = 10_000
#: Jobs per schedule listed in its representation.
LAST_JOBS = 10
BATCH = 200


class ScheduleService(Service):
    """Owns the schedules: journal section, timetable, fires."""

    name = "schedules"

    def __init__(
        self, manager: JobManager, clock: IReactorTime, max_schedules: int = MAX_SCHEDULES
    ) -> None:
        self._manager = manager
        self.max_schedules = max_schedules
        self._history = manager.history
        self.clock = clock
        self.book = ScheduleBook()
        #: Schedules as they will be once the records in flight are durable.
        self._pending: dict[int, Schedule | None] = {}
        self._in_flight: dict[int, int] = {}
        self.table = Timetable()
        self._alarm = Alarm(clock, self._due)
        self._last_jobs: dict[int, collections.deque[int]] = {}
        self._history.sections.append(self)
        manager.store.add_listener(self._job_changed)
        #: Whether a schedule's owner may still have its job run: C{None},
        #: or why not (the owner was removed, re-created, lost a run-as
        #: grant). The composition root sets it; checked at every fire.
        self.owner_check: Callable[[Schedule], str | None] = lambda schedule: None
        #: The generation of a user now (stamped on new schedules).
        self.generation_of: Callable[[str], str | None] = lambda owner: None

    # --- journal section -------------------------------------------------

    def load(self, item: object) -> bool:
        """A replayed record (see L{cmdd.history.Section})."""
        taken = self.book.load(item)
        if taken:
            assert isinstance(item, ScheduleSaved | ScheduleDeleted)
            if isinstance(item, ScheduleDeleted):
                self._last_jobs.pop(item.schedule_id, None)
            self._arm_for(_id_of(item))
        return taken

    def snapshot(self, at: float) -> Sequence[Item]:
        """The schedules with the records in flight (for compaction)."""
        return snapshot_records(self._projected().values(), self._max_id(), at)

    # --- reading -----------------------------------------------------------

    def current(self, schedule_id: int) -> Schedule | None:
        """The schedule as it will be once its records are durable."""
        if schedule_id in self._pending:
            return self._pending[schedule_id]
        return self.book.schedules.get(schedule_id)

    def get(self, schedule_id: int, viewer: str | None) -> Schedule:
        """A durable schedule C{viewer} may see (C{None}: an admin), or a 404."""
        schedule = self.book.schedules.get(schedule_id)
        if schedule is None or (viewer is not None and schedule.owner != viewer):
            raise not_found("schedule", schedule_id)
        return schedule

    def listing(self, viewer: str | None) -> list[Schedule]:
        """The durable schedules C{viewer} may see, by id."""
        return [
            schedule
            for _, schedule in sorted(self.book.schedules.items())
            if viewer is None or schedule.owner == viewer
        ]

    def last_jobs(self, schedule_id: int) -> list[Job]:
        """Its newest jobs still in history, newest first."""
        jobs = (self._manager.store.get(job_id) for job_id in self._last_jobs.get(schedule_id, ()))
        return [job for job in reversed(list(jobs)) if job is not None]

    # --- changes -----------------------------------------------------------

    def create(self, fields: dict[str, Any], owner: str) -> Deferred[Schedule]:
        """A new schedule; fires once it is durable.

        @raise ClientError: 503 beyond L{MAX_SCHEDULES}.
        """
        if len(self._projected()) >= self.max_schedules:
            raise ClientError(
                "TOO_MANY_SCHEDULES",
                f"{self.max_schedules} schedules exist already",
                status=503,
                headers={"Retry-After": "60"},
            )
        now = self.clock.seconds()
        schedule = Schedule(
            id=self._max_id() + 1,
            owner=owner,
            created=now,
            since=now,
            owner_generation=self.generation_of(owner),
            **fields,
        )
        return self._save(ScheduleSaved(now, schedule)).addCallback(lambda _: schedule)

    def update(self, schedule_id: int, fields: dict[str, Any]) -> Deferred[Schedule]:
        """Change a schedule (its counts and last run are kept)."""
        before = self.current(schedule_id)
        if before is None:
            raise not_found("schedule", schedule_id)
        now = self.clock.seconds()
        after = changed(before, fields, now)
        return self._save(ScheduleSaved(now, after)).addCallback(lambda _: after)

    def delete(self, schedule_id: int, by: str | None) -> Deferred[None]:
        """Remove a schedule; its jobs stay. Its id is never issued again."""
        if self.current(schedule_id) is None:
            raise not_found("schedule", schedule_id)
        return self._save(ScheduleDeleted(self.clock.seconds(), schedule_id, by))

    # --- service -------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._rearm()

    def stopService(self) -> None:
        super().stopService()
        self._alarm.disarm()

    # --- internals -----------------------------------------------------------

    def _projected(self) -> dict[int, Schedule]:
        schedules = dict(self.book.schedules)
        for schedule_id, schedule in self._pending.items():
            if schedule is None:
                schedules.pop(schedule_id, None)
            else:
                schedules[schedule_id] = schedule
        return schedules

    def _max_id(self) -> int:
        return max([self.book.max_id, *self._pending])

    def _save(self, record: ScheduleRecord) -> Deferred[None]:
        schedule_id = _id_of(record)
        self._pending[schedule_id] = record.schedule if isinstance(record, ScheduleSaved) else None
        self._in_flight[schedule_id] = self._in_flight.get(schedule_id, 0) + 1
        self._arm_for(schedule_id)
        durable = self._history.note(record)
        return durable.addCallbacks(self._durable, self._refused, callbackArgs=(record,))

    def _durable(self, _: object, record: ScheduleRecord) -> None:
        self.book.load(record)
        if isinstance(record, ScheduleDeleted):
            self._last_jobs.pop(record.schedule_id, None)
        schedule_id = _id_of(record)
        left = self._in_flight.get(schedule_id, 0) - 1
        if left > 0:
            self._in_flight[schedule_id] = left
        else:
            self._in_flight.pop(schedule_id, None)
            self._pending.pop(schedule_id, None)

    def _refused(self, failure: Failure) -> Failure:
        # Every record in flight is refused with it: the book is the truth.
        refused = list(self._pending)
        self._pending.clear()
        self._in_flight.clear()
        for schedule_id in refused:
            self._arm_for(schedule_id)
        return _unavailable(failure)

    def _job_changed(self, event: Event, job: Job | None) -> None:
        if isinstance(event, Created) and event.schedule_id is not None:
            jobs = self._last_jobs.setdefault(
                event.schedule_id, collections.deque(maxlen=LAST_JOBS)
            )
            jobs.append(event.job_id)

    def _arm_for(self, schedule_id: int) -> None:
        schedule = self.current(schedule_id)
        when = None if schedule is None else schedule.next_run()
        if when is None:
            self.table.discard(schedule_id)
        else:
            self.table.set(schedule_id, when)
        self._rearm()

    def _rearm(self) -> None:
        if self.running:
            self._alarm.arm(self.table.earliest())

    def _due(self) -> None:
        if self._manager.stopping:
            return
        now = self.clock.seconds()
        for schedule_id in self.table.pop_due(now, BATCH):
            schedule = self.current(schedule_id)
            if schedule is not None:
                self._fire(schedule, now)
        self._rearm()

    def _active_jobs(self, schedule_id: int) -> list[int]:
        active = []
        for job_id in self._last_jobs.get(schedule_id, ()):
            job = self._history.current(job_id)
            if job is not None and not job.state.final:
                active.append(job_id)
        return active

    def _fire(self, schedule: Schedule, now: float) -> None:
        active = self._active_jobs(schedule.id)
        step = plan(schedule, now, bool(active))
        if step is None:
            self._arm_for(schedule.id)
            return
        after = after_plan(schedule, step, now)
        # The fire is journaled before the job: a crash between them loses
        # this fire rather than running it twice.
        self._save(ScheduleSaved(now, after)).addErrback(_log_refused, schedule.id)
        if not step.fire:
            log.info("schedule {id} skipped its fire: {why}", id=schedule.id, why=step.why)
            return
        if schedule.concurrency_policy == "replace":
            self._replace(schedule.id, active)
        self._submit(after, step)

    def _replace(self, schedule_id: int, active: list[int]) -> None:
        for job_id in active:
            try:
                self._manager.cancel(job_id, by=f"schedule {schedule_id}").addErrback(
                    lambda failure: None
                )
            except ClientError:
                pass  # it ended meanwhile

    def _submit(self, schedule: Schedule, step: Plan) -> None:
        refusal = self.owner_check(schedule)
        if refusal is not None:
            log.warn("schedule {id} skipped its fire: {why}", id=schedule.id, why=refusal)
            self._count_skipped(schedule)
            return
        try:
            self._manager.submit(
                schedule.job, owner=schedule.owner, schedule_id=schedule.id
            ).addErrback(_log_refused, schedule.id)
        except ClientError as e:
            log.warn("schedule {id} could not create its job: {why}", id=schedule.id, why=e.message)
            self._count_skipped(schedule)

    def _count_skipped(self, schedule: Schedule) -> None:
        """A fire that created no job after all: counted as skipped."""
        skipped = attrs.evolve(schedule, fired=schedule.fired - 1, skipped=schedule.skipped + 1)
        self._save(ScheduleSaved(self.clock.seconds(), skipped)).addErrback(
            _log_refused, schedule.id
        )


def _id_of(record: ScheduleRecord) -> int:
    return record.schedule.id if isinstance(record, ScheduleSaved) else record.schedule_id


def _unavailable(failure: Failure) -> Failure:
    log.warn("a schedule change was refused by the journal: {why}", why=failure.getErrorMessage())
    return Failure(
        ClientError(
            "JOURNAL_UNAVAILABLE",
            "the schedule could not be recorded durably",
            status=503,
            headers={"Retry-After": "5"},
        )
    )


def _log_refused(failure: Failure, schedule_id: int) -> None:
    log.warn("schedule {id}: {why}", id=schedule_id, why=failure.getErrorMessage())
