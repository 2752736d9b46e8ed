"""Integration: how the real daemon starts, fails to start and stops.

Real C{twistd -n cmdd} subprocesses and real signals: a failed start is one
line on stderr and a non-zero exit within seconds; SIGTERM and SIGINT drain
(new jobs get 503, C{/readyz} 503, running jobs finish or are cancelled after
C{stop_grace}) and exit 0, and no job is ever C{lost} after a clean stop.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import signal
import socket
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from procs import children_of, is_alive
from test_integration_daemon import (
    KILL_GRACE,
    TWISTD,
    Daemon,
    _serving,
    curl,
    launch,
    wait_until,
)

pytestmark = pytest.mark.integration

#: A failed start must end within this many seconds (twistd's imports included).
START_FAILURE_SECONDS = 15.0


def run_twistd(workdir: Path, *arguments: str) -> tuple[int, str, str, float]:
    """Run C{twistd -n --pidfile= cmdd ARGS} to its end: (status, stdout, stderr, seconds)."""
    began = time.monotonic()
    done = subprocess.run(
        [TWISTD, "-n", "--pidfile=", "cmdd", *arguments],
        cwd=workdir,
        capture_output=True,
        timeout=60,
        check=False,
        start_new_session=True,
    )
    return (
        done.returncode,
        done.stdout.decode(errors="replace"),
        done.stderr.decode(errors="replace"),
        time.monotonic() - began,
    )


def lock_is_free(data_dir: Path) -> bool:
    """Whether nothing holds the data directory's lock."""
    fd = os.open(data_dir / "lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def test_port_in_use_fails_the_start_with_one_line(tmp_path: Path) -> None:
    """A port already in use: one line on stderr naming it, exit 1 within
    seconds, no traceback, and the data directory's lock released (not a
    process that keeps running without listening)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        status, out, err, seconds = run_twistd(
            tmp_path,
            "--data-dir",
            str(tmp_path / "data"),
            "--listen",
            f"ssl:{port}:interface=127.0.0.1",
            "--job-sandbox",
            "off",
        )
    assert status == 1, (status, out, err)
    assert seconds < START_FAILURE_SECONDS
    assert err.splitlines() == [
        f"cmdd: cannot start: cannot listen on 127.0.0.1:{port}: Address already in use"
    ]
    assert "Traceback" not in out + err
    assert "cannot start" in out, "the log says it too"
    assert lock_is_free(tmp_path / "data")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--max-running", "-3"], "cmdd: bad configuration: max_running must be more than 0"),
        (["--stop-grace", "soon"], "cmdd: bad configuration: stop_grace must be a number"),
        (["--config", "bad.toml"], "cmdd: bad configuration: config file bad.toml: unknown"),
        (["--max-runing", "3"], "cmdd: option --max-runing not recognized"),
    ],
    ids=["bad-value", "bad-stop-grace", "bad-toml-key", "unknown-option"],
)
def test_bad_config_is_one_line_on_stderr(
    tmp_path: Path, arguments: list[str], message: str
) -> None:
    """A bad setting is one line on stderr and exit 2, not the error at the
    end of 30 lines of usage text on stdout."""
    (tmp_path / "bad.toml").write_text("bogus = 1\n")
    status, out, err, seconds = run_twistd(tmp_path, *arguments)
    assert status == 2, (status, out, err)
    assert seconds < START_FAILURE_SECONDS
    assert len(err.splitlines()) == 1 and err.startswith(message), err
    assert out == ""
    assert not (tmp_path / "cmdd-data").exists()


def wait_running(daemon: Daemon, job_id: int) -> None:
    """Wait until the job is running."""
    wait_until(lambda: daemon.job(job_id)["state"] == "running", 15, f"job {job_id} to run")


def _states(daemon: Daemon) -> Counter[str]:
    jobs = daemon.curl(daemon.url("/api/jobs?limit=1000")).json()["jobs"]
    return Counter(job["state"] for job in jobs)


def test_clean_stops_never_lose_a_running_job(tmp_path: Path) -> None:
    """11 clean stops (SIGTERM and SIGINT in turn), each with a job running:
    every stop exits 0 after the job finished, every job ends succeeded with
    an ended line in the journal, none is lost."""
    data_dir = tmp_path / "data"
    stops = 11
    for round_number in range(stops):
        daemon = launch(tmp_path, _serving(data_dir, job_sandbox="off"))
        try:
            job_id = daemon.submit({"command": "sleep 1; echo done"}).json()["id"]
            wait_running(daemon, job_id)
            daemon.process.send_signal(signal.SIGINT if round_number % 2 else signal.SIGTERM)
            status = daemon.process.wait(30)
        finally:
            daemon.stop()
        assert status == 0, daemon.log_text()
        assert "Traceback" not in daemon.log_text()
    ended = [
        record
        for record in map(json.loads, (data_dir / "journal.jsonl").read_text().splitlines())
        if record.get("type") == "ended"
    ]
    restarted = launch(tmp_path, _serving(data_dir))
    try:
        states = _states(restarted)
    finally:
        restarted.stop()
    assert states == Counter({"succeeded": stops}), states
    assert len(ended) == stops, "every outcome is in the journal before exit"


def test_drain_refuses_new_jobs_and_a_second_signal_ends_the_rest(
    tmp_path: Path,
) -> None:
    """During the drain POST /api/jobs answers 503 SHUTTING_DOWN with
    Retry-After and /readyz (no token needed) 503, while reads still work; a
    second SIGTERM ends the running job at once, recorded cancelled."""
    data_dir = tmp_path / "data"
    daemon = launch(tmp_path, _serving(data_dir, job_sandbox="off", stop_grace="60"))
    try:
        ready = curl("-k", daemon.url("/readyz"))
        assert ready.status == 200 and ready.json() == {"status": "ready"}
        job_id = daemon.submit({"command": "sleep 600"}).json()["id"]
        wait_until(lambda: daemon.job(job_id)["state"] == "running", 15, "the job to run")
        daemon.process.send_signal(signal.SIGTERM)
        draining = wait_until(
            lambda: (r := curl("-k", daemon.url("/readyz"))).status == 503 and r,
            10,
            "/readyz to say draining",
        )
        assert draining.json() == {"status": "draining"}
        assert "retry-after" in draining.headers
        refused = daemon.submit({"command": "true"})
        assert refused.status == 503 and refused.error_code() == "SHUTTING_DOWN"
        assert "retry-after" in refused.headers
        assert daemon.job(job_id)["state"] == "running", "reads still work"
        time.sleep(1)
        assert daemon.process.poll() is None, "the drain waits for the job"
        asked = time.monotonic()
        daemon.process.send_signal(signal.SIGTERM)
        status = daemon.process.wait(KILL_GRACE + 15)
        assert time.monotonic() - asked < KILL_GRACE + 10
    finally:
        daemon.stop()
    assert status == 0, daemon.log_text()
    restarted = launch(tmp_path, _serving(data_dir))
    try:
        job = restarted.job(job_id)
        assert (job["state"], job["reason"]) == (
            "cancelled",
            "the daemon stopped (SIGTERM received twice)",
        )
        assert _states(restarted) == Counter({"cancelled": 1}), "the refused job does not exist"
    finally:
        restarted.stop()


def test_jobs_running_past_the_grace_are_cancelled_and_recorded(tmp_path: Path) -> None:
    """After stop_grace, running jobs (one ignoring SIGTERM) are ended
    (TERM, kill_grace, KILL) and recorded cancelled; the daemon exits 0."""
    data_dir = tmp_path / "data"
    grace = 2.0
    daemon = launch(tmp_path, _serving(data_dir, job_sandbox="off", stop_grace=str(grace)))
    try:
        ids = [
            daemon.submit({"command": command}).json()["id"]
            for command in ("sleep 600", "trap '' TERM; sleep 600")
        ]
        for job_id in ids:
            wait_running(daemon, job_id)
        asked = time.monotonic()
        daemon.process.send_signal(signal.SIGINT)
        status = daemon.process.wait(grace + KILL_GRACE + 20)
        seconds = time.monotonic() - asked
    finally:
        daemon.stop()
    assert status == 0, daemon.log_text()
    assert grace <= seconds < grace + KILL_GRACE + 10
    restarted = launch(tmp_path, _serving(data_dir))
    try:
        for job_id in ids:
            job = restarted.job(job_id)
            assert job["state"] == "cancelled"
            assert job["reason"] == "the daemon stopped (stop_grace of 2 s passed)"
    finally:
        restarted.stop()


def _processes_with(marker: str) -> list[int]:
    """Live processes whose command line holds C{marker}."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                    command = cmdline.read()
            except OSError:
                continue
            if marker.encode() in command and is_alive(int(entry)):
                found.append(int(entry))
    return found


def test_what_outlives_daemon_and_spawner_is_killed_at_restart(tmp_path: Path) -> None:
    """Without a sandbox, killing the daemon and its spawner together (-9)
    leaves the job's children running; the next start kills them (by the
    job's CMDD_RUN marker), logs it, and records the job lost."""
    data_dir = tmp_path / "data"
    marker = f"{secrets.randbelow(10**6) + 10**6}"
    crashed = launch(tmp_path, _serving(data_dir, job_sandbox="off"))
    try:
        job_id = crashed.submit({"command": f"setsid sleep {marker}.1 & sleep {marker}.2"}).json()[
            "id"
        ]
        wait_until(lambda: len(_processes_with(marker)) >= 2, 15, "the job's processes")
        spawners = children_of(crashed.process.pid)
        crashed.process.kill()
        for spawner in spawners:
            os.kill(spawner, signal.SIGKILL)
        crashed.process.wait(10)
        time.sleep(1)
        assert len(_processes_with(marker)) == 2, "the case the spawner cannot cover"
        restarted = launch(tmp_path, _serving(data_dir), ports=crashed.ports)
        try:
            wait_until(lambda: not _processes_with(marker), 5, "the leftovers to be killed")
            job = restarted.job(job_id)
            log_text = restarted.log_text()
        finally:
            restarted.stop()
    finally:
        crashed.stop()
        for pid in _processes_with(marker):
            os.kill(pid, signal.SIGKILL)
    assert job["state"] == "lost"
    assert f"job {job_id}: killed 2 process(es) the previous daemon left running" in log_text
