"""A job can never reach the daemon: real twistd, real jobs trying real attacks.

Each test starts the daemon the way README says (as root, or as an
unprivileged user), submits jobs that try to read its secrets, write its
data directory, look at its /proc entries and signal it, and checks that
every attempt failed and the daemon is unharmed.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from procs import is_alive
from test_crash import TWISTD, Daemon

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="these attacks need a root daemon (CI is root)"),
]

BWRAP = shutil.which("bwrap")
needs_bwrap = pytest.mark.skipif(BWRAP is None, reason="bubblewrap is not installed")

#: What the attacking job tries; each line prints "NAME ok" only if it worked.
ATTACKS = r"""
d="$1"; daemon="$2"
try() { name="$1"; shift; if "$@" >/dev/null 2>&1; then echo "$name ok"; fi; }
try read-admin-token cat "$d/admin.token"
try read-users cat "$d/users"
try read-tokens cat "$d/tokens.json"
try read-journal cat "$d/journal.jsonl"
try list-data-dir sh -c "ls -A '$d' | grep -q ."
try write-data-dir sh -c "echo x > '$d/planted'"
try read-cwd-of-daemon cat "/proc/$daemon/cwd/admin.token"
try read-environ-of-daemon cat "/proc/$daemon/environ"
try read-fds-of-daemon ls "/proc/$daemon/fd"
try signal-daemon kill -0 "$daemon"
try is-root sh -c 'test "$(id -u)" = 0'
try move-data-dir mv "$d" "$d.moved"
try move-data-parent mv "$(dirname "$d")" "$(dirname "$d").moved"
# kill(2) may "succeed" and be ignored (a PID namespace's init): look at the effect.
kill -STOP 1 "$PPID" 2>/dev/null; sleep 0.2
try stop-spawner grep -q '^State:[[:space:]]*T' /proc/1/status "/proc/$PPID/status"
kill -KILL 1 "$PPID" 2>/dev/null
echo done
"""


def wait_result(daemon: Daemon, job_id: int, timeout: float = 20) -> dict[str, Any]:
    """The job's result once it is final."""
    deadline = time.monotonic() + timeout
    while True:
        status, result = daemon.get(f"/api/results/{job_id}")
        if status == 200:
            return dict(result)
        assert time.monotonic() < deadline, f"job {job_id} did not end"
        time.sleep(0.05)


def attack(daemon: Daemon) -> list[str]:
    """Run the attacks as a job; the ones that worked."""
    assert daemon.process is not None
    status, job = daemon.request(
        "POST",
        "/api/jobs",
        {
            "command_line": [
                "sh", "-c", ATTACKS, "attack", str(daemon.data_dir), str(daemon.process.pid),
            ]
        },
    )  # fmt: skip
    assert status == 202, job
    result = wait_result(daemon, job["id"])
    assert result["stdout"].endswith("done\n"), result
    return [line for line in result["stdout"].splitlines() if line.endswith(" ok")]


def unharmed(daemon: Daemon) -> None:
    """The daemon still serves, its data directory is where it was with nothing
    planted, and the spawner still runs jobs."""
    assert daemon.process is not None and daemon.process.poll() is None
    assert daemon.get("/healthz")[0] == 200
    assert (daemon.data_dir / "journal.jsonl").exists(), "the data directory was moved"
    assert not (daemon.data_dir / "planted").exists()
    status, job = daemon.request("POST", "/api/jobs", {"command": "echo still", "timeout": 10})
    assert status == 202, job
    assert wait_result(daemon, job["id"], timeout=10)["stdout"] == "still\n"


@pytest.fixture
def unix_user() -> Iterator[pwd.struct_passwd]:
    """A throwaway Unix account (home /tmp), removed afterwards."""
    name = "cmddi" + secrets.token_hex(4)
    subprocess.run(["useradd", "--no-create-home", "--home-dir", "/tmp", name], check=True)
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], check=False)


@pytest.mark.parametrize("sandbox", [pytest.param("bubblewrap", marks=needs_bwrap), "off"])
def test_a_root_daemons_jobs_cannot_reach_it(tmp_path: Path, sandbox: str) -> None:
    """Started as root, the daemon runs jobs as an unprivileged user: with or
    without the sandbox, a job reads none of its secrets, writes nothing in its
    data directory, sees nothing of its /proc entries and cannot signal it."""
    daemon = Daemon(tmp_path / "data", extra_args=["--job-sandbox", sandbox])
    try:
        daemon.start()
        daemon.token = user_token(daemon, "mallory")
        assert attack(daemon) == []
        unharmed(daemon)
    finally:
        daemon.stop()


def user_token(daemon: Daemon, name: str) -> str:
    """A bearer token of a new user-role account (made the way README says)."""
    password = secrets.token_urlsafe(16)
    subprocess.run(
        [str(Path(TWISTD).with_name("cmdd")), "user", "add", name, "--password-stdin",
         "--data-dir", str(daemon.data_dir)],
        input=password.encode(), check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    basic = base64.b64encode(f"{name}:{password}".encode()).decode()
    deadline = time.monotonic() + 10
    while True:  # the daemon picks up the users file within 2 s
        connection = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=10)
        connection.request(
            "POST", "/api/tokens", body=b"{}",
            headers={"Authorization": f"Basic {basic}", "Content-Type": "application/json"},
        )  # fmt: skip
        response = connection.getresponse()
        body = json.loads(response.read())
        connection.close()
        if response.status == 201:
            return str(body["token"])
        assert time.monotonic() < deadline, body
        time.sleep(0.2)


def test_an_unprivileged_daemon_without_a_sandbox_says_so(unix_user: pwd.struct_passwd) -> None:
    """Without root and without bubblewrap, the start-up log says loudly that
    jobs are not isolated."""
    top = Path(tempfile.mkdtemp(prefix="cmdd-unpriv-"))
    try:
        os.chown(top, unix_user.pw_uid, unix_user.pw_gid)
        daemon = Daemon(
            top / "data", extra_args=["--job-sandbox", "off"], prefix=_as(unix_user), cwd=top
        )
        try:
            daemon.start()
        finally:
            daemon.stop()
        log = (top / "daemon.log").read_text()
        assert "JOBS ARE NOT ISOLATED" in log
        assert "jobs run as " + unix_user.pw_name + " (the daemon's own user), without" in log
    finally:
        shutil.rmtree(top, ignore_errors=True)


def _as(account: pwd.struct_passwd) -> list[str]:
    return [
        "setpriv", f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}",
        "--clear-groups", "--",
    ]  # fmt: skip


@needs_bwrap
def test_an_unprivileged_daemons_jobs_cannot_reach_it(unix_user: pwd.struct_passwd) -> None:
    """Started as an ordinary user, the daemon sandboxes jobs with bubblewrap:
    they share its uid, yet its data directory is empty to them and the daemon
    is not even visible, so it cannot be signalled."""
    top = Path(tempfile.mkdtemp(prefix="cmdd-unpriv-"))
    try:
        os.chown(top, unix_user.pw_uid, unix_user.pw_gid)
        prefix = _as(unix_user)
        probe = subprocess.run(
            [*prefix, TWISTD, "--help"], capture_output=True, check=False, cwd=top
        )
        if probe.returncode != 0:
            pytest.skip("this checkout is not readable by an unprivileged user")
        daemon = Daemon(top / "data", prefix=prefix, cwd=top)
        try:
            daemon.start()
            assert attack(daemon) == []
            unharmed(daemon)
        finally:
            daemon.stop()
    finally:
        shutil.rmtree(top, ignore_errors=True)


def _probe_library(directory: Path) -> Path:
    """A shared library whose constructor appends its process's uid to $PROBE_OUT."""
    source = directory / "probe.c"
    source.write_text(
        "#include <stdio.h>\n#include <stdlib.h>\n#include <unistd.h>\n"
        "__attribute__((constructor)) static void probe(void) {\n"
        '  const char *out = getenv("PROBE_OUT"); if (!out) return;\n'
        '  FILE *f = fopen(out, "a"); if (!f) return;\n'
        '  fprintf(f, "%d %d\\n", (int)getuid(), (int)geteuid()); fclose(f);\n'
        "}\n"
    )
    library = directory / "probe.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(library), str(source)], check=True)
    library.chmod(0o755)
    return library


@pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler for the probe")
@pytest.mark.parametrize("sandbox", [pytest.param("bubblewrap", marks=needs_bwrap), "off"])
def test_client_loader_variables_never_run_as_root(
    tmp_path: Path, unix_user: pwd.struct_passwd, sandbox: str
) -> None:
    """LD_PRELOAD in a job's environment is loaded only by the job itself, after
    the switch to its user: never by anything that runs as root."""
    shared = Path(tempfile.mkdtemp(prefix="cmdd-probe-"))
    try:
        shared.chmod(0o777)
        library = _probe_library(shared)
        record = shared / "uids"
        record.touch()
        record.chmod(0o666)  # both job users append to it
        daemon = Daemon(
            tmp_path / "data",
            extra_args=["--job-sandbox", sandbox, "--run-as", f"admin={unix_user.pw_name}"],
        )
        try:
            daemon.start()
            env = {"LD_PRELOAD": str(library), "PROBE_OUT": str(record)}
            for spec in (
                {"command_line": ["/usr/bin/true"], "user": unix_user.pw_name, "environment": env},
                {"command_line": ["/usr/bin/true"], "environment": env},
            ):
                status, job = daemon.request("POST", "/api/jobs", spec)
                assert status == 202, job
                assert wait_result(daemon, job["id"])["state"] == "succeeded"
        finally:
            daemon.stop()
        uids = {tuple(map(int, line.split())) for line in record.read_text().splitlines()}
        nobody = pwd.getpwnam("nobody").pw_uid
        assert uids == {(unix_user.pw_uid,) * 2, (nobody, nobody)}, uids
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def _host_processes_with(marker: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if marker.encode() in cmdline and is_alive(int(entry)):
                found.append(int(entry))
    return found


@pytest.mark.parametrize("sandbox", [pytest.param("bubblewrap", marks=needs_bwrap), "off"])
def test_nothing_of_a_job_survives_cancel_or_the_daemons_death(
    tmp_path: Path, sandbox: str
) -> None:
    """A child that left the job's session (setsid) is gone after cancel, and
    the processes of running jobs are gone when the daemon is killed with -9."""
    marker = f"{secrets.randbelow(10**6) + 10**6}"
    daemon = Daemon(tmp_path / "data", extra_args=["--job-sandbox", sandbox])
    try:
        daemon.start()
        status, job = daemon.request(
            "POST", "/api/jobs", {"command": f"setsid sleep {marker}.1 & sleep {marker}.2"}
        )
        assert status == 202
        deadline = time.monotonic() + 10
        while len(_host_processes_with(marker)) < 2:
            assert time.monotonic() < deadline, "the job's processes did not start"
            time.sleep(0.05)
        status, cancelled = daemon.request(
            "PATCH", f"/api/jobs/{job['id']}", {"status": "cancelled"}
        )
        assert status == 200 and cancelled["state"] == "cancelled"
        deadline = time.monotonic() + 5
        while _host_processes_with(marker):
            assert time.monotonic() < deadline, "a process of the cancelled job survived"
            time.sleep(0.05)
        # A chain of sessions, each started by the one before.
        chain = (
            f'setsid sh -c \'setsid sh -c "setsid sleep {marker}.6 & exec sleep {marker}.5"'
            f" & exec sleep {marker}.4' & sleep {marker}.3"
        )
        status, job = daemon.request("POST", "/api/jobs", {"command": chain})
        assert status == 202
        deadline = time.monotonic() + 10
        while len(_host_processes_with(marker)) < 4:
            assert time.monotonic() < deadline, "the second job did not start"
            time.sleep(0.05)
        daemon.kill9()
        deadline = time.monotonic() + 5
        while _host_processes_with(marker):
            assert time.monotonic() < deadline, "a job outlived the daemon"
            time.sleep(0.05)
    finally:
        daemon.stop()


def test_an_unknown_job_user_stops_start_up_with_one_line(tmp_path: Path) -> None:
    """A job_user that does not exist is a start-up error: non-zero exit, one
    line that names it, no half-started daemon."""
    done = subprocess.run(
        [TWISTD, "-n", "--pidfile=", "cmdd", "--data-dir", str(tmp_path / "data"),
         "--listen", "tcp:0:interface=127.0.0.1", "--job-user", "cmdd-no-such-user"],
        capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode != 0
    output = (done.stdout + done.stderr).decode()
    assert "cmdd: cannot start: job_user 'cmdd-no-such-user' is not a Unix user" in output


@needs_bwrap
def test_private_tmp_and_no_network_are_the_jobs_own(tmp_path: Path) -> None:
    """With job_private_tmp and no network, a job sees an empty /tmp of its own
    and cannot connect even to the daemon's loopback port."""
    marker = Path(tempfile.mkdtemp(prefix="cmdd-visible-"))
    try:
        daemon = Daemon(
            tmp_path / "data",
            extra_args=["--job-sandbox", "bubblewrap", "--job-private-tmp", "--job-no-network"],
        )
        try:
            daemon.start()
            probe = (
                f"test -e '{marker}' && echo sees-host-tmp; "
                "touch /tmp/left-by-job && echo tmp-writable; "
                f"(exec 3<>/dev/tcp/127.0.0.1/{daemon.port}) 2>/dev/null && echo reaches-daemon; "
                "echo done"
            )
            status, job = daemon.request(
                "POST", "/api/jobs", {"command_line": ["bash", "-c", probe]}
            )
            assert status == 202, job
            result = wait_result(daemon, job["id"])
        finally:
            daemon.stop()
        assert result["stdout"].split() == ["tmp-writable", "done"], result
        assert not Path("/tmp/left-by-job").exists(), "the job's /tmp was its own"
    finally:
        shutil.rmtree(marker, ignore_errors=True)
