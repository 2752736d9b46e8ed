"""The HTTP API in memory (StubTreq): status codes, headers, JSON shapes, errors."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeExecutor, InlineIO
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs

from cmdd.accounts import Accounts
from cmdd.api import CmddAPI
from cmdd.auth import AuthGate, FailureThrottle, make_portal
from cmdd.history import History, MemoryLog
from cmdd.manager import JobManager, Limits
from cmdd.store import JobStore
from cmdd.tokens import issue
from cmdd.users import hash_password, new_user, write_users
from cmdd.web import make_site

JSON = {"Content-Type": "application/json"}


class Client:
    """A cmdd API served in memory, with a fake clock and fake processes."""

    def __init__(
        self, tmp_path: Path, blocking: Any = None, console: Any = None, **limits: Any
    ) -> None:
        """@param blocking: runs password checks (default: at once, inline).
        @param console: what the gate serves /ui/ with (default: nothing)."""
        from treq.testing import StubTreq

        self.clock = Clock()
        self.executor = FakeExecutor()
        io = InlineIO()
        history = History(JobStore(), MemoryLog(), self.clock)
        self.manager = JobManager(
            history, self.executor, io, self.clock,  # type: ignore[arg-type]
            str(tmp_path), Limits(**limits),
        )
        self.manager.startService()
        self.accounts = Accounts(str(tmp_path), self.clock, io.run)
        self.accounts.load()
        self.admin_token = (tmp_path / "admin.token").read_text().strip()
        self.token: str | None = self.admin_token
        self.api = CmddAPI(self.manager, io.run, self.accounts)
        portal = make_portal(
            self.accounts.users, self.accounts.book_view, self.clock, blocking or io.run
        )
        self.gate = AuthGate(
            self.api.app.resource(), portal, FailureThrottle(self.clock), console=console
        )
        self.treq = StubTreq(self.gate)
        # Serve through cmdd's own request class, as the daemon does.
        site = make_site(self.gate, max_body=4096, idle_timeout=60)
        self.treq._agent._serverFactory.requestFactory = site.requestFactory

    def add_user(self, name: str, role: str = "user", password: str = "secret") -> str:
        """Create a user (cheap hash, for speed) and return a bearer token for it."""
        users = dict(self.accounts.users())
        user = users[name] = new_user(name, role, hash_password(password, n=2**4))
        write_users(self.accounts.users_path, users)
        self.accounts.reload_users()
        token, secret = issue(name, self.clock.seconds(), 3600, generation=user.generation)
        self.accounts.book.add(token)
        return secret

    def request(self, method: str, path: str, body: Any = None, raw: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[Any, bytes]:
        if raw is None and body is not None:
            raw = json.dumps(body, ensure_ascii=False).encode("utf-8")
            headers = {**JSON, **(headers or {})}
        headers = dict(headers or {})
        if self.token is not None:
            headers.setdefault("Authorization", f"Bearer {self.token}")
        results: list[Any] = []
        d = self.treq.request(method, "http://cmdd.test" + path, data=raw, headers=headers,
                              allow_redirects=False)
        d.addCallback(lambda response: self.treq.content(response).addCallback(
            lambda content: results.append((response, content))))
        self.treq.flush()
        assert results, f"{method} {path} got no response"
        return results[0]

    def json(self, method: str, path: str, body: Any = None, **kw: Any) -> tuple[int, Any, Any]:
        response, content = self.request(method, path, body, **kw)
        assert response.headers.getRawHeaders("content-type") == [
            "application/json; charset=utf-8"
        ]
        return response.code, json.loads(content), response.headers


@pytest.fixture
def client(tmp_path: Path) -> Client:
    return Client(tmp_path, max_running=2, max_queued=2)


def finish(client: Client, job_id: int, exit_code: int = 0, stdout: bytes = b"",
           stderr: bytes = b"") -> None:
    client.clock.advance(0)
    client.executor.by_job(job_id).finish(exit_code, stdout=stdout, stderr=stderr)


def test_submit_poll_redirect_result(client: Client) -> None:
    """The whole flow: 202 + Location, 200 while running, 303 to the result, the result."""
    code, job, headers = client.json("POST", "/api/jobs", {"command": "echo привет"})
    assert code == 202
    assert headers.getRawHeaders("location") == ["/api/statuses/1"]
    assert headers.getRawHeaders("retry-after") == ["1"]
    assert job["id"] == 1 and job["state"] == "queued" and job["command"] == "echo привет"
    assert job["links"]["status"] == "/api/statuses/1"
    client.clock.advance(0)
    code, status, _ = client.json("GET", "/api/statuses/1")
    assert (code, status["state"], status["done"]) == (200, "running", False)
    assert status["legacy_state"] == "STARTED"
    code, error, _ = client.json("GET", "/api/results/1")
    assert code == 404 and error["error"]["code"] == "RESULT_NOT_READY"
    client.executor.by_job(1).finish(0, stdout="привет\n".encode(), stderr=b"\xff\xfe")
    code, status, headers = client.json("GET", "/api/statuses/1")
    assert code == 303 and headers.getRawHeaders("location") == ["/api/results/1"]
    assert status["done"] is True
    response, content = client.request("GET", "/api/results/1")
    assert response.code == 200
    assert "привет".encode() in content, "text must be raw UTF-8, not \\u escapes"
    result = json.loads(content)
    assert result["state"] == "succeeded" and result["exit_code"] == 0
    assert result["stdout"] == "привет\n"
    assert result["stderr"] == "\ufffd\ufffd", "undecodable bytes become replacement characters"
    assert result["stdout_bytes"] == 13
    assert result["truncated"] == {"stdout": False, "stderr": False}
    assert result["duration"] == 0.0 and result["completed"].endswith("Z")
    response, content = client.request("GET", "/api/jobs/1/output/stderr")
    assert content == b"\xff\xfe", "raw output keeps the original bytes"
    assert response.headers.getRawHeaders("content-type") == ["application/octet-stream"]


def test_job_resource_and_lists(client: Client) -> None:
    """Jobs, statuses and results are listed newest first; results only when done."""
    for i in range(2):
        client.json("POST", "/api/jobs", {"command_line": ["echo", str(i)], "labels": {"a": "b"}})
    finish(client, 1, exit_code=2)
    code, job, _ = client.json("GET", "/api/jobs/1")
    assert code == 200
    assert job["command_line"] == ["echo", "0"] and job["labels"] == {"a": "b"}
    assert job["state"] == "failed" and job["exit_code"] == 2
    code, listing, _ = client.json("GET", "/api/jobs")
    assert [j["id"] for j in listing["jobs"]] == [2, 1] and listing["next"] is None
    code, listing, _ = client.json("GET", "/api/statuses")
    assert [(s["id"], s["done"]) for s in listing["statuses"]] == [(2, False), (1, True)]
    code, listing, _ = client.json("GET", "/api/results")
    assert [r["id"] for r in listing["results"]] == [1]
    assert "stdout" not in listing["results"][0], "lists link to output, not embed it"


def test_pagination_with_next_link(client: Client) -> None:
    """A page has a next link (body and Link header) that continues where it stopped."""
    for _ in range(2):
        client.json("POST", "/api/jobs", {"command": "true"})
    code, listing, headers = client.json("GET", "/api/jobs?limit=1")
    assert code == 200 and [j["id"] for j in listing["jobs"]] == [2]
    assert listing["next"].startswith("/api/jobs?limit=1&cursor=")
    assert headers.getRawHeaders("link") == [f'<{listing["next"]}>; rel="next"']
    _code, listing, _ = client.json("GET", listing["next"])
    assert [j["id"] for j in listing["jobs"]] == [1] and listing["next"] is None


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("limit=0", "INVALID_PARAMETER"),
        ("limit=1001", "INVALID_PARAMETER"),
        ("limit=x", "INVALID_PARAMETER"),
        ("cursor=-1", "INVALID_PARAMETER"),
        ("limit=1&limit=2", "INVALID_PARAMETER"),
        ("colour=red", "UNKNOWN_PARAMETER"),
    ],
)
def test_bad_query_parameters_are_400(client: Client, query: str, code: str) -> None:
    """A bad list parameter is a 400 naming it, never silently ignored."""
    status, body, _ = client.json("GET", "/api/jobs?" + query)
    assert status == 400 and body["error"]["code"] == code


def test_cancel_with_patch(client: Client) -> None:
    """PATCH {"status": "cancelled"} ends a job and answers with the final job."""
    client.json("POST", "/api/jobs", {"command": "sleep 100"})
    client.clock.advance(0)
    results: list[Any] = []
    d = client.treq.request(
        "PATCH", "http://cmdd.test/api/jobs/1", data=b'{"status": "cancelled"}',
        headers={**JSON, "Authorization": f"Bearer {client.token}"},
    )
    d.addCallback(client.treq.json_content).addCallback(results.append)
    client.treq.flush()
    assert results == [], "the answer waits for the process to end"
    client.executor.by_job(1).finish(None, signal=15)
    client.treq.flush()
    assert results[0]["state"] == "cancelled"
    code, error, _ = client.json("PATCH", "/api/jobs/1", {"status": "cancelled"})
    assert code == 409 and error["error"]["code"] == "JOB_FINISHED"
    code, error, _ = client.json("PATCH", "/api/jobs/1", {"status": "running"})
    assert code == 400 and error["error"]["code"] == "INVALID_PATCH"


def test_delete(client: Client) -> None:
    """DELETE is 409 while running, 204 once finished, then the job is gone."""
    client.json("POST", "/api/jobs", {"command": "true"})
    client.clock.advance(0)
    code, error, _ = client.json("DELETE", "/api/jobs/1")
    assert code == 409 and error["error"]["code"] == "JOB_NOT_FINISHED"
    client.executor.by_job(1).finish(0)
    response, content = client.request("DELETE", "/api/results/1")
    assert response.code == 204 and content == b""
    code, error, _ = client.json("GET", "/api/jobs/1")
    assert code == 404 and error["error"]["code"] == "JOB_NOT_FOUND"


@pytest.mark.parametrize(
    "path", ["/api/jobs/99", "/api/jobs/abc", "/api/statuses/0", "/api/results/99",
             "/api/jobs/99/output/stdout", "/api/jobs/1" + "0" * 30]
)
def test_unknown_ids_are_404(client: Client, path: str) -> None:
    """Unknown or malformed ids are a JSON 404, never a 500."""
    code, body, _ = client.json("GET", path)
    assert code == 404 and body["error"]["code"] == "JOB_NOT_FOUND"


def test_unknown_route_and_stream(client: Client) -> None:
    """Unknown paths and output streams are JSON 404s."""
    code, body, _ = client.json("GET", "/nope")
    assert code == 404 and body["error"]["code"] == "ROUTE_NOT_FOUND"
    client.json("POST", "/api/jobs", {"command": "true"})
    code, body, _ = client.json("GET", "/api/jobs/1/output/stdin")
    assert code == 404 and body["error"]["code"] == "STREAM_NOT_FOUND"


def test_wrong_method_is_405_with_allow(client: Client) -> None:
    """A method a resource does not support gets 405 and the Allow header."""
    code, body, headers = client.json("PUT", "/api/jobs", {"command": "true"})
    assert code == 405 and body["error"]["code"] == "METHOD_NOT_ALLOWED"
    allowed = headers.getRawHeaders("allow")[0].split(", ")
    assert {"GET", "POST"} <= set(allowed)


@pytest.mark.parametrize(
    ("raw", "headers", "status", "code"),
    [
        (b'{"command": "true"}', {"Content-Type": "text/plain"}, 415, "UNSUPPORTED_MEDIA_TYPE"),
        (b'{"command": "true"}', {}, 415, "UNSUPPORTED_MEDIA_TYPE"),
        (b'{"command": "true"}', {"Content-Type": "application/json; charset=latin-1"}, 415,
         "UNSUPPORTED_MEDIA_TYPE"),
        (b'{"command": "\xff"}', JSON, 400, "INVALID_JSON"),
        (b'{"command": ', JSON, 400, "INVALID_JSON"),
        (b"[" * 100_000 + b"]" * 100_000, JSON, 413, "BODY_TOO_LARGE"),
        (b"[" * 4000 + b"]" * 10, JSON, 400, "INVALID_JSON"),
        (b"x" * 5000, JSON, 413, "BODY_TOO_LARGE"),
        (b'{"command": "x", "\\ud800": 1}', JSON, 400, "UNKNOWN_FIELD"),
        (b'{}', JSON, 400, "COMMAND_MISSING"),
    ],
)
def test_bad_bodies_get_clear_errors(
    client: Client, raw: bytes, headers: dict[str, str], status: int, code: str
) -> None:
    """Whatever a client sends, the answer is a JSON error with the right status."""
    got, body, _ = client.json("POST", "/api/jobs", raw=raw, headers=headers)
    assert (got, body["error"]["code"]) == (status, code)
    assert "Traceback" not in body["error"]["message"]


def test_deep_nesting_is_a_400(client: Client) -> None:
    """JSON nested deeper than the parser can go is a client error, not a 500."""
    raw = b"[" * 2040 + b"]" * 2040
    got, body, _ = client.json("POST", "/api/jobs", raw=raw, headers=JSON)
    assert got == 400 and body["error"]["code"] in ("INVALID_JSON", "BODY_NOT_OBJECT")


def test_queue_full_is_503_with_retry_after(client: Client) -> None:
    """When the queue is full, a POST gets 503 and a Retry-After hint."""
    for _ in range(2):
        client.json("POST", "/api/jobs", {"command": "true"})
    code, body, headers = client.json("POST", "/api/jobs", {"command": "true"})
    assert code == 503 and body["error"]["code"] == "QUEUE_FULL"
    assert headers.getRawHeaders("retry-after") == ["1"]


def test_health_and_metrics(client: Client) -> None:
    """/healthz reports counts; /metrics is Prometheus text."""
    client.json("POST", "/api/jobs", {"command": "true"})
    code, health, _ = client.json("GET", "/healthz")
    assert code == 200 and health["status"] == "ok" and health["queued"] == 1
    response, content = client.request("GET", "/metrics")
    assert response.code == 200
    text = content.decode()
    assert "cmdd_jobs_submitted_total 1" in text
    assert 'cmdd_jobs{state="queued"} 1' in text


def _pending(client: Client, path: str) -> list[Any]:
    results: list[Any] = []
    d = client.treq.request("GET", "http://cmdd.test" + path, allow_redirects=False,
                            headers={"Authorization": f"Bearer {client.token}"})
    d.addCallback(lambda r: client.treq.content(r).addCallback(
        lambda body: results.append((r.code, json.loads(body), r.headers))))
    client.treq.flush()
    return results


def test_long_poll_answers_when_the_job_ends(client: Client) -> None:
    """?wait=S holds the request until the job is final, then answers 303."""
    client.json("POST", "/api/jobs", {"command": "sleep 1"})
    client.clock.advance(0)
    results = _pending(client, "/api/statuses/1?wait=30")
    assert results == []
    client.clock.advance(10)
    client.treq.flush()
    assert results == []
    client.executor.by_job(1).finish(0)
    client.treq.flush()
    code, status, headers = results[0]
    assert code == 303 and status["done"] is True
    assert headers.getRawHeaders("location") == ["/api/results/1"]
    timers = [c for c in client.clock.getDelayedCalls() if c.func.__name__ == "cancel"]
    assert timers == [], "the wait timer was cancelled"


def test_long_poll_times_out_with_the_current_status(client: Client) -> None:
    """When the wait ends first, the answer is 200 with the current state."""
    client.json("POST", "/api/jobs", {"command": "sleep 100"})
    client.clock.advance(0)
    results = _pending(client, "/api/statuses/1?wait=5")
    client.clock.advance(5)
    client.treq.flush()
    code, status, _ = results[0]
    assert code == 200 and status["state"] == "running" and status["done"] is False
    assert client.manager._final_waiters.get(1) == [], "no waiter left behind"


@pytest.mark.parametrize("wait", ["-1", "301", "soon", "nan", "inf"])
def test_bad_wait_is_400(client: Client, wait: str) -> None:
    """wait is bounded (0 to 300 seconds) and must be a number."""
    client.json("POST", "/api/jobs", {"command": "true"})
    code, body, _ = client.json("GET", f"/api/statuses/1?wait={wait}")
    assert code == 400 and body["error"]["field"] == "wait"


def test_filters_fields_and_next_links_over_http(tmp_path: Path) -> None:
    """Lists filter server-side, trim to fields, and next links keep the filters."""
    client = Client(tmp_path, max_queued=10)
    for i in range(3):
        client.json("POST", "/api/jobs", {"command": f"echo {i}", "labels": {"k": "v"}})
    client.json("POST", "/api/jobs", {"command": "echo other"})
    code, listing, _ = client.json("GET", "/api/jobs?label=k:v&limit=2&fields=id,state")
    assert code == 200 and listing["jobs"] == [{"id": 3, "state": "queued"},
                                               {"id": 2, "state": "queued"}]
    assert "label=k%3Av" in listing["next"] and "fields=id%2Cstate" in listing["next"]
    code, listing, _ = client.json("GET", listing["next"])
    assert listing["jobs"] == [{"id": 1, "state": "queued"}] and listing["next"] is None
    code, job, _ = client.json("GET", "/api/jobs/4?fields=id,command")
    assert (code, job) == (200, {"id": 4, "command": "echo other"})
    code, error, _ = client.json("GET", "/api/jobs/4?fields=id,colour")
    assert code == 400 and error["error"]["field"] == "fields"


def test_etag_and_if_none_match(client: Client) -> None:
    """Job, status and result carry an ETag; If-None-Match with it gives 304 and
    no body until the representation changes."""
    client.json("POST", "/api/jobs", {"command": "true"})
    for path in ("/api/jobs/1", "/api/statuses/1"):
        response, _ = client.request("GET", path)
        tag = response.headers.getRawHeaders("etag")[0]
        response, content = client.request("GET", path, headers={"If-None-Match": tag})
        assert (response.code, content) == (304, b"")
    client.clock.advance(0)
    response, content = client.request("GET", "/api/statuses/1", headers={"If-None-Match": tag})
    assert response.code == 200, "the status changed (running), so the ETag no longer matches"
    client.executor.by_job(1).finish(0)
    response, _ = client.request("GET", "/api/results/1")
    tag = response.headers.getRawHeaders("etag")[0]
    response, _ = client.request("GET", "/api/results/1", headers={"If-None-Match": f"W/{tag}"})
    assert response.code == 304


def _stream(client: Client, path: str, headers: dict[str, str] | None = None) -> list[Any]:
    """Start a GET whose body arrives over time; the list gets (code, body) at the end."""
    results: list[Any] = []
    d = client.treq.request("GET", "http://cmdd.test" + path,
                            headers={"Authorization": f"Bearer {client.token}", **(headers or {})})
    d.addCallback(lambda r: client.treq.content(r).addCallback(
        lambda body: results.append((r.code, body, r.headers))))
    client.treq.flush()
    return results


def test_follow_streams_output_until_the_job_ends(client: Client) -> None:
    """?follow=1 sends output as it is written and ends when the job ends."""
    client.json("POST", "/api/jobs", {"command": "chatty"})
    client.clock.advance(0)
    execution = client.executor.by_job(1)
    results = _stream(client, "/api/jobs/1/output/stdout?follow=1")
    execution.stdout.write("первая\n".encode())
    client.clock.advance(0.1)  # the follower batches writes for 50 ms
    client.treq.flush()
    assert results == [], "still following while the job runs"
    execution.stdout.write(b"second\n")
    execution.finish(0)
    client.clock.advance(0.1)
    client.treq.flush()
    code, body, _headers = results[0]
    assert code == 200 and body == "первая\nsecond\n".encode()
    assert client.manager._output_waiters.get(1, []) == []


def test_server_sent_events(client: Client) -> None:
    """Accept: text/event-stream gives stdout events, then an end event with the outcome."""
    client.json("POST", "/api/jobs", {"command": "chatty"})
    client.clock.advance(0)
    execution = client.executor.by_job(1)
    results = _stream(client, "/api/jobs/1/output/stdout",
                      {"Accept": "text/event-stream"})
    # A UTF-8 character split across two writes still arrives whole.
    encoded = "привет\n".encode()
    execution.stdout.write(encoded[:3])
    client.clock.advance(0.1)
    client.treq.flush()
    execution.stdout.write(encoded[3:])
    client.clock.advance(0.1)
    client.treq.flush()
    execution.finish(4)
    client.clock.advance(0.1)
    client.treq.flush()
    _code, body, headers = results[0]
    assert headers.getRawHeaders("content-type") == ["text/event-stream; charset=utf-8"]
    text = body.decode()
    events = [block for block in text.split("\n\n") if block]
    # Each output event's data is one line: the text as a JSON string.
    stdout_events = [e for e in events if e.startswith("event: stdout")]
    assert len(stdout_events) == 2, "two reads, the character split between them"
    data = "".join(json.loads(e.split("\n")[1].removeprefix("data: ")) for e in stdout_events)
    assert data == "привет\n"
    assert events[-1].startswith("event: end\ndata: ")
    end = json.loads(events[-1].split("data: ", 1)[1])
    assert end["state"] == "failed" and end["exit_code"] == 4


def test_server_sent_events_keep_carriage_returns(client: Client) -> None:
    """Output with CR, CRLF and LF line ends (a progress bar) reaches a
    browser-conforming SSE parser whole: no event is cut at a CR."""
    from cmdd.clientformat import EventStream

    client.json("POST", "/api/jobs", {"command": "progress"})
    client.clock.advance(0)
    execution = client.executor.by_job(1)
    results = _stream(client, "/api/jobs/1/output", {"Accept": "text/event-stream"})
    output = "10%\r50%\r100%\r\ndone\n\rdata: forged\n\n"
    execution.stdout.write(output.encode())
    client.clock.advance(0.1)
    client.treq.flush()
    execution.finish(0)
    client.clock.advance(0.1)
    client.treq.flush()
    _code, body, _headers = results[0]
    events: list[tuple[str, str]] = []
    EventStream(lambda event, data: events.append((event, data))).feed(body)
    assert [name for name, _ in events] == ["stdout", "end"]
    assert json.loads(events[0][1]) == output
    assert json.loads(events[1][1])["state"] == "succeeded"


def test_range_requests_on_output(client: Client) -> None:
    """Range returns 206 with Content-Range; an impossible range is 416."""
    client.json("POST", "/api/jobs", {"command": "x"})
    finish(client, 1, stdout=b"0123456789")
    response, content = client.request("GET", "/api/jobs/1/output/stdout",
                                       headers={"Range": "bytes=2-4"})
    assert (response.code, content) == (206, b"234")
    assert response.headers.getRawHeaders("content-range") == ["bytes 2-4/10"]
    response, content = client.request("GET", "/api/jobs/1/output/stdout",
                                       headers={"Range": "bytes=-3"})
    assert (response.code, content) == (206, b"789")
    code, _error, headers = client.json("GET", "/api/jobs/1/output/stdout",
                                       headers={"Range": "bytes=20-"})
    assert code == 416 and headers.getRawHeaders("content-range") == ["bytes */10"]


def test_output_that_cmdd_did_not_write_is_not_served(client: Client, tmp_path: Path) -> None:
    """A symlink planted in the output directory (C{1.stdout -> secret}) or a
    file there owned by another user is served as empty output, never its
    content, and never as a 500: output, result, Range and follow alike."""
    client.json("POST", "/api/jobs", {"command": "x"})
    finish(client, 1, stdout=b"mine\n", stderr=b"mine too\n")
    secret = tmp_path / "secret"
    secret.write_bytes(b"TOP SECRET\n")
    stdout, stderr = tmp_path / "1.stdout", tmp_path / "1.stderr"
    stdout.unlink()
    stdout.symlink_to(secret)
    stderr.unlink()
    stderr.write_bytes(b"TOP SECRET\n")
    os.chown(stderr, 65534, 65534)
    with capturedLogs() as events:
        for stream in ("stdout", "stderr"):
            response, content = client.request("GET", f"/api/jobs/1/output/{stream}")
            assert (response.code, content) == (200, b""), stream
            response, content = client.request("GET", f"/api/jobs/1/output/{stream}?follow=1")
            assert (response.code, content) == (200, b""), stream
            code, _error, headers = client.json("GET", f"/api/jobs/1/output/{stream}",
                                                headers={"Range": "bytes=0-3"})
            assert code == 416 and headers.getRawHeaders("content-range") == ["bytes */0"]
        code, result, _ = client.json("GET", "/api/results/1")
    assert code == 200 and (result["stdout"], result["stderr"]) == ("", "")
    assert result["stdout_bytes"] == 5, "the counts are the job's, from the journal"
    warned = {e["path"] for e in events if e["log_level"] == LogLevel.warn}
    assert warned == {str(stdout), str(stderr)}


def test_a_scanning_list_is_answered_from_a_thread(tmp_path: Path) -> None:
    """A list that may walk the whole history (q=, sort=duration, a time
    filter) runs on a worker thread, so the reactor serves other requests
    meanwhile; a newest-first page needs none and is answered at once."""
    from fakes import ManualThreads

    client = Client(tmp_path, max_running=0, max_queued=10)
    for text in ("alpha", "beta", "alphabet"):
        assert client.json("POST", "/api/jobs", {"command": f"echo {text}"})[0] == 202
    threads = ManualThreads()
    client.api._run_blocking = threads.run  # type: ignore[assignment]
    code, page, _ = client.json("GET", "/api/jobs?limit=1")
    assert code == 200 and [job["id"] for job in page["jobs"]] == [3]
    assert not threads.pending
    for path in ("/api/jobs?q=alpha", "/api/jobs?sort=created",
                 "/api/jobs?created_before=2000-01-01T00:00:00Z"):  # fmt: skip
        answers: list[Any] = []
        d = client.treq.get("http://cmdd.test" + path,
                            headers={"Authorization": f"Bearer {client.token}"})  # fmt: skip
        d.addCallback(client.treq.json_content).addCallback(answers.append)
        client.treq.flush()
        assert not answers and len(threads.pending) == 1, path
        threads.run_all()
        client.treq.flush()
        assert answers, path
        ids = [job["id"] for job in answers[0]["jobs"]]
        assert ids == ([3, 1] if "q=" in path else [1, 2, 3] if "sort" in path else [3, 2, 1])
