"""The Slurm executor against a real one-node Slurm cluster.

The cluster comes up with C{scripts/slurm-cluster start} once for the
module and goes down afterwards. CI runs as root with Slurm installed
(C{.ci/run}); elsewhere these tests are skipped, saying why.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_crash import Daemon

ROOT = Path(__file__).resolve().parent.parent
CLUSTER = ROOT / "scripts" / "slurm-cluster"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="the Slurm executor runs as root (CI does)"),
    pytest.mark.skipif(
        shutil.which("slurmctld") is None or shutil.which("munged") is None,
        reason="Slurm is not installed (apt-get install slurm-wlm munge; .ci/run does)",
    ),
]


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    """A running one-node cluster, stopped after the module."""
    subprocess.run([str(CLUSTER), "start"], check=True, timeout=120)
    try:
        yield
    finally:
        subprocess.run([str(CLUSTER), "stop"], check=False, timeout=120)


@pytest.fixture(scope="module")
def shared() -> Iterator[Path]:
    """The nodes' output directory: somewhere job users can reach (pytest's
    own temporary directories are 0700)."""
    path = Path("/tmp") / f"cmdd-slurm-test-{uuid.uuid4().hex[:8]}"
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _config(tmp: Path, shared: Path, **executor: Any) -> Path:
    table = {"type": "slurm", "poll_interval": 0.2, "shared_dir": str(shared / tmp.name)}
    table.update(executor)
    lines = ["[executor]"] + [f"{key} = {json.dumps(value)}" for key, value in table.items()]
    path = tmp / "cmdd.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _daemon(tmp: Path, shared: Path, **executor: Any) -> Daemon:
    return Daemon(tmp / "data", extra_args=["--config", str(_config(tmp, shared, **executor))])


@pytest.fixture(scope="module")
def daemon(
    cluster: None, shared: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Daemon]:
    """One Slurm-backed daemon for the module's plain scenarios."""
    running = _daemon(tmp_path_factory.mktemp("slurm"), shared)
    running.start()
    try:
        yield running
    finally:
        running.stop()


def _submit(daemon: Daemon, spec: dict[str, Any]) -> int:
    status, job = daemon.request("POST", "/api/jobs", spec)
    assert status == 202, job
    job_id: int = job["id"]
    return job_id


def _result(daemon: Daemon, job_id: int, seconds: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while True:
        status, result = daemon.get(f"/api/results/{job_id}")
        if status == 200:
            return dict(result)
        assert time.monotonic() < deadline, f"job {job_id} did not end: {result}"
        time.sleep(0.05)


def _run(daemon: Daemon, spec: dict[str, Any], seconds: float = 30) -> dict[str, Any]:
    return _result(daemon, _submit(daemon, spec), seconds)


def test_shell_job_result_fields(daemon: Daemon) -> None:
    """A shell job on Slurm: UTF-8 stdout, stderr, its exit code, its Slurm id,
    run as job_user (nobody), not as root."""
    result = _run(daemon, {"command": "echo привет; echo oops >&2; id -u; exit 3"})
    assert result["state"] == "failed" and result["exit_code"] == 3, result
    assert result["signal"] is None and result["reason"] is None
    out = result["stdout"].split("\n")
    assert out[0] == "привет" and int(out[1]) != 0
    assert result["stderr"] == "oops\n"
    assert result["stdout_bytes"] == len(result["stdout"].encode())
    status, job = daemon.get(f"/api/jobs/{result['id']}")
    assert status == 200 and job["slurm_job_id"].isdigit()


def test_argv_job_is_not_re_split(daemon: Daemon) -> None:
    """command_line runs exactly as given: spaces, quotes and UTF-8 intact."""
    line = ["printf", "[%s]", "a b", "'q'", "é;echo no"]
    result = _run(daemon, {"command_line": line})
    assert result["state"] == "succeeded", result
    assert result["stdout"] == "[a b]['q'][é;echo no]"


def test_environment_working_directory_and_stdin(daemon: Daemon) -> None:
    """Variables (with commas, = and newlines), cwd and stdin reach the job;
    the daemon's own environment does not."""
    result = _run(
        daemon,
        {
            "command": 'printf "%s|" "$X" "$CMDD_JOB_ID" "${PYTEST_CURRENT_TEST-unset}"; pwd; cat',
            "environment": {"X": "a,b=c\nd"},
            "working_directory": "/tmp",
            "stdin": "from stdin ✓\n",
        },
    )
    assert result["state"] == "succeeded", result
    assert result["stdout"] == f"a,b=c\nd|{result['id']}|unset|/tmp\nfrom stdin ✓\n"


def test_signal_and_missing_program(daemon: Daemon) -> None:
    """A job killed by a signal reports the signal; a program that does not
    exist is not_executed with the reason."""
    killed = _run(daemon, {"command": "kill -KILL $$"})
    assert killed["state"] == "failed" and killed["signal"] == 9, killed
    missing = _run(daemon, {"command_line": ["no-such-program-cmdd"]})
    assert missing["state"] == "not_executed", missing
    assert "no-such-program-cmdd" in missing["reason"]


def test_timeout_ends_the_job(daemon: Daemon) -> None:
    """cmdd's timeout ends a Slurm job on time: failed, "timed out"."""
    started = time.monotonic()
    result = _run(daemon, {"command": "sleep 60", "timeout": 1})
    assert result["state"] == "failed" and result["reason"] == "timed out", result
    assert time.monotonic() - started < 15


def _survivors(marker: str) -> list[str]:
    # Only the job's own processes start with it (exec -a), not its wrapper.
    found = subprocess.run(
        ["pgrep", "-f", f"^{marker}"], capture_output=True, text=True, check=False
    )
    return found.stdout.split()


def test_cancel_leaves_no_survivor(daemon: Daemon) -> None:
    """Cancelling a running Slurm job ends it and everything it started."""
    marker = f"cmdd-slurm-{uuid.uuid4().hex[:8]}"
    script = f"(exec -a {marker}-child sleep 300) & exec -a {marker}-main sleep 300"
    job_id = _submit(daemon, {"command_line": ["bash", "-c", script]})
    deadline = time.monotonic() + 20
    while len(_survivors(marker)) < 2:
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.1)
    deadline = time.monotonic() + 10
    while daemon.get(f"/api/jobs/{job_id}")[1].get("slurm_state") != "RUNNING":
        assert time.monotonic() < deadline, "slurm_state never said RUNNING"
        time.sleep(0.1)
    status, _ = daemon.request("PATCH", f"/api/jobs/{job_id}", {"status": "cancelled"})
    assert status in (200, 202)
    result = _result(daemon, job_id)
    assert result["state"] == "cancelled", result
    deadline = time.monotonic() + 10
    while _survivors(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _survivors(marker) == []


def test_sbatch_refusal_is_not_executed_with_slurms_message(
    cluster: None, shared: Path, tmp_path: Path
) -> None:
    """A job Slurm refuses (no such partition) is not_executed, and the
    reason is Slurm's own message."""
    daemon = _daemon(tmp_path, shared, partition="no-such-partition")
    daemon.start()
    try:
        result = _run(daemon, {"command": "true"})
    finally:
        daemon.stop()
    assert result["state"] == "not_executed", result
    assert result["reason"].startswith("sbatch:") and "partition" in result["reason"].lower()


def test_restart_readopts_running_and_finished_jobs(
    cluster: None, shared: Path, tmp_path: Path
) -> None:
    """Slurm jobs run on while cmdd is down (kill -9): after the restart the
    one still running is tracked to its real end and the one that ended
    meanwhile gets its real outcome; neither is lost."""
    daemon = _daemon(tmp_path, shared)
    daemon.start()
    try:
        long_id = _submit(daemon, {"command": "sleep 4; echo long done"})
        short_id = _submit(daemon, {"command": "echo short; exit 4"})
        deadline = time.monotonic() + 20
        while True:  # both handed to Slurm (their ids journaled)
            jobs = [daemon.get(f"/api/jobs/{i}")[1] for i in (long_id, short_id)]
            if all("slurm_job_id" in job for job in jobs):
                break
            assert time.monotonic() < deadline
            time.sleep(0.05)
        daemon.kill9()
        time.sleep(2.5)  # the short job ends while cmdd is down
        daemon.start()
        short, long = _result(daemon, short_id), _result(daemon, long_id)
    finally:
        daemon.stop()
    assert short["state"] == "failed" and short["exit_code"] == 4, short
    assert short["stdout"] == "short\n"
    assert long["state"] == "succeeded" and long["stdout"] == "long done\n", long


def test_controller_down_refuses_new_jobs_until_it_answers(daemon: Daemon) -> None:
    """While the controller does not answer, the job sbatch could not hand
    over is not_executed with Slurm's message, new POSTs get 503
    EXECUTOR_UNAVAILABLE (and /readyz 503), and once it is back jobs are
    accepted and run again."""
    pid = int(Path("/var/lib/cmdd-slurm/ctld.pid").read_text())
    os.kill(pid, 15)
    try:
        refused = _run(daemon, {"command": "true"}, seconds=60)
        assert refused["state"] == "not_executed", refused
        assert "Unable to contact slurm controller" in refused["reason"]
        status, error = daemon.request("POST", "/api/jobs", {"command": "true"})
        assert status == 503 and error["error"]["code"] == "EXECUTOR_UNAVAILABLE", error
        assert daemon.get("/readyz")[0] == 503
    finally:
        subprocess.run([str(CLUSTER), "start"], check=True, timeout=120)
    deadline = time.monotonic() + 20
    while True:
        status, job = daemon.request("POST", "/api/jobs", {"command": "echo back"})
        if status == 202:
            break
        assert status == 503 and time.monotonic() < deadline, job
        time.sleep(0.2)
    assert _result(daemon, job["id"])["stdout"] == "back\n"


def test_follow_streams_output_while_the_slurm_job_runs(daemon: Daemon) -> None:
    """?follow=1 sends what Slurm's output file holds while the job still
    runs, then the rest, and ends when the job ends."""
    job_id = _submit(daemon, {"command": "echo first; sleep 3; echo second"})
    connection = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=30)
    try:
        connection.request(
            "GET", f"/api/jobs/{job_id}/output/stdout?follow=1",
            headers={"Authorization": f"Bearer {daemon.token}"},
        )  # fmt: skip
        response = connection.getresponse()
        assert response.status == 200
        first = response.read1(64)
        while not first.strip():
            first += response.read1(64)
        assert first == b"first\n"
        assert daemon.get(f"/api/statuses/{job_id}")[1]["done"] is False
        assert first + response.read() == b"first\nsecond\n"
    finally:
        connection.close()
    assert _result(daemon, job_id)["state"] == "succeeded"
