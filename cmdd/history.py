"""Job history: the in-memory store and the journal that makes it durable.

L{History.record} is the one place a state change happens: checked at
once against the job as it will be, appended to the journal, and applied to
the store (which every reader sees) only once it is on disk. A record the
journal refuses (a full disk) is never applied, so nothing refused is ever
visible, and nothing it refused comes back after a restart. Compaction and
the retention policy live here too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from cmdd.codec import Item, Meta, Record
from cmdd.jobs import Deleted, Event, InvalidTransitionError, Job, apply_event
from cmdd.schedule import ScheduleDeleted, ScheduleSaved
from cmdd.store import JobStore

log = Logger()

DEFAULT_COMPACT_BYTES = 64 * 1024 * 1024


class EventLog(Protocol):
    """Where events are made durable (the journal, or memory in tests).

    When it refuses an append (its Deferred fails), it refuses every append
    made before and not yet durable too: a refusal means that nothing in
    flight will be in the log.
    """

    size: int

    def append(self, item: Item) -> Deferred[None]: ...

    def compact(
        self, jobs: list[Job], at: float, next_id: int, extra: Sequence[Item] = ()
    ) -> Deferred[int]: ...


class Section(Protocol):
    """Durable state kept in the journal beside the jobs (the schedules)."""

    def load(self, item: object) -> bool:
        """Apply a replayed record; C{False} if it is not this section's."""

    def snapshot(self, at: float) -> Sequence[Item]:
        """Records that rebuild the section as it will be once everything
        recorded is durable (written by compaction after the jobs)."""


class MemoryLog:
    """An event log that keeps nothing: for tests and C{--journal none}."""

    size = 0

    def __init__(self) -> None:
        self.items: list[Item] = []

    def append(self, item: Item) -> Deferred[None]:
        self.items.append(item)
        return succeed(None)

    def compact(
        self, jobs: list[Job], at: float, next_id: int, extra: Sequence[Item] = ()
    ) -> Deferred[int]:
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


def load_record(store: JobStore, record: Record, sections: Sequence[Section] = ()) -> None:
    """Apply one replayed journal record to C{store} (or to the section it is for)."""
    item = record.item
    if isinstance(item, Meta):
        store.reserve_ids_below(item.next_id)
    elif isinstance(item, ScheduleSaved | ScheduleDeleted):
        if not any(section.load(item) for section in sections):
            raise ValueError(f"no section takes {type(item).__name__} records")
    else:
        store.record(item)


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
        #: Jobs with events in flight: as they will be once those are durable.
        self._projected: dict[int, Job | None] = {}
        self._in_flight: dict[int, int] = {}
        #: Bumped by a refusal: events recorded before it are all refused.
        self._generation = 0
        self.sections: list[Section] = []

    def current(self, job_id: int) -> Job | None:
        """The job as it will be once everything recorded is durable.

        Decisions (may this job be cancelled, deleted, started?) are taken on
        this view; readers see the store, which holds only durable events.
        """
        if job_id in self._projected:
            return self._projected[job_id]
        return self.store.get(job_id)

    def load(self, record: Record) -> None:
        """Apply one replayed journal record (no new write)."""
        load_record(self.store, record, self.sections)

    def note(self, item: ScheduleSaved | ScheduleDeleted) -> Deferred[None]:
        """Append a section's record (not a job event); fires once it is
        durable, fails if the journal refused it (and every record in flight)."""
        return self._log.append(item).addErrback(self._refused, self._generation)

    def record(self, event: Event) -> tuple[Job | None, Deferred[None]]:
        """Append C{event}; it is applied to the store once it is durable.

        @return: the job as the event makes it (C{None} if deleted) and a
            Deferred that fires once the event is durable and applied, or
            fails if the journal refused it (then nothing changed).
        @raise cmdd.jobs.InvalidTransitionError: the event is impossible.
        """
        job_id = event.job_id
        after = apply_event(self.current(job_id), event)
        self._projected[job_id] = after
        self._in_flight[job_id] = self._in_flight.get(job_id, 0) + 1
        generation = self._generation
        durable = self._log.append(event).addCallbacks(
            self._applied, self._refused, callbackArgs=(event,), errbackArgs=(generation,)
        )
        if self._log.size >= self.compact_bytes and not self._compacting:
            self.compact().addErrback(
                lambda failure: log.error(
                    "journal compaction failed: {why}", why=failure.getErrorMessage()
                )
            )
        return after, durable

    @property
    def shares_writes(self) -> bool:
        """Whether L{together} saves anything (the log writes in batches)."""
        return hasattr(self._log, "together")

    @contextlib.contextmanager
    def together(self) -> Iterator[None]:
        """Events recorded inside the block are made durable in one write
        when the log can (the journal: one fsync), else one by one."""
        together = getattr(self._log, "together", None)
        if together is None:
            yield
            return
        with together():
            yield

    def _applied(self, _: object, event: Event) -> None:
        try:
            self.store.record(event)
        except InvalidTransitionError:
            # Only a job retention dropped meanwhile (a deletion in flight).
            log.info("event for a job retention dropped: {event!r}", event=event)
        if isinstance(event, Deleted):
            self.deleted_since_compaction += 1
        left = self._in_flight.get(event.job_id, 0) - 1
        if left > 0:
            self._in_flight[event.job_id] = left
        else:
            self._in_flight.pop(event.job_id, None)
            self._projected.pop(event.job_id, None)

    def _refused(self, failure: Failure, generation: int) -> Failure:
        if generation == self._generation:
            # Every event in flight is refused with this one (see EventLog):
            # the store, untouched by them, is the truth again.
            self._generation += 1
            self._projected.clear()
            self._in_flight.clear()
        return failure

    def _projected_jobs(self) -> list[Job]:
        """Every job as it will be once the events in flight are durable."""
        jobs = []
        for job in self.store.oldest_first():
            if job.id in self._projected:
                projected = self._projected[job.id]
                if projected is None:
                    continue
                job = projected
            jobs.append(job)
        new = [
            job
            for job_id, job in self._projected.items()
            if job is not None and self.store.get(job_id) is None
        ]
        if new:
            jobs = sorted(jobs + new, key=lambda job: job.id)
        return jobs

    def note_compacted(self, size: int) -> None:
        """The journal's first C{size} bytes are compacted (and, at start-up,
        were loaded from the snapshot): compact again once it has grown by
        C{compact_bytes} or an eighth of that, whichever is more.

        Even with nothing to drop: appends no longer wait for a compaction,
        and its snapshot is what keeps a restart from replaying everything.
        The eighth bounds the lines a restart replays to ~12% of the history
        and the rewriting to ~8 bytes per byte appended.
        """
        configured = self._configured_compact_bytes
        self.compact_bytes = size + max(configured, size // 8) if size else configured

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
        # The snapshot holds the events in flight: the writer puts them in
        # the old file before it compacts, or refuses the compaction too.
        jobs = self._projected_jobs()

        def done(size: int) -> None:
            self.compactions += 1
            self.note_compacted(size)
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

        extra = [item for section in self.sections for item in section.snapshot(now)]
        self._log.compact(jobs, now, self.store.peek_next_id(), extra).addCallbacks(done, failed)
        return waiter

    def _finish_compaction(self, result: int | Failure) -> None:
        self._compacting = False
        waiters, self._compaction_waiters = self._compaction_waiters, []
        for waiter in waiters:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)
