"""One log event per job transition, and a JSON-lines log for machines.

Fed by the job store's change listener, so every transition is logged once,
when it is durable. The events name the job, its owner, its new state and
what an operator needs to follow it; never its command, environment or
stdin (they may hold secrets).
"""

from __future__ import annotations

import sys

from twisted.logger import FileLogObserver, Logger, jsonFileLogObserver

from cmdd.jobs import Created, Deleted, Ended, Event, Job, Started

log = Logger(namespace="cmdd.jobs")


def log_transition(event: Event, job: Job | None) -> None:
    """Log C{event} (a store listener: C{job} is the job after it)."""
    if isinstance(event, Created) and job is not None:
        log.info("job {job_id} {state} (owner {owner})", job_id=job.id, state=job.state.value,
                 owner=job.owner)  # fmt: skip
    elif isinstance(event, Started) and job is not None:
        log.info("job {job_id} running (owner {owner}, waited {waited:.3f} s)", job_id=job.id,
                 state=job.state.value, owner=job.owner,
                 waited=max(0.0, event.at - job.created))  # fmt: skip
    elif isinstance(event, Ended) and job is not None:
        outcome = event.outcome
        log.info(
            "job {job_id} {state} (owner {owner}, exit code {exit_code}, signal {signal}, "
            "{duration} s){why}",
            job_id=job.id, state=job.state.value, owner=job.owner,
            exit_code=outcome.exit_code, signal=outcome.signal,
            duration="-" if job.duration is None else f"{job.duration:.3f}",
            reason=outcome.reason, cancelled_by=outcome.cancelled_by,
            why="" if outcome.reason is None else f": {outcome.reason}",
        )  # fmt: skip
    elif isinstance(event, Deleted):
        log.info("job {job_id} deleted (by {by})", job_id=event.job_id, state="deleted",
                 by=event.by or "-")  # fmt: skip


def json_to_stdout() -> FileLogObserver:
    """A log observer writing one JSON object per event to stdout, for
    journald or ELK: C{twistd -n --logger cmdd.joblog.json_to_stdout cmdd}."""
    # No RFC 7464 record separator (Twisted's default): plain JSON lines.
    return jsonFileLogObserver(sys.stdout, recordSeparator="")
