"""The run queue: FIFO, with at most N running jobs per concurrency key.

Pure: no I/O, no reactor. Jobs wait in one FIFO line per key (jobs without a
key share one line with no per-key limit); a heap holds the head of every
line that may start now, ordered by arrival, so the oldest startable job is
found in O(log keys), however many jobs of a full key wait in front of it.
A key whose limit is reached simply has no entry in the heap until one of
its jobs releases its slot: it never blocks the jobs of other keys.

When jobs sharing a key ask for different limits, the limit of the job about
to start decides (the head of the key's line).

Removal (a cancelled queued job) is lazy: the entry stays in its line and is
skipped when it reaches the head; a line is rebuilt once it is mostly dead.
"""

from __future__ import annotations

import collections
import heapq
import itertools
from collections.abc import Hashable

import attrs

#: The limit of jobs without a key: only the global limit applies.
UNLIMITED = 2**62


@attrs.define(eq=False)
class _Line:
    """The jobs of one key in arrival order, and how many of them run."""

    #: (sequence number, job id); entries whose sequence number no longer
    #: matches the job's are dead (removed or queued again elsewhere).
    waiting: collections.deque[tuple[int, int]] = attrs.field(factory=collections.deque)
    running: int = 0
    dead: int = 0
    #: Sequence number of this line's entry in the ready heap, if any.
    offered: int | None = None


@attrs.define(eq=False)
class _Waiting:
    """A queued job: its key, the limit it asks for, its place in line."""

    key: Hashable
    limit: int
    seq: int


class SlotQueue:
    """Queued job ids with per-key running limits.

    The caller starts the job that L{next_startable} hands out and calls
    L{release} when it stops holding its slot (it ended, or its start was
    refused and it is queued again).
    """

    def __init__(self) -> None:
        self._lines: dict[Hashable, _Line] = {}
        self._waiting: dict[int, _Waiting] = {}
        #: Keys of the jobs handed out and not released yet.
        self._holding: dict[int, Hashable] = {}
        #: (sequence number of a line's head, key): lines that may start one.
        self._ready: list[tuple[int, Hashable]] = []
        self._later = itertools.count(1)
        self._sooner = itertools.count(-1, -1)

    def __len__(self) -> int:
        """Jobs waiting (not the ones handed out)."""
        return len(self._waiting)

    def __contains__(self, job_id: object) -> bool:
        """Whether the job is waiting (not handed out)."""
        return job_id in self._waiting

    def enqueue(
        self, job_id: int, key: Hashable | None = None, limit: int = 1, *, front: bool = False
    ) -> None:
        """Put a job at the end of the queue (C{front}: before every other
        job, for one that could not start after all). C{key} C{None}: no
        per-key limit."""
        if job_id in self._waiting:
            raise ValueError(f"job {job_id} is already queued")
        seq = next(self._sooner if front else self._later)
        if key is None:
            limit = UNLIMITED
        self._waiting[job_id] = _Waiting(key, limit, seq)
        line = self._lines.get(key)
        if line is None:
            line = self._lines[key] = _Line()
        if front:
            line.waiting.appendleft((seq, job_id))
        else:
            line.waiting.append((seq, job_id))
        if self._head(line) == (seq, job_id):
            self._offer(key, line)

    def remove(self, job_id: int) -> bool:
        """Take a waiting job out of the queue; False if it was not waiting."""
        waiting = self._waiting.pop(job_id, None)
        if waiting is None:
            return False
        line = self._lines[waiting.key]
        line.dead += 1
        if line.dead > 32 and line.dead * 2 > len(line.waiting):
            line.waiting = collections.deque(
                entry for entry in line.waiting if self._alive(entry)
            )
            line.dead = 0
        self._head(line)
        self._offer(waiting.key, line)
        self._drop_if_idle(waiting.key, line)
        if len(self._ready) > 2 * len(self._lines) + 64:
            # Entries of removed heads: keep the heap as small as the lines.
            self._ready = [
                (seq, key)
                for seq, key in self._ready
                if key in self._lines and self._lines[key].offered == seq
            ]
            heapq.heapify(self._ready)
        return True

    def next_startable(self) -> int | None:
        """The oldest job whose key has a free slot, taken out of the queue
        and holding that slot; C{None} if no waiting job may start."""
        while self._ready:
            seq, key = heapq.heappop(self._ready)
            line = self._lines.get(key)
            if line is None or line.offered != seq:
                continue  # stale: the line's current head has its own entry
            line.offered = None
            head = self._head(line)
            if head is None or head[0] != seq:
                self._offer(key, line)
                continue
            waiting = self._waiting[head[1]]
            if line.running >= waiting.limit:
                continue  # full: offered again by a release
            line.waiting.popleft()
            del self._waiting[head[1]]
            line.running += 1
            self._holding[head[1]] = key
            self._head(line)
            self._offer(key, line)
            return head[1]
        return None

    def hold(self, job_id: int, key: Hashable | None = None) -> None:
        """Count a job that already runs (re-adopted after a restart) as
        holding a slot of C{key}, as if L{next_startable} had handed it out."""
        line = self._lines.get(key)
        if line is None:
            line = self._lines[key] = _Line()
        line.running += 1
        self._holding[job_id] = key

    def release(self, job_id: int) -> None:
        """A job handed out by L{next_startable} no longer holds its slot."""
        if job_id not in self._holding:
            return
        key = self._holding.pop(job_id)
        line = self._lines[key]
        line.running -= 1
        self._head(line)
        self._offer(key, line)
        self._drop_if_idle(key, line)

    def running_with(self, key: Hashable) -> int:
        """How many handed-out jobs hold a slot of C{key}."""
        line = self._lines.get(key)
        return 0 if line is None else line.running

    # --- internals -------------------------------------------------------

    def _alive(self, entry: tuple[int, int]) -> bool:
        waiting = self._waiting.get(entry[1])
        return waiting is not None and waiting.seq == entry[0]

    def _head(self, line: _Line) -> tuple[int, int] | None:
        """The line's first live entry (dead ones in front are dropped)."""
        while line.waiting and not self._alive(line.waiting[0]):
            line.waiting.popleft()
            line.dead = max(0, line.dead - 1)
        return line.waiting[0] if line.waiting else None

    def _offer(self, key: Hashable, line: _Line) -> None:
        """List the line's head as startable if its key has a free slot."""
        if not line.waiting:
            return
        seq, job_id = line.waiting[0]
        if line.offered != seq and line.running < self._waiting[job_id].limit:
            line.offered = seq
            heapq.heappush(self._ready, (seq, key))

    def _drop_if_idle(self, key: Hashable, line: _Line) -> None:
        if not line.waiting and line.running == 0:
            del self._lines[key]
