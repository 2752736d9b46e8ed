"""Idempotency-Key on POST /api/jobs: the pure index, then the API in memory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from test_api import JSON, Client
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from cmdd.codec import Meta, decode, encode, job_events
from cmdd.errors import ClientError
from cmdd.history import History, MemoryLog
from cmdd.idempotency import KeyIndex, fingerprint, parse_key_header
from cmdd.jobs import Created, Deleted, Event, Idempotency
from cmdd.spec import parse_spec
from cmdd.store import JobStore

# --- the header ------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        (b'"abc"', "abc"),
        (b'  "8e03978e-40d5-43e8-bc93-6894a57f9324" ', "8e03978e-40d5-43e8-bc93-6894a57f9324"),
        (b'"a \\"quoted\\" \\\\ key"', 'a "quoted" \\ key'),
        (b'"' + b"x" * 255 + b'"', "x" * 255),
    ],
)
def test_the_key_is_a_structured_field_string(raw: bytes, key: str) -> None:
    """The header is an RFC 8941 sf-string; escapes are undone."""
    assert parse_key_header([raw]) == key


@pytest.mark.parametrize(
    "raw",
    [b"abc", b'""', b'"abc', b'"a"b"', b'"bad \\n escape"', b'"tab\there"', b'"\xc3\xa9"',
     b'"' + b"x" * 256 + b'"', b'"ends in \\"', b"x" * 10000],
)
def test_malformed_keys_are_refused(raw: bytes) -> None:
    """Unquoted, empty, too long, non-ASCII or badly escaped keys are a 400."""
    with pytest.raises(ClientError) as info:
        parse_key_header([raw])
    assert info.value.status == 400 and info.value.code == "INVALID_IDEMPOTENCY_KEY"


def test_two_key_headers_are_refused_and_none_is_no_key() -> None:
    """Only one key per request; without the header there is no key."""
    with pytest.raises(ClientError):
        parse_key_header([b'"a"', b'"b"'])
    assert parse_key_header(None) is None and parse_key_header([]) is None


def test_the_fingerprint_ignores_key_order_and_spacing() -> None:
    """Two bodies that parse to the same spec have the same fingerprint."""
    a = parse_spec(json.loads('{"command": "true", "labels": {"a": "1", "b": "2"}}'))
    b = parse_spec(json.loads('{"labels":{"b":"2","a":"1"},"command":"true","stdin":null}'))
    c = parse_spec({"command": "false"})
    assert fingerprint(a.to_json()) == fingerprint(b.to_json()) != fingerprint(c.to_json())


# --- the index -------------------------------------------------------------


def _created(job_id: int, at: float, key: str, owner: str = "alice", fp: str = "f") -> Created:
    return Created(job_id, at, parse_spec({"command": "true"}), owner, Idempotency(key, fp))


def _feed(index: KeyIndex, *events: Event) -> None:
    for event in events:
        index.job_changed(event, None)


def _exists(job_id: int) -> bool:
    return True


def test_a_replayed_creation_binds_its_key_until_the_window_ends() -> None:
    """Keys from the journal answer for 24 hours from the job's creation."""
    index = KeyIndex()
    _feed(index, _created(7, 1000.0, "k"))
    tag = Idempotency("k", "f")
    assert index.claim("alice", tag, 1000.0 + 86000, _exists) == 7
    assert index.claim("alice", tag, 1000.0 + 86400, _exists) is None  # expired: a new job
    assert len(index) == 1  # only the new reservation


def test_keys_are_per_owner_in_the_index() -> None:
    """bob's "k" is not alice's."""
    index = KeyIndex()
    _feed(index, _created(7, 0.0, "k", owner="alice"))
    assert index.claim("bob", Idempotency("k", "f"), 1.0, _exists) is None


def test_another_body_is_422_and_one_in_flight_is_409() -> None:
    """A different fingerprint is refused; the same one while the first is
    still being written is a 409 with Retry-After."""
    index = KeyIndex()
    assert index.claim("alice", Idempotency("k", "f"), 0.0, _exists) is None
    with pytest.raises(ClientError) as info:
        index.claim("alice", Idempotency("k", "other"), 0.0, _exists)
    assert info.value.status == 422 and info.value.code == "IDEMPOTENCY_KEY_REUSED"
    with pytest.raises(ClientError) as info:
        index.claim("alice", Idempotency("k", "f"), 0.0, _exists)
    assert info.value.status == 409 and info.value.headers["Retry-After"] == "1"
    index.release("alice", "k")
    assert index.claim("alice", Idempotency("k", "other"), 0.0, _exists) is None


def test_a_deleted_or_dropped_job_frees_its_key() -> None:
    """Once its job is deleted (or dropped by retention) a key is free again."""
    index = KeyIndex()
    _feed(index, _created(7, 0.0, "k"), _created(8, 0.0, "j"), Deleted(7, 1.0))
    assert index.claim("alice", Idempotency("k", "other"), 2.0, _exists) is None
    assert index.claim("alice", Idempotency("j", "other"), 2.0, lambda job_id: False) is None


def test_memory_is_bounded_by_the_window() -> None:
    """Entries expire oldest first: a day of keys, not all keys ever seen."""
    index = KeyIndex(window=100.0)
    for n in range(10_000):
        _feed(index, _created(n + 1, float(n), f"k{n}"))
    assert len(index) <= 101
    for n in range(10_000):
        index.claim("alice", Idempotency(f"r{n}", "f"), 20_000.0, _exists)
        index.release("alice", f"r{n}")
    assert len(index) == 0 and len(index._order) < 3000


def test_the_key_is_journaled_compacted_and_optional() -> None:
    """Key and fingerprint travel on the created record and through
    compaction; records without them (older journals) still decode."""
    event = _created(3, 5.0, "k", fp="ab" * 32)
    record = decode(encode(1, event)[:-1])
    assert record.item == event
    store = JobStore()
    store.record(event)
    job = store.get(3)
    assert job is not None and job_events(job)[0] == event
    plain = Created(4, 5.0, parse_spec({"command": "true"}))
    assert decode(encode(2, plain)[:-1]).item == plain


# --- the API ---------------------------------------------------------------


class HeldLog(MemoryLog):
    """An event log whose appends become durable (or are refused) on demand."""

    def __init__(self) -> None:
        super().__init__()
        self.pending: list[Deferred[None]] = []

    def append(self, item: Event | Meta) -> Deferred[None]:
        self.items.append(item)
        d: Deferred[None] = Deferred()
        self.pending.append(d)
        return d

    def write(self) -> None:
        pending, self.pending = self.pending, []
        for d in pending:
            d.callback(None)

    def refuse(self) -> None:
        pending, self.pending = self.pending, []
        for d in pending:
            d.errback(Failure(OSError(28, "No space left on device")))


def _key(key: str) -> dict[str, str]:
    return {"Idempotency-Key": f'"{key}"'}


@pytest.fixture
def client(tmp_path: Path) -> Client:
    return Client(tmp_path, max_running=2, max_queued=10)


def test_the_same_key_and_body_gives_the_same_job(client: Client) -> None:
    """A retry gets the original job (same id, same Location), 202 while it
    is not final and 200 once it is; no second job is created."""
    body = {"command": "echo once"}
    code, first, headers = client.json("POST", "/api/jobs", body, headers=_key("k1"))
    assert code == 202 and headers.getRawHeaders("idempotent-replayed") is None
    code, again, headers = client.json("POST", "/api/jobs", body, headers=_key("k1"))
    assert code == 202 and again["id"] == first["id"]
    assert headers.getRawHeaders("location") == [f"/api/statuses/{first['id']}"]
    assert headers.getRawHeaders("idempotent-replayed") == ["true"]
    client.clock.advance(0)
    client.executor.by_job(first["id"]).finish(0)
    code, done, _ = client.json("POST", "/api/jobs", body, headers=_key("k1"))
    assert code == 200 and done["id"] == first["id"] and done["state"] == "succeeded"
    assert len(client.manager.store) == 1 and len(client.executor.started) == 1


def test_the_same_key_with_another_body_is_422(client: Client) -> None:
    """A key reused for a different job is refused with its own code."""
    client.json("POST", "/api/jobs", {"command": "true"}, headers=_key("k"))
    code, error, _ = client.json("POST", "/api/jobs", {"command": "false"}, headers=_key("k"))
    assert code == 422 and error["error"]["code"] == "IDEMPOTENCY_KEY_REUSED"
    assert len(client.manager.store) == 1


def test_keys_of_different_owners_are_independent(client: Client) -> None:
    """alice's key "x" and bob's key "x" are two jobs."""
    alice, bob = client.add_user("alice"), client.add_user("bob")
    ids = []
    for token in (alice, bob, alice):
        client.token = token
        code, job, _ = client.json("POST", "/api/jobs", {"command": "true"}, headers=_key("x"))
        assert code in (200, 202)
        ids.append(job["id"])
    assert ids[0] != ids[1] and ids[2] == ids[0]


def test_without_a_key_every_post_is_a_new_job(client: Client) -> None:
    """The header is optional: two POSTs without it are two jobs."""
    a = client.json("POST", "/api/jobs", {"command": "true"})[1]
    b = client.json("POST", "/api/jobs", {"command": "true"})[1]
    assert a["id"] != b["id"]


@pytest.mark.parametrize("value", ["unquoted", '""', '"' + "x" * 300 + '"'])
def test_a_malformed_key_is_400(client: Client, value: str) -> None:
    """A key that is not a 1-255 character sf-string is a 400, and no job."""
    code, error, _ = client.json(
        "POST", "/api/jobs", {"command": "true"}, headers={"Idempotency-Key": value}
    )
    assert code == 400 and error["error"]["code"] == "INVALID_IDEMPOTENCY_KEY"
    assert len(client.manager.store) == 0


def _post_held(client: Client, body: Any, key: str) -> list[Any]:
    """Start a POST whose response waits for the journal; collects (code, json)."""
    out: list[Any] = []
    headers = {**JSON, **_key(key), "Authorization": f"Bearer {client.token}"}
    d = client.treq.request(
        "POST", "http://cmdd.test/api/jobs", data=json.dumps(body).encode(), headers=headers
    )
    d.addCallback(
        lambda response: client.treq.json_content(response).addCallback(
            lambda content: out.append((response.code, content))
        )
    )
    client.treq.flush()
    return out


def _hold(client: Client) -> HeldLog:
    held = HeldLog()
    history: History = client.manager.history
    history._log = held
    return held


def test_two_concurrent_requests_with_one_key_create_one_job(client: Client) -> None:
    """While the first request's job is being written, a second with the same
    key gets a 409 (retry later), then the same job."""
    held = _hold(client)
    first = _post_held(client, {"command": "true"}, "same")
    second = _post_held(client, {"command": "true"}, "same")
    assert first == []
    assert second[0][0] == 409
    assert second[0][1]["error"]["code"] == "IDEMPOTENCY_KEY_IN_FLIGHT"
    held.write()
    client.treq.flush()
    assert first[0][0] == 202
    third = _post_held(client, {"command": "true"}, "same")
    assert third[0][0] == 202 and third[0][1]["id"] == first[0][1]["id"]
    assert len(client.manager.store) == 1


def test_a_request_the_journal_refused_leaves_the_key_free(client: Client) -> None:
    """A 503 (full disk) creates nothing and binds nothing: the retry, even
    with another body, creates the job."""
    held = _hold(client)
    first = _post_held(client, {"command": "true"}, "k")
    held.refuse()
    client.treq.flush()
    assert first[0][0] == 503 and len(client.manager.store) == 0
    retry = _post_held(client, {"command": "false"}, "k")
    held.write()
    client.treq.flush()
    assert retry[0][0] == 202 and retry[0][1]["command"] == "false"
    assert len(client.manager.store) == 1


def test_a_full_queue_leaves_the_key_free(tmp_path: Path) -> None:
    """A 503 QUEUE_FULL does not bind the key either."""
    client = Client(tmp_path, max_running=1, max_queued=1)
    client.json("POST", "/api/jobs", {"command": "true"})
    code, _, _ = client.json("POST", "/api/jobs", {"command": "a"}, headers=_key("k"))
    assert code == 503
    client.clock.advance(0)
    code, job, _ = client.json("POST", "/api/jobs", {"command": "b"}, headers=_key("k"))
    assert code == 202 and job["command"] == "b"


def test_a_deleted_job_frees_its_key(client: Client) -> None:
    """After its job is deleted, the key creates a new job (a new id)."""
    first = client.json("POST", "/api/jobs", {"command": "true"}, headers=_key("k"))[1]
    client.clock.advance(0)
    client.executor.by_job(first["id"]).finish(0)
    assert client.request("DELETE", f"/api/jobs/{first['id']}")[0].code == 204
    code, job, _ = client.json("POST", "/api/jobs", {"command": "true"}, headers=_key("k"))
    assert code == 202 and job["id"] != first["id"]


def test_replay_rebuilds_the_keys(tmp_path: Path) -> None:
    """A new API over a replayed store answers the old key with the old job."""
    client = Client(tmp_path)
    job = client.json("POST", "/api/jobs", {"command": "true"}, headers=_key("k"))[1]
    (tmp_path / "again").mkdir()
    replayed = Client(tmp_path / "again")
    for item in client.manager.history._log.items:
        assert isinstance(item, Created)
        replayed.manager.store.record(item)
    code, again, _ = replayed.json("POST", "/api/jobs", {"command": "true"}, headers=_key("k"))
    assert code == 202 and again["id"] == job["id"]



def test_the_description_lists_the_header_and_its_statuses() -> None:
    """OpenAPI documents Idempotency-Key, the 200 replay, 409 and 422."""
    from cmdd.openapi import description

    post = description()["paths"]["/api/jobs"]["post"]
    assert [p["name"] for p in post["parameters"]] == ["Idempotency-Key"]
    assert {"200", "202", "409", "422"} <= set(post["responses"])


@pytest_twisted.ensureDeferred
async def test_keys_survive_a_real_compaction_and_replay(tmp_path: Path) -> None:
    """A compacted journal file still holds each job's key and fingerprint,
    and replaying it rebuilds the key index."""
    from test_journal import load
    from twisted.internet import reactor

    from cmdd.journal import JournalWriter

    path = tmp_path / "journal.jsonl"
    writer = JournalWriter(reactor, str(path), fsync=True)
    writer.open()
    history = History(JobStore(), writer, reactor)
    await history.record(_created(1, reactor.seconds(), "k", fp="ab" * 32))[1]
    await history.record(Created(2, reactor.seconds(), parse_spec({"command": "true"})))[1]
    await history.compact()
    await writer.close()
    assert b'"type":"meta"' in path.read_bytes().splitlines()[0]  # compacted
    replayed, _ = load(path)
    index = KeyIndex()
    for job in replayed.oldest_first():
        for event in job_events(job):
            index.job_changed(event, job)
    assert index.claim("alice", Idempotency("k", "ab" * 32), reactor.seconds(), _exists) == 1
    job = replayed.get(1)
    assert job is not None and job.idempotency == Idempotency("k", "ab" * 32)
