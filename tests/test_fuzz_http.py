"""Hostile-input fuzzing of a live daemon: every route, method, header and
query parameter, over a raw socket, plus schemathesis' stateful mode.

The promise checked on every response: an answer comes (no hang, no silent
close), nothing is a 5xx, and every 4xx is the JSON error model. Requests
are built from bytes, so they can be what no client library would send:
percent-encoded garbage, NUL in a header, a 20 KiB line, a duplicate key.

Jobs the fuzzer submits only ever run C{true}: any generated body that names
a command gets C{"true"} instead (the CI machine runs this as root).

The counts (requests, by status class) are printed at the end of the run
(by tests/conftest.py) and checked: at least L{MIN_REQUESTS} per run.
"""

from __future__ import annotations

import base64
import json
import os
import string
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_from_bytes

import pytest
from hostile import Answer, exchange
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import FlakyStrategyDefinition
from test_crash import Daemon

pytestmark = pytest.mark.integration

#: Requests one run must send (raw fuzzing and stateful together).
MIN_REQUESTS = 10_000
DEFAULT_RAW_EXAMPLES = 1_500
RAW_EXAMPLES = int(os.environ.get("CMDD_FUZZ_EXAMPLES", DEFAULT_RAW_EXAMPLES))
STATEFUL_EXAMPLES = 30
STATEFUL_STEPS = 12

TALLY: Counter[str] = Counter()
#: Left as they are in generated query values ("%" keeps pre-encoded bytes).
URL_SAFE = "%:+,-._~!$'()*;=@/"

ROUTES = [
    "/api/jobs", "/api/jobs/{id}", "/api/jobs/{id}/output/{stream}", "/api/statuses",
    "/api/statuses/{id}", "/api/results", "/api/results/{id}", "/api/tokens",
    "/api/tokens/{id}", "/api/openapi.json", "/healthz", "/readyz", "/metrics", "/ui/", "/",
    "/api/jobs/{id}/deliveries", "/api/schedules", "/api/webhook-secret",
]  # fmt: skip
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"]
PARAMETERS = [
    "state", "label", "owner", "q", "created_after", "created_before", "completed_after",
    "exit_code", "sort", "limit", "cursor", "fields", "wait", "follow",
]  # fmt: skip
WEIRD_NUMBERS = [
    "0", "1", "-1", "0.5", "1e-3", "1e3", "1e999", "NaN", "nan", "inf", "-inf", "+1", " 1",
    "1_0", "\u0661", "0x10", "9" * 30, "9" * 5000, "", "1.", ".5", "1,5",
]  # fmt: skip
TIMES = [
    "2026-01-01T00:00:00Z", "2026-W01-1T00:00:00Z", "2026-001", "20260101T000000Z",
    "2026-01-01T00:00:00", "2026-13-01T00:00:00Z", "0000-01-01T00:00:00Z",
    "9999-12-31T23:59:59.999999999+23:59", "2026-01-01T24:00:00Z", "2026-01-01t00:00:00z",
]  # fmt: skip
FIELD_NAMES = [
    "command", "command_line", "environment", "working_directory", "stdin", "umask",
    "timeout", "labels", "user", "run_at", "webhooks", "status", "expires_in", "description",
]  # fmt: skip


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    daemon = Daemon(Path(tmp_path_factory.mktemp("fuzz-raw")) / "data")
    daemon.start()
    for _ in range(3):
        daemon.request("POST", "/api/jobs", {"command": "true"})
    yield daemon
    daemon.stop()
    # The counts are printed at the end of the run (tests/conftest.py).
    assert TALLY["5xx"] == 0


def percent(data: bytes) -> str:
    return quote_from_bytes(data, safe="")


segments = st.one_of(
    st.sampled_from(
        [
            "1",
            "2",
            "3",
            "0",
            "-1",
            "007",
            "99999999999999999999",
            "stdout",
            "stderr",
            "stdin",
            "abc",
            "%ff",
            "%00",
            "%2F",
            ".",
            "..",
        ]
    ),
    st.binary(max_size=6).map(percent),
    st.text(string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@", max_size=8),
)
numbers = st.one_of(
    st.sampled_from(WEIRD_NUMBERS),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.floats().map(repr),
)
query_values = st.one_of(
    numbers,
    st.sampled_from(TIMES),
    st.sampled_from(["queued", "running", "succeeded", "id,state", "-created", "a:b", "admin"]),
    st.binary(max_size=12).map(lambda raw: quote(raw.decode("utf-8", "replace"), safe="")),
    st.binary(max_size=6).map(percent),
)
queries = st.lists(
    st.tuples(
        st.one_of(st.sampled_from(PARAMETERS), st.text(string.ascii_lowercase, max_size=6)),
        query_values,
    ),
    max_size=4,
).map(lambda pairs: "&".join(f"{name}={quote(value, safe=URL_SAFE)}" for name, value in pairs))


@st.composite
def targets(draw: st.DrawFn) -> str:
    """A request target: a route with fuzzed segments and a fuzzed query."""
    path = draw(st.sampled_from(ROUTES))
    while "{id}" in path:
        path = path.replace("{id}", draw(segments), 1)
    path = path.replace("{stream}", draw(segments))
    if draw(st.integers(0, 9)) == 0:
        cut = draw(st.integers(0, len(path)))
        path = path[:cut] + "/" + path[cut:]  # a doubled or an extra slash
    query = draw(queries)
    return path + ("?" + query if query else "")


media_types = st.sampled_from([
    "application/json", "application/merge-patch+json", "text/plain", "multipart/form-data",
    "application/x-www-form-urlencoded", "", "json", "*/*", "application/json\tx",
])  # fmt: skip
media_parameters = st.sampled_from([
    "", "; charset=utf-8", "; charset=UTF-8", '; charset="utf-8"', "; charset=latin-1",
    "; foo=bar; charset=latin-1", "; boundary=x", "; charset", ";;", "; q=0",
])  # fmt: skip
#: Bytes a header value may hold on the wire (no control characters but
#: tab), as Latin-1 text; bytes strategies generate much faster than text.
_VALUE_BYTES = bytes(range(256)).translate(None, bytes([*range(0x09), *range(0x0A, 0x20), 0x7F]))
header_values = st.binary(max_size=20).map(
    lambda raw: bytes(_VALUE_BYTES[b % len(_VALUE_BYTES)] for b in raw).decode("latin-1")
)


@st.composite
def headers(draw: st.DrawFn, token: str) -> list[tuple[str, str]]:
    """Headers cmdd reads, in valid and hostile forms, and random others."""
    out: list[tuple[str, str]] = []
    auth = draw(st.integers(0, 9))
    if auth < 7:
        out.append(("Authorization", f"Bearer {token}"))
    elif auth == 7:
        raw = base64.b64encode(draw(st.binary(max_size=12))).decode()
        out.append(("Authorization", draw(st.sampled_from(["Basic ", "Bearer ", "Negotiate "]))
                    + draw(st.sampled_from([raw, "!!", "", "a b"]))))  # fmt: skip
    elif auth == 8:
        out.append(("Authorization", draw(header_values)))
    choices = {
        "Accept": st.one_of(
            st.sampled_from(
                [
                    "text/event-stream",
                    "text/event-stream;q=0",
                    "*/*",
                    "application/json",
                    "text/*;q=0.5, */*;q=0",
                    "q=1;;,,",
                ]
            ),
            header_values,
        ),
        "Content-Type": st.builds(lambda m, p: m + p, media_types, media_parameters),
        "Range": st.one_of(
            st.sampled_from(["bytes=0-", "bytes=-5", "bytes=5-1", "bytes=0-0,2-3", "bytes=x"]),
            numbers.map(lambda n: f"bytes={n}-"),
        ),
        "If-None-Match": st.one_of(st.sampled_from(["*", '"x"', 'W/"x"', ","]), header_values),
        "Idempotency-Key": header_values,
        "Expect": st.sampled_from(["100-continue", "nothing"]),
        "Connection": st.sampled_from(["keep-alive", "close, upgrade", "Upgrade"]),
        "Upgrade": st.sampled_from(["websocket", "h2c"]),
        "X-Forwarded-For": header_values,
        "Cookie": header_values,
    }
    for name in draw(st.lists(st.sampled_from(sorted(choices)), max_size=4, unique=True)):
        out.append((name, draw(choices[name])))
    for _ in range(draw(st.integers(0, 2))):
        name = draw(st.text(string.ascii_letters + string.digits + "-_!#$%&'*+.^`|~", min_size=1,
                            max_size=10))  # fmt: skip
        out.append((name, draw(header_values)))
    return out


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.binary(max_size=8).map(lambda raw: raw.decode("utf-8", "replace")),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(FIELD_NAMES), inner, max_size=3)
    ),
    max_leaves=5,
)


def safe(value: Any) -> Any:
    """The fuzzed body, with any command made harmless."""
    if isinstance(value, dict):
        if "command" in value:
            value["command"] = "true"
        if "command_line" in value:
            value["command_line"] = ["true"]
        if "user" in value:
            value["user"] = "nobody"
    return value


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    """A request body: a job spec, any JSON, JSON-like text or bytes."""
    kind = draw(st.integers(0, 5))
    if kind == 0:
        return b""
    if kind == 1:
        spec: dict[str, Any] = {"command": "true"}
        extra = draw(st.dictionaries(st.sampled_from(FIELD_NAMES), json_values, max_size=3))
        return json.dumps(safe({**extra, **spec}), allow_nan=True).encode()
    if kind == 2:
        return json.dumps(safe(draw(json_values)), allow_nan=True).encode("utf-8", "replace")
    if kind == 3:
        return draw(st.sampled_from([
            b'{"command": "true", "command": "true"}', b'{"command": "true", "timeout": NaN}',
            b'{"command": "true", "timeout": 1' + b"0" * 400 + b"}", b"[" * 10_000,
            b'{"status": "cancelled"}', b'{"expires_in": 1e999}', b"\xef\xbb\xbf{}", b"\xff",
        ]))  # fmt: skip
    return draw(st.binary(max_size=64))


def build(method: str, target: str, head: list[tuple[str, str]], body: bytes, host: str) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", *(f"{n}: {v}" for n, v in head)]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    lines.append("Connection: close")
    return b"".join(wire(line) + b"\r\n" for line in lines) + b"\r\n" + body


def wire(line: str) -> bytes:
    """A line's bytes: Latin-1 text is the bytes it was drawn from; anything
    else (a Range of Arabic-Indic digits) goes as UTF-8."""
    try:
        return line.encode("latin-1")
    except UnicodeEncodeError:
        return line.encode("utf-8")


def check(answer: Answer, method: str, raw: bytes) -> None:
    """The promise for one response, counted."""
    TALLY["requests"] += 1
    TALLY[f"{answer.status // 100}xx"] += 1
    what = raw[:300]
    assert answer.status != 0, f"no answer to {what!r}: {answer.body[:200]!r}"
    assert answer.status < 500, f"{answer.status} for {what!r}: {answer.body[:300]!r}"
    if answer.status >= 400:
        if method == "HEAD":
            assert (answer.header("content-type") or "").startswith("application/json")
        else:
            assert answer.is_json_error(), f"not JSON for {what!r}: {answer.body[:300]!r}"


FUZZ = settings(
    max_examples=RAW_EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
    # No shrinking: each example is real requests, and shrinking one failure
    # can take many minutes; the failing example is printed as drawn.
    phases=[Phase.explicit, Phase.generate],
)


@FUZZ
@given(data=st.data())
def test_any_route_method_header_and_query(live: Daemon, data: st.DataObject) -> None:
    """Any method on any route (fuzzed ids, slashes, parameters and headers),
    with and without credentials and as HEAD, gets an answer; never a 5xx;
    every 4xx is JSON."""
    any_token = st.text(string.ascii_uppercase, min_size=1, max_size=7)
    method = data.draw(st.one_of(st.sampled_from(METHODS), any_token))
    target = data.draw(targets())
    head = data.draw(headers(live.token or ""))
    body = data.draw(bodies()) if method in ("POST", "PATCH", "PUT") else b""
    raw = build(method, target, head, body, "cmdd.test")
    check(exchange(live.port, raw), method, raw)
    # The same without credentials: what the gate answers is JSON too.
    anonymous = [(name, value) for name, value in head if name != "Authorization"]
    raw = build(method, target, anonymous, body, "cmdd.test")
    check(exchange(live.port, raw), method, raw)
    # And as HEAD: the same status and headers, no body.
    raw = build("HEAD", target, head, b"", "cmdd.test")
    check(exchange(live.port, raw), "HEAD", raw)


@FUZZ
@given(data=st.data())
def test_any_body_to_the_routes_that_take_one(live: Daemon, data: st.DataObject) -> None:
    """Any body and Content-Type to the routes that read JSON, sent with a
    Content-Length and again chunked: JSON errors only."""
    method, target = data.draw(
        st.sampled_from([("POST", "/api/jobs"), ("PATCH", "/api/jobs/1"), ("POST", "/api/tokens"),
                         ("PATCH", "/api/jobs/2"), ("POST", "/api/jobs")]))  # fmt: skip
    head = [("Authorization", f"Bearer {live.token}")]
    content_type = data.draw(st.builds(lambda m, p: m + p, media_types, media_parameters))
    if content_type:
        head.append(("Content-Type", content_type))
    body = data.draw(bodies())
    raw = build(method, target, head, body, "cmdd.test")
    check(exchange(live.port, raw), method, raw)
    # The same body in chunks (of drawn sizes) through the chunked decoder.
    sizes = data.draw(st.lists(st.integers(1, 64), min_size=1, max_size=4))
    raw = build(method, target, [*head, ("Transfer-Encoding", "chunked")], b"", "cmdd.test")
    raw += chunked(body, sizes)
    check(exchange(live.port, raw), method, raw)


def chunked(body: bytes, sizes: list[int]) -> bytes:
    """C{body} in chunked transfer coding, in chunks of the given sizes (cycled)."""
    out, index = b"", 0
    while body:
        size = sizes[index % len(sizes)]
        out += b"%x\r\n%s\r\n" % (len(body[:size]), body[:size])
        body, index = body[size:], index + 1
    return out + b"0\r\n\r\n"


def mangle(raw: bytes, edits: list[tuple[int, int, bytes]]) -> bytes:
    """C{raw} with bytes replaced, inserted or deleted at the given places."""
    out = bytearray(raw)
    for where, cut, insert in edits:
        where = where % (len(out) + 1)
        out[where : where + cut] = insert
    return bytes(out)


@FUZZ
@given(data=st.data())
def test_malformed_and_oversized_requests(live: Daemon, data: st.DataObject) -> None:
    """Byte-level damage to a valid request (NUL, CR, LF, spaces, colons, huge
    runs), odd hosts, and oversized lines or header counts, to a POST and to
    a GET: always an answer, never a 5xx, every 4xx JSON."""
    token = live.token or ""
    host = data.draw(st.one_of(
        st.just("cmdd.test"), st.just("a" * 64 + ".test"), st.just("[::1]:8443"),
        st.text(string.ascii_letters + ".-_:[]@ %", max_size=12),
    ))  # fmt: skip
    body = b'{"command": "true"}'
    raw = build("POST", data.draw(targets()), [("Authorization", f"Bearer {token}"),
                ("Content-Type", "application/json")], body, host)  # fmt: skip
    head = raw[: -len(body) - 4]
    damage = st.tuples(
        st.integers(0, 400),
        st.integers(0, 3),
        st.one_of(
            st.sampled_from([b"\x00", b"\r", b"\n", b"\r\n", b" ", b":", b"\t", b"\xff", b"%"]),
            st.integers(16_000, 70_000).map(lambda n: b"a" * n),
            st.integers(90, 200).map(lambda n: b"".join(b"X-%d: a\r\n" % i for i in range(n))),
        ),
    )
    # Damage to the head only, then the end of headers and the body: a body
    # shorter than its Content-Length would wait for the receive timeout.
    edits = data.draw(st.lists(damage, min_size=1, max_size=3))
    raw = mangle(head, edits) + b"\r\n\r\n" + body
    check(exchange(live.port, raw, timeout=40), "POST", raw)
    # The same damage to a GET without a body.
    get = b"GET" + head[4:].replace(b"Content-Length: %d\r\n" % len(body), b"")
    raw = mangle(get, edits) + b"\r\n\r\n"
    check(exchange(live.port, raw, timeout=40), "GET", raw)


# --- schemathesis, stateful ---------------------------------------------------


def test_stateful_workflows(live: Daemon) -> None:
    """schemathesis' state machine chains the operations by their links and
    Location headers (submit, then read, wait, cancel, delete the same job;
    make, list and revoke tokens): no 5xx, documented status codes and
    bodies, JSON errors."""
    import schemathesis
    from schemathesis.checks import (
        content_type_conformance,
        not_a_server_error,
        response_schema_conformance,
        status_code_conformance,
    )
    from test_schemathesis import fuzzing_schema

    schema = schemathesis.openapi.from_dict(fuzzing_schema())
    schema.config.update(base_url=f"http://127.0.0.1:{live.port}")
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
    ]
    steps: Counter[str] = Counter()
    own_token_id = (live.token or "").split("_")[1]

    class Workflow(schema.as_state_machine()):  # type: ignore[misc]  # built at run time
        def before_call(self, case: Any) -> None:
            # The one safety edit: the workflow may revoke the tokens it
            # lists, but not the one it runs with.
            if (case.path_parameters or {}).get("token_id") == own_token_id:
                case.path_parameters["token_id"] = "0" * 16

        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {"headers": {"Authorization": f"Bearer {live.token}"}, "timeout": 15}

        def after_call(self, response: Any, case: Any) -> None:
            steps[f"{case.method} {case.operation.path}"] += 1
            TALLY["requests"] += 1
            TALLY["stateful"] += 1
            TALLY[f"{response.status_code // 100}xx"] += 1
            if response.status_code >= 400:
                body = response.json()
                assert isinstance(body["error"]["code"], str), body

        def validate_response(self, response: Any, case: Any, **kwargs: Any) -> None:
            try:
                case.validate_response(response, checks=checks)
            except Exception as error:
                failures.append(error)
                raise

    failures: list[Exception] = []
    started = time.monotonic()
    try:
        Workflow.run(
            settings=settings(
                max_examples=STATEFUL_EXAMPLES,
                stateful_step_count=STATEFUL_STEPS,
                deadline=None,
                suppress_health_check=list(HealthCheck),
                database=None,
            )
        )
    except FlakyStrategyDefinition:
        # A live server's lists change between runs of one scenario (the
        # other fuzzers add jobs), so Hypothesis may find a replay that draws
        # differently. Only that is tolerated: a failed check is recorded
        # before Hypothesis sees it, and fails the test here.
        assert not failures, failures[0]
    print(f"\nstateful: {sum(steps.values())} calls in {time.monotonic() - started:.0f} s")
    assert any(name.startswith("POST /api/jobs") for name in steps)
    assert len(steps) >= 5, steps


def test_the_run_sent_enough_requests(live: Daemon) -> None:
    """The whole module sent at least MIN_REQUESTS requests and got no 5xx."""
    if RAW_EXAMPLES < DEFAULT_RAW_EXAMPLES:
        pytest.skip("CMDD_FUZZ_EXAMPLES made the run smaller")
    if TALLY["stateful"] == 0 or TALLY["requests"] < 7 * RAW_EXAMPLES:
        pytest.skip("only part of the module ran")
    assert TALLY["requests"] >= MIN_REQUESTS, TALLY
    assert TALLY["5xx"] == 0, TALLY
