"""Integration: the real daemon (C{twistd -n cmdd}) driven by the real C{curl}.

Each daemon is a subprocess of the venv's C{twistd} on free loopback ports,
stopped with SIGTERM (then SIGKILL) when its fixture ends. The requests are
the ones the README shows, e.g.::

    curl -sk --json '{"command":"echo привет"}' https://127.0.0.1:8443/api/jobs

Every subprocess call has a timeout and every wait has a deadline.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from daemons import wait_listening
from procs import children_of, is_alive, living_in_group, proc_stat, read_pid_file

pytestmark = pytest.mark.integration

TWISTD = str(Path(sys.executable).parent / "twistd")
CURL = shutil.which("curl") or ""
if not CURL:  # pragma: no cover - the README's examples need curl
    pytest.skip("curl is not installed", allow_module_level=True)

#: Seconds between SIGTERM and SIGKILL for the daemons started here.
KILL_GRACE = 1.0
#: Largest request body of the shared daemon.
MAX_BODY = 4096
#: A job that runs until the test creates its gate file (bounded by its timeout).
GATED = "while [ ! -e '{gate}' ]; do sleep 0.05; done; {then}"


# --- processes and /proc --------------------------------------------------------


def free_ports(count: int) -> list[int]:
    """Loopback TCP ports that were free a moment ago.

    Only for daemons that must refuse to start (nothing is bound there):
    a daemon that serves listens on port 0 (see L{launch}).
    """
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll C{predicate} until it returns something true, at most C{timeout} s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout}s waiting for {what}")
        time.sleep(0.05)












# --- curl -------------------------------------------------------------------------


@dataclass
class Response:
    """What curl received: the final status, headers and the raw body bytes."""

    status: int
    headers: dict[str, str]
    body: bytes
    #: The status line's reason phrase, e.g. "Too Many Requests".
    reason: str = ""

    def json(self) -> Any:
        """The body decoded as JSON (it must be UTF-8)."""
        return json.loads(self.body.decode("utf-8"))

    def error_code(self) -> str:
        """The C{error.code} of a JSON error body."""
        assert self.headers.get("content-type", "").startswith("application/json"), self
        code: str = self.json()["error"]["code"]
        return code


def curl(*args: str, check: bool = True) -> Response:
    """Run curl with C{args}; parse the status line, headers and body."""
    command = [CURL, "-sS", "--noproxy", "*", "--max-time", "20", "-D", "-", *args]
    done = subprocess.run(command, capture_output=True, timeout=30, check=False)
    if check:
        assert done.returncode == 0, (done.returncode, done.stderr.decode(errors="replace"))
    rest = done.stdout
    status, reason, headers = 0, "", dict[str, str]()
    # -D - writes every response's header block (a 100 Continue, each redirect
    # followed with -L) before the last response's body: keep the last block.
    while rest.startswith(b"HTTP/"):
        block, _, rest = rest.partition(b"\r\n\r\n")
        lines = block.decode("iso-8859-1").split("\r\n")
        _, code, reason = [*lines[0].split(None, 2), ""][:3]
        status = int(code)
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return Response(status, headers, rest, reason)


# --- the daemon -------------------------------------------------------------------


class Daemon:
    """A running C{twistd -n cmdd} subprocess."""

    #: Its data directory, when the test needs to look inside.
    data_dir: Path

    def __init__(self, process: subprocess.Popen[bytes], ports: list[int], log: Path) -> None:
        self.process = process
        self.ports = ports
        self.port = ports[0]
        self.log = log

    def curl(self, *args: str, check: bool = True) -> Response:
        """curl as the README does: -k and the admin's bearer token."""
        token = (self.data_dir / "admin.token").read_text().strip()
        return curl("-k", "-H", f"Authorization: Bearer {token}", *args, check=check)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        """The daemon's https URL for C{path}."""
        return f"https://{host}:{self.port}{path}"

    def log_text(self) -> str:
        """What the daemon logged so far."""
        return self.log.read_text(errors="replace")

    def submit(self, body: dict[str, Any]) -> Response:
        """POST a job as the README shows."""
        return self.curl("--json", json.dumps(body, ensure_ascii=False), self.url("/api/jobs"))

    def job(self, job_id: int) -> dict[str, Any]:
        """GET /api/jobs/{id} as JSON."""
        response = self.curl(self.url(f"/api/jobs/{job_id}"))
        assert response.status == 200, response
        job: dict[str, Any] = response.json()
        return job

    def wait_final(self, job_id: int, timeout: float = 20) -> Response:
        """Poll the status until it redirects (303) to the result."""
        done: Response = wait_until(
            lambda: (r := self.curl(self.url(f"/api/statuses/{job_id}"))).status == 303 and r,
            timeout,
            f"job {job_id} to finish",
        )
        return done

    def stop(self, timeout: float = 20) -> int:
        """SIGTERM, wait; SIGKILL (and kill the jobs' groups) if it will not stop."""
        if self.process.poll() is None:
            children = children_of(self.process.pid)
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
                for child in children:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(child, signal.SIGKILL)
        return self.process.returncode


def _data_dir(workdir: Path, arguments: list[str]) -> Path:
    """The data directory twistd will use, as cmdd resolves it."""
    if "--data-dir" in arguments:
        return workdir / arguments[arguments.index("--data-dir") + 1]
    if "--config" in arguments:
        import tomllib

        config = tomllib.loads((workdir / arguments[arguments.index("--config") + 1]).read_text())
        data_dir: str = config.get("cmdd", config).get("data_dir", "cmdd-data")
        return workdir / data_dir
    return workdir / "cmdd-data"


def launch(
    workdir: Path,
    arguments: Callable[[list[int]], list[str]],
    port_count: int = 1,
    ports: list[int] | None = None,
) -> Daemon:
    """Start C{twistd -n --pidfile= cmdd ARGS} and wait until it listens.

    C{arguments} receives the ports to listen on: C{ports} if given (a
    restart on the same port), else zeros, and the ports the kernel picked
    are read back from the daemon's C{listening.json} (see L{daemons}).
    """
    requested = ports or [0] * port_count
    log = workdir / "twistd.log"
    with open(log, "wb") as log_file:
        process = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", "cmdd", *arguments(requested)],
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            # Its own process group, as under systemd: never the test runner's.
            start_new_session=True,
        )
    data_dir = _data_dir(workdir, arguments(requested))
    try:
        bound = wait_listening(process, data_dir, log)
    except AssertionError:
        Daemon(process, requested, log).stop()
        raise
    daemon = Daemon(process, bound, log)
    daemon.data_dir = data_dir
    return daemon


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon shared by the request/response tests of this module."""
    workdir = tmp_path_factory.mktemp("daemon")
    running = launch(
        workdir,
        lambda ports: [
            "--data-dir",
            str(workdir / "data"),
            "--listen",
            f"ssl:{ports[0]}:interface=127.0.0.1",
            "--max-body-bytes",
            str(MAX_BODY),
            "--kill-grace",
            str(KILL_GRACE),
        ],
    )
    running.data_dir = workdir / "data"
    yield running
    running.stop()


# --- submitting and reading results ----------------------------------------------


def test_job_round_trip_with_utf8_output(daemon: Daemon, job_files: Path) -> None:
    """POST answers 202 + Location; the status is 200 until done, then 303 to a
    result whose stdout is raw UTF-8 with exit code, duration and timestamps."""
    gate = job_files / "gate"
    submitted = daemon.submit(
        {"command": GATED.format(gate=gate, then="echo привет"), "timeout": 60}
    )
    assert submitted.status == 202, submitted
    job_id = submitted.json()["id"]
    assert submitted.headers["location"] == f"/api/statuses/{job_id}"
    assert submitted.json()["state"] in ("queued", "running")

    pending = daemon.curl(daemon.url(f"/api/statuses/{job_id}"))
    assert pending.status == 200
    assert pending.json()["done"] is False
    not_ready = daemon.curl(daemon.url(f"/api/results/{job_id}"))
    assert not_ready.status == 404 and not_ready.error_code() == "RESULT_NOT_READY"

    gate.touch()
    done = daemon.wait_final(job_id)
    assert done.headers["location"] == f"/api/results/{job_id}"
    assert done.json()["done"] is True

    result = daemon.curl(daemon.url(f"/api/results/{job_id}"))
    assert result.status == 200
    assert result.headers["content-type"] == "application/json; charset=utf-8"
    assert "привет".encode() in result.body, "UTF-8 text is sent as is"
    assert b"\\u043f" not in result.body.lower(), "no \\u escapes for Cyrillic"
    body = result.json()
    assert body["stdout"] == "привет\n"
    assert body["stderr"] == ""
    assert body["exit_code"] == 0
    assert body["state"] == "succeeded"
    assert isinstance(body["duration"], float) and body["duration"] >= 0
    started = datetime.fromisoformat(body["started"].replace("Z", "+00:00"))
    completed = datetime.fromisoformat(body["completed"].replace("Z", "+00:00"))
    assert body["started"].endswith("Z") and body["completed"].endswith("Z")
    assert started <= completed

    followed = daemon.curl("-L", daemon.url(f"/api/statuses/{job_id}"))
    assert followed.status == 200
    assert followed.json()["stdout"] == "привет\n", "curl -L lands on the result"


def test_undecodable_output_bytes_do_not_break_the_result(daemon: Daemon) -> None:
    """Output that is not UTF-8 comes back replaced in JSON and exact as raw bytes."""
    submitted = daemon.submit({"command": r"printf 'ok \377\376\n'; printf 'x\200' >&2"})
    assert submitted.status == 202
    job_id = submitted.json()["id"]
    daemon.wait_final(job_id)
    result = daemon.curl(daemon.url(f"/api/results/{job_id}"))
    assert result.status == 200
    assert result.json()["stdout"] == "ok \ufffd\ufffd\n"
    assert result.json()["stderr"] == "x\ufffd"
    raw = daemon.curl(daemon.url(f"/api/jobs/{job_id}/output/stdout"))
    assert raw.status == 200
    assert raw.body == b"ok \xff\xfe\n"


# --- TLS and the data directory ---------------------------------------------------


def test_generated_certificate_and_private_files(daemon: Daemon) -> None:
    """A fresh start generates a certificate; the key and data dir are private."""
    data_dir = daemon.data_dir
    cert = data_dir / "tls" / "cert.pem"
    key = data_dir / "tls" / "key.pem"
    assert cert.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
    assert b"PRIVATE KEY" in key.read_bytes()
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((data_dir / "tls").stat().st_mode) == 0o700
    assert stat.S_IMODE((data_dir / "output").stat().st_mode) == 0o700
    assert "fingerprint" in daemon.log_text()


def test_curl_verifies_the_generated_certificate(daemon: Daemon) -> None:
    """Clients can pin the generated certificate: curl --cacert verifies localhost."""
    data_dir = daemon.data_dir
    cert = str(data_dir / "tls" / "cert.pem")
    verified = curl("--cacert", cert, daemon.url("/healthz", host="localhost"))
    assert verified.status == 200
    assert verified.json()["status"] == "ok"
    by_address = curl("--cacert", cert, daemon.url("/healthz"))
    assert by_address.status == 200
    unverified = subprocess.run(
        [CURL, "-sS", "--noproxy", "*", "--max-time", "20", daemon.url("/healthz")],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert unverified.returncode == 60, "without --cacert the self-signed cert is refused"


# --- authentication ---------------------------------------------------------------


def test_api_requires_a_bearer_token(daemon: Daemon) -> None:
    """Without a valid bearer token the API answers 401 with WWW-Authenticate: Bearer;
    /healthz stays public; the first start's admin token is a private file."""
    anonymous = curl("-k", daemon.url("/api/jobs"))
    assert anonymous.status == 401
    assert anonymous.error_code() == "UNAUTHENTICATED"
    assert anonymous.headers["www-authenticate"].startswith("Bearer")
    wrong = curl("-k", "-H", "Authorization: Bearer not-a-token", daemon.url("/api/jobs"))
    assert wrong.status == 401
    submitted = curl("-k", "--json", '{"command": "true"}', daemon.url("/api/jobs"))
    assert submitted.status == 401, "no job is accepted without a token"
    assert curl("-k", daemon.url("/healthz")).status == 200
    token_file = daemon.data_dir / "admin.token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert daemon.curl(daemon.url("/api/jobs")).status == 200


def test_cli_user_gets_a_token_and_sees_only_own_jobs(daemon: Daemon) -> None:
    """A user made with `cmdd user add` gets a token with its password (POST
    /api/tokens), runs jobs with it, and cannot see other users' jobs."""
    password = "correct horse battery staple"
    added = subprocess.run(
        [
            str(Path(TWISTD).parent / "cmdd"),
            "user",
            "add",
            "alice",
            "--password-stdin",
            "--data-dir",
            str(daemon.data_dir),
        ],
        input=password + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert added.returncode == 0, added.stderr
    daemon.process.send_signal(signal.SIGHUP)  # reload users now, not at the next poll
    issued = wait_until(
        lambda: (
            (
                r := curl("-k", "-u", f"alice:{password}", "-X", "POST", daemon.url("/api/tokens"))
            ).status
            == 201
            and r
        ),
        15,
        "the daemon to know alice",
    )
    assert issued.headers["cache-control"] == "no-store"
    alice = ["-k", "-H", f"Authorization: Bearer {issued.json()['token']}"]

    mine = curl(*alice, "--json", '{"command": "echo mine"}', daemon.url("/api/jobs"))
    assert mine.status == 202
    assert mine.json()["owner"] == "alice"
    admins = daemon.submit({"command": "echo admin"}).json()["id"]
    assert curl(*alice, daemon.url(f"/api/jobs/{admins}")).status == 404
    assert curl(*alice, daemon.url(f"/api/results/{admins}")).status == 404
    listed = curl(*alice, daemon.url("/api/jobs")).json()["jobs"]
    assert {job["owner"] for job in listed} == {"alice"}
    assert daemon.job(mine.json()["id"])["owner"] == "alice", "admin sees every job"
    password_as_bearer = curl("-k", "-u", f"alice:{password}", daemon.url("/api/jobs"))
    assert password_as_bearer.status == 401, "passwords only buy tokens"


def user_command(data_dir: Path, *args: str, password: str | None = None) -> None:
    """Run the venv's C{cmdd user ARGS --data-dir DATA_DIR} (a password on stdin)."""
    extra = ["--password-stdin"] if password is not None else []
    done = subprocess.run(
        [str(Path(TWISTD).parent / "cmdd"), "user", *args, *extra, "--data-dir", str(data_dir)],
        input=(password or "") + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def password_login(daemon: Daemon, name: str, password: str) -> Response:
    """POST /api/tokens with HTTP Basic, as the README shows."""
    return curl("-k", "-u", f"{name}:{password}", "-X", "POST", daemon.url("/api/tokens"))


def await_user(daemon: Daemon, name: str, password: str) -> Response:
    """SIGHUP the daemon and wait until C{name} can log in."""
    daemon.process.send_signal(signal.SIGHUP)
    found: Response = wait_until(
        lambda: (r := password_login(daemon, name, password)).status == 201 and r,
        20,
        f"the daemon to know {name}",
    )
    return found


def parallel_logins(daemon: Daemon, credentials: list[tuple[str, str]]) -> list[tuple[int, str]]:
    """Send one POST /api/tokens per (name, password) at the same moment: every
    connection is made (TLS included) before any request is sent."""
    import base64
    import http.client
    import ssl
    import threading
    from concurrent.futures import ThreadPoolExecutor

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    start = threading.Barrier(len(credentials), timeout=30)

    def login(pair: tuple[str, str]) -> tuple[int, str]:
        connection = http.client.HTTPSConnection(
            "127.0.0.1", daemon.port, context=context, timeout=30
        )
        try:
            connection.connect()
            start.wait()
            basic = base64.b64encode(f"{pair[0]}:{pair[1]}".encode()).decode()
            connection.request("POST", "/api/tokens", headers={"Authorization": f"Basic {basic}"})
            response = connection.getresponse()
            response.read()
            return response.status, response.reason
        finally:
            connection.close()

    with ThreadPoolExecutor(len(credentials)) as pool:
        return list(pool.map(login, credentials, timeout=60))


def test_failed_logins_are_throttled_per_user_and_address(tmp_path: Path) -> None:
    """Against the real daemon: bad bearer tokens never lock out a valid one; a
    user's wrong passwords get 429 Too Many Requests (Retry-After) for that
    user only; 200 guesses sent at once are not all checked."""
    data_dir = tmp_path / "data"
    daemon = launch(tmp_path, _serving(data_dir))
    try:
        for name in ("alice", "carol", "bob"):
            user_command(data_dir, "add", name, password=f"right-{name}")
        await_user(daemon, "bob", "right-bob")

        bad_tokens = [
            curl("-k", "-H", f"Authorization: Bearer guess-{i}", daemon.url("/api/jobs")).status
            for i in range(12)
        ]
        valid_token = daemon.curl(daemon.url("/api/jobs")).status

        alice = [password_login(daemon, "alice", "wrong") for _ in range(7)]
        bob = password_login(daemon, "bob", "right-bob").status

        guesses = [("carol", f"guess-{i}") for i in range(200)]
        guesses.insert(100, ("carol", "right-carol"))
        burst = parallel_logins(daemon, guesses)
        after_burst = daemon.curl(daemon.url("/api/jobs")).status
    finally:
        daemon.stop()
    assert bad_tokens == [401] * 12, "bad tokens are refused, not throttled"
    assert valid_token == 200, "a valid token from the same address is never throttled"
    assert [r.status for r in alice] == [401] * 5 + [429] * 2
    assert alice[-1].reason == "Too Many Requests"
    assert alice[-1].error_code() == "TOO_MANY_FAILURES"
    assert int(alice[-1].headers["retry-after"]) >= 1
    assert bob == 201, "another user's right password from the same address works"
    statuses = [status for status, _ in burst]
    checked = statuses.count(401) + statuses.count(201)
    assert checked <= 10, f"{checked} of 201 parallel guesses were checked"
    assert statuses.count(429) == len(burst) - checked
    assert {reason for status, reason in burst if status == 429} == {"Too Many Requests"}
    assert after_burst == 200


def test_removed_user_loses_tokens_and_only_admins_read_metrics(daemon: Daemon) -> None:
    """`cmdd user remove` revokes the user's tokens in the running daemon (and
    in tokens.json); /metrics answers a plain user 403 and the admin 200."""
    user_command(daemon.data_dir, "add", "dora", password="pw-dora")
    issued = await_user(daemon, "dora", "pw-dora").json()
    dora = ["-k", "-H", f"Authorization: Bearer {issued['token']}"]
    forbidden = curl(*dora, daemon.url("/metrics"))
    assert forbidden.status == 403 and forbidden.error_code() == "FORBIDDEN"
    assert daemon.curl(daemon.url("/metrics")).status == 200
    assert issued["id"] in (daemon.data_dir / "tokens.json").read_text()

    user_command(daemon.data_dir, "remove", "dora")
    daemon.process.send_signal(signal.SIGHUP)
    wait_until(
        lambda: curl(*dora, daemon.url("/api/jobs")).status == 401, 20, "dora's token to die"
    )
    wait_until(
        lambda: issued["id"] not in (daemon.data_dir / "tokens.json").read_text(),
        20,
        "tokens.json to drop dora's token",
    )
    user_command(daemon.data_dir, "add", "dora", password="pw-dora")
    await_user(daemon, "dora", "pw-dora")
    assert curl(*dora, daemon.url("/api/jobs")).status == 401, "re-adding dora revives nothing"


# --- errors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "path, code",
    [
        ("/api/jobs/987654", "JOB_NOT_FOUND"),
        ("/api/statuses/987654", "JOB_NOT_FOUND"),
        ("/api/results/987654", "JOB_NOT_FOUND"),
        ("/api/jobs/not-a-number", "JOB_NOT_FOUND"),
        ("/api/nothing-here", "ROUTE_NOT_FOUND"),
    ],
)
def test_unknown_resources_are_json_404(daemon: Daemon, path: str, code: str) -> None:
    """Unknown ids and paths answer 404 with a JSON error, not an HTML page."""
    response = daemon.curl(daemon.url(path))
    assert response.status == 404
    assert response.error_code() == code


@pytest.mark.parametrize(
    "method, path, allowed",
    [
        ("PUT", "/api/jobs", {"GET", "POST"}),
        ("DELETE", "/api/jobs", {"GET", "POST"}),
        ("POST", "/api/statuses/1", {"GET"}),
    ],
)
def test_wrong_method_is_405_with_allow(
    daemon: Daemon, method: str, path: str, allowed: set[str]
) -> None:
    """A method a resource does not support answers 405 and lists what it does."""
    response = daemon.curl("-X", method, daemon.url(path))
    assert response.status == 405
    assert response.error_code() == "METHOD_NOT_ALLOWED"
    listed = {name.strip() for name in response.headers["allow"].split(",")}
    assert allowed <= listed
    assert method not in listed


def test_form_body_is_415(daemon: Daemon) -> None:
    """A body that is not JSON (an HTML form post) answers 415."""
    response = daemon.curl("-d", "command=echo hi", daemon.url("/api/jobs"))
    assert response.status == 415
    assert response.error_code() == "UNSUPPORTED_MEDIA_TYPE"


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_body_over_the_limit_is_413(daemon: Daemon, tmp_path: Path, chunked: bool) -> None:
    """A body larger than --max-body-bytes answers 413, and the daemon carries on."""
    body = tmp_path / "big.json"
    body.write_text(json.dumps({"command": "echo " + "x" * (MAX_BODY + 10)}))
    extra = ["-H", "Transfer-Encoding: chunked"] if chunked else []
    response = daemon.curl(
        "-H",
        "Content-Type: application/json",
        *extra,
        "--data-binary",
        f"@{body}",
        daemon.url("/api/jobs"),
    )
    assert response.status == 413
    assert response.error_code() == "BODY_TOO_LARGE"
    assert daemon.curl(daemon.url("/healthz")).status == 200


def test_invalid_utf8_body_is_400_invalid_json(daemon: Daemon, tmp_path: Path) -> None:
    """A JSON body with bytes that are not UTF-8 answers 400 INVALID_JSON."""
    body = tmp_path / "latin1.json"
    body.write_bytes(b'{"command": "echo \xff\xfe caf\xe9"}')
    response = daemon.curl(
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        f"@{body}",
        daemon.url("/api/jobs"),
    )
    assert response.status == 400
    assert response.error_code() == "INVALID_JSON"


@pytest.mark.parametrize(
    "body, code",
    [
        ('{"command": "echo', "INVALID_JSON"),
        ("", "INVALID_JSON"),
        ("[1, 2]", "BODY_NOT_OBJECT"),
        ('{"command": "cat", "stdin": "\\ud800"}', "INVALID_STDIN"),
        ('{"command": "env", "environment": {"A": "\\udc80"}}', "INVALID_ENVIRONMENT"),
        ("{}", "COMMAND_MISSING"),
    ],
    ids=["truncated", "empty", "array", "surrogate-stdin", "surrogate-env", "no-command"],
)
def test_bad_json_bodies_are_400(daemon: Daemon, body: str, code: str) -> None:
    """Bodies that are not a valid job answer 400 with one code per cause."""
    response = daemon.curl("--json", body, daemon.url("/api/jobs"))
    assert response.status == 400, response
    assert response.error_code() == code


# --- start-up refusals, shutdown and the config file ---------------------------------


@pytest.mark.parametrize("endpoint", ["tcp:{port}:interface=0.0.0.0", "tcp:{port}"])
def test_plaintext_on_all_interfaces_is_refused(tmp_path: Path, endpoint: str) -> None:
    """twistd refuses to serve plain HTTP beyond loopback without --allow-plaintext."""
    (port,) = free_ports(1)
    description = endpoint.format(port=port)
    done = subprocess.run(
        [
            TWISTD,
            "-n",
            "--pidfile=",
            "cmdd",
            "--data-dir",
            str(tmp_path / "data"),
            "--listen",
            description,
        ],
        cwd=tmp_path,
        capture_output=True,
        timeout=60,
        check=False,
        start_new_session=True,
    )
    output = (done.stdout + done.stderr).decode(errors="replace")
    assert done.returncode != 0
    assert description in output
    assert "plaintext" in output and "--allow-plaintext" in output
    assert not _accepts(port)
    assert not (tmp_path / "data").exists(), "nothing is created on a refused start"


@pytest.mark.parametrize(
    "command",
    ["echo $$ > '{ready}'; sleep 600", "trap '' TERM; echo $$ > '{ready}'; sleep 600"],
    ids=["sleep", "ignores-sigterm"],
)
def test_sigterm_stops_the_daemon_and_its_jobs(
    tmp_path: Path, job_files: Path, command: str
) -> None:
    """SIGTERM to twistd with --stop-grace 0 ends running jobs at once (TERM,
    grace, KILL) and exits promptly, leaving no job process behind. (No
    sandbox, so the job's $$ is its host pid. The drain with a grace is in
    test_lifecycle.py.)"""
    daemon = launch(
        tmp_path,
        lambda ports: [
            "--data-dir",
            str(tmp_path / "data"),
            "--listen",
            f"ssl:{ports[0]}:interface=127.0.0.1",
            "--kill-grace",
            str(KILL_GRACE),
            "--stop-grace",
            "0",
            "--job-sandbox",
            "off",
        ],
    )
    try:
        ready = job_files / "ready"
        submitted = daemon.submit({"command": command.format(ready=ready)})
        assert submitted.status == 202
        pgid = wait_until(lambda: read_pid_file(ready), 15, "the job to start")
        members = wait_until(
            lambda: len(group := living_in_group(pgid)) >= 2 and group, 10, "the sleep"
        )
        stat = proc_stat(pgid)
        assert stat is not None and stat[1] in children_of(daemon.process.pid), (
            "the job is a child of the daemon's spawner"
        )
        asked = time.monotonic()
        daemon.process.send_signal(signal.SIGTERM)
        returncode = daemon.process.wait(KILL_GRACE + 10)
        elapsed = time.monotonic() - asked
    finally:
        daemon.stop()
    # cmdd handles SIGTERM itself: a clean stop exits 0.
    assert returncode == 0, daemon.log_text()
    assert "Server Shut Down." in daemon.log_text()
    assert elapsed < KILL_GRACE + 5
    wait_until(lambda: not living_in_group(pgid), 5, f"job group {pgid} to be gone")
    assert not any(is_alive(pid) for pid in members)
    assert "Traceback" not in daemon.log_text()


def test_config_file_sets_listen_and_max_running(tmp_path: Path, job_files: Path) -> None:
    """A TOML --config sets the data dir, several listeners and max_running."""
    config = tmp_path / "cmdd.toml"
    data_dir = tmp_path / "from-config"

    def arguments(ports: list[int]) -> list[str]:
        config.write_text(
            "[cmdd]\n"
            f"data_dir = '{data_dir}'\n"
            f"listen = ['ssl:{ports[0]}:interface=127.0.0.1',"
            f" 'tcp:{ports[1]}:interface=127.0.0.1']\n"
            "max_running = 1\n"
            f"kill_grace = {KILL_GRACE}\n"
        )
        return ["--config", str(config)]

    daemon = launch(tmp_path, arguments, port_count=2)
    try:
        gate = job_files / "gate"
        job = {"command": GATED.format(gate=gate, then="echo done"), "timeout": 60}
        first = daemon.submit(job).json()["id"]
        second = daemon.submit(job).json()["id"]
        wait_until(lambda: daemon.job(first)["state"] == "running", 15, "the first job")
        for _ in range(5):
            health = daemon.curl(daemon.url("/healthz")).json()
            assert (health["running"], health["queued"]) == (1, 1)
            assert daemon.job(second)["state"] == "queued"
            time.sleep(0.1)
        plain = curl(f"http://127.0.0.1:{daemon.ports[1]}/healthz")
        assert plain.status == 200, "plain HTTP on loopback is allowed"
        gate.touch()
        daemon.wait_final(first)
        daemon.wait_final(second)
        first_job, second_job = daemon.job(first), daemon.job(second)
    finally:
        daemon.stop()
    assert first_job["state"] == second_job["state"] == "succeeded"
    assert second_job["started"] >= first_job["completed"]
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert (data_dir / "tls" / "cert.pem").exists()


def _serving(data_dir: Path, **extra: str) -> Callable[[list[int]], list[str]]:
    """twistd arguments for a daemon on C{data_dir} and the first port."""

    def arguments(ports: list[int]) -> list[str]:
        options = ["--data-dir", str(data_dir), "--listen", f"ssl:{ports[0]}:interface=127.0.0.1"]
        options += ["--kill-grace", str(KILL_GRACE)]
        for name, value in extra.items():
            options += [f"--{name.replace('_', '-')}", value]
        return options

    return arguments


def test_history_survives_restarts_and_ids_are_never_reused(tmp_path: Path) -> None:
    """Results are still there after a restart, and a deleted job's id is not reissued."""
    data_dir = tmp_path / "data"
    first = launch(tmp_path, _serving(data_dir))
    try:
        job_id = first.submit({"command": "echo привет"}).json()["id"]
        first.wait_final(job_id)
        before = first.curl(first.url(f"/api/results/{job_id}")).json()
        doomed = first.submit({"command": "true"}).json()["id"]
        first.wait_final(doomed)
        assert first.curl("-X", "DELETE", first.url(f"/api/jobs/{doomed}")).status == 204
    finally:
        first.stop()

    second = launch(tmp_path, _serving(data_dir))
    try:
        after = second.curl(second.url(f"/api/results/{job_id}"))
        assert after.status == 200
        assert after.json() == before
        assert second.curl(second.url(f"/api/jobs/{doomed}")).status == 404
        new_id = second.submit({"command": "true"}).json()["id"]
    finally:
        second.stop()
    assert new_id > doomed > job_id


def test_after_a_crash_running_jobs_are_lost_and_queued_jobs_run(
    tmp_path: Path, job_files: Path
) -> None:
    """After twistd is SIGKILLed, the job that was running does not go on
    unsupervised, and a restart on the same port and data dir marks it lost
    (never re-run) and runs the job that was queued."""
    data_dir = tmp_path / "data"
    ready = job_files / "ready"
    crashed = launch(tmp_path, _serving(data_dir, max_running="1", job_sandbox="off"))
    orphan_group = None
    try:
        running_id = crashed.submit({"command": f"echo $$ >> '{ready}'; sleep 600"}).json()["id"]
        queued_id = crashed.submit({"command": "echo ran after restart"}).json()["id"]
        orphan_group = wait_until(lambda: read_pid_file(ready), 15, "the job to start")
        assert crashed.job(queued_id)["state"] == "queued"
        crashed.process.kill()
        crashed.process.wait(10)

        # The spawner saw the daemon go and ended the job.
        wait_until(lambda: not living_in_group(orphan_group), 5, "the orphaned job to end")
        restarted = launch(tmp_path, _serving(data_dir), ports=crashed.ports)
        try:
            lost = restarted.job(running_id)
            assert lost["state"] == "lost"
            restarted.wait_final(queued_id)
            result = restarted.curl(restarted.url(f"/api/results/{queued_id}")).json()
            assert result["state"] == "succeeded"
            assert result["stdout"] == "ran after restart\n"
            assert restarted.curl(restarted.url(f"/api/results/{running_id}")).json()["state"] == (
                "lost"
            )
        finally:
            restarted.stop()
    finally:
        crashed.stop()
        if orphan_group is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(orphan_group, signal.SIGKILL)
    assert ready.read_text().count("\n") == 1, "the lost job was not run again"


def test_second_daemon_on_the_same_data_dir_refuses_to_start(
    daemon: Daemon, tmp_path: Path
) -> None:
    """Two daemons never share a data directory: the second exits with a clear message."""
    (port,) = free_ports(1)
    done = subprocess.run(
        [
            TWISTD,
            "-n",
            "--pidfile=",
            "cmdd",
            "--data-dir",
            str(daemon.data_dir),
            "--listen",
            f"ssl:{port}:interface=127.0.0.1",
        ],
        cwd=tmp_path,
        capture_output=True,
        timeout=60,
        check=False,
        start_new_session=True,
    )
    output = (done.stdout + done.stderr).decode(errors="replace")
    assert done.returncode != 0
    assert "another cmdd process is using" in output
    assert not _accepts(port)
    assert daemon.curl(daemon.url("/healthz")).status == 200, "the first one carries on"
