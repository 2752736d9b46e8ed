#!/usr/bin/env python3
"""What the run queue costs per job start, with and without concurrency keys.

Run from the repository root:

    .venv/bin/python bench/keys_bench.py [--jobs 10000] [--keys 100] [--repeats 5]

Pure CPU, no daemon: the manager's pump loop is replayed against
L{cmdd.slots.SlotQueue} with C{max_running} 8. Each round queues N jobs,
then starts jobs while fewer than 8 run and something may start, ends the
oldest running job (its slot is released), and so on until every job ran;
the figure is the time per start (enqueue + next_startable + release).

Scenarios, each timed in the same run (best of --repeats):

- C{deque}: N jobs through the manager's old queue (a deque, no keys): the
  baseline.
- C{plain}: N jobs without a key through the new queue.
- C{keys}: N jobs spread round-robin over K keys, limit 1 each.
- C{hot}: 99 % of the jobs under one key (limit 1) queued first, the rest
  over K-1 other keys: the case where a queue scan would walk the blocked
  key's jobs at every start.
- C{scan}: the C{hot} jobs through a naive queue that scans a deque for the
  first startable job (what the per-key lines avoid), for comparison.
"""

from __future__ import annotations

import argparse
import collections
import time
from collections.abc import Callable, Hashable
from typing import Any

from cmdd.slots import SlotQueue

MAX_RUNNING = 8


class DequeQueue:
    """The manager's queue before concurrency keys: a deque, keys ignored."""

    def __init__(self) -> None:
        self._queue: collections.deque[int] = collections.deque()

    def enqueue(self, job_id: int, key: Hashable | None = None, limit: int = 1) -> None:
        self._queue.append(job_id)

    def next_startable(self) -> int | None:
        return self._queue.popleft() if self._queue else None

    def release(self, job_id: int) -> None:
        pass


class ScanQueue:
    """The naive policy: one deque, scanned for the first startable job."""

    def __init__(self) -> None:
        self._queue: collections.deque[tuple[int, Hashable | None, int]] = collections.deque()
        self._running: collections.Counter[Hashable] = collections.Counter()
        self._key_of: dict[int, Hashable | None] = {}

    def enqueue(self, job_id: int, key: Hashable | None = None, limit: int = 1) -> None:
        self._queue.append((job_id, key, limit))

    def next_startable(self) -> int | None:
        for i, (job_id, key, limit) in enumerate(self._queue):
            if key is None or self._running[key] < limit:
                del self._queue[i]
                if key is not None:
                    self._running[key] += 1
                self._key_of[job_id] = key
                return job_id
        return None

    def release(self, job_id: int) -> None:
        key = self._key_of.pop(job_id)
        if key is not None:
            self._running[key] -= 1


def _plain(n: int, keys: int) -> list[Hashable | None]:
    return [None] * n


def _keyed(n: int, keys: int) -> list[Hashable | None]:
    return [("bench", f"k{i % keys}") for i in range(n)]


def _hot(n: int, keys: int) -> list[Hashable | None]:
    hot = n * 99 // 100
    return [("bench", "hot")] * hot + [("bench", f"k{i % (keys - 1)}") for i in range(n - hot)]


Queue = SlotQueue | ScanQueue | DequeQueue


def run(make: Callable[[], Queue], layout: list[Hashable | None]) -> float:
    """Seconds per start for one full round."""
    queue = make()
    begin = time.perf_counter()
    for job_id, key in enumerate(layout):
        queue.enqueue(job_id, key, 1)
    running: collections.deque[int] = collections.deque()
    started = 0
    while started < len(layout):
        while len(running) < MAX_RUNNING:
            job_id = queue.next_startable()
            if job_id is None:
                break
            running.append(job_id)
            started += 1
        queue.release(running.popleft())
    return (time.perf_counter() - begin) / len(layout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--keys", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    scenarios: list[tuple[str, Callable[[], Queue], Any]] = [
        ("deque", DequeQueue, _plain),
        ("plain", SlotQueue, _plain),
        ("keys", SlotQueue, _keyed),
        ("hot", SlotQueue, _hot),
        ("scan", ScanQueue, _hot),
    ]
    best: dict[str, float] = {}
    for _ in range(args.repeats):
        for name, make, layout in scenarios:
            seconds = run(make, layout(args.jobs, args.keys))
            best[name] = min(best.get(name, seconds), seconds)
    print(f"{args.jobs} jobs, {args.keys} keys, max_running {MAX_RUNNING}, "
          f"best of {args.repeats}")
    print(f"{'scenario':<8} {'µs/start':>9} {'vs deque':>9}")
    for name, _, _ in scenarios:
        print(f"{name:<8} {best[name] * 1e6:9.2f} {best[name] / best['deque']:8.2f}x")


if __name__ == "__main__":
    main()
