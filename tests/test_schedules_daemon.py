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
