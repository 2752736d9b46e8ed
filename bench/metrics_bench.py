"""Scrape cost of /metrics with a big history, as a ratio to an empty one.

    .venv/bin/python bench/metrics_bench.py [--jobs 1000000] [--scrapes 2000]

Builds two job stores (empty, and --jobs finished jobs), renders the
Prometheus exposition --scrapes times for each, and prints the mean scrape
time of both and their ratio (1.0x: a scrape does not depend on history).
"""

from __future__ import annotations

import argparse
import time

from cmdd.jobs import Created, Ended, Outcome, Started, State
from cmdd.metrics import DaemonMetrics
from cmdd.spec import JobSpec
from cmdd.store import JobStore


class Queue:
    running_count = 0
    queued_count = 0


def history(jobs: int) -> JobStore:
    store = JobStore()
    spec = JobSpec(command="true")
    outcome = Outcome(State.SUCCEEDED, exit_code=0)
    for job_id in range(1, jobs + 1):
        store.record(Created(job_id, float(job_id), spec))
        store.record(Started(job_id, float(job_id)))
        store.record(Ended(job_id, job_id + 0.5, outcome))
    return store


def scrape_seconds(store: JobStore, scrapes: int) -> float:
    metrics = DaemonMetrics(store, Queue())
    metrics.watch()
    started = time.perf_counter()
    for _ in range(scrapes):
        metrics.exposition()
    return (time.perf_counter() - started) / scrapes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--scrapes", type=int, default=2000)
    args = parser.parse_args()
    empty = scrape_seconds(history(0), args.scrapes)
    began = time.perf_counter()
    big_store = history(args.jobs)
    built = time.perf_counter() - began
    big = scrape_seconds(big_store, args.scrapes)
    print(f"history of {args.jobs:,} jobs built in {built:.1f} s")
    print(f"scrape, empty history: {empty * 1e3:.3f} ms")
    print(f"scrape, {args.jobs:,} jobs:   {big * 1e3:.3f} ms  ({big / empty:.2f}x empty)")


if __name__ == "__main__":
    main()
