"""Requests that used to get no answer, no JSON, or a 500, over a raw socket.

Each case is one that a real daemon (twistd, Twisted's own HTTP parser in
front of cmdd) got wrong: a hang, a bare 400 from Twisted, plain text from
Klein, a redirect built from the Host header, a 500 for a number. Every
answer now is the JSON error model with the status that names the cause.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hostile import Answer, exchange, request_bytes
from test_crash import Daemon

pytestmark = pytest.mark.integration

JSON = ("Content-Type", "application/json")


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    daemon = Daemon(Path(tmp_path_factory.mktemp("hostile")) / "data")
    daemon.start()
    status, _ = daemon.request("POST", "/api/jobs", {"command": "true"})
    assert status == 202
    deadline = time.monotonic() + 20
    while daemon.get("/api/jobs/1")[1]["state"] != "succeeded":
        assert time.monotonic() < deadline, "job 1 did not finish"
        time.sleep(0.05)
    yield daemon
    daemon.stop()


def send(
    live: Daemon,
    method: str,
    target: str,
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
    host: str | None = "cmdd.test",
) -> Answer:
    auth = [("Authorization", f"Bearer {live.token}")]
    return exchange(live.port, request_bytes(method, target, auth + (headers or []), body, host))


def assert_error(answer: Answer, status: int, code: str) -> None:
    assert answer.status == status, (answer.status, answer.body[:200])
    assert answer.is_json_error(), answer.body[:200]
    assert answer.json()["error"]["code"] == code


LONG = "a" * 20_000

CONNECTION_LEVEL = [
    # (what, raw request, status, code)
    ("request line of 20 KiB", request_bytes("GET", "/api/jobs?q=" + LONG), 414, "URI_TOO_LONG"),
    ("header of 20 KiB", request_bytes("GET", "/healthz", [("X-Big", LONG)]), 431,
     "HEADERS_TOO_LARGE"),
    ("headers of 40 KiB in all",
     request_bytes("GET", "/healthz", [(f"X-{i}", "a" * 4000) for i in range(10)]), 431,
     "HEADERS_TOO_LARGE"),
    ("1,000 headers", request_bytes("GET", "/healthz", [(f"X-{i}", "a") for i in range(1000)]),
     431, "TOO_MANY_HEADERS"),
    ("NUL in Content-Type",
     request_bytes("POST", "/api/jobs", [("Content-Type", "application/json\x00x")], b"{}"),
     400, "BAD_HEADER"),
    ("header without a colon", b"GET /healthz HTTP/1.1\r\nHost: x\r\nnocolon\r\n\r\n", 400,
     "BAD_HEADER"),
    ("bad request line", b"GET /healthz HTTP/1.1 extra\r\nHost: x\r\n\r\n", 400,
     "BAD_REQUEST_LINE"),
    ("HTTP/2 request line", b"GET /healthz HTTP/2.0\r\nHost: x\r\n\r\n", 400,
     "BAD_REQUEST_LINE"),
    ("malformed chunked body",
     request_bytes("POST", "/api/jobs", [JSON, ("Transfer-Encoding", "chunked")]) + b"zz\r\n",
     400, "BAD_BODY_ENCODING"),
    ("two Content-Length headers",
     request_bytes("POST", "/api/jobs", [JSON, ("Content-Length", "2"), ("Content-Length", "2")]),
     400, "BAD_HEADER"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("raw", "status", "code"),
    [case[1:] for case in CONNECTION_LEVEL],
    ids=[case[0] for case in CONNECTION_LEVEL],
)
def test_what_twisted_answered_itself_is_json(
    live: Daemon, raw: bytes, status: int, code: str
) -> None:
    """Malformed or oversized request lines and headers get a JSON 400/414/431
    (Twisted's was an empty 400, or no answer at all for lines over 16 KiB)."""
    answer = exchange(live.port, raw)
    assert_error(answer, status, code)
    assert answer.header("connection") == "close"


@pytest.mark.parametrize(
    ("host", "what"),
    [
        ("a" * 64 + ".example", "a label over 63 characters (werkzeug's BadHost)"),
        ("a b", "a space"),
        ("x:99999999", "a port that is not a port"),
        (None, "no Host at all (HTTP/1.1)"),
    ],
)
def test_a_bad_host_is_a_json_400_at_once(live: Daemon, host: str | None, what: str) -> None:
    """A malformed or missing Host is 400 INVALID_HOST, answered at once (a long
    label raised inside the auth gate and the connection hung)."""
    answer = send(live, "GET", "/api/jobs", host=host)
    assert_error(answer, 400, "INVALID_HOST")
    assert answer.seconds < 5


def test_two_host_headers_are_a_json_400(live: Daemon) -> None:
    """RFC 9112 section 3.2: more than one Host is a 400."""
    answer = send(live, "GET", "/healthz", [("Host", "other.test")])
    assert_error(answer, 400, "INVALID_HOST")


@pytest.mark.parametrize("target", ["/api/jobs/%ff", "/api/jobs?q=%ff", "/api/%c3%28"])
def test_a_url_that_is_not_utf8_is_a_json_400(live: Daemon, target: str) -> None:
    """Percent-encoded bytes that are not UTF-8 are 400 INVALID_URL (Klein
    answered the path case in plain text; the query case was silently
    replaced by U+FFFD)."""
    assert_error(send(live, "GET", target), 400, "INVALID_URL")


def test_a_header_that_is_not_utf8_is_a_json_400(live: Daemon) -> None:
    """A header cmdd reads that is not UTF-8 is 400, not a 500 from decoding it."""
    answer = exchange(
        live.port,
        b"GET /api/jobs/1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + (live.token or "").encode()
        + b"\r\nIf-None-Match: \xff\r\nConnection: close\r\n\r\n",
    )
    assert_error(answer, 400, "BAD_HEADER")


@pytest.mark.parametrize(
    "content_type",
    [
        "multipart/form-data; boundary=x",
        "multipart/form-data",
        "application/x-www-form-urlencoded",
        "application/json; foo=bar; charset=latin-1",
        'application/json; charset="iso-8859-1"',
    ],
)
def test_bodies_that_are_not_utf8_json_are_415(live: Daemon, content_type: str) -> None:
    """Multipart (Twisted parsed it first and answered an empty 400), forms, and
    a charset in any parameter position that is not UTF-8 are all JSON 415."""
    answer = send(live, "POST", "/api/jobs", [("Content-Type", content_type)], b"garbage")
    assert_error(answer, 415, "UNSUPPORTED_MEDIA_TYPE")


@pytest.mark.parametrize(
    "body",
    [
        b'{"command": "true", "timeout": 1' + b"0" * 400 + b"}",
        b'{"command": "true", "timeout": ' + b"9" * 5000 + b"}",
        b'{"command": "true", "timeout": NaN}',
        b'{"command": "true", "timeout": Infinity}',
        b'{"command": "true", "timeout": 1e400}',
        b'{"command": "false", "command": "true"}',
        b'{"command": "true", "labels": {"a": "1", "a": "2"}}',
    ],
    ids=["1e400-as-integer", "5000-digits", "NaN", "Infinity", "1e400", "duplicate-key",
         "nested-duplicate-key"],
)  # fmt: skip
def test_json_numbers_and_keys_are_strict(live: Daemon, body: bytes) -> None:
    """Numbers beyond a double (once a 500), NaN/Infinity and duplicate keys
    (once: last one wins) are 400 INVALID_JSON."""
    assert_error(send(live, "POST", "/api/jobs", [JSON], body), 400, "INVALID_JSON")


def test_a_huge_expires_in_is_400(live: Daemon) -> None:
    """A token lifetime beyond a double was a 500 (OverflowError)."""
    body = b'{"expires_in": 1' + b"0" * 400 + b"}"
    assert_error(send(live, "POST", "/api/tokens", [JSON], body), 400, "INVALID_JSON")


def test_merged_slashes_redirect_with_a_relative_location(live: Daemon) -> None:
    """C{/api//jobs/1} is a JSON 308 with C{Location: /api/jobs/1}; the Host
    header is echoed nowhere (it was: in the body, and no Location at all)."""
    answer = send(live, "GET", "/api//jobs/1?fields=id", host="evil.example")
    assert answer.status == 308 and answer.is_json_error()
    assert answer.header("location") == "/api/jobs/1?fields=id"
    assert b"evil" not in answer.body


@pytest.mark.parametrize("wait", ["abc", "-1", "NaN", "nan", "inf", "1e999", "+1", " 1",
                                  "1_0", "\u0661", "301"])  # fmt: skip
def test_wait_is_checked_on_a_finished_job_too(live: Daemon, wait: str) -> None:
    """C{?wait=} that is not a number from 0 to 300 is 400, also when the job
    is already finished (it used to be ignored then)."""
    answer = send(live, "GET", "/api/statuses/1?wait=" + _quote(wait))
    assert_error(answer, 400, "INVALID_PARAMETER")


def test_wait_takes_json_numbers(live: Daemon) -> None:
    """Any JSON number in range is a valid wait: 0.5, 1e-3, 2E0."""
    for wait in ("0.5", "1e-3", "2E0", "0"):
        assert send(live, "GET", "/api/statuses/1?wait=" + wait).status == 303


@pytest.mark.parametrize("query", ["limit=%D9%A1", "limit=+5", "exit_code=%D9%A1",
                                   "exit_code=1_0", "exit_code=" + "9" * 5000])  # fmt: skip
def test_list_numbers_are_ascii_digits(live: Daemon, query: str) -> None:
    """Python's int() takes other scripts' digits, signs and underscores; a
    query does not."""
    assert_error(send(live, "GET", "/api/jobs?" + query), 400, "INVALID_PARAMETER")


@pytest.mark.parametrize(
    "moment",
    ["2026-W01-1T00:00:00Z", "2026-001T00:00:00Z", "20260101T000000Z", "2026-01-01T00:00:00",
     "2026-01-01", "2026-01-01T24:00:00Z", "2026-02-30T00:00:00Z", "2026-01-01T00:00:00,5Z",
     "2026-01-01T00:00:00+2400"],
)  # fmt: skip
def test_timestamps_are_rfc3339_only(live: Daemon, moment: str) -> None:
    """ISO 8601 forms that RFC 3339 leaves out (week and ordinal dates, no
    separators, no zone) are 400, not silently read."""
    answer = send(live, "GET", "/api/jobs?created_after=" + _quote(moment))
    assert_error(answer, 400, "INVALID_PARAMETER")


def test_rfc3339_timestamps_still_work(live: Daemon) -> None:
    """Z, lower-case t/z, offsets and fractions are all RFC 3339."""
    for moment in ("2020-01-01T00:00:00Z", "2020-01-01t00:00:00.123456789z",
                   "2020-01-01T01:00:00+01:00", "2020-01-01T00:00:00-00:30"):  # fmt: skip
        answer = send(live, "GET", "/api/jobs?created_after=" + _quote(moment))
        assert answer.status == 200, (moment, answer.body)
        assert [job["id"] for job in answer.json()["jobs"]] == [1]


def test_a_single_result_checks_its_parameters(live: Daemon) -> None:
    """C{/api/results/{id}} rejects unknown parameters and honours C{fields}
    (it ignored both)."""
    assert_error(send(live, "GET", "/api/results/1?bogus=1"), 400, "UNKNOWN_PARAMETER")
    assert_error(send(live, "GET", "/api/results/1?fields=nope"), 400, "INVALID_PARAMETER")
    answer = send(live, "GET", "/api/results/1?fields=id,exit_code")
    assert answer.status == 200 and answer.json() == {"id": 1, "exit_code": 0}
    # The output is streamed from the files: trimming keeps it valid JSON.
    only_output = send(live, "GET", "/api/results/1?fields=stdout")
    assert only_output.status == 200 and set(only_output.json()) == {"stdout"}
    answer = send(live, "GET", "/api/results/1?fields=stderr,id")
    assert answer.status == 200 and set(answer.json()) == {"id", "stderr"}


@pytest.mark.parametrize(
    ("accept", "events"),
    [
        ("text/event-stream;q=0", False),
        ("*/*", False),
        ("application/octet-stream, text/event-stream;q=0.5", False),
        ("text/event-stream", True),
        ("text/event-stream, */*;q=0.1", True),
    ],
)
def test_accept_is_negotiated_with_qualities(live: Daemon, accept: str, events: bool) -> None:
    """Server-Sent Events only when Accept prefers them (C{q=0} refused them, but
    a substring check selected them)."""
    answer = send(live, "GET", "/api/jobs/1/output/stdout", [("Accept", accept)])
    assert answer.status == 200
    expected = "text/event-stream" if events else "application/octet-stream"
    assert (answer.header("content-type") or "").startswith(expected)


def test_a_huge_range_is_416_not_500(live: Daemon) -> None:
    """A Range with 5,000 digits was a 500 (int() refuses them)."""
    huge = [("Range", "bytes=" + "9" * 5000 + "-")]
    answer = send(live, "GET", "/api/jobs/1/output/stdout", huge)
    assert_error(answer, 416, "RANGE_NOT_SATISFIABLE")


def _quote(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")
