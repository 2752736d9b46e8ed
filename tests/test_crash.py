"""kill -9 at random moments under concurrent load: nothing acknowledged is lost.

Real twistd, real processes, real fsync. Each round submits jobs from
several clients, kills the daemon with SIGKILL at a random moment, restarts
it and checks the durability promise against what the clients were told.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from daemons import wait_listening

pytestmark = pytest.mark.integration

TWISTD = str(Path(sys.executable).parent / "twistd")
MARKER = f"cmdd-crash-test-{os.getpid()}"
FINAL = {"succeeded", "failed", "not_executed", "cancelled", "lost"}


class Daemon:
    """A twistd cmdd process on a loopback port, restartable on one data dir."""

    def __init__(
        self,
        data_dir: Path,
        extra_args: list[str] | None = None,
        prefix: list[str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.extra_args = list(extra_args or [])
        #: Runs twistd through this (e.g. setpriv, to start it unprivileged).
        self.prefix = list(prefix or [])
        self.cwd = cwd
        self.token: str | None = None
        #: Known once started: it listens on a port the kernel picks.
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log = open(data_dir.parent / "daemon.log", "ab")

    def start(self) -> None:
        self.process = subprocess.Popen(
            [*self.prefix, TWISTD, "-n", "--pidfile=", "cmdd", "--data-dir", str(self.data_dir),
             "--listen", "tcp:0:interface=127.0.0.1", "--max-running", "4",
             "--kill-grace", "1", *self.extra_args],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=self.cwd,
        )
        (self.port,) = wait_listening(self.process, self.data_dir, Path(self.log.name))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.process.poll() is None, "the daemon must always start"
            try:
                if self.get("/healthz")[0] == 200:
                    # The first start wrote the admin's token (see README).
                    self.token = (self.data_dir / "admin.token").read_text().strip()
                    return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("daemon did not answer within 30 s")

    def kill9(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self.log.close()

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            headers = {"Content-Type": "application/json"} if body is not None else {}
            if self.token:
                headers["Authorization"] = f"Bearer {self.token}"
            data = json.dumps(body).encode() if body is not None else None
            connection.request(method, path, body=data, headers=headers)
            response = connection.getresponse()
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
        finally:
            connection.close()

    def get(self, path: str) -> tuple[int, Any]:
        return self.request("GET", path)

    def all_jobs(self) -> dict[int, dict[str, Any]]:
        jobs: dict[int, dict[str, Any]] = {}
        path: str | None = "/api/jobs?limit=1000"
        while path:
            status, page = self.get(path)
            assert status == 200
            for job in page["jobs"]:
                assert job["id"] not in jobs, f"job {job['id']} listed twice"
                jobs[job["id"]] = job
            path = page["next"]
        return jobs


def submitter(daemon: Daemon, name: str, replies: list[tuple[int, list[str]]],
              stop: threading.Event) -> None:
    """Submit jobs until the daemon dies; remember every 202 (id and argv).

    Nothing is asserted here: a failed assertion would only end this thread.
    The test's main thread checks the replies (L{merge_acknowledged}).
    """
    n = 0
    while not stop.is_set():
        n += 1
        marker = f"{name}-{n}"
        # Every 7th job runs long, so some are running when the kill comes;
        # the marker lets the test end the orphans a SIGKILLed daemon leaves.
        long = f"sleep 30; : {MARKER}"
        argv = ["/bin/sh", "-c", long if n % 7 == 0 else f"echo {marker}"]
        try:
            status, job = daemon.request("POST", "/api/jobs", {"command_line": argv})
        except (OSError, http.client.HTTPException, json.JSONDecodeError):
            return
        if status == 202:
            replies.append((job["id"], argv))  # list.append is atomic


def merge_acknowledged(
    acked: dict[int, list[str]], replies: list[list[tuple[int, list[str]]]]
) -> None:
    """Add every client's 202s to C{acked}; an id acknowledged twice fails the test."""
    for client_replies in replies:
        for job_id, argv in client_replies:
            assert job_id not in acked, (
                f"job id {job_id} acknowledged twice: {acked[job_id]} and {argv}"
            )
            acked[job_id] = argv


def test_an_id_acknowledged_twice_fails_in_the_main_thread() -> None:
    """The duplicate-id check runs where a failure fails the test."""
    acked: dict[int, list[str]] = {1: ["a"]}
    with pytest.raises(AssertionError, match="acknowledged twice"):
        merge_acknowledged(acked, [[(2, ["b"])], [(1, ["c"])]])


def test_kill_9_loses_no_acknowledged_job(tmp_path: Path) -> None:
    """Across many SIGKILLs mid-load: every job that got a 202 exists after restart
    with the same spec, none exists twice, finished results are unchanged, jobs
    that were running become lost, and the daemon always starts."""
    rng = random.Random(int(os.environ.get("CMDD_CRASH_SEED", "7")))
    daemon = Daemon(tmp_path / "data")
    acked: dict[int, list[str]] = {}
    finished_before: dict[int, Any] = {}
    lost_seen = 0
    try:
        daemon.start()
        for _round in range(8):
            stop = threading.Event()
            replies: list[list[tuple[int, list[str]]]] = [[] for _ in range(4)]
            clients = [
                threading.Thread(target=submitter, args=(daemon, f"r{_round}c{i}", replies[i],
                                                         stop), daemon=True)
                for i in range(4)
            ]
            for client in clients:
                client.start()
            time.sleep(rng.uniform(0.2, 1.2))
            daemon.kill9()
            stop.set()
            for client in clients:
                client.join(timeout=15)
                assert not client.is_alive(), "a client still submits after the kill"
            merge_acknowledged(acked, replies)
            daemon.start()
            jobs = daemon.all_jobs()
            missing = sorted(set(acked) - set(jobs))
            assert not missing, f"acknowledged jobs lost: {missing}"
            for job_id, argv in acked.items():
                assert jobs[job_id]["command_line"] == argv
            for job_id, result in finished_before.items():
                status, now = daemon.get(f"/api/results/{job_id}")
                assert status == 200 and now == result, f"result of {job_id} changed"
            for job_id, job in jobs.items():
                if job["state"] == "lost":
                    lost_seen += 1
                    assert "outcome is unknown" in job["reason"]
                if job["state"] in FINAL and job_id not in finished_before and len(
                    finished_before
                ) < 200:
                    status, result = daemon.get(f"/api/results/{job_id}")
                    assert status == 200
                    finished_before[job_id] = result
        assert len(acked) > 20, "the load was too small to prove anything"
        assert lost_seen > 0, "no job was running at a kill; the test proved less than it says"
    finally:
        daemon.stop()
        subprocess.run(["pkill", "-f", MARKER], check=False)
