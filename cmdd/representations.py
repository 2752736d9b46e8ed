"""How jobs, statuses, results and tokens look in JSON (pure).

Kept apart from the routes so representations, their field lists (for
C{fields=}) and the OpenAPI description can be read side by side.
"""

from __future__ import annotations

from typing import Any

from cmdd.jobs import LEGACY_NAMES, Job, outcome_to_json
from cmdd.statushistory import status_history
from cmdd.timefmt import format_rfc3339
from cmdd.tokens import Token


def rfc3339(timestamp: float | None) -> str | None:
    """UTC timestamp with milliseconds, e.g. C{2026-11-22T11:01:24.123Z}."""
    return None if timestamp is None else format_rfc3339(timestamp)


def links(job_id: int) -> dict[str, str]:
    """Where a job's representations live."""
    return {
        "self": f"/api/jobs/{job_id}",
        "status": f"/api/statuses/{job_id}",
        "result": f"/api/results/{job_id}",
        "stdout": f"/api/jobs/{job_id}/output/stdout",
        "stderr": f"/api/jobs/{job_id}/output/stderr",
    }


def job_json(job: Job) -> dict[str, Any]:
    """A job: spec, state, timestamps, links."""
    out: dict[str, Any] = {"id": job.id, "state": job.state.value, "owner": job.owner}
    out.update(job.spec.to_json())
    out["created"] = rfc3339(job.created)
    out["started"] = rfc3339(job.started)
    out["completed"] = rfc3339(job.completed)
    out["host"] = job.host
    if job.outcome is not None:
        out["exit_code"] = job.outcome.exit_code
        out["reason"] = job.outcome.reason
        if job.outcome.cancelled_by is not None:
            out["cancelled_by"] = job.outcome.cancelled_by
    if job.schedule_id is not None:
        out["schedule_id"] = job.schedule_id
    if job.slurm_job_id is not None:
        out["slurm_job_id"] = job.slurm_job_id
    out["status_history"] = status_history(job)
    out["links"] = links(job.id)
    return out


def status_json(job: Job) -> dict[str, Any]:
    """A job's status: small, for polling."""
    return {
        "id": job.id,
        "state": job.state.value,
        "legacy_state": LEGACY_NAMES[job.state],
        "done": job.state.final,
        "links": links(job.id),
    }


def result_json(job: Job, stdout: str | None = None, stderr: str | None = None) -> dict[str, Any]:
    """A finished job's result; the output texts only when given."""
    assert job.outcome is not None
    out: dict[str, Any] = {"id": job.id, "state": job.state.value}
    out.update(outcome_to_json(job.outcome))
    if stdout is not None:
        out["stdout"] = stdout
    if stderr is not None:
        out["stderr"] = stderr
    out["started"] = rfc3339(job.started)
    out["completed"] = rfc3339(job.completed)
    out["duration"] = job.duration
    out["links"] = links(job.id)
    return out


JOB_FIELDS = frozenset(
    {
        "id", "state", "owner", "command", "command_line", "environment",
        "working_directory", "stdin", "umask", "timeout", "labels", "user", "created",
        "webhooks", "host",
        "started", "completed", "exit_code", "reason", "cancelled_by", "links",
        "concurrency_key", "concurrency_limit", "run_at", "schedule_id", "status_history",
        "slurm_job_id", "slurm_state",
    }
)  # fmt: skip
STATUS_FIELDS = frozenset({"id", "state", "legacy_state", "done", "links"})
RESULT_FIELDS = frozenset(
    {
        "id", "state", "exit_code", "signal", "reason", "stdout_bytes", "stderr_bytes",
        "truncated", "cancelled_by", "output_error", "started", "completed", "duration", "links",
    }
)  # fmt: skip


def token_json(token: Token) -> dict[str, Any]:
    """A token's public record (never its secret or hash)."""
    return {
        "id": token.id,
        "owner": token.owner,
        "description": token.description,
        "created": rfc3339(token.created),
        "expires": rfc3339(token.expires),
        "parent": token.parent,
    }
