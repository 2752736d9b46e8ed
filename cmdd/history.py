"""Job history: the in-memory store and the journal that makes it durable.

L{History.record} is the one place a state change happens: applied in
memory at once, appended to the journal, and the returned Deferred says when
it is on disk. Compaction and the retention policy live here too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from cmdd.codec import Meta, Record
from cmdd.jobs import Deleted, Event, Job
from cmdd.store import JobStore

log = Logger()

DEFAULT_COMPACT_BYTES = 64 * 1024 * 1024


class EventLog(Protocol):
    """Where events are made durable (the journal, or memory in tests)."""

    size: int

    def append(self, item: Event | Meta) -> Deferred[None]: ...

    def compact(self, jobs: list[Job], at: float, next_id: int) -> Deferred[int]: ...


class MemoryLog:
    """An event log that keeps nothing: for tests and C{--journal none}."""

    size = 0

    def __init__(self) -> None:
        self.items: list[Event | Meta] = []

    def append(self, item: Event | Meta) -> Deferred[None]:
        self.items.append(item)
        return succeed(None)

    def compact(self, jobs: list[Job], at: float, next_id: int) -> Deferred[int]:
        self.items = []
        return succeed(0)


@attrs.frozen
class Retention:
    """Which finished jobs compaction drops (C{None}: keep everything)."""

    days: float | None = None
    jobs: int | None = None

    @property
    def keeps_everything(self) -> bool:
        """Whether this policy never drops a job."""
        return self.days is None and self.jobs is None

    def expired(self, store: JobStore, now: float) -> list[int]:
        """Ids of finished jobs to drop, oldest first."""
        finished = [job for job in store.oldest_first() if job.state.final]
        drop: set[int] = set()
        if self.days is not None:
            horizon = now - self.days * 86400
            drop.update(job.id for job in finished if (job.completed or 0) < horizon)
        if self.jobs is not None and len(finished) > self.jobs:
            drop.update(job.id for job in finished[: len(finished) - self.jobs])
        return sorted(drop)


def load_record(store: JobStore, record: Record) -> None:
    """Apply one replayed journal record to C{store}."""
    if isinstance(record.item, Meta):
        store.reserve_ids_below(record.item.next_id)
    else:
        store.record(record.item)


class History:
    """The store plus its durable log, compacted when the log grows."""

    def __init__(
        self,
        store: JobStore,
        log_: EventLog,
        clock: IReactorTime,
        *,
        compact_bytes: int = DEFAULT_COMPACT_BYTES,
        retention: Retention = Retention(),
        remove_outputs: Callable[[list[int]], Deferred[None]] = lambda ids: succeed(None),
    ) -> None:
        self.store = store
        self._log = log_
        self._clock = clock
        self._configured_compact_bytes = compact_bytes
        self.compact_bytes = compact_bytes
        self.retention = retention
        self._remove_outputs = remove_outputs
        self._compacting = False
        self._compaction_waiters: list[Deferred[int]] = []
        self.deleted_since_compaction = 0
        self.compactions = 0

    def load(self, record: Record) -> None:
        """Apply one replayed journal record (no new write)."""
        load_record(self.store, record)

    def record(self, event: Event) -> tuple[Job | None, Deferred[None]]:
        """Apply C{event} now; the Deferred fires once it is durable."""
        job = self.store.record(event)
        durable = self._log.append(event)
        if isinstance(event, Deleted):
            self.deleted_since_compaction += 1
        if (
            self._log.size >= self.compact_bytes
            and not self._compacting
            and self._compaction_can_shrink()
        ):
            self.compact().addErrback(
                lambda failure: log.failure("journal compaction failed", failure)
            )
        return job, durable

    def _compaction_can_shrink(self) -> bool:
        # A journal whose jobs were never deleted holds nothing to drop, and
        # appends wait while a compaction writes: only compact when it pays.
        return self.deleted_since_compaction > 0 or not self.retention.keeps_everything

    def compact(self) -> Deferred[int]:
        """Apply retention, then rewrite the log as the live jobs; fires with its size."""
        waiter: Deferred[int] = Deferred()
        self._compaction_waiters.append(waiter)
        if self._compacting:
            return waiter
        self._compacting = True
        now = self._clock.seconds()
        expired = self.retention.expired(self.store, now)
        # One pass over each index, not one list shift per job: retention may
        # drop a large share of a big history at once.
        self.store.forget(expired)
        self.deleted_since_compaction = 0
        jobs = list(self.store.oldest_first())

        def done(size: int) -> None:
            self.compactions += 1
            # Compact again only once the log has grown past twice its live size.
            self.compact_bytes = max(self._configured_compact_bytes, 2 * size)
            log.info(
                "journal compacted: {jobs} jobs, {size} bytes, {dropped} dropped by retention",
                jobs=len(jobs),
                size=size,
                dropped=len(expired),
            )
            if expired:
                self._remove_outputs(expired)
            self._finish_compaction(size)

        def failed(failure: Failure) -> None:
            self._finish_compaction(failure)

        self._log.compact(jobs, now, self.store.peek_next_id()).addCallbacks(done, failed)
        return waiter

    def _finish_compaction(self, result: int | Failure) -> None:
        self._compacting = False
        waiters, self._compaction_waiters = self._compaction_waiters, []
        for waiter in waiters:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)
