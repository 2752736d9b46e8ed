"""Exhausted descriptors, for real: a daemon started with RLIMIT_NOFILE 256.

While 1,000 client connections hold every descriptor the daemon may have, a
running job writes its output. Its output must be kept (or its loss visible
in the result: truncated plus output_error), the daemon must keep serving
once the flood ends, and no client ever gets a 5xx other than a polite 503.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from test_crash import Daemon

pytestmark = pytest.mark.integration

NOFILE = 256
FLOOD = 1000
OUTPUT_BYTES = 108_912


def wait_for(predicate: Any, seconds: float, what: str) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"gave up after {seconds}s waiting for {what}")


def flood(port: int, count: int) -> list[socket.socket]:
    """Open up to C{count} connections, each with a request sent."""
    held = []
    for _ in range(count):
        sock = socket.socket()
        sock.settimeout(0.5)
        try:
            sock.connect(("127.0.0.1", port))
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: cmdd.test\r\n\r\n")
        except OSError:
            sock.close()
            continue
        held.append(sock)
    return held


def statuses(held: list[socket.socket]) -> list[int]:
    """The status of every answer the flood connections got."""
    found = []
    for sock in held:
        sock.settimeout(0.05)
        with contextlib.suppress(OSError):
            data = sock.recv(65536)
            if data.startswith(b"HTTP/1.1 "):
                found.append(int(data.split(b" ", 2)[1]))
        sock.close()
    return found


def safe_get(daemon: Daemon, path: str) -> tuple[int, Any] | None:
    try:
        return daemon.get(path)
    except (OSError, http.client.HTTPException):
        return None


def test_a_descriptor_flood_loses_no_output_and_no_service(
    tmp_path: Path, job_files: Path
) -> None:
    """RLIMIT_NOFILE 256 and 1,000 connections: the job's output is kept or
    its loss is visible, no 500, and the daemon serves again afterwards."""
    go, done = job_files / "go", job_files / "done"
    script = (
        f"while [ ! -e {go} ]; do sleep 0.05; done; "
        f"yes line | head -c {OUTPUT_BYTES}; touch {done}"
    )
    daemon = Daemon(
        tmp_path / "data",
        prefix=["prlimit", f"--nofile={NOFILE}:{NOFILE}", "--"],
        extra_args=["--job-sandbox", "off"],
    )
    held: list[socket.socket] = []
    try:
        daemon.start()
        status, job = daemon.request("POST", "/api/jobs", {"command_line": ["sh", "-c", script]})
        assert status == 202, job
        job_id = job["id"]
        wait_for(
            lambda: daemon.get(f"/api/jobs/{job_id}")[1]["state"] == "running", 20, "running"
        )
        held = flood(daemon.port, FLOOD)
        go.touch()
        wait_for(done.exists, 30, "the job to write its output")
        answered = statuses(held)
        held = []
        log = (tmp_path / "daemon.log").read_text(errors="replace")
        assert "EMFILE" in log, "the flood did not exhaust the daemon's descriptors"
        assert "Unhandled" not in log and "Traceback" not in log
        assert all(code < 500 or code == 503 for code in answered), sorted(set(answered))
        status_job = wait_for(lambda: safe_get(daemon, f"/api/jobs/{job_id}"), 30, "service")
        assert status_job[0] == 200
        result = wait_for(
            lambda: (r := safe_get(daemon, f"/api/results/{job_id}")) and r[0] == 200 and r,
            30,
            "the result",
        )[1]
        assert result["state"] == "succeeded", result
        assert result["stdout_bytes"] == OUTPUT_BYTES
        kept = len(result["stdout"].encode())
        if kept != OUTPUT_BYTES:
            assert result["truncated"] and result["output_error"], (kept, result)
        for _ in range(20):  # it keeps serving
            assert daemon.get("/healthz")[0] == 200
        code, again = daemon.request("POST", "/api/jobs", {"command_line": ["echo", "after"]})
        assert code == 202, again
        final = wait_for(
            lambda: (r := daemon.get(f"/api/results/{again['id']}")) and r[0] == 200 and r,
            30,
            "the job after the flood",
        )[1]
        assert final["stdout"] == "after\n"
    finally:
        for sock in held:
            sock.close()
        daemon.stop()
