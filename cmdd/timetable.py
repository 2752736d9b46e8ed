"""Earliest-first timetable: which keys are due, and when the next one is.

Pure: no I/O, no clock. A heap with lazy deletion: moving or removing a key
costs O(log n) and leaves a stale entry behind, which is skipped when it
reaches the top and dropped when stale entries outnumber live ones, so memory
stays proportional to the live keys.
"""

from __future__ import annotations

import heapq


class Timetable:
    """Integer keys (job or schedule ids), each due at one time."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int]] = []
        self._when: dict[int, float] = {}

    def __len__(self) -> int:
        return len(self._when)

    def __contains__(self, key: int) -> bool:
        return key in self._when

    def when(self, key: int) -> float | None:
        """When C{key} is due, or C{None} if it is not in the timetable."""
        return self._when.get(key)

    def set(self, key: int, when: float) -> None:
        """Make C{key} due at C{when} (moving it if it was there)."""
        if self._when.get(key) == when:
            return
        self._when[key] = when
        heapq.heappush(self._heap, (when, key))
        self._tidy()

    def discard(self, key: int) -> None:
        """Remove C{key}, if present."""
        if self._when.pop(key, None) is not None:
            self._tidy()

    def earliest(self) -> float | None:
        """The time the first key is due, or C{None} when empty."""
        self._drop_stale_top()
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float, limit: int | None = None) -> list[int]:
        """Remove and return the keys due at or before C{now}, earliest first
        (at most C{limit} of them)."""
        due: list[int] = []
        while limit is None or len(due) < limit:
            self._drop_stale_top()
            if not self._heap or self._heap[0][0] > now:
                break
            _, key = heapq.heappop(self._heap)
            del self._when[key]
            due.append(key)
        return due

    def _drop_stale_top(self) -> None:
        heap = self._heap
        while heap and self._when.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)

    def _tidy(self) -> None:
        if len(self._heap) > 2 * len(self._when) + 64:
            self._heap = [(when, key) for key, when in self._when.items()]
            heapq.heapify(self._heap)
