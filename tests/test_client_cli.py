"""The `cmdd` client against a real daemon over TLS: run, follow, Ctrl-C,
exit codes, jobs, logs, login, tokens, and the one-line errors.

Every test runs the installed `cmdd` command in a subprocess, the way a user
or a CI script does, against a real `twistd cmdd` listening on a port the
kernel picked (read back from the daemon's log).
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemons import wait_listening

from cmdd.tls import fingerprint

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
#: Passwords and tokens the tests handed to the daemon: never in its log.
SECRETS: list[str] = []


class TlsDaemon:
    """`twistd cmdd` on ssl:0 (no port race): the port from listening.json, the
    certificate's fingerprint as the daemon logs it."""

    def __init__(
        self, root: Path, twistd_args: tuple[str, ...] = (), cmdd_args: tuple[str, ...] = ()
    ) -> None:
        """@param twistd_args: before C{cmdd}; @param cmdd_args: after its own options."""
        self.data_dir = root / "data"
        self.log_path = root / "daemon.log"
        log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [str(BIN / "twistd"), "-n", "--pidfile=", *twistd_args, "cmdd",
             "--data-dir", str(self.data_dir),
             "--listen", "ssl:0:interface=127.0.0.1", "--kill-grace", "2", *cmdd_args],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        try:
            (self.port,) = wait_listening(self.process, self.data_dir, self.log_path)
        except AssertionError:
            # Not a daemon the caller can stop: leave nothing running behind.
            self.process.kill()
            self.process.wait()
            raise
        self.fingerprint = fingerprint((self.data_dir / "tls" / "cert.pem").read_bytes())
        # What a user pins is what the daemon logs (text or JSON lines alike).
        assert self.fingerprint in self.log_path.read_text()
        self.token = (self.data_dir / "admin.token").read_text().strip()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def env(self, **extra: str) -> dict[str, str]:
        """A client environment that trusts this daemon and is its admin."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("CMDD_")}
        env.update(
            CMDD_URL=self.url,
            CMDD_TOKEN=self.token,
            CMDD_FINGERPRINT=self.fingerprint,
            CMDD_PROFILE=str(self.data_dir.parent / "no-profile.json"),
        )
        env.update(extra)
        return env

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsDaemon]:
    running = TlsDaemon(tmp_path_factory.mktemp("cli"))
    try:
        yield running
    finally:
        running.stop()


def cmdd(
    env: dict[str, str], *args: str, stdin: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "cmdd"), *args], env=env, input=stdin, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The client failed with exactly one `cmdd: …` line and no traceback."""
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cmdd: "), result.stderr
    return lines[0]


def test_run_passes_on_output_streams_and_exit_code(daemon: TlsDaemon) -> None:
    result = cmdd(daemon.env(), "run", "--", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (result.returncode, result.stdout, result.stderr) == (3, "out\n", "err\n")
    shell = cmdd(daemon.env(), "run", "--follow", "--shell", "echo привет; kill -USR1 $$")
    assert (shell.returncode, shell.stdout) == (128 + signal.SIGUSR1, "привет\n")


def test_run_exit_code_for_a_program_that_cannot_start(daemon: TlsDaemon) -> None:
    result = cmdd(daemon.env(), "run", "--", "/no/such/program")
    assert result.returncode == 127
    assert "not_executed" in result.stderr and "/no/such/program" in result.stderr


def test_run_follow_streams_while_the_job_runs(daemon: TlsDaemon, job_files: Path) -> None:
    """The first line reaches us while the job still waits for a file that
    only this test creates after reading that line: output is live."""
    go = job_files / "go"
    client = subprocess.Popen(
        [str(BIN / "cmdd"), "run", "--follow", "--env", f"GO={go}", "--shell",
         'echo first; echo to-stderr >&2; while [ ! -e "$GO" ]; do sleep 0.05; done; echo last'],
        env=daemon.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert client.stdout is not None and client.stderr is not None
        assert client.stdout.readline() == "first\n"
        assert client.stderr.readline() == "to-stderr\n"
        assert client.poll() is None, "the job is still running"
        go.touch()
        assert client.stdout.read() == "last\n"
        assert client.wait(timeout=30) == 0
    finally:
        client.kill()


def test_ctrl_c_cancels_the_job_and_returns_its_exit(daemon: TlsDaemon) -> None:
    client = subprocess.Popen(
        [str(BIN / "cmdd"), "run", "--follow", "--shell",
         'trap "echo got TERM; exit 7" TERM; echo started; sleep 60 & wait'],
        env=daemon.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert client.stdout is not None and client.stderr is not None
        assert client.stdout.readline() == "started\n"
        client.send_signal(signal.SIGINT)
        assert client.stdout.read() == "got TERM\n"
        assert client.wait(timeout=30) == 7
        assert "cancelling job" in client.stderr.read()
    finally:
        client.kill()
    listing = json.loads(cmdd(daemon.env(), "jobs", "--json", "--limit", "1").stdout)
    assert listing["jobs"][0]["state"] == "cancelled"


def test_submit_status_logs_result_cancel_and_jobs(daemon: TlsDaemon) -> None:
    env = daemon.env()
    submitted = cmdd(env, "submit", "--label", "team=cli", "--", "sh", "-c", "echo a; echo b >&2")
    job_id = submitted.stdout.strip()
    assert submitted.returncode == 0 and job_id.isdigit()
    while cmdd(env, "status", job_id).stdout.split() == [job_id, "running"]:
        time.sleep(0.05)
    assert cmdd(env, "status", job_id).stdout.split() == [job_id, "succeeded"]
    logs = cmdd(env, "logs", job_id)
    assert (logs.stdout, logs.stderr) == ("a\n", "b\n")
    followed = cmdd(env, "logs", "-f", job_id)
    assert (followed.stdout, followed.stderr) == ("a\n", "b\n")
    result = json.loads(cmdd(env, "result", job_id).stdout)
    assert result["exit_code"] == 0 and result["stdout"] == "a\n"
    table = cmdd(env, "jobs", "--label", "team=cli").stdout.splitlines()
    assert table[0].split() == ["ID", "STATE", "OWNER", "CREATED", "DURATION", "COMMAND"]
    assert table[1].split()[:3] == [job_id, "succeeded", "admin"]
    sleeper = cmdd(env, "submit", "--", "sleep", "60").stdout.strip()
    assert cmdd(env, "cancel", sleeper).stdout.split() == [sleeper, "cancelled"]


def test_friendly_errors(daemon: TlsDaemon) -> None:
    untrusted = one_line_error(cmdd(daemon.env(CMDD_FINGERPRINT=""), "jobs"))
    assert "not trusted" in untrusted and "CMDD_FINGERPRINT" in untrusted
    wrong_pin = one_line_error(cmdd(daemon.env(CMDD_FINGERPRINT="00" * 32), "jobs"))
    assert "not trusted" in wrong_pin
    refused = one_line_error(cmdd(daemon.env(CMDD_URL="https://127.0.0.1:1"), "jobs"))
    assert "cannot connect" in refused
    bad_token = one_line_error(cmdd(daemon.env(CMDD_TOKEN="cmdd_nope_nope"), "jobs"))
    assert "cmdd login" in bad_token
    missing = one_line_error(cmdd(daemon.env(), "status", "999999"))
    assert "999999" in missing and "404" in missing
    no_command = cmdd(daemon.env(), "run")
    assert no_command.returncode == 2 and "--shell" in no_command.stderr
    bare = cmdd(daemon.env())
    assert bare.returncode == 2 and "usage" in bare.stderr


def test_ca_certificate_trust(daemon: TlsDaemon) -> None:
    env = daemon.env(CMDD_FINGERPRINT="", CMDD_CACERT=str(daemon.data_dir / "tls" / "cert.pem"),
                     CMDD_URL=f"https://localhost:{daemon.port}")  # fmt: skip
    result = cmdd(env, "run", "--", "true")
    assert result.returncode == 0, result.stderr


def test_login_writes_a_private_profile_then_tokens(daemon: TlsDaemon, tmp_path: Path) -> None:
    admin = daemon.env()
    add = subprocess.run(
        [str(BIN / "cmdd"), "user", "add", "carol", "--data-dir", str(daemon.data_dir),
         "--password-stdin"], input="s3cret-pass\n", capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert add.returncode == 0
    daemon.process.send_signal(signal.SIGHUP)  # reload users now, not at the next poll
    profile = tmp_path / "profile.json"
    carol = {k: v for k, v in admin.items() if k not in ("CMDD_TOKEN", "CMDD_URL")}
    carol["CMDD_PROFILE"] = str(profile)
    carol["CMDD_FINGERPRINT"] = ""
    deadline = time.monotonic() + 10
    while True:
        login = cmdd(carol, "login", daemon.url, "--user", "carol", "--password-stdin",
                     "--fingerprint", daemon.fingerprint, stdin="s3cret-pass\n")  # fmt: skip
        if login.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)  # the users file is re-read after SIGHUP
    assert login.returncode == 0, login.stderr
    assert stat.S_IMODE(profile.stat().st_mode) == 0o600
    saved = json.loads(profile.read_text())
    assert saved["url"] == daemon.url and saved["token"].startswith("cmdd_")
    # The profile alone is enough now: URL, pin and token.
    assert cmdd(carol, "run", "--", "true").returncode == 0
    own = cmdd(carol, "token", "create", "--description", "ci")
    assert own.returncode == 0 and own.stdout.startswith("cmdd_")
    forbidden = one_line_error(cmdd(carol, "token", "create", "--user", "admin"))
    assert "403" in forbidden
    # An admin makes a token for carol (a scraper, a CI runner): it is hers.
    made = cmdd(admin, "token", "create", "--user", "carol", "--description", "scrape")
    assert made.returncode == 0, made.stderr
    listing = cmdd(daemon.env(CMDD_TOKEN=made.stdout.strip()), "token", "list")
    rows = [line.split()[:2] for line in listing.stdout.splitlines()[1:]]
    assert rows and all(owner == "carol" for _, owner in rows)
    token_id = rows[0][0]
    assert cmdd(carol, "token", "revoke", token_id).returncode == 0
    SECRETS.extend(["s3cret-pass", saved["token"], own.stdout.strip(), made.stdout.strip()])


def test_the_log_tells_each_transition_and_no_secret(daemon: TlsDaemon) -> None:
    """Runs last in this module: the daemon's log names every job transition
    with owner and state, and holds none of the secrets the tests used."""
    job_id = cmdd(daemon.env(), "submit", "--", "sh", "-c", "exit 5").stdout.strip()
    assert cmdd(daemon.env(), "logs", "-f", job_id).returncode == 0
    log = daemon.log_path.read_text()
    for state in ("queued", "running", "failed"):
        assert f"job {job_id} {state} (owner admin" in log
    assert f"job {job_id} failed (owner admin, exit code 5" in log
    # The access log names who asked (combined format's user field).
    assert '"127.0.0.1" - admin [' in log and '"POST /api/jobs HTTP/1.1" 202' in log
    assert '"127.0.0.1" - - [' in log, "a refused token names nobody"
    for secret in [daemon.token, *SECRETS]:
        assert secret and secret not in log


def test_keys_run_at_and_schedules(daemon: TlsDaemon) -> None:
    env = daemon.env()
    first = cmdd(env, "submit", "--idempotency-key", 'nightly "build" #7', "--", "true")
    again = cmdd(env, "submit", "--idempotency-key", 'nightly "build" #7', "--", "true")
    assert first.returncode == again.returncode == 0
    assert first.stdout == again.stdout, "a retry with the key is the same job"
    later = cmdd(env, "submit", "--at", "2030-01-01T00:00:00+00:00", "--concurrency-key", "k",
                 "--", "true").stdout.strip()  # fmt: skip
    assert cmdd(env, "status", later).stdout.split() == [later, "scheduled"]
    assert cmdd(env, "cancel", later).stdout.split() == [later, "cancelled"]
    created = subprocess.run(
        ["curl", "-sk", "-H", f"Authorization: Bearer {daemon.token}", "--json",
         json.dumps({"cron": "30 2 * * *", "timezone": "Europe/Berlin",
                     "job": {"command": "echo nightly"}}), f"{daemon.url}/api/schedules"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    schedule_id = json.loads(created.stdout)["id"]
    rows = cmdd(env, "schedules").stdout.splitlines()
    assert rows[0].split()[:4] == ["ID", "OWNER", "CRON", "TIMEZONE"]
    assert any(row.split()[0] == str(schedule_id) and "Europe/Berlin" in row for row in rows)
    assert "echo nightly" in rows[-1]
