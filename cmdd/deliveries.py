"""Delivering webhook callbacks: ordered per job, at least once, bounded.

The outbox is the journal itself (see L{cmdd.callbacks}): the deliverer
listens to the job store, and whenever a job owes a callback that is not
being delivered it takes it on. One callback per job is active at a time,
so a job's callbacks go out in order; when one is delivered or given up
its outcome (L{CallbackDone}) is journaled, and only once that is durable
does the job's next callback start. A crash before that resends it (the
same C{webhook-id}): receivers deduplicate.

Bounded: at most C{max_in_flight} requests at once and C{per_destination}
per host and port; the rest wait in per-destination queues (a few hundred
bytes per job, the body is rebuilt per attempt from the journal and the
output files). A dead receiver holds only its own queue.
"""

from __future__ import annotations

import collections
import json
import random
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import urlsplit

import attrs
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import TimeoutError as RequestTimedOut
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from cmdd.callbacks import OUTPUT_CAP, Callback, body_of, callbacks_of, next_pending, webhook_id
from cmdd.history import History
from cmdd.jobs import CallbackDone, Event, InvalidTransitionError, Job
from cmdd.representations import rfc3339
from cmdd.retrypolicy import RetryPolicy, parse_retry_after
from cmdd.signing import WebhookSecrets, sign
from cmdd.spool import output_path, read_output
from cmdd.webhookhttp import DestinationRefusedError

log = Logger()

#: Attempts kept per callback for the deliveries view (plus a count of all).
KEPT_ATTEMPTS = 20
#: Finished callbacks whose attempts are still shown (oldest forgotten first).
KEPT_FINISHED = 10_000
#: Seconds before a delivery whose outcome the journal refused is sent again.
REFUSED_RETRY = 5.0

Blocking = Callable[..., Deferred[Any]]


class Sender(Protocol):
    """Sends one request (L{cmdd.webhookhttp.WebhookSender} in the daemon)."""

    def send(
        self, url: str, data: bytes, headers: dict[bytes | str, bytes | str]
    ) -> Deferred[tuple[int, str | None]]: ...


@attrs.frozen
class DeliveryLimits:
    """How callbacks are sent and retried."""

    timeout: float = 15.0
    max_in_flight: int = 64
    per_destination: int = 4
    retry: RetryPolicy = attrs.field(factory=RetryPolicy)


@attrs.frozen
class Attempt:
    """One try: when, how long, and what came back."""

    at: float
    duration: float
    status_code: int | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        """For the deliveries view."""
        return {
            "at": rfc3339(self.at),
            "duration": round(self.duration, 6),
            "status_code": self.status_code,
            "error": self.error,
        }


@attrs.define
class _Active:
    callback: Callback
    owner: str
    destination: str
    attempts: collections.deque[Attempt] = attrs.field(
        factory=lambda: collections.deque(maxlen=KEPT_ATTEMPTS)
    )
    count: int = 0
    state: str = "ready"  # ready, sending, waiting, recording
    next_retry: float | None = None
    call: IDelayedCall | None = None
    request: Deferred[Any] | None = None
    #: Until when the receiver asked (Retry-After) not to be called again.
    not_before: float = 0.0


def _destination(url: str) -> str:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{parts.hostname}:{port}"


def _timed_out(result: object, timeout: float) -> None:
    # Whatever the cancelled request failed with (the agent wraps it).
    raise RequestTimedOut(f"{timeout:g} s")


def _error_text(failure: Failure) -> str:
    return f"{type(failure.value).__name__}: {failure.getErrorMessage()}"[:300]


class Deliverer:
    """Delivers every job's callbacks (see the module docstring).

    @param history: journals outcomes; its store is listened to.
    @param secrets: signs with the job owner's secret.
    @param clock: time and timers.
    @param sender: sends requests.
    @param run_blocking: reads output files off the reactor.
    @param output_dir: where output files are.
    @param instance: the data directory's name in C{webhook-id}s (C{None}:
        the secrets file's, see L{WebhookSecrets.instance}).
    """

    def __init__(
        self,
        history: History,
        secrets: WebhookSecrets,
        clock: IReactorTime,
        sender: Sender,
        run_blocking: Blocking,
        output_dir: str,
        instance: str | None = None,
        limits: DeliveryLimits = DeliveryLimits(),
        uniform: Callable[[float, float], float] = random.uniform,
    ) -> None:
        self._history = history
        self._store = history.store
        self._secrets = secrets
        self._clock = clock
        self._sender = sender
        self._run_blocking = run_blocking
        self._output_dir = output_dir
        self._instance = instance
        self.limits = limits
        self._uniform = uniform
        self._active: dict[int, _Active] = {}
        self._queues: dict[str, collections.deque[int]] = {}
        self._busy: collections.Counter[str] = collections.Counter()
        #: Jobs waiting for a retry, by destination (woken when it answers again).
        self._waiting: dict[str, set[int]] = {}
        self.in_flight = 0
        self._finished: collections.OrderedDict[tuple[int, int], _Active] = (
            collections.OrderedDict()
        )
        self._running = False
        #: Plain counters (the metrics issue exposes them).
        self.delivered_total = 0
        self.failed_total = 0
        self.retried_total = 0
        self.lag_total = 0.0
        self.lag_max = 0.0

    # --- life --------------------------------------------------------------

    def start(self) -> None:
        """Take on every callback the replayed history owes; follow changes."""
        self._running = True
        self._store.add_listener(self._changed)
        for job in self._store.oldest_first():
            if job.spec.webhooks:
                self._consider(job)

    def stop(self) -> None:
        """Stop sending; whatever is pending goes out after the next start."""
        self._running = False
        for active in self._active.values():
            if active.call is not None and active.call.active():
                active.call.cancel()
            if active.request is not None:
                active.request.cancel()
        self._active.clear()
        self._queues.clear()
        self._waiting.clear()

    @property
    def instance(self) -> str:
        """The data directory's part of every C{webhook-id}."""
        return self._instance or self._secrets.instance

    @property
    def pending_count(self) -> int:
        """Jobs with a callback being delivered."""
        return len(self._active)

    # --- following the store -----------------------------------------------

    def _changed(self, event: Event, job: Job | None) -> None:
        if job is None:
            self._drop(event.job_id)
        elif job.spec.webhooks and self._running:
            self._consider(job)

    def _consider(self, job: Job) -> None:
        if job.id in self._active:
            return  # its next callback starts once the active one is done
        callback = next_pending(job)
        if callback is None:
            return
        active = _Active(callback, job.owner, _destination(callback.url))
        self._active[job.id] = active
        self._enqueue(active)

    def _drop(self, job_id: int) -> None:
        """A deleted job's pending callbacks are dropped with it."""
        active = self._active.pop(job_id, None)
        if active is not None:
            self._unwait(active)
            if active.call is not None and active.call.active():
                active.call.cancel()
        for sequence in (1, 2):  # a job makes at most begun and one end
            self._finished.pop((job_id, sequence), None)

    # --- dispatch ----------------------------------------------------------

    def _enqueue(self, active: _Active) -> None:
        self._unwait(active)
        active.state, active.call, active.next_retry = "ready", None, None
        self._queues.setdefault(active.destination, collections.deque()).append(
            active.callback.job_id
        )
        self._dispatch()

    def _dispatch(self) -> None:
        limits = self.limits
        for destination in list(self._queues):
            queue = self._queues[destination]
            while (
                queue
                and self.in_flight < limits.max_in_flight
                and self._busy[destination] < limits.per_destination
            ):
                active = self._active.get(queue.popleft())
                if active is None or active.state != "ready":
                    continue
                self._begin(active)
            if not queue:
                del self._queues[destination]
            if self.in_flight >= limits.max_in_flight:
                return

    def _begin(self, active: _Active) -> None:
        active.state = "sending"
        self.in_flight += 1
        self._busy[active.destination] += 1
        attempt = Deferred.fromCoroutine(self._attempt(active))
        attempt.addErrback(self._attempt_crashed, active)

    def _attempt_crashed(self, failure: Failure, active: _Active) -> None:
        log.failure(
            "webhook delivery of job {job_id} failed", failure, job_id=active.callback.job_id
        )

    def _release(self, active: _Active) -> None:
        self.in_flight -= 1
        self._busy[active.destination] -= 1
        if not self._busy[active.destination]:
            del self._busy[active.destination]
        if self._running:
            self._dispatch()

    # --- one attempt -------------------------------------------------------

    async def _request(
        self, active: _Active, job: Job
    ) -> tuple[bytes, dict[bytes | str, bytes | str]]:
        callback = active.callback
        stdout = stderr = None
        if callback.type != "begun":
            stdout, stderr = [
                await self._run_blocking(
                    read_output, output_path(self._output_dir, job.id, name), 0, OUTPUT_CAP + 1
                )
                for name in ("stdout", "stderr")
            ]
        text = json.dumps(body_of(job, callback, stdout, stderr), ensure_ascii=False)
        msg_id = webhook_id(self.instance, callback)
        timestamp = int(self._clock.seconds())
        keys = await self._secrets.signing_keys(job.owner)
        headers: dict[bytes | str, bytes | str] = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": "cmdd-webhooks",
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(keys, msg_id, timestamp, text),
        }
        return text.encode("utf-8"), headers

    async def _attempt(self, active: _Active) -> None:
        callback = active.callback
        started = self._clock.seconds()
        status: int | None = None
        error: str | None = None
        retry_after: str | None = None
        refused = False
        try:
            job = self._store.get(callback.job_id)
            if job is None or self._active.get(callback.job_id) is not active:
                self._active.pop(callback.job_id, None)
                return
            data, headers = await self._request(active, job)
            if not self._running:
                return
            request = self._sender.send(callback.url, data, headers)
            request.addTimeout(self.limits.timeout, self._clock, onTimeoutCancel=_timed_out)
            active.request = request
            status, retry_after = await request
        except (CancelledError, RequestTimedOut):
            if not self._running:
                return
            error = f"no answer within {self.limits.timeout:g} s"
        except DestinationRefusedError as e:
            error, refused = f"destination not allowed: {e}", True
        except Exception as e:  # every failure to deliver is an attempt's outcome
            error = _error_text(Failure(e))
        finally:
            active.request = None
            self._release(active)
        if not self._running or self._active.get(callback.job_id) is not active:
            return
        now = self._clock.seconds()
        active.attempts.append(Attempt(started, max(0.0, now - started), status, error))
        active.count += 1
        if status is not None and 200 <= status < 300:
            self._finish(active, True, status, None)
            self._wake(active.destination, now)
        elif refused or self.limits.retry.gives_up(callback.at, now):
            self._finish(active, False, status, error)
        else:
            self._retry_later(active, parse_retry_after(retry_after, now))

    def _retry_later(self, active: _Active, retry_after: float | None) -> None:
        delay = self.limits.retry.delay(active.count, retry_after, self._uniform)
        self.retried_total += 1
        now = self._clock.seconds()
        active.state = "waiting"
        active.next_retry = now + delay
        active.not_before = now + retry_after if retry_after is not None else 0.0
        active.call = self._clock.callLater(delay, self._enqueue, active)
        self._waiting.setdefault(active.destination, set()).add(active.callback.job_id)

    def _unwait(self, active: _Active) -> None:
        waiting = self._waiting.get(active.destination)
        if waiting is not None:
            waiting.discard(active.callback.job_id)
            if not waiting:
                del self._waiting[active.destination]

    def _wake(self, destination: str, now: float) -> None:
        """A destination answered again: its waiting callbacks go now
        instead of after their (possibly long) backoff, oldest job first,
        still within the per-destination limit. Not those it asked to wait."""
        for job_id in sorted(self._waiting.get(destination, ())):
            active = self._active.get(job_id)
            if active is None or active.state != "waiting" or active.not_before > now:
                continue
            if active.call is not None and active.call.active():
                active.call.cancel()
            self._enqueue(active)

    def _finish(
        self, active: _Active, delivered: bool, status: int | None, error: str | None
    ) -> None:
        callback = active.callback
        active.state = "recording"
        now = self._clock.seconds()
        event = CallbackDone(
            callback.job_id, now, callback.sequence, delivered, active.count, status, error
        )
        try:
            _, durable = self._history.record(event)
        except InvalidTransitionError:  # the job was deleted meanwhile
            self._active.pop(callback.job_id, None)
            return

        def recorded(_: object) -> None:
            if delivered:
                self.delivered_total += 1
                lag = max(0.0, now - callback.at)
                self.lag_total += lag
                self.lag_max = max(self.lag_max, lag)
            else:
                self.failed_total += 1
                log.warn(
                    "job {job_id}: gave up callback {sequence} ({type}) after "
                    "{attempts} attempts: {why}",
                    job_id=callback.job_id,
                    sequence=callback.sequence,
                    type=callback.type,
                    attempts=active.count,
                    why=error or f"HTTP {status}",
                )
            self._keep_finished(active)
            if self._active.get(callback.job_id) is active:
                del self._active[callback.job_id]
                job = self._store.get(callback.job_id)
                if job is not None and self._running:
                    self._consider(job)

        def not_recorded(failure: Failure) -> None:
            # At least once: without a durable outcome the callback is still
            # owed, so it is sent again (the receiver deduplicates).
            log.error(
                "job {job_id}: the outcome of callback {sequence} could not be journaled "
                "({why}); sending it again",
                job_id=callback.job_id,
                sequence=callback.sequence,
                why=failure.getErrorMessage(),
            )
            if self._running and self._active.get(callback.job_id) is active:
                active.state = "waiting"
                active.next_retry = self._clock.seconds() + REFUSED_RETRY
                active.call = self._clock.callLater(REFUSED_RETRY, self._enqueue, active)

        durable.addCallbacks(recorded, not_recorded)

    def _keep_finished(self, active: _Active) -> None:
        key = (active.callback.job_id, active.callback.sequence)
        self._finished[key] = active
        while len(self._finished) > KEPT_FINISHED:
            self._finished.popitem(last=False)

    # --- the deliveries view -----------------------------------------------

    def deliveries_of(self, job: Job) -> list[dict[str, Any]]:
        """Every callback C{job} made so far: state, attempts, next retry."""
        out = []
        active = self._active.get(job.id)
        for callback in callbacks_of(job):
            seen = self._finished.get((job.id, callback.sequence))
            item: dict[str, Any] = {
                "sequence": callback.sequence,
                "callback_type": callback.type,
                "url": callback.url,
                "webhook_id": webhook_id(self.instance, callback),
                "made": rfc3339(callback.at),
                "state": "pending",
                "attempts_total": 0,
                "attempts": [],
                "next_retry": None,
                "finished": None,
                "last_status_code": None,
                "last_error": None,
            }
            if callback.sequence <= len(job.callbacks_done):
                done = job.callbacks_done[callback.sequence - 1]
                item.update(
                    state="delivered" if done.delivered else "failed",
                    attempts_total=done.attempts,
                    finished=rfc3339(done.at),
                    last_status_code=done.status_code,
                    last_error=done.error,
                )
            elif active is not None and active.callback.sequence == callback.sequence:
                seen = active
                item["next_retry"] = rfc3339(active.next_retry)
                item["attempts_total"] = active.count
                if active.attempts:
                    item["last_status_code"] = active.attempts[-1].status_code
                    item["last_error"] = active.attempts[-1].error
            if seen is not None:
                item["attempts"] = [attempt.to_json() for attempt in seen.attempts]
            out.append(item)
        return out
