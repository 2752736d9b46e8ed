"""The in-memory index of jobs, changed only by events.

L{JobStore.record} is the one place every state change goes through; the
journal makes those same events durable. Queries here are pure and need no
reactor.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence

from cmdd.jobs import Created, Event, Job, State, apply_event, job_events

Listener = Callable[[Event, Job | None], None]


class JobStore:
    """Jobs by id, in id (= creation) order, with the next id to issue."""

    def __init__(self) -> None:
        self._jobs: dict[int, Job] = {}
        # Sorted ids of existing jobs: lists page through it newest first.
        self._ids: list[int] = []
        self._next_id = 1
        self._listeners: list[Listener] = []
        self.counts: dict[State, int] = dict.fromkeys(State, 0)
        # Secondary indexes, each a sorted list of ids, so a filtered page
        # walks only the jobs that can match instead of all of them.
        self._by_state: dict[State, list[int]] = {state: [] for state in State}
        self._by_owner: dict[str, list[int]] = {}
        self._by_label: dict[tuple[str, str], list[int]] = {}

    def __len__(self) -> int:
        return len(self._jobs)

    def allocate_id(self) -> int:
        """A new job id, never issued before."""
        job_id = self._next_id
        self._next_id += 1
        return job_id

    def peek_next_id(self) -> int:
        """The id the next job will get (not reserved)."""
        return self._next_id

    def reserve_ids_below(self, next_id: int) -> None:
        """Never issue ids below C{next_id} (they were issued before a restart)."""
        self._next_id = max(self._next_id, next_id)

    def oldest_first(self) -> Iterator[Job]:
        """Every job, oldest (lowest id) first."""
        for job_id in list(self._ids):
            yield self._jobs[job_id]

    def add_listener(self, listener: Listener) -> None:
        """Call C{listener(event, job_after)} after every recorded event."""
        self._listeners.append(listener)

    def record(self, event: Event) -> Job | None:
        """Apply C{event} and return the job as it now is (C{None} if deleted).

        @raise cmdd.jobs.InvalidTransitionError: the event is impossible; nothing changes.
        """
        job_id = event.job_id
        before = self._jobs.get(job_id)
        after = apply_event(before, event)
        if before is not None:
            self.counts[before.state] -= 1
            if after is None or after.state is not before.state:
                _remove(self._by_state[before.state], job_id)
        if after is None:
            assert before is not None
            del self._jobs[job_id]
            _remove(self._ids, job_id)
            _remove(self._by_owner[before.owner], job_id)
            for label in before.spec.labels.items():
                _remove(self._by_label[label], job_id)
        else:
            self._jobs[job_id] = after
            self.counts[after.state] += 1
            if before is None or after.state is not before.state:
                _insert(self._by_state[after.state], job_id)
            if isinstance(event, Created):
                _insert(self._ids, job_id)
                _insert(self._by_owner.setdefault(after.owner, []), job_id)
                for label in after.spec.labels.items():
                    _insert(self._by_label.setdefault(label, []), job_id)
                self._next_id = max(self._next_id, job_id + 1)
        for listener in self._listeners:
            listener(event, after)
        return after

    def load(self, jobs: Sequence[Job]) -> None:
        """Fill an empty store with C{jobs} (a snapshot, in id order) at once.

        The indexes are built in one pass each, with no per-event work.
        Listeners are told of the jobs they could care about (not finished,
        or with webhooks, an idempotency key or a schedule) as the events
        that rebuild them; a plain finished job means nothing to any of them.
        """
        if self._jobs:
            raise ValueError("load needs an empty store")
        if any(a.id >= b.id for a, b in itertools.pairwise(jobs)):
            raise ValueError("jobs are not in increasing id order")
        self._jobs = {job.id: job for job in jobs}
        self._ids = list(self._jobs)
        # A pass per state and per owner compares by identity: hashing an
        # enum member runs Python code, a million times here.
        for state in State:
            self._by_state[state] = [job.id for job in jobs if job.state is state]
            self.counts[state] = len(self._by_state[state])
        owners = {job.owner for job in jobs}
        if len(owners) <= 16:
            for owner in owners:
                self._by_owner[owner] = [job.id for job in jobs if job.owner == owner]
        else:
            for job in jobs:
                self._by_owner.setdefault(job.owner, []).append(job.id)
        for job in jobs:
            if job.spec.labels:
                for label in job.spec.labels.items():
                    self._by_label.setdefault(label, []).append(job.id)
        if jobs:
            self._next_id = max(self._next_id, jobs[-1].id + 1)
        for job in jobs:
            if not _plain(job):
                for event in job_events(job):
                    for listener in self._listeners:
                        listener(event, job)

    def forget(self, job_ids: Iterable[int]) -> None:
        """Remove finished jobs in bulk (retention): like a Deleted event for
        each, but one pass over every index instead of one shift per job.
        Listeners are not told; these jobs are final and nobody waits on them.
        """
        doomed = {job_id for job_id in job_ids if job_id in self._jobs}
        if not doomed:
            return
        for job_id in doomed:
            job = self._jobs.pop(job_id)
            assert job.state.final, f"job {job_id} is not finished"
            self.counts[job.state] -= 1
        for index in (
            self._ids,
            *self._by_state.values(),
            *self._by_owner.values(),
            *self._by_label.values(),
        ):
            if index:
                index[:] = [job_id for job_id in index if job_id not in doomed]

    def get(self, job_id: int) -> Job | None:
        """The job with this id, if it exists."""
        return self._jobs.get(job_id)

    def newest_first(
        self, before: int | None = None, ids: Sequence[int] | None = None
    ) -> Iterator[Job]:
        """Jobs from the newest down, starting below id C{before} if given;
        only those in C{ids} (a sorted id index) when given."""
        ids = self._ids if ids is None else ids
        end = len(ids) if before is None else bisect.bisect_left(ids, before)
        for index in range(end - 1, -1, -1):
            yield self._jobs[ids[index]]

    def id_list(self, ids: Sequence[int] | None = None) -> list[int]:
        """A copy of the sorted id index C{ids} (all ids when C{None})."""
        return list(self._ids if ids is None else ids)

    def narrowest_index(
        self,
        states: Iterable[State] = (),
        owner: str | None = None,
        labels: Iterable[tuple[str, str]] = (),
    ) -> Sequence[int] | None:
        """The smallest sorted id index that holds every job these filters can
        match, or C{None} if none applies (then all ids must be walked)."""
        candidates: list[Sequence[int]] = []
        states = list(states)
        if len(states) == 1:
            candidates.append(self._by_state[states[0]])
        # Several states: merging their indexes would cost more per request
        # than walking all ids, which such broad filters mostly match anyway.
        if owner is not None:
            candidates.append(self._by_owner.get(owner, []))
        candidates += [self._by_label.get(label, []) for label in labels]
        return min(candidates, key=len) if candidates else None


def _plain(job: Job) -> bool:
    return (
        job.state.final
        and not job.spec.webhooks
        and job.idempotency is None
        and job.schedule_id is None
    )


def _insert(ids: list[int], job_id: int) -> None:
    # Ids mostly arrive in order: appending is the common, O(1) case.
    if not ids or ids[-1] < job_id:
        ids.append(job_id)
    else:
        bisect.insort(ids, job_id)


def _remove(ids: list[int], job_id: int) -> None:
    index = bisect.bisect_left(ids, job_id)
    if index < len(ids) and ids[index] == job_id:
        del ids[index]
