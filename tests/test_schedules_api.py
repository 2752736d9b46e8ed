"""/api/schedules over HTTP (in memory): codes, validation, ownership."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_api import Client

JOB = {"command": "true"}


@pytest.fixture
def client(tmp_path: Path) -> Client:
    client = Client(tmp_path, max_running=2, max_queued=10)
    client.api._schedules._service.startService()
    return client


def test_create_list_get_patch_delete(client: Client) -> None:
    """201 + Location, the representation, its fires and last jobs, PATCH, 204."""
    code, schedule, headers = client.json(
        "POST", "/api/schedules", {"cron": "*/2 * * * *", "timezone": "Europe/Berlin", "job": JOB}
    )
    assert code == 201 and headers.getRawHeaders("location") == ["/api/schedules/1"]
    assert schedule["next_run"] == "1970-01-01T00:02:00.000Z" and schedule["owner"] == "admin"
    assert schedule["concurrency_policy"] == "allow" and schedule["job"] == JOB
    client.clock.advance(120)
    client.clock.advance(0)
    code, schedule, _ = client.json("GET", "/api/schedules/1")
    assert code == 200 and schedule["fired"] == 1
    assert schedule["last_jobs"] == [{"id": 1, "state": "running"}]
    assert schedule["last_run"] == "1970-01-01T00:02:00.000Z"
    _, job, _ = client.json("GET", "/api/jobs/1")
    assert job["schedule_id"] == 1
    code, schedule, _ = client.json("PATCH", "/api/schedules/1", {"paused": True})
    assert code == 200 and schedule["paused"] is True and schedule["next_run"] is None
    code, listing, _ = client.json("GET", "/api/schedules")
    assert [s["id"] for s in listing["schedules"]] == [1]
    response, content = client.request("DELETE", "/api/schedules/1")
    assert response.code == 204 and content == b""
    code, error, _ = client.json("GET", "/api/schedules/1")
    assert code == 404 and error["error"]["code"] == "SCHEDULE_NOT_FOUND"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"job": JOB}, "INVALID_CRON"),
        ({"cron": "* * * *", "job": JOB}, "INVALID_CRON"),
        ({"cron": "99 * * * *", "job": JOB}, "INVALID_CRON"),
        ({"cron": "* * * * *"}, "INVALID_JOB"),
        ({"cron": "* * * * *", "job": {}}, "COMMAND_MISSING"),
        ({"cron": "* * * * *", "job": {"command": "x", "timeout": -1}}, "INVALID_TIMEOUT"),
        ({"cron": "* * * * *", "job": {"command": "x", "run_at": "2030-01-01T00:00:00Z"}},
         "INVALID_JOB"),
        ({"cron": "* * * * *", "job": JOB, "timezone": "Mars/Base"}, "INVALID_TIMEZONE"),
        ({"cron": "* * * * *", "job": JOB, "timezone": ""}, "INVALID_TIMEZONE"),
        ({"cron": "0 0 30 2 *", "job": JOB}, "INVALID_CRON"),
        ({"cron": "* * * * *", "job": JOB, "concurrency_policy": "never"},
         "INVALID_CONCURRENCY_POLICY"),
        ({"cron": "* * * * *", "job": JOB, "starting_deadline": 0}, "INVALID_STARTING_DEADLINE"),
        ({"cron": "* * * * *", "job": JOB, "starting_deadline": True},
         "INVALID_STARTING_DEADLINE"),
        ({"cron": "* * * * *", "job": JOB, "paused": "yes"}, "INVALID_PAUSED"),
        ({"cron": "* * * * *", "job": JOB, "every": 5}, "UNKNOWN_FIELD"),
        ([], "BODY_NOT_OBJECT"),
    ],
)
def test_bad_schedules_are_400(client: Client, body: Any, code: str) -> None:
    """Every invalid schedule is a 400 with its own code, and nothing is created."""
    status, error, _ = client.json("POST", "/api/schedules", body)
    assert status == 400 and error["error"]["code"] == code
    assert client.json("GET", "/api/schedules")[1] == {"schedules": []}


def test_bad_patch_is_400_and_changes_nothing(client: Client) -> None:
    """A PATCH is validated like a POST."""
    client.json("POST", "/api/schedules", {"cron": "* * * * *", "job": JOB})
    status, error, _ = client.json("PATCH", "/api/schedules/1", {"cron": "every minute"})
    assert status == 400 and error["error"]["code"] == "INVALID_CRON"
    assert client.json("GET", "/api/schedules/1")[1]["cron"] == "* * * * *"


def test_schedules_are_private_to_their_owner(client: Client) -> None:
    """A user sees and changes only their own schedules; others' are 404; admins see all."""
    client.token = client.add_user("alice")
    client.json("POST", "/api/schedules", {"cron": "* * * * *", "job": JOB})
    client.token = client.add_user("bob")
    assert client.json("GET", "/api/schedules")[1] == {"schedules": []}
    for method, body in (("GET", None), ("PATCH", {"paused": True}), ("DELETE", None)):
        status, error, _ = client.json(method, "/api/schedules/1", body)
        assert status == 404 and error["error"]["code"] == "SCHEDULE_NOT_FOUND"
    client.token = client.admin_token
    listing = client.json("GET", "/api/schedules")[1]["schedules"]
    assert [(s["id"], s["owner"]) for s in listing] == [(1, "alice")]


def test_a_schedule_cannot_run_as_another_user_without_permission(client: Client) -> None:
    """The run-as rules of a submit apply to a schedule's job."""
    client.token = client.add_user("alice")
    status, error, _ = client.json(
        "POST", "/api/schedules", {"cron": "* * * * *", "job": {"command": "x", "user": "root"}}
    )
    assert status == 403 and error["error"]["code"]
    assert client.json("GET", "/api/schedules")[1] == {"schedules": []}


@pytest.mark.parametrize("ident", ["0", "abc", "01", "99999999999999999999"])
def test_odd_schedule_ids_are_404(client: Client, ident: str) -> None:
    """Ids that are not ids are an unknown schedule."""
    status, error, _ = client.json("GET", f"/api/schedules/{ident}")
    assert status == 404 and error["error"]["code"] == "SCHEDULE_NOT_FOUND"


def test_jobs_can_be_listed_by_schedule(client: Client) -> None:
    """GET /api/jobs?schedule_id=N lists the jobs that schedule created."""
    client.json("POST", "/api/jobs", {"command": "true"})
    client.json("POST", "/api/schedules", {"cron": "* * * * *", "job": JOB})
    client.clock.advance(60)
    client.clock.advance(0)
    code, page, _ = client.json("GET", "/api/jobs?schedule_id=1&fields=id,schedule_id")
    assert code == 200 and page["jobs"] == [{"id": 2, "schedule_id": 1}]
    code, error, _ = client.json("GET", "/api/jobs?schedule_id=x")
    assert code == 400 and error["error"]["field"] == "schedule_id"
