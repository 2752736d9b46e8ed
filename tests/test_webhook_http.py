"""Webhook delivery over real HTTP to real (Twisted) receivers on loopback:
failing, slow, hanging up, rate limiting, redirecting; signatures checked
with the standardwebhooks package's verifier."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from standardwebhooks import Webhook
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from twisted.web.server import Request as ServerRequest

from cmdd.deliveries import Deliverer, DeliveryLimits
from cmdd.destinations import DestinationRules, parse_networks
from cmdd.history import History, MemoryLog
from cmdd.jobs import Created, Ended, Outcome, Started, State
from cmdd.retrypolicy import RetryPolicy
from cmdd.signing import WebhookSecrets
from cmdd.spec import parse_spec
from cmdd.spool import output_path
from cmdd.store import JobStore
from cmdd.webhookhttp import WebhookSender

reactor: Any = _reactor
pytestmark = pytest.mark.integration


class Receiver(Resource):
    """Answers from a script: each entry is a status, "slow", "hangup" or
    ("429", "Retry-After value"); then 204 for ever."""

    isLeaf = True

    def __init__(self, script: list[Any]) -> None:
        super().__init__()
        self.script = list(script)
        self.got: list[tuple[dict[str, str], bytes, str]] = []
        self.waiter: Deferred[None] | None = None
        self.want = 0

    def render_PUT(self, request: ServerRequest) -> Any:
        assert request.content is not None
        raw = request.requestHeaders.getAllRawHeaders()
        headers = {name.decode().lower(): values[0].decode() for name, values in raw}
        self.got.append((headers, request.content.read(), request.uri.decode()))
        step = self.script.pop(0) if self.script else 204
        if self.waiter is not None and len(self.got) >= self.want:
            waiter, self.waiter = self.waiter, None
            reactor.callLater(0, waiter.callback, None)
        if step == "slow":
            return NOT_DONE_YET  # never answers
        if step == "hangup":
            assert request.channel is not None
            request.channel.transport.abortConnection()  # type: ignore[attr-defined]
            return NOT_DONE_YET
        if isinstance(step, tuple):
            request.setResponseCode(int(step[0]))
            request.setHeader(b"retry-after", step[1].encode())
            return b""
        request.setResponseCode(step)
        if step in (301, 302, 307):
            request.setHeader(b"location", b"http://127.0.0.1:1/elsewhere")
        return b""

    def until(self, count: int) -> Deferred[None]:
        self.want = count
        if len(self.got) >= count:
            return deferLater(reactor, 0, lambda: None)
        self.waiter = Deferred()
        return self.waiter


class Rig:
    """A deliverer on the real reactor and a receiver on a loopback port."""

    def __init__(self, tmp_path: Path, script: list[Any], **kw: Any) -> None:
        self.receiver = Receiver(script)
        self.port = reactor.listenTCP(0, Site(self.receiver), interface="127.0.0.1")
        self.url = f"http://127.0.0.1:{self.port.getHost().port}/hook?execution_identifier=42"
        self.history = History(JobStore(), MemoryLog(), reactor)
        (tmp_path / "output").mkdir()
        self.output_dir = str(tmp_path / "output")
        self.secrets = WebhookSecrets(str(tmp_path), reactor, deferToThread)
        rules = kw.pop("rules", DestinationRules())
        timeout = kw.pop("timeout", 5.0)
        self.sender = WebhookSender(reactor, deferToThread, rules, timeout, 4)
        limits = DeliveryLimits(
            timeout=timeout, retry=RetryPolicy(first=0.05, cap=0.2, max_age=kw.pop("max_age", 60))
        )
        self.deliverer = Deliverer(
            self.history, self.secrets, reactor, self.sender, deferToThread, self.output_dir,
            "test", limits,
        )  # fmt: skip
        self.deliverer.start()

    def run_job(self, job_id: int, hooks: list[str], stdout: bytes = b"") -> None:
        now = reactor.seconds()
        spec = parse_spec({"command": "x", "webhooks": {name: self.url for name in hooks}})
        self.history.record(Created(job_id, now, spec))
        self.history.record(Started(job_id, now, "the-host"))
        with open(output_path(self.output_dir, job_id, "stdout"), "wb") as out:
            out.write(stdout)
        outcome = Outcome(State.SUCCEEDED, exit_code=0, stdout_bytes=len(stdout))
        self.history.record(Ended(job_id, now, outcome))

    async def close(self) -> None:
        self.deliverer.stop()
        await self.sender.close()
        await self.port.stopListening()
        # Let both ends of the closed connections go (their timers with them).
        await deferLater(reactor, 0.05, lambda: None)


async def _settle(rig: Rig, job_id: int, count: int) -> None:
    for _ in range(400):
        job = rig.history.store.get(job_id)
        if job is not None and len(job.callbacks_done) >= count:
            return
        await deferLater(reactor, 0.02, lambda: None)
    raise AssertionError("callbacks did not settle")


@pytest_twisted.ensureDeferred
async def test_signed_put_with_the_seed_body_verifies(tmp_path: Path) -> None:
    """PUT, JSON, the seed's fields, and a signature the standardwebhooks
    verifier accepts with the owner's secret."""
    rig = Rig(tmp_path, [])
    try:
        rig.run_job(1, ["begun", "ended"], b"some generated text")
        await _settle(rig, 1, 2)
        secret = (await rig.secrets.get("admin")).secret
        (h1, b1, uri1), (h2, b2, _) = rig.receiver.got
        assert uri1 == "/hook?execution_identifier=42"
        assert h1["content-type"] == "application/json" and h1["accept"] == "application/json"
        begun, ended = Webhook(secret).verify(b1, h1), Webhook(secret).verify(b2, h2)
        assert begun["callback_type"] == "begun" and begun["host"] == "the-host"
        assert ended["callback_type"] == "ended" and ended["stdout"] == "some generated text"
        assert ended["exit_code"] == 0 and [begun["sequence"], ended["sequence"]] == [1, 2]
        assert json.loads(b2)["job_id"] == 1
    finally:
        await rig.close()


@pytest_twisted.ensureDeferred
async def test_failures_are_retried_with_the_same_id_then_delivered(tmp_path: Path) -> None:
    """A 500, a hang-up and a 429 with Retry-After are retried; every
    attempt has the same webhook-id; the deliveries view lists them."""
    rig = Rig(tmp_path, [500, "hangup", ("429", "1"), 503])
    try:
        rig.run_job(1, ["ended"])
        await _settle(rig, 1, 1)
        ids = {headers["webhook-id"] for headers, _, _ in rig.receiver.got}
        assert len(rig.receiver.got) == 5 and len(ids) == 1
        job = rig.history.store.get(1)
        assert job is not None
        (view,) = rig.deliverer.deliveries_of(job)
        assert view["state"] == "delivered" and view["attempts_total"] == 5
        codes = [a["status_code"] for a in view["attempts"]]
        assert codes[0] == 500 and codes[1] is None and codes[2:] == [429, 503, 204]
        assert view["attempts"][1]["error"]
        assert rig.deliverer.retried_total == 4
    finally:
        await rig.close()


@pytest_twisted.ensureDeferred
async def test_a_receiver_that_never_answers_times_out(tmp_path: Path) -> None:
    """A hanging receiver costs one timeout per attempt, then a retry."""
    rig = Rig(tmp_path, ["slow"], timeout=0.3)
    try:
        rig.run_job(1, ["ended"])
        await _settle(rig, 1, 1)
        job = rig.history.store.get(1)
        assert job is not None and job.callbacks_done[0].delivered
        (view,) = rig.deliverer.deliveries_of(job)
        assert "no answer within" in view["attempts"][0]["error"]
    finally:
        await rig.close()


@pytest_twisted.ensureDeferred
async def test_redirects_are_not_followed_and_give_up_is_recorded(tmp_path: Path) -> None:
    """A 302 is a failure; past the maximum age the callback is failed."""
    rig = Rig(tmp_path, [302] * 1000, max_age=0.0)
    try:
        rig.run_job(1, ["ended"])
        await _settle(rig, 1, 1)
        job = rig.history.store.get(1)
        assert job is not None
        done = job.callbacks_done[0]
        assert not done.delivered and done.status_code == 302 and len(rig.receiver.got) == 1
    finally:
        await rig.close()


@pytest_twisted.ensureDeferred
async def test_denied_destinations_are_never_connected_to(tmp_path: Path) -> None:
    """With 127.0.0.0/8 denied the receiver gets nothing; the callback fails."""
    rules = DestinationRules(deny=parse_networks(["127.0.0.0/8"]))
    rig = Rig(tmp_path, [], rules=rules)
    try:
        rig.run_job(1, ["ended"])
        await _settle(rig, 1, 1)
        job = rig.history.store.get(1)
        assert job is not None and not job.callbacks_done[0].delivered
        assert "not allowed" in (job.callbacks_done[0].error or "")
        assert rig.receiver.got == []
    finally:
        await rig.close()
