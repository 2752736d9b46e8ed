"""Scheduled and recurring jobs across kill -9, with real twistd and real HTTP."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from test_crash import Daemon

from cmdd.timefmt import format_rfc3339

pytestmark = pytest.mark.integration


def wait_for(daemon: Daemon, path: str, done: Any, seconds: float = 60) -> Any:
    """GET path until done(body) holds."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        status, body = daemon.get(path)
        if status == 200 and done(body):
            return body
        time.sleep(0.1)
    raise AssertionError(f"{path} never got there: {body}")


def journal_types(data_dir: Path) -> list[str]:
    lines = (data_dir / "journal.jsonl").read_text().splitlines()
    return [json.loads(line)["type"] for line in lines]


@pytest.fixture
def daemon(tmp_path: Path) -> Any:
    data_dir = tmp_path / "data"
    daemon = Daemon(data_dir)
    yield daemon
    daemon.stop()


def test_run_at_passed_while_killed_runs_once_at_start_and_says_late(daemon: Daemon) -> None:
    """A job due while the daemon was down (kill -9) runs once at the next start, late."""
    daemon.start()
    run_at = format_rfc3339(time.time() + 3)
    status, job = daemon.request("POST", "/api/jobs", {"command": "true", "run_at": run_at})
    assert status == 202 and job["state"] == "scheduled"
    daemon.kill9()
    time.sleep(4)  # run_at passes while nothing runs
    daemon.start()
    job = wait_for(daemon, f"/api/jobs/{job['id']}", lambda job: job["state"] == "succeeded")
    states = [entry["state"] for entry in job["status_history"]]
    assert states == ["scheduled", "queued", "running", "succeeded"]
    assert job["status_history"][1]["late"] > 1
    assert journal_types(daemon.data_dir).count("started") == 1


def _append_as_if_down_since(data_dir: Path, schedule: dict[str, Any], since: float) -> None:
    """Journal the schedule as last fired at C{since}: the daemon was down since then."""
    import attrs

    from cmdd.codec import decode, encode
    from cmdd.schedule import ScheduleSaved

    path = data_dir / "journal.jsonl"
    lines = path.read_bytes().splitlines()
    records = [decode(line) for line in lines]
    saved = [r.item for r in records if isinstance(r.item, ScheduleSaved)]
    assert saved and saved[-1].schedule.id == schedule["id"]
    old = attrs.evolve(saved[-1].schedule, since=since, created=since)
    with path.open("ab") as journal:
        journal.write(encode(max(r.seq for r in records) + 1, ScheduleSaved(since, old)))


def test_a_schedule_survives_kill_9_and_fires_a_missed_slot_once(daemon: Daemon) -> None:
    """A schedule is durable; fires missed while down run once at start, never again."""
    daemon.start()
    status, schedule = daemon.request(
        "POST", "/api/schedules", {"cron": "0 0 1 1 *", "job": {"command": "true"}}
    )
    assert status == 201
    daemon.kill9()
    # As if it last fired two years ago: two yearly fires were missed.
    _append_as_if_down_since(daemon.data_dir, schedule, time.time() - 2 * 366 * 86400)
    daemon.start()
    path = f"/api/schedules/{schedule['id']}"
    after = wait_for(daemon, path, lambda s: s["last_jobs"] and s["fired"] == 1)
    assert after["skipped"] == 1 and after["cron"] == "0 0 1 1 *"
    job_id = after["last_jobs"][0]["id"]
    wait_for(daemon, f"/api/jobs/{job_id}", lambda job: job["state"] == "succeeded")
    daemon.kill9()
    daemon.start()
    again = wait_for(daemon, path, lambda s: True)
    assert (again["fired"], again["skipped"]) == (1, 1)
    status, jobs = daemon.get("/api/jobs?fields=id,schedule_id")
    assert [job["id"] for job in jobs["jobs"] if job.get("schedule_id") == schedule["id"]] == [
        job_id
    ]
