"""Idempotency and concurrency keys against a real twistd daemon.

Real HTTP, real processes, real fsync and a real SIGKILL.
"""

from __future__ import annotations

import http.client
import itertools
import json
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from test_crash import FINAL, Daemon

pytestmark = pytest.mark.integration


def post(daemon: Daemon, body: Any, key: str | None = None) -> tuple[int, Any]:
    """POST /api/jobs, with an Idempotency-Key when given."""
    connection = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=10)
    try:
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {daemon.token}"}
        if key is not None:
            headers["Idempotency-Key"] = f'"{key}"'
        connection.request("POST", "/api/jobs", body=json.dumps(body).encode(), headers=headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def wait_final(daemon: Daemon, job_id: int, seconds: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        status, job = daemon.get(f"/api/jobs/{job_id}")
        assert status == 200
        if job["state"] in FINAL:
            return dict(job)
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not end within {seconds} s")


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    data = tmp_path / "data"
    data.mkdir()
    running = Daemon(data)
    running.start()
    yield running
    running.stop()


def test_a_key_survives_kill_9_and_the_job_runs_at_most_once(
    daemon: Daemon, job_files: Path
) -> None:
    """SIGKILL right after the 202, restart, retry with the same key: the
    same job id comes back, and the command ran once (or, if the kill caught
    it running, is lost), never twice."""
    runs = job_files / "runs"
    body = {"command_line": ["/bin/sh", "-c", f"echo ran >> {runs}"]}
    code, job = post(daemon, body, key="deploy-1")
    assert code == 202
    daemon.kill9()
    daemon.start()
    code, again = post(daemon, body, key="deploy-1")
    assert code in (200, 202) and again["id"] == job["id"]
    final = wait_final(daemon, job["id"])
    code, other = post(daemon, {"command": "true"}, key="deploy-1")
    assert code == 422 and other["error"]["code"] == "IDEMPOTENCY_KEY_REUSED"
    jobs = daemon.all_jobs()
    assert list(jobs) == [job["id"]]
    lines = runs.read_text().splitlines() if runs.exists() else []
    assert len(lines) <= 1
    assert final["state"] in ("succeeded", "lost")
    if final["state"] == "succeeded":
        assert lines == ["ran"]


def _moment(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_jobs_with_one_key_never_overlap(daemon: Daemon, job_files: Path) -> None:
    """Three jobs with one concurrency key (limit 1) run one after the
    other, in order, though the daemon has free slots; a later job with
    another key is not held up by them."""
    gate = job_files / "gate"
    command = f"while [ ! -e {gate} ]; do sleep 0.02; done; sleep 0.1"
    ids = []
    for _ in range(3):
        code, job = post(daemon, {"command": command, "concurrency_key": "db"})
        assert code == 202 and job["concurrency_limit"] == 1
        ids.append(job["id"])
    code, other = post(daemon, {"command": "true", "concurrency_key": "web"})
    assert code == 202
    # The first "db" job waits for the gate: "web" runs meanwhile, the
    # other "db" jobs wait their turn.
    assert wait_final(daemon, other["id"])["state"] == "succeeded"
    states = [daemon.get(f"/api/statuses/{job_id}")[1]["state"] for job_id in ids]
    assert states == ["running", "queued", "queued"]
    gate.touch()
    jobs = [wait_final(daemon, job_id) for job_id in ids]
    assert all(job["state"] == "succeeded" for job in jobs)
    for before, after in itertools.pairwise(jobs):
        assert _moment(after["started"]) >= _moment(before["completed"])
