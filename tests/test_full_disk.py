"""A full disk, for real: the daemon's data directory on an 8 MiB tmpfs.

One job's output fills the disk; submissions, deletes and job ends then
meet ENOSPC. Nothing refused may be shown, the journal must never hold a
torn line in its middle, lost output must be visible in the result, and the
daemon must start again without any recovery option.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.test_crash import Daemon

pytestmark = pytest.mark.integration

FINAL = {"succeeded", "failed", "not_executed", "cancelled", "lost"}


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs (needs root and permission to mount; skipped otherwise)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", str(disk)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.decode(errors='replace')}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def wait_final(daemon: Daemon, job_id: int, seconds: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        status, job = daemon.get(f"/api/jobs/{job_id}")
        assert status == 200, job
        if job["state"] in FINAL:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not end within {seconds} s")


def submit(daemon: Daemon, argv: list[str]) -> tuple[int, Any]:
    return daemon.request("POST", "/api/jobs", {"command_line": argv})


def test_a_full_disk_refuses_cleanly_and_the_daemon_starts_again(small_disk: Path) -> None:
    """Fill the data directory's disk with one job's output, submit 400 jobs,
    free some space, submit 5 more, restart: every 202 job is there exactly
    once, no refused job is ever listed, the journal needs no recovery, and
    the job whose output was cut says so (truncated plus a reason)."""
    # Space an operator frees later (the filler cannot take it).
    reserve = small_disk / "reserve"
    reserve.write_bytes(b"\0" * (1024 * 1024))
    daemon = Daemon(small_disk)
    try:
        daemon.start()
        status, filler = submit(daemon, ["head", "-c", "16777216", "/dev/zero"])
        assert status == 202
        acked = {filler["id"]}
        wait_final(daemon, filler["id"])
        status, result = daemon.get(f"/api/results/{filler['id']}")
        assert status == 200
        assert result["state"] == "succeeded"
        assert result["stdout_bytes"] == 16 * 1024 * 1024
        assert result["truncated"]["stdout"] is True, "lost output is truncated output"
        assert result["output_error"] and "No space left" in result["output_error"]
        filler_result = result
        # A cut-back write freed a little: fill the rest, as other users would.
        ballast = small_disk / "ballast"
        fd = os.open(ballast, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError:
            pass
        finally:
            os.close(fd)
        refused = 0
        for n in range(400):
            status, body = submit(daemon, ["echo", f"job {n}"])
            assert status in (202, 503), (status, body)
            if status == 202:
                acked.add(body["id"])
            else:
                assert body["error"]["code"] == "JOURNAL_UNAVAILABLE"
                refused += 1
        assert refused > 300, "the disk was full for most submissions"
        listed = daemon.all_jobs()
        assert set(listed) == acked, "refused jobs are never listed"
        status, body = daemon.request("DELETE", f"/api/jobs/{filler['id']}")
        assert status == 503 and body["error"]["code"] == "JOURNAL_UNAVAILABLE", (status, body)
        assert daemon.get(f"/api/results/{filler['id']}") == (200, filler_result), "still there"
        ballast.unlink()
        reserve.unlink()
        for n in range(5):
            status, body = submit(daemon, ["echo", f"after {n}"])
            assert status == 202, body
            acked.add(body["id"])
            last = body["id"]
        for job_id in sorted(acked):
            wait_final(daemon, job_id)
        status, result = daemon.get(f"/api/results/{last}")
        assert result["stdout"] == "after 4\n" and result["output_error"] is None
        before = {job_id: daemon.get(f"/api/results/{job_id}")[1] for job_id in sorted(acked)}
        daemon.stop()
        # Restart on the same disk: no --journal-recover, nothing lost or added.
        daemon = Daemon(small_disk)
        daemon.start()
        after = daemon.all_jobs()
        assert set(after) == acked
        for job_id, result in before.items():
            assert daemon.get(f"/api/results/{job_id}")[1] == result
        assert not os.path.exists(small_disk / "journal.quarantine")
    finally:
        daemon.stop()
