"""Which webhook callbacks a job owes, and what each one says (pure).

Nothing here is journaled on its own: a job's callbacks are derived from
its transitions (L{Started} makes C{begun}; L{Ended} makes C{ended},
C{cancelled} or C{error}), for the types its spec has a URL for, numbered
from 1 in that order. The journal holds only how each one ended
(L{CallbackDone}), so the callbacks still pending are those past the last
recorded outcome: a crash between a job's end and its callback loses
nothing, and after a restart the same callback (same sequence, same
C{webhook-id}) goes out again.
"""

from __future__ import annotations

from typing import Any

from attrs import frozen

from cmdd.jobs import Job, State
from cmdd.representations import rfc3339

#: Bytes of each output stream a callback carries.
OUTPUT_CAP = 64 * 1024

_END_TYPES = {
    State.SUCCEEDED: "ended",
    State.FAILED: "ended",
    State.CANCELLED: "cancelled",
    State.LOST: "error",
    State.NOT_EXECUTED: "error",
}


@frozen
class Callback:
    """One callback a job owes: its place in the job's order and where it goes."""

    job_id: int
    sequence: int
    type: str
    url: str
    #: When the transition that made it happened (lag and max age count from here).
    at: float


def callbacks_of(job: Job) -> list[Callback]:
    """Every callback C{job}'s transitions so far have made, in order."""
    hooks = job.spec.webhooks
    if not hooks:
        return []
    made: list[tuple[str, float]] = []
    if job.started is not None:
        made.append(("begun", job.started))
    if job.outcome is not None and job.completed is not None:
        made.append((_END_TYPES[job.state], job.completed))
    out: list[Callback] = []
    for kind, at in made:
        if kind in hooks:
            out.append(Callback(job.id, len(out) + 1, kind, hooks[kind], at))
    return out


def next_pending(job: Job) -> Callback | None:
    """The callback C{job} must deliver next, if any (the ones before it are done)."""
    owed = callbacks_of(job)
    done = len(job.callbacks_done)
    return owed[done] if done < len(owed) else None


def webhook_id(instance: str, callback: Callback) -> str:
    """The C{webhook-id}: the same on every attempt and after restarts, and
    never another callback's (job ids are never reused; C{instance} tells
    data directories apart)."""
    return f"msg_{instance}_{callback.job_id}_{callback.sequence}"


def _text(data: bytes | None) -> str | None:
    if data is None:
        return None
    return data[:OUTPUT_CAP].decode("utf-8", "replace")


def body_of(
    job: Job,
    callback: Callback,
    stdout: bytes | None = None,
    stderr: bytes | None = None,
) -> dict[str, Any]:
    """The JSON body of C{callback}.

    Every key is always there (C{null} when it does not apply yet, such as
    C{end} in C{begun}), so a receiver needs no per-type schema.

    @param stdout: the first bytes of the job's stdout (more than
        L{OUTPUT_CAP} marks it truncated); C{None} for C{begun}.
    """
    outcome = job.outcome if callback.type != "begun" else None
    out: dict[str, Any] = {
        "callback_type": callback.type,
        "job_id": job.id,
        "host": job.host,
        "begin": rfc3339(job.started),
        "end": None,
        "stdout": None,
        "stderr": None,
        "stdout_truncated": False,
        "stderr_truncated": False,
        "exit_code": None,
        "signal": None,
        "state": job.state.value if outcome is not None else State.RUNNING.value,
        "reason": None,
        "sequence": callback.sequence,
        "job": f"/api/jobs/{job.id}",
    }
    if outcome is not None:
        out.update(
            end=rfc3339(job.completed),
            stdout=_text(stdout),
            stderr=_text(stderr),
            stdout_truncated=outcome.stdout_truncated or len(stdout or b"") > OUTPUT_CAP,
            stderr_truncated=outcome.stderr_truncated or len(stderr or b"") > OUTPUT_CAP,
            exit_code=outcome.exit_code,
            signal=outcome.signal,
            reason=outcome.reason,
        )
    return out
