"""concurrency_key / concurrency_limit: spec, journal and the manager's policy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fakes import FakeExecutor, InlineIO
from test_manager import World
from twisted.internet.task import Clock

from cmdd.codec import decode, encode, job_events
from cmdd.errors import SpecError
from cmdd.history import History, MemoryLog
from cmdd.jobs import Created, State
from cmdd.manager import JobManager, Limits
from cmdd.representations import job_json
from cmdd.spec import parse_spec


def _keyed(key: str = "db", limit: int | None = None, **more: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"command": "true", "concurrency_key": key, **more}
    if limit is not None:
        body["concurrency_limit"] = limit
    return body


def _started(world: World) -> list[int]:
    return [execution.job_id for execution in world.executor.started]


# --- spec ------------------------------------------------------------------


def test_the_spec_takes_a_key_and_a_limit_defaulting_to_one() -> None:
    """A key alone means one at a time; the job shows both fields."""
    spec = parse_spec(_keyed("deploy/prod"))
    assert (spec.concurrency_key, spec.concurrency_limit) == ("deploy/prod", 1)
    assert parse_spec(_keyed("db", 5)).concurrency_limit == 5
    shown = spec.to_json()
    assert shown["concurrency_key"] == "deploy/prod" and shown["concurrency_limit"] == 1
    assert "concurrency_key" not in parse_spec({"command": "true"}).to_json()


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (_keyed(""), "INVALID_CONCURRENCY_KEY"),
        (_keyed("has space"), "INVALID_CONCURRENCY_KEY"),
        (_keyed("x" * 129), "INVALID_CONCURRENCY_KEY"),
        (_keyed("-leading"), "INVALID_CONCURRENCY_KEY"),
        ({"command": "true", "concurrency_key": 7}, "INVALID_CONCURRENCY_KEY"),
        (_keyed("db", 0), "INVALID_CONCURRENCY_LIMIT"),
        (_keyed("db", 1001), "INVALID_CONCURRENCY_LIMIT"),
        ({"command": "true", "concurrency_key": "db", "concurrency_limit": True},
         "INVALID_CONCURRENCY_LIMIT"),
        ({"command": "true", "concurrency_key": "db", "concurrency_limit": 1.5},
         "INVALID_CONCURRENCY_LIMIT"),
        ({"command": "true", "concurrency_limit": 2}, "INVALID_CONCURRENCY_LIMIT"),
    ],
)
def test_bad_keys_and_limits_are_400_with_their_own_code(body: dict[str, Any], code: str) -> None:
    """Malformed keys and out-of-range limits are refused, naming the field."""
    with pytest.raises(SpecError) as info:
        parse_spec(body)
    assert info.value.code == code


def test_the_key_and_limit_survive_the_journal_and_old_lines_still_replay() -> None:
    """Key and limit are journaled with the creation; a line without them
    (written before this feature) decodes to a job without a key."""
    spec = parse_spec(_keyed("db", 3))
    record = decode(encode(1, Created(7, 1.0, spec, "alice"))[:-1])
    assert isinstance(record.item, Created) and record.item.spec == spec
    old = decode(encode(2, Created(8, 1.0, parse_spec({"command": "true"})))[:-1])
    assert isinstance(old.item, Created) and old.item.spec.concurrency_key is None


def test_the_job_representation_shows_key_and_limit(world: World) -> None:
    """GET /api/jobs/<id> shows concurrency_key and concurrency_limit."""
    job = world.submit(_keyed("db", 2))
    shown = job_json(job)
    assert shown["concurrency_key"] == "db" and shown["concurrency_limit"] == 2


# --- manager ---------------------------------------------------------------


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path, max_running=4, max_queued=100)


def test_one_key_limit_one_runs_one_at_a_time_in_order(world: World) -> None:
    """Three jobs with one key and limit 1 run one after the other, FIFO,
    although slots are free."""
    ids = [world.submit(_keyed()).id for _ in range(3)]
    world.clock.advance(0)
    assert _started(world) == [ids[0]]
    assert world.state(ids[1]) is State.QUEUED
    world.executor.by_job(ids[0]).finish(0)
    world.clock.advance(0)
    assert _started(world) == ids[:2]
    world.executor.by_job(ids[1]).finish(0)
    world.clock.advance(0)
    assert _started(world) == ids


def test_a_full_key_does_not_hold_up_other_keys_or_unkeyed_jobs(world: World) -> None:
    """Jobs of other keys (and without a key) submitted later start at once."""
    blocked = [world.submit(_keyed("db")).id for _ in range(5)]
    other = world.submit(_keyed("web")).id
    plain = world.submit().id
    world.clock.advance(0)
    assert _started(world) == [blocked[0], other, plain]


def test_keys_are_per_owner(world: World) -> None:
    """alice's key "db" does not limit bob's key "db"."""
    done: list[int] = []
    for owner in ("alice", "alice", "bob"):
        world.manager.submit(parse_spec(_keyed("db")), owner=owner).addCallback(
            lambda job: done.append(job.id)
        )
    world.clock.advance(0)
    assert _started(world) == [done[0], done[2]]


def test_the_global_limit_still_applies(tmp_path: Path) -> None:
    """A key's limit above max_running does not exceed max_running."""
    world = World(tmp_path, max_running=2, max_queued=100)
    ids = [world.submit(_keyed("db", 10)).id for _ in range(4)]
    world.clock.advance(0)
    assert _started(world) == ids[:2]


def test_a_limit_of_two(world: World) -> None:
    """concurrency_limit 2: two of the key's jobs run at once, then the next."""
    ids = [world.submit(_keyed("db", 2)).id for _ in range(3)]
    world.clock.advance(0)
    assert _started(world) == ids[:2]
    world.executor.by_job(ids[1]).finish(1)
    world.clock.advance(0)
    assert _started(world) == ids


def test_a_cancelled_queued_job_frees_its_place(world: World) -> None:
    """Cancelling a waiting job of a key: it never runs, the next one does."""
    ids = [world.submit(_keyed()).id for _ in range(3)]
    world.clock.advance(0)
    world.manager.cancel(ids[1])
    assert world.state(ids[1]) is State.CANCELLED
    world.executor.by_job(ids[0]).finish(0)
    world.clock.advance(0)
    assert _started(world) == [ids[0], ids[2]]


def test_cancelling_the_running_job_of_a_key_starts_the_next(world: World) -> None:
    """The slot of a cancelled running job goes to the key's next job."""
    ids = [world.submit(_keyed()).id for _ in range(2)]
    world.clock.advance(0)
    world.manager.cancel(ids[0])
    world.executor.by_job(ids[0]).finish(-15)
    world.clock.advance(0)
    assert world.state(ids[0]) is State.CANCELLED
    assert _started(world) == ids


def test_queued_jobs_keep_their_key_and_order_after_a_restart(tmp_path: Path) -> None:
    """After a restart (replayed history) queued jobs of a key are queued
    again in order and still run one at a time."""
    world = World(tmp_path, max_running=4, max_queued=100)
    # The old daemon dies before its pump runs (its clock never advances).
    ids = [world.submit(_keyed()).id for _ in range(3)]
    clock = Clock()
    executor = FakeExecutor()
    history = History(world.store, MemoryLog(), clock)
    manager = JobManager(
        history, executor, InlineIO(), clock,  # type: ignore[arg-type]
        str(tmp_path), Limits(max_running=4),
    )
    manager.adopt_history()
    manager.startService()
    clock.advance(0)
    assert [e.job_id for e in executor.started] == [ids[0]]
    executor.by_job(ids[0]).finish(0)
    clock.advance(0)
    assert [e.job_id for e in executor.started] == ids[:2]


def test_job_events_keep_the_key_for_compaction(world: World) -> None:
    """Compaction rewrites a job from its events: the key is kept."""
    job = world.submit(_keyed("db", 4))
    created = job_events(job)[0]
    assert isinstance(created, Created)
    assert created.spec.concurrency_key == "db" and created.spec.concurrency_limit == 4


# --- API -------------------------------------------------------------------


def test_jobs_can_be_listed_by_concurrency_key(tmp_path: Path) -> None:
    """?concurrency_key= filters the list (repeat it for several keys), and
    fields= may pick the key and limit."""
    from test_api import Client

    client = Client(tmp_path, max_running=1, max_queued=10)
    for key in ("db", "web", "db", None):
        body = {"command": "true"} if key is None else _keyed(key, 2)
        assert client.json("POST", "/api/jobs", body)[0] == 202
    code, page, _ = client.json("GET", "/api/jobs?concurrency_key=db&sort=created")
    assert code == 200 and [job["id"] for job in page["jobs"]] == [1, 3]
    assert page["jobs"][0]["concurrency_limit"] == 2
    code, page, _ = client.json("GET", "/api/jobs?concurrency_key=db&concurrency_key=web")
    assert sorted(job["id"] for job in page["jobs"]) == [1, 2, 3]
    code, page, _ = client.json("GET", "/api/jobs?fields=id,concurrency_key&concurrency_key=web")
    assert page["jobs"] == [{"id": 2, "concurrency_key": "web"}]


def test_a_bad_key_over_http_is_400(tmp_path: Path) -> None:
    """A malformed concurrency_key is a 400 JSON error naming the field."""
    from test_api import Client

    client = Client(tmp_path)
    code, error, _ = client.json("POST", "/api/jobs", _keyed("no spaces"))
    assert code == 400 and error["error"]["code"] == "INVALID_CONCURRENCY_KEY"
    assert error["error"]["field"] == "concurrency_key"
