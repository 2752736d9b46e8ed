"""Recurring schedules: the value, its validation, its journal records, when to fire.

Pure: no I/O, no reactor. A schedule creates a job from its C{job} spec at
each fire of its cron expression in its time zone. Policies follow
Kubernetes CronJob: C{concurrency_policy} allow|forbid|replace and
C{starting_deadline} (a fire later than that is skipped and counted).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import attrs
from attrs import frozen

from cmdd.cronspec import latest_due, next_fire, parse_cron, parse_timezone
from cmdd.errors import SpecError
from cmdd.spec import JobSpec, parse_spec
from cmdd.timefmt import format_rfc3339

POLICIES = ("allow", "forbid", "replace")
FIELDS = frozenset({"cron", "timezone", "job", "concurrency_policy", "starting_deadline", "paused"})
MAX_STARTING_DEADLINE = 30 * 86400.0
#: Missed fires counted one by one at most. Counting runs on the reactor, one
#: cronsim step each (~15 us): a minute cron down for 80 days would walk
#: 115,000 steps (1.4 s) per schedule, up to 200 schedules per ring. Beyond
#: the cap the latest slot is found by a short backward search instead.
MAX_MISSED_COUNTED = 100


@frozen
class Schedule:
    """One recurring schedule and what it did so far."""

    id: int
    owner: str
    cron: str
    timezone: str
    job: JobSpec
    created: float
    concurrency_policy: str = "allow"
    starting_deadline: float | None = None
    paused: bool = False
    #: Fires at or before this time are done (fired or skipped): never again.
    since: float = 0.0
    #: When it last created a job.
    last_run: float | None = None
    fired: int = 0
    skipped: int = 0
    #: The owner's user generation when it was created (see L{cmdd.users}):
    #: a user removed and added again under the same name does not inherit
    #: the old one's schedules. C{None}: unknown (older records, tests).
    owner_generation: str | None = None

    def next_run(self) -> float | None:
        """When it fires next (C{None} while paused)."""
        if self.paused:
            return None
        return next_fire(self.cron, self.timezone, self.since)


@frozen
class ScheduleSaved:
    """A schedule as it now is (created, changed, fired or skipped)."""

    at: float
    schedule: Schedule


@frozen
class ScheduleDeleted:
    """A schedule was removed; its id is never issued again."""

    at: float
    schedule_id: int
    by: str | None = None


ScheduleRecord = ScheduleSaved | ScheduleDeleted


def parse_schedule(body: object, now: float, before: Schedule | None = None) -> dict[str, Any]:
    """The validated fields of a POST body, or of a PATCH merged onto C{before}.

    The job spec is validated by L{parse_spec} exactly like a submit; a
    C{run_at} in it is refused (the schedule says when).

    @raise SpecError: one code per cause.
    """
    if not isinstance(body, dict):
        raise SpecError("BODY_NOT_OBJECT", "the request body must be a JSON object")
    for field in body:
        if field not in FIELDS:
            raise SpecError("UNKNOWN_FIELD", f"unknown field {field!r}", str(field))
    if before is None and "cron" not in body:
        raise SpecError("INVALID_CRON", 'a schedule needs cron, e.g. "*/5 * * * *"', "cron")
    if before is None and "job" not in body:
        raise SpecError("INVALID_JOB", "a schedule needs job, a job spec", "job")
    fields: dict[str, Any] = {}
    if "cron" in body:
        fields["cron"] = parse_cron(body["cron"])
    if body.get("timezone") is not None:
        fields["timezone"] = parse_timezone(body["timezone"])
    elif before is None:
        fields["timezone"] = "UTC"
    if "job" in body:
        job = body["job"]
        if isinstance(job, dict) and "run_at" in job:
            raise SpecError("INVALID_JOB", "a schedule's job has no run_at", "job.run_at")
        fields["job"] = parse_spec(job, now=now)
    if body.get("concurrency_policy") is not None:
        policy = body["concurrency_policy"]
        if policy not in POLICIES:
            raise SpecError(
                "INVALID_CONCURRENCY_POLICY",
                "concurrency_policy is one of allow, forbid, replace",
                "concurrency_policy",
            )
        fields["concurrency_policy"] = policy
    if "starting_deadline" in body:
        fields["starting_deadline"] = _deadline(body["starting_deadline"])
    if "paused" in body:
        if not isinstance(body["paused"], bool):
            raise SpecError("INVALID_PAUSED", "paused is true or false", "paused")
        fields["paused"] = body["paused"]
    return fields


def _deadline(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SpecError(
            "INVALID_STARTING_DEADLINE", "starting_deadline is seconds", "starting_deadline"
        )
    seconds = float(value) if abs(value) < 1e300 else math.inf
    if not 0 < seconds <= MAX_STARTING_DEADLINE:
        raise SpecError(
            "INVALID_STARTING_DEADLINE",
            f"starting_deadline must be more than 0 and at most {MAX_STARTING_DEADLINE:.0f} s",
            "starting_deadline",
        )
    return seconds


def changed(before: Schedule, fields: Mapping[str, Any], now: float) -> Schedule:
    """C{before} with validated C{fields}; a new cron, zone or an unpause
    counts fires from now (the ones missed meanwhile are not made up)."""
    after = attrs.evolve(before, **fields)
    timing = (after.cron, after.timezone, after.paused) != (
        before.cron, before.timezone, before.paused,
    )  # fmt: skip
    if timing:
        after = attrs.evolve(after, since=max(before.since, now))
    return after


@frozen
class Plan:
    """What a due schedule does now: fire (or skip) its latest due slot."""

    slot: float
    fire: bool
    #: Slots that end without a job: older missed ones, and this one if skipped.
    skipped: int
    why: str | None = None


def plan(schedule: Schedule, now: float, previous_active: bool) -> Plan | None:
    """Whether and what a schedule fires at C{now} (C{None}: nothing due).

    Fires missed while the daemon was down collapse into their latest one,
    run once unless the starting deadline passed.
    """
    if schedule.paused:
        return None
    slot, count = latest_due(
        schedule.cron, schedule.timezone, schedule.since, now, MAX_MISSED_COUNTED
    )
    if slot is None:
        return None
    older = count - 1
    deadline = schedule.starting_deadline
    if deadline is not None and now - slot > deadline:
        return Plan(slot, False, older + 1, "its starting_deadline passed")
    if previous_active and schedule.concurrency_policy == "forbid":
        return Plan(slot, False, older + 1, "its previous job has not ended")
    return Plan(slot, True, older)


def after_plan(schedule: Schedule, step: Plan, now: float) -> Schedule:
    """The schedule once C{step} is done."""
    return attrs.evolve(
        schedule,
        since=step.slot,
        fired=schedule.fired + (1 if step.fire else 0),
        skipped=schedule.skipped + step.skipped,
        last_run=now if step.fire else schedule.last_run,
    )


class ScheduleBook:
    """The live schedules as the journal has them, and the highest id issued."""

    def __init__(self) -> None:
        self.schedules: dict[int, Schedule] = {}
        self.max_id = 0

    def load(self, item: object) -> bool:
        """Apply a replayed or durable record; C{False} if it is not a schedule's."""
        if isinstance(item, ScheduleSaved):
            self.schedules[item.schedule.id] = item.schedule
            self.max_id = max(self.max_id, item.schedule.id)
        elif isinstance(item, ScheduleDeleted):
            self.schedules.pop(item.schedule_id, None)
            self.max_id = max(self.max_id, item.schedule_id)
        else:
            return False
        return True

    def snapshot(self, at: float) -> list[ScheduleRecord]:
        """Records that rebuild this book (for compaction)."""
        return snapshot_records(self.schedules.values(), self.max_id, at)


def snapshot_records(schedules: Iterable[Schedule], max_id: int, at: float) -> list[ScheduleRecord]:
    """The live schedules, plus the highest deleted id if no live one holds it."""
    records: list[ScheduleRecord] = [
        ScheduleSaved(at, schedule) for schedule in sorted(schedules, key=lambda s: s.id)
    ]
    if max_id and not any(
        isinstance(r, ScheduleSaved) and r.schedule.id == max_id for r in records
    ):
        records.append(ScheduleDeleted(at, max_id))
    return records


def schedule_json(schedule: Schedule, last_jobs: Iterable[tuple[int, str]]) -> dict[str, Any]:
    """A schedule as clients see it; C{last_jobs}: (id, state), newest first."""
    next_run = schedule.next_run()
    return {
        "id": schedule.id,
        "owner": schedule.owner,
        "cron": schedule.cron,
        "timezone": schedule.timezone,
        "job": schedule.job.to_json(),
        "concurrency_policy": schedule.concurrency_policy,
        "starting_deadline": schedule.starting_deadline,
        "paused": schedule.paused,
        "created": format_rfc3339(schedule.created),
        "next_run": None if next_run is None else format_rfc3339(next_run),
        "last_run": None if schedule.last_run is None else format_rfc3339(schedule.last_run),
        "fired": schedule.fired,
        "skipped": schedule.skipped,
        "last_jobs": [{"id": job_id, "state": state} for job_id, state in last_jobs],
        "links": {
            "self": f"/api/schedules/{schedule.id}",
            "jobs": f"/api/jobs?schedule_id={schedule.id}",
        },
    }
