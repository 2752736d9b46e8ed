"""run_at, status_history and PATCH of a job that has not started, over HTTP (in memory)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_api import Client

from cmdd.runat import RunAtService

MINUTE = "1970-01-01T00:01:00Z"


@pytest.fixture
def client(tmp_path: Path) -> Client:
    client = Client(tmp_path, max_running=2, max_queued=10)
    client.run_at = RunAtService(client.manager, client.clock)  # type: ignore[attr-defined]
    client.run_at.startService()  # type: ignore[attr-defined]
    return client


def test_scheduled_job_history_says_when_and_how_late(client: Client) -> None:
    """The full job lists every state with its time; a late release says how late."""
    code, job, _ = client.json("POST", "/api/jobs", {"command": "true", "run_at": MINUTE})
    assert code == 202 and job["state"] == "scheduled" and job["run_at"].startswith(MINUTE[:-1])
    client.clock.advance(75)  # the alarm rang late (say, a busy host)
    client.clock.advance(0)
    client.executor.by_job(1).finish(0)
    code, job, _ = client.json("GET", "/api/jobs/1?fields=id,status_history")
    assert code == 200 and set(job) == {"id", "status_history"}
    assert [entry["state"] for entry in job["status_history"]] == [
        "scheduled", "queued", "running", "succeeded",
    ]
    queued = job["status_history"][1]
    assert queued["late"] == 15.0 and queued["at"] == "1970-01-01T00:01:15.000Z"
    assert job["status_history"][3]["exit_code"] == 0


def test_cancel_history_names_who_cancelled(client: Client) -> None:
    """A cancelled scheduled job's history ends with who cancelled it and why."""
    client.json("POST", "/api/jobs", {"command": "true", "run_at": MINUTE})
    code, job, _ = client.json("PATCH", "/api/jobs/1", {"status": "cancelled"})
    assert code == 200 and job["state"] == "cancelled"
    end = job["status_history"][-1]
    assert end["state"] == "cancelled" and end["by"] == "admin" and "admin" in end["reason"]
    client.clock.advance(120)
    assert client.executor.started == []


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"command": "true", "run_at": "1970-01-01T00:01:00"}, "INVALID_RUN_AT"),
        ({"command": "true", "run_at": "1970-01-01T00:01:00+25:00"}, "INVALID_RUN_AT"),
        ({"command": "true", "run_at": "2999-01-01T00:00:00Z"}, "INVALID_RUN_AT"),
        ({"command": "true", "run_at": 60}, "INVALID_RUN_AT"),
    ],
)
def test_bad_run_at_is_400(client: Client, body: dict[str, object], code: str) -> None:
    """A run_at without an offset, not RFC 3339, or years ahead is a 400 with its code."""
    status, error, _ = client.json("POST", "/api/jobs", body)
    assert status == 400 and error["error"]["code"] == code


def test_patch_changes_a_scheduled_job_and_re_arms_it(client: Client) -> None:
    """environment, labels, timeout and run_at of a job not started change, validated."""
    client.json("POST", "/api/jobs", {"command": "true", "run_at": MINUTE})
    code, job, _ = client.json("PATCH", "/api/jobs/1", {
        "environment": {"A": "1"}, "labels": {"team": "ops"}, "timeout": 30,
        "run_at": "1970-01-01T00:00:10Z",
    })  # fmt: skip
    assert code == 200 and job["state"] == "scheduled"
    assert (job["environment"], job["labels"], job["timeout"]) == ({"A": "1"}, {"team": "ops"}, 30)
    client.clock.advance(10)
    client.clock.advance(0)
    assert client.executor.by_job(1).spec.environment == {"A": "1"}


def test_patch_run_at_null_queues_a_scheduled_job_now(client: Client) -> None:
    """Removing run_at (null) queues the job at once."""
    client.json("POST", "/api/jobs", {"command": "true", "run_at": MINUTE})
    code, job, _ = client.json("PATCH", "/api/jobs/1", {"run_at": None})
    assert code == 200 and job["state"] == "queued"
    client.clock.advance(0)
    assert [e.job_id for e in client.executor.started] == [1]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"status": "cancelled", "labels": {"a": "b"}}, "INVALID_PATCH"),
        ({"command": "false"}, "INVALID_PATCH"),
        ({}, "INVALID_PATCH"),
        ({"timeout": -1}, "INVALID_TIMEOUT"),
        ({"environment": {"1A": "x"}}, "INVALID_ENVIRONMENT"),
        ({"run_at": "soon"}, "INVALID_RUN_AT"),
    ],
)
def test_bad_patches_are_400(client: Client, body: dict[str, object], code: str) -> None:
    """A patch mixing cancel and changes, changing other fields, or invalid is a 400."""
    client.json("POST", "/api/jobs", {"command": "true", "run_at": MINUTE})
    status, error, _ = client.json("PATCH", "/api/jobs/1", body)
    assert status == 400 and error["error"]["code"] == code
    _, job, _ = client.json("GET", "/api/jobs/1")
    assert "environment" not in job and job["state"] == "scheduled"


def test_patch_is_409_once_the_job_runs(client: Client) -> None:
    """A running job cannot change any more: 409."""
    client.json("POST", "/api/jobs", {"command": "true"})
    client.clock.advance(0)
    status, error, _ = client.json("PATCH", "/api/jobs/1", {"labels": {"a": "b"}})
    assert status == 409 and error["error"]["code"] == "JOB_STARTED"


def test_patch_of_another_users_job_is_404(client: Client) -> None:
    """Other users' jobs cannot be changed, nor seen to exist."""
    client.json("POST", "/api/jobs", {"command": "true", "run_at": MINUTE})
    client.token = client.add_user("bob")
    status, error, _ = client.json("PATCH", "/api/jobs/1", {"labels": {"a": "b"}})
    assert status == 404 and error["error"]["code"] == "JOB_NOT_FOUND"
