"""Prometheus metrics, exposed with C{prometheus_client}'s registry and
text format (DESIGN.md, "Operations").

Job counters and histograms are fed by the job store's change listener, so
nothing else in the daemon knows about metrics; what other parts count as
plain numbers (the manager's queue, the auth gate's failures) is read at
scrape time by a collector. A scrape costs the same with a million jobs in
history as with none: it reads counters, never the history.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from cmdd.jobs import Created, Ended, Event, Job, Started, State
from cmdd.store import JobStore

#: Seconds a job waits for a slot: from sub-millisecond to an hour's backlog.
QUEUE_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60, 300, 3600)
#: Seconds a job runs: from `true` to a four-hour build.
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 14400)
#: Seconds one journal fsync (group commit) takes.
FSYNC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Queue(Protocol):
    """What the metrics read of the job manager."""

    @property
    def running_count(self) -> int: ...

    @property
    def queued_count(self) -> int: ...


class DeliveryCounts(Protocol):
    """What the metrics read of the webhook deliverer (plain counters)."""

    delivered_total: int
    failed_total: int
    retried_total: int
    lag_total: float
    in_flight: int


class _NoDeliveries:
    delivered_total = failed_total = retried_total = in_flight = 0
    lag_total = 0.0


class _Live(Collector):
    """Gauges and counters read at scrape time from the daemon's parts."""

    def __init__(
        self,
        store: JobStore,
        queue: Queue,
        auth_failures: Callable[[], int],
        deliveries: Callable[[], DeliveryCounts],
    ) -> None:
        self._store = store
        self._queue = queue
        self._auth_failures = auth_failures
        self._deliveries = deliveries

    def describe(self) -> list[Metric]:
        # Nothing to read at registration: the parts may not all exist yet.
        return []

    def collect(self) -> Iterator[Metric]:
        running = GaugeMetricFamily("cmdd_jobs_running", "Jobs whose process runs now.")
        running.add_metric([], self._queue.running_count)
        queued = GaugeMetricFamily("cmdd_jobs_queued", "Jobs waiting for a free slot.")
        queued.add_metric([], self._queue.queued_count)
        history = GaugeMetricFamily("cmdd_jobs", "Jobs in history by state.", labels=["state"])
        for state in State:
            history.add_metric([state.value], self._store.counts[state])
        failures = CounterMetricFamily(
            "cmdd_auth_failures", "Requests refused for bad or missing credentials."
        )
        failures.add_metric([], self._auth_failures())
        yield from (running, queued, history, failures, *self._webhooks())

    def _webhooks(self) -> Iterator[Metric]:
        counts = self._deliveries()
        outcomes = CounterMetricFamily(
            "cmdd_webhook_deliveries",
            "Webhook callback attempts by outcome: delivered (2xx), failed (given up "
            "after the maximum age), retried (an attempt that will be tried again).",
            labels=["outcome"],
        )
        outcomes.add_metric(["delivered"], counts.delivered_total)
        outcomes.add_metric(["failed"], counts.failed_total)
        outcomes.add_metric(["retried"], counts.retried_total)
        lag = CounterMetricFamily(
            "cmdd_webhook_delivery_lag_seconds",
            "Seconds from a job's event to its callback's delivery, summed over deliveries "
            "(divide by the delivered count for the mean).",
        )
        lag.add_metric([], counts.lag_total)
        in_flight = GaugeMetricFamily(
            "cmdd_webhook_in_flight", "Webhook requests being sent now."
        )
        in_flight.add_metric([], counts.in_flight)
        yield from (outcomes, lag, in_flight)


class DaemonMetrics:
    """One daemon's metrics, in a registry of its own (not the global one:
    tests run many daemons in one process)."""

    def __init__(
        self,
        store: JobStore,
        queue: Queue,
        *,
        auth_failures: Callable[[], int] = lambda: 0,
        deliveries: Callable[[], DeliveryCounts] = _NoDeliveries,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.submitted = Counter(
            "cmdd_jobs_submitted", "Jobs accepted since start.", registry=self.registry
        )
        self.finished = Counter(
            "cmdd_jobs_finished", "Jobs that reached a final state since start, by state.",
            ["state"], registry=self.registry,
        )  # fmt: skip
        for state in State:
            if state.final:
                self.finished.labels(state.value)
        self.spawn_failures = Counter(
            "cmdd_spawn_failures", "Jobs that could not be started (not_executed).",
            registry=self.registry,
        )  # fmt: skip
        self.queue_seconds = Histogram(
            "cmdd_job_queue_seconds", "Seconds from submission to start.",
            buckets=QUEUE_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.duration_seconds = Histogram(
            "cmdd_job_duration_seconds", "Seconds from start to end, of jobs that started.",
            buckets=DURATION_BUCKETS, registry=self.registry,
        )  # fmt: skip
        #: Observed on the journal's thread (prometheus_client is thread-safe).
        self.fsync_seconds = Histogram(
            "cmdd_journal_fsync_seconds", "Seconds one journal write+fsync (a group commit) took.",
            buckets=FSYNC_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.registry.register(_Live(store, queue, auth_failures, deliveries))
        #: Fed after history is replayed: replayed events are not news.
        self._store = store

    def watch(self) -> None:
        """Count from now on every change the store applies."""
        self._store.add_listener(self._changed)

    def _changed(self, event: Event, job: Job | None) -> None:
        if job is None:
            return
        if isinstance(event, Created):
            self.submitted.inc()
        elif isinstance(event, Started):
            self.queue_seconds.observe(max(0.0, event.at - job.created))
        elif isinstance(event, Ended):
            self.finished.labels(job.state.value).inc()
            if job.state is State.NOT_EXECUTED:
                self.spawn_failures.inc()
            if job.duration is not None:
                self.duration_seconds.observe(job.duration)

    def exposition(self) -> bytes:
        """The text exposition format of every metric."""
        return bytes(generate_latest(self.registry))
