"""The job state machine: which events may happen, and what they change."""

from __future__ import annotations

import pytest

from cmdd.jobs import (
    FINAL_STATES,
    LEGACY_NAMES,
    Created,
    Deleted,
    Ended,
    InvalidTransitionError,
    Job,
    Outcome,
    Started,
    State,
    apply_event,
    final_state,
)
from cmdd.spec import parse_spec

SPEC = parse_spec({"command": "true"})


def created(job_id: int = 1) -> Job:
    job = apply_event(None, Created(job_id, 100.0, SPEC))
    assert job is not None
    return job


def test_life_of_a_successful_job() -> None:
    """created → queued, started → running, ended → final with timings."""
    job = created()
    assert job.state is State.QUEUED and job.created == 100.0
    job = apply_event(job, Started(1, 101.0))
    assert job is not None and job.state is State.RUNNING and job.started == 101.0
    outcome = Outcome(State.SUCCEEDED, exit_code=0, stdout_bytes=3)
    job = apply_event(job, Ended(1, 103.5, outcome))
    assert job is not None
    assert job.state is State.SUCCEEDED and job.outcome == outcome
    assert job.duration == 2.5
    assert apply_event(job, Deleted(1, 104.0)) is None


@pytest.mark.parametrize("state", [State.CANCELLED, State.NOT_EXECUTED])
def test_queued_job_can_end_without_running(state: State) -> None:
    """A queued job can be cancelled or fail to start; it has no duration."""
    job = apply_event(created(), Ended(1, 102.0, Outcome(state, reason="why")))
    assert job is not None and job.state is state and job.duration is None


def test_impossible_events_are_refused() -> None:
    """Events out of order are errors, never silently applied."""
    job = created()
    with pytest.raises(InvalidTransitionError):
        apply_event(job, Created(1, 1.0, SPEC))
    with pytest.raises(InvalidTransitionError):
        apply_event(None, Started(1, 1.0))
    with pytest.raises(InvalidTransitionError):
        apply_event(job, Deleted(1, 1.0))
    with pytest.raises(InvalidTransitionError):
        apply_event(job, Ended(1, 1.0, Outcome(State.RUNNING)))
    done = apply_event(job, Ended(1, 1.0, Outcome(State.CANCELLED)))
    with pytest.raises(InvalidTransitionError):
        apply_event(done, Started(1, 1.0))
    with pytest.raises(InvalidTransitionError):
        apply_event(done, Ended(1, 1.0, Outcome(State.FAILED)))


@pytest.mark.parametrize(
    ("exit_code", "signal", "cancelled", "timed_out", "expected"),
    [
        (0, None, False, False, State.SUCCEEDED),
        (1, None, False, False, State.FAILED),
        (None, 9, False, False, State.FAILED),
        (0, None, True, False, State.CANCELLED),
        (0, None, False, True, State.FAILED),
        (None, 15, True, True, State.CANCELLED),
    ],
)
def test_final_state_flags_come_first(
    exit_code: int | None, signal: int | None, cancelled: bool, timed_out: bool, expected: State
) -> None:
    """A killed job is never reported as a success, even if it exited 0."""
    assert (
        final_state(exit_code=exit_code, signal=signal, cancelled=cancelled, timed_out=timed_out)
        is expected
    )


def test_every_state_has_a_legacy_name() -> None:
    """The older NOT_STARTED/.../FINISHED_ERROR vocabulary covers every state."""
    assert set(LEGACY_NAMES) == set(State)
    assert {state for state in State if state.final} == FINAL_STATES
