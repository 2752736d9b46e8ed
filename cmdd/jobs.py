"""The job domain: states, the job value, events and how events change jobs.

Pure: no I/O, no reactor. Every state change in the daemon is one of the
events below, applied by L{apply_event}; the journal (durable history) stores
exactly these events, so replaying them rebuilds every job.
"""

from __future__ import annotations

import enum
from typing import Any

import attrs
from attrs import frozen

from cmdd.spec import JobSpec


class State(enum.Enum):
    """Where a job is in its life. The last five are final."""

    SCHEDULED = "scheduled"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    NOT_EXECUTED = "not_executed"
    CANCELLED = "cancelled"
    LOST = "lost"

    @property
    def final(self) -> bool:
        """Whether nothing more will happen to a job in this state."""
        return self in FINAL_STATES


FINAL_STATES = frozenset(
    {State.SUCCEEDED, State.FAILED, State.NOT_EXECUTED, State.CANCELLED, State.LOST}
)

#: The vocabulary of older command services (see README, "States").
LEGACY_NAMES = {
    State.SCHEDULED: "NOT_STARTED",
    State.QUEUED: "NOT_STARTED",
    State.RUNNING: "STARTED",
    State.NOT_EXECUTED: "NOT_EXECUTED",
    State.SUCCEEDED: "FINISHED_OK",
    State.FAILED: "FINISHED_ERROR",
    State.CANCELLED: "FINISHED_ERROR",
    State.LOST: "FINISHED_ERROR",
}


@frozen
class Outcome:
    """How a job that reached a final state ended."""

    state: State
    exit_code: int | None = None
    signal: int | None = None
    reason: str | None = None
    stdout_bytes: int = 0
    stderr_bytes: int = 0
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    cancelled_by: str | None = None
    #: Why kept output is shorter than it should be (a full disk): the
    #: truncated flags then say which stream lost bytes.
    output_error: str | None = None


@frozen
class Idempotency:
    """The client's C{Idempotency-Key} and the fingerprint of the request it
    came with (see L{cmdd.idempotency})."""

    key: str
    fingerprint: str


@frozen
class Job:
    """One job: its spec and everything that happened to it so far."""

    id: int
    spec: JobSpec
    state: State
    created: float
    owner: str = "admin"
    started: float | None = None
    completed: float | None = None
    outcome: Outcome | None = None
    idempotency: Idempotency | None = None
    #: The host that ran the job (from its L{Started} event).
    host: str | None = None
    #: How each of the job's callbacks ended, in sequence order (see
    #: L{cmdd.callbacks}): the ones not in here are still pending.
    callbacks_done: tuple[CallbackDone, ...] = ()
    #: When a scheduled job's C{run_at} released it into the queue.
    released: float | None = None
    #: The recurring schedule that created it, if any.
    schedule_id: int | None = None
    #: Its job id in Slurm (the Slurm executor; from its L{Submitted} event).
    slurm_job_id: str | None = None

    @property
    def duration(self) -> float | None:
        """Seconds from start to completion, when both are known."""
        if self.started is None or self.completed is None:
            return None
        return max(0.0, self.completed - self.started)


# --- events ---------------------------------------------------------------


@frozen
class Created:
    """A client's job was accepted; it waits for a free slot."""

    job_id: int
    at: float
    spec: JobSpec
    owner: str = "admin"
    idempotency: Idempotency | None = None
    schedule_id: int | None = None


@frozen
class Released:
    """A scheduled job's C{run_at} came: it joins the queue.

    Journaled, so that its history says when (and how late) it was released
    and a restart does not release it again.
    """

    job_id: int
    at: float


@frozen
class Modified:
    """A client changed a job that has not started (PATCH): its new spec."""

    job_id: int
    at: float
    spec: JobSpec


@frozen
class Started:
    """The job took a slot and is about to be spawned.

    Recorded (durably) before the spawn, so a crash can never make a job run
    twice: after a restart a started job is C{lost}, never re-run.
    """

    job_id: int
    at: float
    #: The host that runs it (C{None} in journals written before hosts were kept).
    host: str | None = None


@frozen
class Submitted:
    """A running job was handed to the cluster scheduler (the Slurm
    executor): its id there, by which a restarted daemon finds it again."""

    job_id: int
    at: float
    slurm_job_id: str


@frozen
class Ended:
    """The job reached a final state (from queued or running)."""

    job_id: int
    at: float
    outcome: Outcome


@frozen
class Deleted:
    """A finished job and its output were removed from history."""

    job_id: int
    at: float
    by: str | None = None


@frozen
class CallbackDone:
    """One of the job's webhook callbacks was delivered or given up.

    Only outcomes are journaled: which callbacks a job owes is derived from
    its own transitions (see L{cmdd.callbacks}), so a callback is pending
    from the moment its transition is durable until this event is.
    """

    job_id: int
    at: float
    sequence: int
    delivered: bool
    attempts: int
    #: The last attempt's HTTP status, or why it got none.
    status_code: int | None = None
    error: str | None = None


Event = Created | Released | Modified | Started | Submitted | Ended | Deleted | CallbackDone


def job_events(job: Job) -> list[Event]:
    """Events that rebuild C{job} exactly as it is (for compaction)."""
    events: list[Event] = [
        Created(job.id, job.created, job.spec, job.owner, job.idempotency, job.schedule_id)
    ]
    if job.released is not None:
        events.append(Released(job.id, job.released))
    if job.started is not None:
        events.append(Started(job.id, job.started, job.host))
    if job.slurm_job_id is not None and job.started is not None:
        events.append(Submitted(job.id, job.started, job.slurm_job_id))
    if job.outcome is not None and job.completed is not None:
        events.append(Ended(job.id, job.completed, job.outcome))
    events.extend(job.callbacks_done)
    return events


class InvalidTransitionError(ValueError):
    """An event that cannot happen to the job in its current state."""


_ENDABLE = frozenset({State.SCHEDULED, State.QUEUED, State.RUNNING})


def apply_event(job: Job | None, event: Event) -> Job | None:
    """Return the job as it is after C{event}; C{None} once it is deleted.

    @param job: the job before the event, C{None} if it does not exist yet.
    @raise InvalidTransitionError: if the event cannot happen in the job's state.
    """
    if isinstance(event, Created):
        if job is not None:
            raise InvalidTransitionError(f"job {event.job_id} already exists")
        return Job(
            id=event.job_id,
            spec=event.spec,
            state=State.QUEUED if event.spec.run_at is None else State.SCHEDULED,
            created=event.at,
            owner=event.owner,
            idempotency=event.idempotency,
            schedule_id=event.schedule_id,
        )
    if job is None:
        raise InvalidTransitionError(f"job {event.job_id} does not exist")
    if isinstance(event, Started):
        if job.state is not State.QUEUED:
            raise InvalidTransitionError(f"job {job.id} cannot start from {job.state.value}")
        # Built directly, not with attrs.evolve: replay applies millions of
        # these and evolve's introspection was a tenth of replay time.
        return Job(
            job.id, job.spec, State.RUNNING, job.created, job.owner, event.at, None, None,
            job.idempotency, event.host, job.callbacks_done, job.released, job.schedule_id,
        )  # fmt: skip
    if isinstance(event, Released | Modified):
        return _not_started_change(job, event)
    if isinstance(event, Submitted):
        if job.state is not State.RUNNING:
            raise InvalidTransitionError(f"job {job.id} is {job.state.value}, not running")
        return attrs.evolve(job, slurm_job_id=event.slurm_job_id)
    if isinstance(event, Ended):
        if job.state not in _ENDABLE or not event.outcome.state.final:
            raise InvalidTransitionError(
                f"job {job.id} cannot go from {job.state.value} to {event.outcome.state.value}"
            )
        return Job(
            job.id,
            job.spec,
            event.outcome.state,
            job.created,
            job.owner,
            job.started,
            event.at,
            event.outcome,
            job.idempotency,
            job.host,
            job.callbacks_done,
            job.released,
            job.schedule_id,
            job.slurm_job_id,
        )
    if isinstance(event, CallbackDone):
        if event.sequence != len(job.callbacks_done) + 1:
            raise InvalidTransitionError(f"job {job.id}: callback {event.sequence} out of order")
        return attrs.evolve(job, callbacks_done=(*job.callbacks_done, event))
    if not job.state.final:
        raise InvalidTransitionError(f"job {job.id} is {job.state.value}, not finished")
    return None


def _not_started_change(job: Job, event: Released | Modified) -> Job:
    if isinstance(event, Released):
        if job.state is not State.SCHEDULED:
            raise InvalidTransitionError(f"job {job.id} is {job.state.value}, not scheduled")
        return Job(
            job.id, job.spec, State.QUEUED, job.created, job.owner,
            idempotency=job.idempotency, callbacks_done=job.callbacks_done, released=event.at,
            schedule_id=job.schedule_id,
        )  # fmt: skip
    if job.state not in (State.SCHEDULED, State.QUEUED):
        raise InvalidTransitionError(f"job {job.id} is {job.state.value}; it cannot change")
    # A new run_at schedules it (again); dropping run_at queues it now.
    state, released = job.state, job.released
    if event.spec.run_at != job.spec.run_at:
        state = State.QUEUED if event.spec.run_at is None else State.SCHEDULED
        released = None
    return Job(
        job.id, event.spec, state, job.created, job.owner,
        idempotency=job.idempotency, callbacks_done=job.callbacks_done, released=released,
        schedule_id=job.schedule_id,
    )  # fmt: skip


def final_state(
    *,
    exit_code: int | None,
    signal: int | None,
    cancelled: bool,
    timed_out: bool,
) -> State:
    """The state a process's end puts its job in.

    Flags come first: a job killed by cancel or timeout may still exit 0
    (it may trap SIGTERM), and must not be reported as a success.
    """
    if cancelled:
        return State.CANCELLED
    if timed_out:
        return State.FAILED
    if signal is None and exit_code == 0:
        return State.SUCCEEDED
    return State.FAILED


def outcome_to_json(outcome: Outcome) -> dict[str, Any]:
    """The outcome's fields as plain JSON values."""
    return {
        "exit_code": outcome.exit_code,
        "signal": outcome.signal,
        "reason": outcome.reason,
        "stdout_bytes": outcome.stdout_bytes,
        "stderr_bytes": outcome.stderr_bytes,
        "truncated": {
            "stdout": outcome.stdout_truncated,
            "stderr": outcome.stderr_truncated,
        },
        "cancelled_by": outcome.cancelled_by,
        "output_error": outcome.output_error,
    }
