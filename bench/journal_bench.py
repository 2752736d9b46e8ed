#!/usr/bin/env python3
"""Durable appends per second of cmdd.journal.JournalWriter, all modes in one run.

Run from the repository root:

    .venv/bin/python bench/journal_bench.py [--appends N] [--concurrency C]
                                            [--repeat R] [--quick]

Real reactor (the default one, epoll), real files in a temporary directory under
bench/results/ (the same disk as /work), real fdatasync. Every mode writes N
``created`` events (cmdd.jobs.Created with a parse_spec({"command": ...}) spec
whose JSON is about 100 bytes, so one journal line is about 190 bytes) to a
fresh journal file with a fresh JournalWriter:

  group        fsync=True, C "clients" each keeping one append outstanding: a
               client issues its next append when its previous one is durable
               (like C HTTP clients each waiting for their 202). The next append
               is issued in a later reactor turn (callLater(0)), as a request
               arriving over the network would be.
  group-sync   the same, but the next append is issued synchronously inside the
               durability callback (a client that reacts instantly).
  group-c1     the group driver with C = 1: must equal "sequential".
  sequential   fsync=True, strictly one at a time: append, await, next
               (what a naive server does: one fsync per request).
  nofsync      fsync=False ("--journal-fsync never"), C clients as in "group".
  nofsync-seq  fsync=False, strictly sequential.
  raw-fdatasync-1   no Twisted: os.write of one line + os.fdatasync, in a loop
               (the disk's ceiling for one fsync per append).
  raw-fdatasync-C   no Twisted: os.write of C lines + one os.fdatasync, in a loop
               (the disk's ceiling for batches of C).
  compaction-stall  (once, after the modes; --compact-jobs K, default 100,000)
               C clients keep appending while JournalWriter.compact rewrites
               the journal as K finished jobs (what History.compact does when
               the journal passes --journal-compact-bytes): compaction time,
               appends made durable before/during/after, how long an append
               issued during the compaction waits, and how late a 5 ms reactor
               timer fires meanwhile.
  exp-group-nextturn, exp-group-sync-nextturn, exp-sequential-nextturn
               EXPERIMENT, not cmdd's code: "group", "group-sync" and
               "sequential" with a JournalWriter subclass defined here whose
               idle writer submits on the next reactor turn instead of at once
               (see NextTurnWriter): sizes the fix suggested in JOURNAL.md.

Modes are interleaved round-robin over R repetitions; the report gives the
median appends/s of each mode (and every sample), the mean batch size
(writer.batches), the batch-size distribution, append-to-durable latency
p50/p99, and the ratios group/sequential, group-c1/sequential and
nofsync/group. Results go to bench/results/journal_bench-TIMESTAMP.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from twisted.internet import task  # noqa: E402
from twisted.internet.defer import Deferred  # noqa: E402

from cmdd.codec import encode  # noqa: E402
from cmdd.jobs import Created, Job, Outcome, State  # noqa: E402
from cmdd.journal import JournalWriter  # noqa: E402
from cmdd.spec import parse_spec  # noqa: E402

TWISTED_MODES = ("group", "group-sync", "group-c1", "sequential", "nofsync", "nofsync-seq")
RAW_MODES = ("raw-fdatasync-1", "raw-fdatasync-C")
EXPERIMENT_MODES = ("exp-group-nextturn", "exp-group-sync-nextturn", "exp-sequential-nextturn")
ALL_MODES = TWISTED_MODES + RAW_MODES + EXPERIMENT_MODES


def cmdd_tree() -> dict[str, Any]:
    """Which cmdd was measured: the commit, and whether cmdd/ had local changes."""

    def git(*argv: str) -> str:
        completed = subprocess.run(
            ["git", *argv], capture_output=True, text=True, cwd=ROOT, check=False
        )
        return completed.stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "cmdd_changes": git("status", "--short", "cmdd")}


def make_events(count: int) -> list[Created]:
    """C{count} realistic created events (~100-byte spec JSON each)."""
    events = []
    at = time.time()
    for job_id in range(1, count + 1):
        command = (
            f"/usr/local/bin/nightly-report --customer c{job_id % 1000:04d} "
            f"--out /var/spool/reports/r{job_id:07d}.csv"
        )
        events.append(Created(job_id, at + job_id * 0.001, parse_spec({"command": command})))
    return events


class CountingWriter(JournalWriter):
    """A JournalWriter that also records how many lines each batch held.

    Only observes: the batch is written exactly as JournalWriter writes it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batch_sizes: list[int] = []

    def _write_batch(self, data: bytes) -> int:
        written = super()._write_batch(data)
        self.batch_sizes.append(data.count(b"\n"))  # list.append is atomic
        return written


class NextTurnWriter(CountingWriter):
    """EXPERIMENT, not cmdd's code: an idle writer submits on the next reactor turn.

    cmdd's JournalWriter submits the first append that finds it idle at once,
    alone; every append made in the same reactor turn then waits a whole
    fsync for the next batch. Deferring that first submission by one reactor
    turn (callLater(0)) lets everything appended in the same turn share it.
    Used only by the "exp-*" modes, to size the fix suggested in JOURNAL.md.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._scheduled = False

    def append(self, item: Any) -> Deferred[None]:
        self.seq += 1
        self._pending.append(encode(self.seq, item))
        waiter: Deferred[None] = Deferred()
        self._waiters.append(waiter)
        if self._outstanding == 0 and not self._scheduled:
            self._scheduled = True
            self._reactor.callLater(0, self._submit_scheduled)
        return waiter

    def _submit_scheduled(self) -> None:
        self._scheduled = False
        if self._outstanding == 0 and self._pending:
            self._submit_pending()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def cpu_seconds() -> float:
    """CPU time of this process so far (every thread, user + system)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def summarize(
    mode: str,
    appends: int,
    elapsed: float,
    cpu: float,
    batches: int,
    batch_sizes: list[int],
    latencies: list[float],
    size: int,
) -> dict[str, Any]:
    return {
        "mode": mode,
        "appends": appends,
        "seconds": elapsed,
        "appends_per_s": appends / elapsed,
        "cpu_us_per_append": cpu / appends * 1e6,
        "batches": batches,
        "mean_batch": appends / batches if batches else None,
        "batch_p50": percentile([float(b) for b in batch_sizes], 0.5),
        "batch_max": max(batch_sizes) if batch_sizes else None,
        "batches_of_one": (
            sum(1 for b in batch_sizes if b == 1) / len(batch_sizes) if batch_sizes else None
        ),
        "latency_p50_ms": percentile(latencies, 0.5) * 1e3 if latencies else None,
        "latency_p99_ms": percentile(latencies, 0.99) * 1e3 if latencies else None,
        "bytes": size,
    }


async def run_concurrent(
    reactor: Any,
    path: str,
    events: list[Created],
    concurrency: int,
    *,
    fsync: bool,
    next_in_callback: bool,
    mode: str,
    writer_class: type[CountingWriter] = CountingWriter,
) -> dict[str, Any]:
    """C clients, each with one append outstanding until N appends are durable."""
    writer = writer_class(reactor, path, fsync=fsync)
    writer.open()
    total = len(events)
    claimed = 0  # appends issued or scheduled to be issued
    completed = 0
    latencies: list[float] = []
    finished: Deferred[None] = Deferred()
    clock = time.perf_counter

    def issue(index: int) -> None:
        writer.append(events[index]).addCallbacks(durable, failed, callbackArgs=(clock(),))

    def durable(_: object, began: float) -> None:
        nonlocal claimed, completed
        latencies.append(clock() - began)
        completed += 1
        if claimed < total:
            claimed += 1
            if next_in_callback:
                issue(claimed - 1)
            else:
                reactor.callLater(0, issue, claimed - 1)
        elif completed == total:
            finished.callback(None)

    def failed(failure: Any) -> None:
        if not finished.called:
            finished.errback(failure)

    began, cpu = clock(), cpu_seconds()
    for _ in range(min(concurrency, total)):
        claimed += 1
        issue(claimed - 1)
    await finished
    elapsed, cpu = clock() - began, cpu_seconds() - cpu
    await writer.close()
    check_file(path, total)
    return summarize(
        mode, total, elapsed, cpu, writer.batches, writer.batch_sizes, latencies, writer.size
    )


async def run_sequential(
    reactor: Any,
    path: str,
    events: list[Created],
    *,
    fsync: bool,
    mode: str,
    writer_class: type[CountingWriter] = CountingWriter,
) -> dict[str, Any]:
    """Append, await, next: one durable write per request."""
    writer = writer_class(reactor, path, fsync=fsync)
    writer.open()
    latencies: list[float] = []
    clock = time.perf_counter
    began, cpu = clock(), cpu_seconds()
    for event in events:
        t0 = clock()
        await writer.append(event)
        latencies.append(clock() - t0)
    elapsed, cpu = clock() - began, cpu_seconds() - cpu
    await writer.close()
    check_file(path, len(events))
    return summarize(
        mode, len(events), elapsed, cpu, writer.batches, writer.batch_sizes, latencies, writer.size
    )


def run_raw(path: str, events: list[Created], batch: int, mode: str) -> dict[str, Any]:
    """No Twisted, no thread: write C{batch} lines, fdatasync, repeat."""
    lines = [encode(seq, event) for seq, event in enumerate(events, 1)]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    batches = 0
    sizes: list[int] = []
    clock = time.perf_counter
    try:
        began, cpu = clock(), cpu_seconds()
        for start in range(0, len(lines), batch):
            chunk = lines[start : start + batch]
            data = b"".join(chunk)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fdatasync(fd)
            batches += 1
            sizes.append(len(chunk))
        elapsed, cpu = clock() - began, cpu_seconds() - cpu
    finally:
        os.close(fd)
    check_file(path, len(events))
    return summarize(mode, len(events), elapsed, cpu, batches, sizes, [], os.path.getsize(path))


def check_file(path: str, lines: int) -> None:
    with open(path, "rb") as journal:
        found = sum(1 for _ in journal)
    if found != lines:
        raise SystemExit(f"{path}: {found} lines, expected {lines}")


def make_jobs(count: int) -> list[Job]:
    """C{count} finished jobs, as a store holds them after replay."""
    jobs = []
    at = time.time() - count
    for event in make_events(count):
        jobs.append(
            Job(
                id=event.job_id,
                spec=event.spec,
                state=State.SUCCEEDED,
                created=at + event.job_id,
                started=at + event.job_id + 0.002,
                completed=at + event.job_id + 1.5,
                outcome=Outcome(State.SUCCEEDED, exit_code=0, stdout_bytes=4096),
            )
        )
    return jobs


async def run_compaction_stall(
    reactor: Any, tmp: str, jobs: list[Job], concurrency: int
) -> dict[str, Any]:
    """Appends from C clients while JournalWriter.compact rewrites C{jobs}.

    As the daemon does it: History.compact hands the live jobs to
    JournalWriter.compact, which runs on the journal thread in order with the
    appends. Measures how long the compaction takes, how long appends made
    during it wait for durability, how many complete, and how late a 5 ms
    reactor timer fires meanwhile (the thread encodes in Python, holding the GIL).
    """
    path = os.path.join(tmp, "compaction-stall.jsonl")
    writer = CountingWriter(reactor, path, fsync=True)
    writer.open()
    clock = time.perf_counter
    events = make_events(200_000)
    next_event = 0
    done: list[tuple[float, float]] = []  # (issued, durable) times
    stopping = False
    lags: list[tuple[float, float]] = []  # (when, lateness)
    all_idle: Deferred[None] = Deferred()
    in_flight = 0

    def issue() -> None:
        nonlocal next_event, in_flight
        event = events[next_event % len(events)]
        next_event += 1
        in_flight += 1
        writer.append(event).addCallback(durable, clock())

    def durable(_: object, began: float) -> None:
        nonlocal in_flight
        in_flight -= 1
        done.append((began, clock()))
        if not stopping:
            reactor.callLater(0, issue)
        elif in_flight == 0 and not all_idle.called:
            all_idle.callback(None)

    def tick(expected: float) -> None:
        now = clock()
        lags.append((now, now - expected))
        if not stopping:
            reactor.callLater(0.005, tick, clock() + 0.005)

    def sleep(seconds: float) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        reactor.callLater(seconds, d.callback, None)
        return d

    reactor.callLater(0.005, tick, clock() + 0.005)
    for _ in range(concurrency):
        issue()
    await sleep(1.0)
    began = clock()
    size = await writer.compact(jobs, time.time(), len(jobs) + 1)
    ended = clock()
    await sleep(1.0)
    stopping = True
    if in_flight:
        await all_idle
    await writer.close()
    compaction = ended - began

    def phase(start: float, stop: float) -> dict[str, Any]:
        waits = [d - i for i, d in done if start <= d < stop]
        lateness = [lag for when, lag in lags if start <= when < stop]
        return {
            "seconds": stop - start,
            "appends_durable": len(waits),
            "appends_per_s": len(waits) / (stop - start),
            "wait_p50_ms": percentile(waits, 0.5) * 1e3 if waits else None,
            "wait_p99_ms": percentile(waits, 0.99) * 1e3 if waits else None,
            "wait_max_ms": max(waits) * 1e3 if waits else None,
            "timer_lateness_p50_ms": percentile(lateness, 0.5) * 1e3 if lateness else None,
            "timer_lateness_max_ms": max(lateness) * 1e3 if lateness else None,
        }

    # Appends issued during the compaction: how long did each wait?
    stalled = [d - i for i, d in done if began <= i < ended]
    result = {
        "jobs": len(jobs),
        "compaction_seconds": compaction,
        "compaction_us_per_job": compaction / len(jobs) * 1e6,
        "compacted_bytes": size,
        "before": phase(began - 1.0, began),
        "during": phase(began, ended),
        "after": phase(ended, ended + 1.0),
        "issued_during": len(stalled),
        "issued_during_wait_max_ms": max(stalled) * 1e3 if stalled else None,
        "issued_during_wait_p50_ms": percentile(stalled, 0.5) * 1e3 if stalled else None,
    }
    os.unlink(path)
    return result


async def run_all(reactor: Any, args: argparse.Namespace, tmp: str) -> dict[str, Any]:
    events = make_events(args.appends)
    c = args.concurrency
    samples: dict[str, list[dict[str, Any]]] = {m: [] for m in ALL_MODES}
    counter = 0
    for repetition in range(args.repeat):
        for mode in args.modes:
            counter += 1
            path = os.path.join(tmp, f"{counter:03d}-{mode}.jsonl")
            if mode == "group":
                result = await run_concurrent(
                    reactor, path, events, c, fsync=True, next_in_callback=False, mode=mode
                )
            elif mode == "group-sync":
                result = await run_concurrent(
                    reactor, path, events, c, fsync=True, next_in_callback=True, mode=mode
                )
            elif mode == "group-c1":
                result = await run_concurrent(
                    reactor, path, events, 1, fsync=True, next_in_callback=False, mode=mode
                )
            elif mode == "sequential":
                result = await run_sequential(reactor, path, events, fsync=True, mode=mode)
            elif mode == "nofsync":
                result = await run_concurrent(
                    reactor, path, events, c, fsync=False, next_in_callback=False, mode=mode
                )
            elif mode == "nofsync-seq":
                result = await run_sequential(reactor, path, events, fsync=False, mode=mode)
            elif mode == "exp-group-nextturn":
                result = await run_concurrent(
                    reactor,
                    path,
                    events,
                    c,
                    fsync=True,
                    next_in_callback=False,
                    mode=mode,
                    writer_class=NextTurnWriter,
                )
            elif mode == "exp-group-sync-nextturn":
                result = await run_concurrent(
                    reactor,
                    path,
                    events,
                    c,
                    fsync=True,
                    next_in_callback=True,
                    mode=mode,
                    writer_class=NextTurnWriter,
                )
            elif mode == "exp-sequential-nextturn":
                result = await run_sequential(
                    reactor, path, events, fsync=True, mode=mode, writer_class=NextTurnWriter
                )
            elif mode == "raw-fdatasync-1":
                result = run_raw(path, events, 1, mode)
            elif mode == "raw-fdatasync-C":
                result = run_raw(path, events, c, mode)
            else:
                raise SystemExit(f"unknown mode {mode}")
            os.unlink(path)
            result["repetition"] = repetition
            samples[mode].append(result)
            print(
                f"  rep {repetition + 1}/{args.repeat} {mode:24s} "
                f"{result['appends_per_s']:10.0f} appends/s  "
                f"mean batch {result['mean_batch']:6.1f}",
                flush=True,
            )
    return {mode: runs for mode, runs in samples.items() if runs}


def median_of(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [run[key] for run in runs if run[key] is not None]
    return statistics.median(values) if values else None


def report(samples: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> dict[str, Any]:
    summary: dict[str, dict[str, Any]] = {}
    for mode, runs in samples.items():
        summary[mode] = {
            "appends_per_s": median_of(runs, "appends_per_s"),
            "appends_per_s_samples": [round(run["appends_per_s"], 1) for run in runs],
            "cpu_us_per_append": median_of(runs, "cpu_us_per_append"),
            "mean_batch": median_of(runs, "mean_batch"),
            "batch_p50": median_of(runs, "batch_p50"),
            "batch_max": median_of(runs, "batch_max"),
            "batches_of_one": median_of(runs, "batches_of_one"),
            "latency_p50_ms": median_of(runs, "latency_p50_ms"),
            "latency_p99_ms": median_of(runs, "latency_p99_ms"),
        }

    def rate(mode: str) -> float | None:
        return summary.get(mode, {}).get("appends_per_s")

    def ratio(a: str, b: str) -> float | None:
        x, y = rate(a), rate(b)
        return x / y if x and y else None

    ratios = {
        "group/sequential": ratio("group", "sequential"),
        "group-sync/sequential": ratio("group-sync", "sequential"),
        "group-c1/sequential": ratio("group-c1", "sequential"),
        "nofsync/group": ratio("nofsync", "group"),
        "sequential/raw-fdatasync-1": ratio("sequential", "raw-fdatasync-1"),
        "group/raw-fdatasync-C": ratio("group", "raw-fdatasync-C"),
        "exp-group-nextturn/group": ratio("exp-group-nextturn", "group"),
        "exp-group-sync-nextturn/group-sync": ratio("exp-group-sync-nextturn", "group-sync"),
        "exp-sequential-nextturn/sequential": ratio("exp-sequential-nextturn", "sequential"),
    }
    print()
    print(
        f"JournalWriter: {args.appends} appends per run, concurrency {args.concurrency}, "
        f"median of {args.repeat}"
    )
    header = (
        f"{'mode':24s} {'appends/s':>10s} {'CPU us/append':>13s} {'mean batch':>10s} "
        f"{'p50 batch':>9s} {'1-line batches':>14s} {'lat p50 ms':>10s} {'lat p99 ms':>10s}"
    )
    print(header)
    print("-" * len(header))
    for mode, row in summary.items():

        def fmt(value: float | None, spec: str) -> str:
            return "-" if value is None else format(value, spec)

        print(
            f"{mode:24s} {fmt(row['appends_per_s'], '10.0f')} "
            f"{fmt(row['cpu_us_per_append'], '13.1f')} {fmt(row['mean_batch'], '10.1f')} "
            f"{fmt(row['batch_p50'], '9.0f')} {fmt(row['batches_of_one'], '14.0%')} "
            f"{fmt(row['latency_p50_ms'], '10.3f')} {fmt(row['latency_p99_ms'], '10.3f')}"
        )
    print()
    for name, value in ratios.items():
        if value is not None:
            print(f"{name:36s} {value:8.2f}")
    return {"summary": summary, "ratios": ratios}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--appends", type=int, default=None, help="appends per run (10000; --quick: 1000)"
    )
    parser.add_argument("--concurrency", type=int, default=64, help="clients in group modes")
    parser.add_argument("--repeat", type=int, default=None, help="repetitions (5; --quick: 2)")
    parser.add_argument(
        "--modes",
        default=",".join(ALL_MODES),
        help="comma-separated subset of: " + ", ".join(ALL_MODES),
    )
    parser.add_argument(
        "--compact-jobs",
        type=int,
        default=None,
        help="jobs in the compaction-stall measurement (100000; --quick: 10000; 0: skip)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="1000 appends, 2 repetitions, 10000-job compaction"
    )
    parser.add_argument("--dir", default=str(RESULTS), help="parent of the temporary directory")
    parser.add_argument("--out", default=None, help="JSON result path")
    args = parser.parse_args()
    if args.appends is None:
        args.appends = 1000 if args.quick else 10_000
    if args.repeat is None:
        args.repeat = 2 if args.quick else 5
    if args.compact_jobs is None:
        args.compact_jobs = 10_000 if args.quick else 100_000
    args.modes = [m for m in args.modes.split(",") if m]
    for mode in args.modes:
        if mode not in ALL_MODES:
            parser.error(f"unknown mode {mode}")
    os.makedirs(args.dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="journal-bench-", dir=args.dir)
    outcome: dict[str, Any] = {}

    async def main_in_reactor(reactor: Any) -> None:
        outcome["samples"] = await run_all(reactor, args, tmp)
        if args.compact_jobs:
            print(
                f"  compaction stall: compacting {args.compact_jobs} jobs under load ...",
                flush=True,
            )
            outcome["compaction_stall"] = await run_compaction_stall(
                reactor, tmp, make_jobs(args.compact_jobs), args.concurrency
            )

    stat = os.statvfs(tmp)
    print(
        f"journal_bench: {args.appends} appends x {len(args.modes)} modes x {args.repeat}, "
        f"files in {tmp} (block size {stat.f_bsize})",
        flush=True,
    )
    started = time.time()
    try:
        task.react(lambda reactor: Deferred.fromCoroutine(main_in_reactor(reactor)))
    except SystemExit as e:
        if e.code not in (0, None):
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if "samples" not in outcome:
        raise SystemExit("the benchmark did not finish")
    from twisted.internet import reactor as the_reactor

    result = report(outcome["samples"], args)
    if "compaction_stall" in outcome:
        stall = outcome["compaction_stall"]
        result["compaction_stall"] = stall
        print(
            f"\nCompaction under load: {stall['jobs']} jobs rewritten in "
            f"{stall['compaction_seconds']:.2f} s ({stall['compaction_us_per_job']:.1f} us/job, "
            f"{stall['compacted_bytes']:,} bytes), {args.concurrency} clients appending"
        )
        print(
            f"{'phase':8s} {'seconds':>8s} {'durable':>8s} {'appends/s':>10s} "
            f"{'wait p50 ms':>11s} {'wait max ms':>11s} {'5ms-timer late p50/max ms':>26s}"
        )
        for name in ("before", "during", "after"):
            row = stall[name]

            def fmt(value: float | None, spec: str) -> str:
                return "-" if value is None else format(value, spec)

            print(
                f"{name:8s} {row['seconds']:8.2f} {row['appends_durable']:8d} "
                f"{row['appends_per_s']:10.0f} {fmt(row['wait_p50_ms'], '11.1f')} "
                f"{fmt(row['wait_max_ms'], '11.1f')} "
                f"{fmt(row['timer_lateness_p50_ms'], '12.1f')} / "
                f"{fmt(row['timer_lateness_max_ms'], '.1f'):<11s}"
            )
        print(
            f"appends issued during the compaction: {stall['issued_during']}, "
            f"waited p50 {stall['issued_during_wait_p50_ms'] or 0:.0f} ms, "
            f"max {stall['issued_during_wait_max_ms'] or 0:.0f} ms"
        )
    result.update(
        {
            "benchmark": "journal_bench",
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "seconds": round(time.time() - started, 1),
            "appends": args.appends,
            "concurrency": args.concurrency,
            "repeat": args.repeat,
            "quick": args.quick,
            "reactor": type(the_reactor).__module__ + "." + type(the_reactor).__name__,
            "cmdd_tree": cmdd_tree(),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "line_bytes": len(encode(1, make_events(1)[0])),
            "samples": outcome["samples"],
        }
    )
    out = args.out or str(
        RESULTS / f"journal_bench-{datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    )
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    print(f"\nwrote {out} ({result['seconds']} s)")


if __name__ == "__main__":
    main()
