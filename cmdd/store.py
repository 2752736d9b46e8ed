"""The in-memory index of jobs, changed only by events.

L{JobStore.record} is the one place every state change goes through; the
journal makes those same events durable. Queries here are pure and need no
reactor.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator

from cmdd.jobs import Created, Event, Job, State, apply_event

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
        before = self._jobs.get(event.job_id)
        after = apply_event(before, event)
        if before is not None:
            self.counts[before.state] -= 1
        if after is None:
            del self._jobs[event.job_id]
            index = bisect.bisect_left(self._ids, event.job_id)
            del self._ids[index]
        else:
            self._jobs[event.job_id] = after
            self.counts[after.state] += 1
            if isinstance(event, Created):
                if not self._ids or self._ids[-1] < event.job_id:
                    self._ids.append(event.job_id)
                else:
                    bisect.insort(self._ids, event.job_id)
                self._next_id = max(self._next_id, event.job_id + 1)
        for listener in self._listeners:
            listener(event, after)
        return after

    def get(self, job_id: int) -> Job | None:
        """The job with this id, if it exists."""
        return self._jobs.get(job_id)

    def newest_first(self, before: int | None = None) -> Iterator[Job]:
        """Jobs from the newest down, starting below id C{before} if given."""
        end = len(self._ids) if before is None else bisect.bisect_left(self._ids, before)
        for index in range(end - 1, -1, -1):
            yield self._jobs[self._ids[index]]
