"""A job's status history: every state it went through, when, and why.

Pure: derived from the job's journaled times and outcome (created, released,
started, completed), so it costs no memory per job beyond the job itself.
"""

from __future__ import annotations

from typing import Any

from cmdd.jobs import Job, State
from cmdd.timefmt import format_rfc3339

#: A release later than this after its run_at is reported as C{late}.
LATE_AFTER_SECONDS = 1.0


def status_history(job: Job) -> list[dict[str, Any]]:
    """The job's states in order, e.g. scheduled, queued (late 12.3 s), running, cancelled."""
    history: list[dict[str, Any]] = []
    run_at = job.spec.run_at
    was_scheduled = run_at is not None and (
        job.state is State.SCHEDULED or job.released is not None or job.started is None
    )
    history.append(_entry(State.SCHEDULED if was_scheduled else State.QUEUED, job.created))
    if job.released is not None and run_at is not None:
        queued = _entry(State.QUEUED, job.released)
        queued["run_at"] = format_rfc3339(run_at)
        late = job.released - max(run_at, job.created)
        if late > LATE_AFTER_SECONDS:
            queued["late"] = round(late, 3)
        history.append(queued)
    if job.started is not None:
        history.append(_entry(State.RUNNING, job.started))
    if job.outcome is not None and job.completed is not None:
        end = _entry(job.state, job.completed)
        outcome = job.outcome
        if outcome.cancelled_by is not None:
            end["by"] = outcome.cancelled_by
        if outcome.reason is not None:
            end["reason"] = outcome.reason
        if outcome.exit_code is not None:
            end["exit_code"] = outcome.exit_code
        if outcome.signal is not None:
            end["signal"] = outcome.signal
        history.append(end)
    return history


def _entry(state: State, at: float) -> dict[str, Any]:
    return {"state": state.value, "at": format_rfc3339(at)}
