"""The deliverer with a fake clock and a fake sender: per-job order,
backoff, giving up, bounds, deletion, and resending after a restart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fakes import InlineIO
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from cmdd.deliveries import Deliverer, DeliveryLimits
from cmdd.history import History, MemoryLog
from cmdd.jobs import Created, Deleted, Ended, Outcome, Started, State
from cmdd.retrypolicy import RetryPolicy
from cmdd.signing import WebhookSecrets
from cmdd.spec import parse_spec
from cmdd.store import JobStore


class FakeSender:
    """Requests wait until the test answers them."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, Any], Deferred[tuple[int, str | None]]]] = []
        self.bodies: list[bytes] = []

    def send(self, url: str, data: bytes, headers: dict[Any, Any]) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.requests.append((url, dict(headers), d))
        self.bodies.append(data)
        return d

    def answer(self, index: int, code: int, retry_after: str | None = None) -> None:
        self.requests[index][2].callback((code, retry_after))

    def open(self) -> list[tuple[str, dict[str, Any], Deferred[Any]]]:
        return [r for r in self.requests if not r[2].called]


class World:
    def __init__(self, tmp_path: Path, **limits: Any) -> None:
        self.tmp_path = tmp_path
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.log = MemoryLog()
        self.history = History(JobStore(), self.log, self.clock)
        self.limits = DeliveryLimits(**limits)
        self.sender = FakeSender()
        self.deliverer = self.make_deliverer()

    def make_deliverer(self) -> Deliverer:
        io = InlineIO()
        secrets = WebhookSecrets(str(self.tmp_path), self.clock, io.run)
        secrets.load()
        deliverer = Deliverer(
            self.history, secrets, self.clock, self.sender, io.run, str(self.tmp_path),
            "inst", self.limits, uniform=lambda a, b: b,
        )  # fmt: skip
        deliverer.start()
        return deliverer

    def job(self, job_id: int, hooks: dict[str, str], end: State | None = State.SUCCEEDED) -> None:
        now = self.clock.seconds()
        spec = parse_spec({"command": "true", "webhooks": hooks})
        self.history.record(Created(job_id, now, spec))
        self.history.record(Started(job_id, now, "h"))
        if end is not None:
            self.history.record(Ended(job_id, now, Outcome(end, exit_code=0)))


BOTH = {"begun": "http://a.test/b", "ended": "http://a.test/e"}


def test_a_jobs_callbacks_go_out_in_order_one_at_a_time(tmp_path: Path) -> None:
    """ended is not sent while begun is unanswered or being retried."""
    world = World(tmp_path)
    world.job(1, BOTH)
    assert [r[0] for r in world.sender.open()] == ["http://a.test/b"]
    world.sender.answer(0, 500)
    assert world.sender.open() == []
    world.clock.advance(1.0)  # the first retry comes within a second
    assert [r[0] for r in world.sender.open()] == ["http://a.test/b"]
    world.sender.answer(1, 200)
    (ended,) = world.sender.open()
    assert ended[0] == "http://a.test/e" and ended[1]["webhook-id"] == "msg_inst_1_2"
    world.sender.answer(2, 204)
    job = world.history.store.get(1)
    assert job is not None and [d.delivered for d in job.callbacks_done] == [True, True]
    assert world.deliverer.delivered_total == 2 and world.deliverer.retried_total == 1


def test_one_dead_receiver_does_not_hold_other_jobs(tmp_path: Path) -> None:
    """Job 2's callback goes out while job 1's receiver keeps failing."""
    world = World(tmp_path)
    world.job(1, {"ended": "http://dead.test/"})
    world.sender.answer(0, 503)
    world.job(2, {"ended": "http://alive.test/"})
    assert [r[0] for r in world.sender.open()] == ["http://alive.test/"]


def test_retries_back_off_then_give_up_and_the_next_callback_proceeds(tmp_path: Path) -> None:
    """Doubling waits; after the maximum age the callback is recorded failed
    and the job's next callback is sent."""
    world = World(tmp_path, retry=RetryPolicy(first=1.0, cap=8.0, max_age=60.0))
    world.job(1, BOTH)
    waits = []
    while True:
        (request,) = world.sender.open()
        if request[0].endswith("/e"):
            break
        request[2].callback((500, None))
        if world.sender.open():
            continue
        for call in world.clock.getDelayedCalls():
            waits.append(call.getTime() - world.clock.seconds())
            world.clock.advance(waits[-1])
    assert waits[:5] == [1.0, 2.0, 4.0, 8.0, 8.0]
    job = world.history.store.get(1)
    assert job is not None
    (done,) = job.callbacks_done
    assert not done.delivered and done.status_code == 500 and done.attempts == len(waits) + 1
    assert world.deliverer.failed_total == 1


def test_retry_after_is_honoured(tmp_path: Path) -> None:
    """A 429 with Retry-After: 30 waits 30 s, not a second."""
    world = World(tmp_path)
    world.job(1, {"ended": "http://a.test/"})
    world.sender.answer(0, 429, "30")
    world.clock.advance(29.9)
    assert world.sender.open() == []
    world.clock.advance(0.2)
    assert len(world.sender.open()) == 1


def test_in_flight_requests_are_bounded_overall_and_per_destination(tmp_path: Path) -> None:
    """Beyond the limits callbacks queue; they go as others finish."""
    world = World(tmp_path, max_in_flight=3, per_destination=2)
    for job_id in range(1, 6):
        world.job(job_id, {"ended": "http://slow.test/"})
    world.job(6, {"ended": "http://other.test/"})
    assert sorted(r[0] for r in world.sender.open()) == [
        "http://other.test/", "http://slow.test/", "http://slow.test/"]  # fmt: skip
    for index in range(len(world.sender.requests)):
        if not world.sender.requests[index][2].called:
            world.sender.answer(index, 200)
            break
    assert len(world.sender.open()) == 3


def test_a_deleted_job_drops_its_pending_callbacks(tmp_path: Path) -> None:
    """Deleting a job whose receiver is down ends its retries."""
    world = World(tmp_path)
    world.job(1, {"ended": "http://dead.test/"})
    world.sender.answer(0, 500)
    world.history.record(Deleted(1, world.clock.seconds()))
    world.clock.advance(3600)
    assert world.sender.open() == [] and world.deliverer.pending_count == 0


def test_after_a_restart_pending_callbacks_resume_with_the_same_id(tmp_path: Path) -> None:
    """A new deliverer over the replayed history sends what was not
    recorded as delivered: same webhook-id, same order, nothing twice."""
    world = World(tmp_path)
    world.job(1, BOTH)
    world.sender.answer(0, 204)  # begun delivered and recorded
    (first_try,) = world.sender.open()
    world.deliverer.stop()  # the "crash": ended was sent, never answered
    store = JobStore()
    for item in world.log.items:
        store.record(item)  # type: ignore[arg-type]
    world.history = History(store, MemoryLog(), world.clock)
    world.sender = FakeSender()
    world.make_deliverer()
    (again,) = world.sender.open()
    assert again[0] == "http://a.test/e"
    assert again[1]["webhook-id"] == first_try[1]["webhook-id"] == "msg_inst_1_2"


@pytest.mark.parametrize("state", [State.LOST, State.NOT_EXECUTED])
def test_a_broken_promise_sends_error(tmp_path: Path, state: State) -> None:
    """lost and not_executed jobs call the error URL."""
    world = World(tmp_path)
    world.job(1, {"error": "http://a.test/error", "ended": "http://a.test/e"}, end=state)
    assert [r[0] for r in world.sender.open()] == ["http://a.test/error"]


def test_a_receiver_that_answers_again_gets_its_waiting_callbacks_at_once(
    tmp_path: Path,
) -> None:
    """After an outage, the first success to a destination releases the
    other jobs waiting on it instead of leaving them to long backoffs; a
    callback the receiver told to wait (Retry-After) still waits."""
    world = World(tmp_path)

    def fail_open(retry_after_for: str = "") -> None:
        for _, headers, request in world.sender.open():
            told = headers["webhook-id"] == retry_after_for
            request.callback((429, "600") if told else (503, None))

    world.job(2, {"ended": "http://flaky.test/"})
    world.job(3, {"ended": "http://flaky.test/"})
    fail_open()
    world.clock.advance(1.0)
    fail_open("msg_inst_3_1")  # both fail again; job 3 is told to wait 600 s
    world.clock.advance(2.0)  # job 2 tries a third time; next wait 4 s
    fail_open()
    world.job(1, {"ended": "http://flaky.test/"})
    (request,) = world.sender.open()
    request[2].callback((204, None))  # the receiver is back
    woken = world.sender.open()
    assert [r[1]["webhook-id"] for r in woken] == ["msg_inst_2_1"]
