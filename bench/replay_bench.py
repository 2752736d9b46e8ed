#!/usr/bin/env python3
"""Journal replay and compaction cost of cmdd, against a bare json.loads baseline.

Run from the repository root:

    .venv/bin/python bench/replay_bench.py [--jobs N] [--journal PATH] [--repeat R]
                                           [--sections baseline,replay,compact,profile]
                                           [--quick]

Sections run by default: baseline, replay, compact (about 4-5 minutes for 1M
jobs); "--sections profile" runs the breakdown and cProfile alone (2-4
minutes); --quick runs all four on 10,000 jobs (under 20 s).

The journal: PATH if given (a journal.jsonl, or a data directory holding one),
else bench/results/journal-N/journal.jsonl, written by bench/make_journal.py
when it is not there yet (N finished jobs, default 1,000,000: 3,000,000 lines).

Every measurement runs in a fresh Python process (this file with --child), so
its peak RSS (VmHWM; ru_maxrss agrees) is its own:

  cmdd         cmdd.journal.replay(path, History(JobStore(), MemoryLog(), Clock()).load),
               exactly what the daemon does at start: seconds, records/s, jobs/s,
               peak RSS and RSS growth per job (peak minus RSS after imports),
               time spent in the cyclic garbage collector (gc.callbacks).
  baseline     bare Python: json.loads of every line of the same file into a
               dict keyed by job id (a job's later lines update its dict): the
               raw rate of "read JSON lines into memory". No checksum, no
               validation, no objects.
               Then (--retention-drop, default 1%) the oldest jobs are dropped
               as History.compact applies --retain-jobs, and that is timed.
  compact      cmdd.offline.compact(data_dir) on a fresh copy of the journal
               (the copy is made before the child starts and is not timed):
               seconds (and its replay / snapshot-write phases), size
               before/after, peak RSS.
  orjson       (when orjson is importable) the baseline with orjson.loads; with
               --orjson-replay also cmdd's replay with cmdd.codec's json.loads
               swapped for orjson.loads inside the child process only (cmdd is
               not changed).

Then, on a smaller journal (--profile-jobs, default 100,000 jobs, generated the
same way), where the replay time goes:

  breakdown    per-line CPU cost of each stage measured separately (minimum
               of --rounds runs, cyclic GC off), without a profiler: reading
               lines, BufferedReader.tell(), crc32, json.loads (and
               raw_decode, orjson.loads), codec._record (of which parse_spec),
               store application (load_record), and the whole replay (GC on,
               its GC time reported).
  [exp]        the whole replay of the first --exp-jobs jobs with parts of
               cmdd swapped in the child process only (cmdd's files are not
               changed): json via raw_decode, apply_event without
               attrs.evolve, both, orjson.loads; each checked to rebuild the
               very same jobs.
  profile      cProfile of the whole replay: the top functions by own time
               and their share of the total.

Baselines run --repeat times, cmdd replay and compaction --slow-repeat times
(both default 1: at 1M jobs each takes 15-150 s; the median is reported when
more). Results go to bench/results/replay_bench-TIMESTAMP.json.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import os
import platform
import pstats
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

JOURNAL_NAME = "journal.jsonl"


# --- helpers used in the child processes ------------------------------------


def memory() -> dict[str, int]:
    """VmRSS and VmHWM of this process, in bytes, and ru_maxrss (KiB on Linux) in bytes."""
    out: dict[str, int] = {}
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":", 1)
                out[key] = int(value.split()[0]) * 1024
    out["ru_maxrss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return out


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class GcTimer:
    """Sums the time the cyclic garbage collector runs (gc.callbacks)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.collections = [0, 0, 0]
        self._start = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._start
            self.collections[info["generation"]] += 1

    def __enter__(self) -> GcTimer:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self)


def orjson_json() -> Any:
    """A stand-in for the json module whose loads is orjson.loads."""
    import types

    import orjson

    return types.SimpleNamespace(loads=orjson.loads, dumps=json.dumps)


def stdlib_raw_decode_json() -> Any:
    """A stand-in for the json module: stdlib, but skipping json.loads' overhead.

    json.loads(bytes) sniffs the encoding, decodes with 'surrogatepass', then
    matches whitespace twice around raw_decode. A journal line is known to be
    UTF-8 and to start with '{' and end with '}' (its CRC matched), so
    raw_decode(line.decode()) is enough. Invalid UTF-8 still raises a ValueError.
    """
    import types

    raw_decode = json.JSONDecoder().raw_decode

    def loads(data: bytes) -> Any:
        return raw_decode(data.decode("utf-8"))[0]

    return types.SimpleNamespace(loads=loads, dumps=json.dumps)


def make_apply_event_direct() -> Any:
    """cmdd.jobs.apply_event with Job(...) instead of attrs.evolve (same checks).

    Mirrors cmdd.jobs.Job's fields as of this writing; the breakdown checks
    that it rebuilds exactly the jobs the stock replay does.
    """
    from cmdd.jobs import _ENDABLE, Created, Ended, InvalidTransitionError, Job, Started, State

    def apply_event_direct(job: Any, event: Any) -> Any:
        if isinstance(event, Created):
            if job is not None:
                raise InvalidTransitionError(f"job {event.job_id} already exists")
            return Job(
                id=event.job_id,
                spec=event.spec,
                state=State.QUEUED,
                created=event.at,
                owner=event.owner,
            )
        if job is None:
            raise InvalidTransitionError(f"job {event.job_id} does not exist")
        if isinstance(event, Started):
            if job.state is not State.QUEUED:
                raise InvalidTransitionError(f"job {job.id} cannot start from {job.state.value}")
            return Job(
                id=job.id,
                spec=job.spec,
                state=State.RUNNING,
                created=job.created,
                owner=job.owner,
                started=event.at,
                completed=job.completed,
                outcome=job.outcome,
            )
        if isinstance(event, Ended):
            if job.state not in _ENDABLE or not event.outcome.state.final:
                raise InvalidTransitionError(
                    f"job {job.id} cannot go from {job.state.value} to {event.outcome.state.value}"
                )
            return Job(
                id=job.id,
                spec=job.spec,
                state=event.outcome.state,
                created=job.created,
                owner=job.owner,
                started=job.started,
                completed=event.at,
                outcome=event.outcome,
            )
        if not job.state.final:
            raise InvalidTransitionError(f"job {job.id} is {job.state.value}, not finished")
        return None

    return apply_event_direct


def use_orjson_in_codec() -> None:
    """Make cmdd.codec decode with orjson.loads, in this process only."""
    import cmdd.codec

    setattr(cmdd.codec, "json", orjson_json())  # noqa: B010 (a module attribute, on purpose)


def child_cmdd(
    path: str, json_impl: str, gc_mode: str, retention_drop: float = 0.0
) -> dict[str, Any]:
    from twisted.internet.task import Clock

    from cmdd.history import History, MemoryLog
    from cmdd.journal import replay
    from cmdd.store import JobStore

    if json_impl == "orjson":
        use_orjson_in_codec()
    gc.collect()
    before = memory()
    store = JobStore()
    history = History(store, MemoryLog(), Clock())
    if gc_mode == "off":
        gc.disable()
    with GcTimer() as gc_timer:
        began, cpu = time.perf_counter(), cpu_seconds()
        report = replay(path, history.load)
        elapsed, cpu = time.perf_counter() - began, cpu_seconds() - cpu
    gc.enable()
    after = memory()
    jobs = len(store)
    retention: dict[str, Any] = {}
    if retention_drop > 0 and jobs:
        # What History.compact does on the reactor before writing the snapshot
        # when --retain-jobs drops the oldest finished jobs.
        from cmdd.history import Retention
        from cmdd.jobs import Deleted

        now = time.time()
        keep = jobs - max(1, int(jobs * retention_drop))
        began = time.perf_counter()
        expired = Retention(jobs=keep).expired(store, now)
        expired_seconds = time.perf_counter() - began
        began = time.perf_counter()
        for job_id in expired:
            store.record(Deleted(job_id, now))
        delete_seconds = time.perf_counter() - began
        retention = {
            "retention_jobs_before": jobs,
            "retention_deleted": len(expired),
            "retention_expired_seconds": expired_seconds,
            "retention_delete_seconds": delete_seconds,
            "retention_us_per_delete": delete_seconds / len(expired) * 1e6 if expired else None,
        }
    return {
        **retention,
        "seconds": elapsed,
        "cpu_seconds": cpu,
        "records": report.records,
        "jobs": jobs,
        "bytes": report.bytes,
        "records_per_s": report.records / elapsed,
        "jobs_per_s": jobs / elapsed,
        "rss_before": before["VmRSS"],
        "rss_after": after["VmRSS"],
        "peak_rss": after["VmHWM"],
        "ru_maxrss": after["ru_maxrss"],
        "peak_rss_growth_per_job": (after["VmHWM"] - before["VmRSS"]) / jobs if jobs else None,
        "rss_growth_per_job": (after["VmRSS"] - before["VmRSS"]) / jobs if jobs else None,
        "gc_seconds": gc_timer.seconds,
        "gc_collections": gc_timer.collections,
        "by_state": {state.value: count for state, count in store.counts.items() if count},
    }


def child_baseline(path: str, json_impl: str) -> dict[str, Any]:
    if json_impl == "orjson":
        import orjson

        loads: Any = orjson.loads
    else:
        loads = json.loads
    gc.collect()
    before = memory()
    jobs: dict[int, dict[str, Any]] = {}
    records = 0
    with GcTimer() as gc_timer:
        began, cpu = time.perf_counter(), cpu_seconds()
        with open(path, "rb") as journal:
            for line in journal:
                fields = loads(line)
                job_id = fields["job"]
                job = jobs.get(job_id)
                if job is None:
                    jobs[job_id] = fields
                else:
                    job.update(fields)
                records += 1
        elapsed, cpu = time.perf_counter() - began, cpu_seconds() - cpu
    after = memory()
    count = len(jobs)
    return {
        "seconds": elapsed,
        "cpu_seconds": cpu,
        "records": records,
        "jobs": count,
        "records_per_s": records / elapsed,
        "jobs_per_s": count / elapsed,
        "rss_before": before["VmRSS"],
        "rss_after": after["VmRSS"],
        "peak_rss": after["VmHWM"],
        "ru_maxrss": after["ru_maxrss"],
        "peak_rss_growth_per_job": (after["VmHWM"] - before["VmRSS"]) / count if count else None,
        "rss_growth_per_job": (after["VmRSS"] - before["VmRSS"]) / count if count else None,
        "gc_seconds": gc_timer.seconds,
        "gc_collections": gc_timer.collections,
    }


def child_compact(data_dir: str) -> dict[str, Any]:
    import cmdd.offline

    # Time compact's two phases: wrap the names it calls (in this process only).
    phases: dict[str, float] = {}
    real_replay = getattr(cmdd.offline, "replay")  # noqa: B009
    real_write = getattr(cmdd.offline, "write_atomically")  # noqa: B009

    def timed_replay(*args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        try:
            return real_replay(*args, **kwargs)
        finally:
            phases["replay_seconds"] = time.perf_counter() - began
            phases["rss_after_replay"] = memory()["VmRSS"]

    def timed_write(*args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        try:
            return real_write(*args, **kwargs)
        finally:
            phases["snapshot_write_seconds"] = time.perf_counter() - began

    setattr(cmdd.offline, "replay", timed_replay)  # noqa: B010
    setattr(cmdd.offline, "write_atomically", timed_write)  # noqa: B010
    gc.collect()
    before = memory()
    with GcTimer() as gc_timer:
        began, cpu = time.perf_counter(), cpu_seconds()
        jobs, size_before, size_after = cmdd.offline.compact(data_dir)
        elapsed, cpu = time.perf_counter() - began, cpu_seconds() - cpu
    after = memory()
    return {
        **phases,
        "seconds": elapsed,
        "cpu_seconds": cpu,
        "jobs": jobs,
        "bytes_before": size_before,
        "bytes_after": size_after,
        "rss_before": before["VmRSS"],
        "peak_rss": after["VmHWM"],
        "ru_maxrss": after["ru_maxrss"],
        "gc_seconds": gc_timer.seconds,
    }


def _per_line(seconds: float, lines: int) -> float:
    return seconds / lines * 1e6


def child_breakdown(path: str, with_orjson: bool, rounds: int, exp_jobs: int) -> dict[str, Any]:
    """Per-line CPU microseconds of each stage of replay, each measured on its own.

    Every figure is the minimum over C{rounds} runs (noise on a shared machine
    only ever adds time). The [exp] variants replay the first C{exp_jobs}
    jobs of the journal (copied to a temporary file) with parts of cmdd
    swapped inside this process.
    """
    from twisted.internet.task import Clock

    import cmdd.codec
    import cmdd.store
    from cmdd.codec import _CRC_SUFFIX_LEN, _record, decode
    from cmdd.history import History, MemoryLog, load_record
    from cmdd.journal import replay
    from cmdd.spec import parse_spec
    from cmdd.store import JobStore

    # CPU time of this process, not wall time: this work is single-threaded
    # and CPU-bound, and on a shared machine wall time also counts the time
    # other processes held the CPU.
    clock = time.process_time
    stages: dict[str, float] = {}

    with open(path, "rb") as journal:
        lines = journal.readlines()
    count = len(lines)

    def timed(name: str, fn: Any) -> Any:
        # With the cyclic GC off: some stages keep 300k results alive, and the
        # collections they trigger would be charged to them. The GC's share of
        # a real replay is measured on the whole replay below.
        best = float("inf")
        result = None
        for _ in range(rounds):
            result = None
            gc.collect()
            gc.disable()
            try:
                began = clock()
                result = fn()
                best = min(best, clock() - began)
            finally:
                gc.enable()
        stages[name] = _per_line(best, count)
        return result

    def read_only() -> None:
        with open(path, "rb") as journal:
            for _ in journal:
                pass

    def read_and_tell() -> None:
        with open(path, "rb") as journal:
            for _ in journal:
                journal.tell()

    def crc_only() -> None:
        for line in lines:
            zlib.crc32(line[: -1 - _CRC_SUFFIX_LEN])

    def json_only() -> list[dict[str, Any]]:
        loads = json.loads
        return [loads(line[: -1 - _CRC_SUFFIX_LEN] + b"}") for line in lines]

    def raw_decode_only() -> None:
        raw_decode = json.JSONDecoder().raw_decode
        for line in lines:
            raw_decode((line[: -1 - _CRC_SUFFIX_LEN] + b"}").decode("utf-8"))

    def orjson_only() -> None:
        import orjson

        loads = orjson.loads
        for line in lines:
            loads(line[: -1 - _CRC_SUFFIX_LEN] + b"}")

    timed("read lines (for line in file)", read_only)
    timed("read lines + tell() per line", read_and_tell)
    timed("crc32 of the line head (slice + zlib.crc32)", crc_only)
    decoded = timed("json.loads(head + '}')", json_only)
    timed("  instead: raw_decode((head + '}').decode()) [exp]", raw_decode_only)
    if with_orjson:
        timed("  instead: orjson.loads(head + '}') [exp]", orjson_only)
    specs = [fields["spec"] for fields in decoded if fields["type"] == "created"]
    records = timed(
        "codec._record(fields) (incl. parse_spec)", lambda: [_record(f) for f in decoded]
    )

    def parse_specs() -> None:
        for spec in specs:
            parse_spec(spec)

    timed("  of which parse_spec(spec) (created lines)", parse_specs)

    def decode_all() -> None:
        for line in lines:
            decode(line[:-1])

    timed("decode(line) (crc + json + _record)", decode_all)

    def apply_all() -> None:
        store = JobStore()
        for record in records:
            load_record(store, record)

    timed("load_record(store, record) (store + apply_event)", apply_all)
    records.clear()
    decoded.clear()
    specs.clear()

    def whole() -> JobStore:
        store = JobStore()
        replay(path, History(store, MemoryLog(), Clock()).load)
        return store

    gc.collect()
    with GcTimer() as gc_replay:
        began = clock()
        whole()
        whole_seconds = clock() - began
    stages["whole replay(path, History.load)"] = _per_line(whole_seconds, count)

    # Experiments: the same replay with parts swapped inside this process
    # (cmdd's files are not changed), to size the fixes JOURNAL.md suggests.
    exp_dir = tempfile.mkdtemp(prefix="replay-exp-", dir=os.path.dirname(path))
    exp_path = os.path.join(exp_dir, JOURNAL_NAME)
    exp_lines = 0
    with open(path, "rb") as source, open(exp_path, "wb") as out:
        for line in source:
            if exp_lines == 3 * exp_jobs:
                break
            out.write(line)
            exp_lines += 1
    lines.clear()

    stock_json = getattr(cmdd.codec, "json")  # noqa: B009
    stock_apply = getattr(cmdd.store, "apply_event")  # noqa: B009

    def swap(json_module: Any, apply_event: Any) -> None:
        setattr(cmdd.codec, "json", json_module)  # noqa: B010
        setattr(cmdd.store, "apply_event", apply_event)  # noqa: B010

    apply_event_direct = make_apply_event_direct()
    mismatches: list[str] = []
    stock_jobs: list[Any] | None = None

    def exp_replay(name: str, json_module: Any, apply_event: Any) -> float:
        nonlocal stock_jobs
        swap(json_module, apply_event)
        try:
            store = JobStore()
            history = History(store, MemoryLog(), Clock())
            gc.collect()
            began = clock()
            replay(exp_path, history.load)
            elapsed = clock() - began
            jobs = list(store.oldest_first())
            if stock_jobs is None:
                stock_jobs = jobs
            elif jobs != stock_jobs:
                mismatches.append(name)
            return elapsed
        finally:
            swap(stock_json, stock_apply)

    variants = [
        ("stock cmdd", stock_json, stock_apply),
        ("json: raw_decode(line.decode())", stdlib_raw_decode_json(), stock_apply),
        ("apply_event: Job(...) instead of attrs.evolve", stock_json, apply_event_direct),
        ("both of the above", stdlib_raw_decode_json(), apply_event_direct),
    ]
    if with_orjson:
        variants += [
            ("json: orjson.loads", orjson_json(), stock_apply),
            ("orjson.loads + Job(...) instead of evolve", orjson_json(), apply_event_direct),
        ]
    samples: dict[str, list[float]] = {name: [] for name, _, _ in variants}
    try:
        exp_replay(*variants[0])  # the reference jobs (and a warm-up)
        for round_index in range(rounds):
            # Rotate the order each round, so drift in the machine's speed spreads evenly.
            shift = round_index % len(variants)
            for name, json_module, apply_event in variants[shift:] + variants[:shift]:
                samples[name].append(exp_replay(name, json_module, apply_event))
    finally:
        shutil.rmtree(exp_dir, ignore_errors=True)
    experiments = {
        name: {
            "us_per_line": _per_line(min(samples[name]), exp_lines),
            "vs_stock": min(samples[name]) / min(samples["stock cmdd"]),
            "cpu_seconds_samples": samples[name],
        }
        for name, _, _ in variants
    }
    return {
        "lines": count,
        "rounds": rounds,
        "us_per_line": stages,
        "gc_seconds_in_whole_replay": gc_replay.seconds,
        "whole_replay_seconds": whole_seconds,
        "experiment_lines": exp_lines,
        "experiments": experiments,
        "experiments_with_different_jobs": mismatches,
    }


def _category(filename: str, name: str) -> str:
    if "json" in filename and "cmdd" not in filename:
        return "json (stdlib decoder)"
    if "zlib" in name or "crc32" in name:
        return "zlib.crc32"
    if filename.endswith("spec.py") or "JobSpec" in filename:
        return "parse_spec / JobSpec"
    if filename.endswith(("store.py", "history.py")):
        return "store / history"
    if filename.endswith("jobs.py") or "cmdd.jobs" in filename or "attr" in filename:
        return "jobs.apply_event / attrs (evolve, __init__)"
    if "enum" in filename:
        return "enum (State hashing, State(value))"
    if filename.endswith("codec.py") or "cmdd.codec" in filename:
        return "codec (decode, _record)"
    if filename.endswith("journal.py"):
        return "journal.replay loop"
    if "tell" in name or "readline" in name or "_io" in name:
        return "file I/O (iteration, tell)"
    return "other builtins"


def child_profile(path: str, top: int) -> dict[str, Any]:
    from twisted.internet.task import Clock

    from cmdd.history import History, MemoryLog
    from cmdd.journal import replay
    from cmdd.store import JobStore

    store = JobStore()
    history = History(store, MemoryLog(), Clock())
    profiler = cProfile.Profile()
    profiler.enable()
    replay(path, history.load)
    profiler.disable()
    stats = pstats.Stats(profiler, stream=io.StringIO())
    total = stats.total_tt  # type: ignore[attr-defined]
    rows = []
    categories: dict[str, float] = {}
    for (filename, line, name), (_, calls, own, cumulative, _) in stats.stats.items():  # type: ignore[attr-defined]
        short = f"{Path(filename).name}:{line}({name})" if filename != "~" else name
        rows.append(
            {
                "function": short,
                "calls": calls,
                "own_seconds": own,
                "own_share": own / total,
                "cumulative_seconds": cumulative,
                "cumulative_share": cumulative / total,
            }
        )
        category = _category(filename, name)
        categories[category] = categories.get(category, 0.0) + own
    rows.sort(key=lambda row: row["own_seconds"], reverse=True)
    by_cumulative = sorted(rows, key=lambda row: row["cumulative_seconds"], reverse=True)
    return {
        "total_seconds_under_profiler": total,
        "top_own": rows[:top],
        "top_cumulative": by_cumulative[: top + 5],
        "own_time_by_category": {
            key: {"seconds": value, "share": value / total}
            for key, value in sorted(categories.items(), key=lambda kv: -kv[1])
        },
    }


def run_child(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", required=True)
    parser.add_argument("--path", required=True)
    parser.add_argument("--json-impl", default="json")
    parser.add_argument("--gc", default="on")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--exp-jobs", type=int, default=50_000)
    parser.add_argument("--retention-drop", type=float, default=0.0)
    args = parser.parse_args(argv)
    if args.child == "cmdd":
        result = child_cmdd(args.path, args.json_impl, args.gc, args.retention_drop)
    elif args.child == "baseline":
        result = child_baseline(args.path, args.json_impl)
    elif args.child == "compact":
        result = child_compact(args.path)
    elif args.child == "breakdown":
        result = child_breakdown(args.path, args.json_impl == "orjson", args.rounds, args.exp_jobs)
    elif args.child == "profile":
        result = child_profile(args.path, args.top)
    else:
        raise SystemExit(f"unknown child {args.child}")
    sys.stdout.write("RESULT " + json.dumps(result) + "\n")


# --- the parent ---------------------------------------------------------------


def spawn(kind: str, path: str, *extra: str) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter; returns its result."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--path", path]
    command.extend(extra)
    completed = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)
    if completed.returncode != 0:
        raise SystemExit(
            f"child {kind} failed ({completed.returncode}):\n{completed.stdout}\n{completed.stderr}"
        )
    for line in completed.stdout.splitlines():
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line[len("RESULT ") :])
            return result
    raise SystemExit(f"child {kind} printed no result:\n{completed.stdout}\n{completed.stderr}")


def ensure_journal(jobs: int) -> str:
    """bench/results/journal-JOBS/journal.jsonl, made by make_journal.py if missing."""
    data_dir = RESULTS / f"journal-{jobs}"
    path = data_dir / JOURNAL_NAME
    info = data_dir / "make_journal.json"
    if path.exists() and info.exists():
        described = json.loads(info.read_text())
        if described.get("jobs") == jobs and described.get("bytes") == path.stat().st_size:
            return str(path)
    print(f"generating {path} ({jobs:,} jobs) with bench/make_journal.py ...", flush=True)
    subprocess.run(
        [
            sys.executable,
            str(HERE / "make_journal.py"),
            "--jobs",
            str(jobs),
            "--data-dir",
            str(data_dir),
        ],
        check=True,
        cwd=ROOT,
    )
    return str(path)


def cmdd_tree() -> dict[str, Any]:
    """Which cmdd was measured: the commit, and whether cmdd/ had local changes."""

    def git(*argv: str) -> str:
        completed = subprocess.run(
            ["git", *argv], capture_output=True, text=True, cwd=ROOT, check=False
        )
        return completed.stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "cmdd_changes": git("status", "--short", "cmdd")}


def have_orjson() -> bool:
    try:
        import orjson  # noqa: F401
    except ImportError:
        return False
    return True


def median_row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of the numeric fields of several runs, plus the samples of seconds."""
    row: dict[str, Any] = {"runs": len(runs), "seconds_samples": [r["seconds"] for r in runs]}
    for key, value in runs[0].items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            row[key] = statistics.median(r[key] for r in runs)
        else:
            row[key] = value
    return row


def mib(value: float) -> str:
    return f"{value / 2**20:,.0f}"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        run_child(sys.argv[1:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=None, help="jobs in the journal (1e6)")
    parser.add_argument("--journal", default=None, help="an existing journal.jsonl or data dir")
    parser.add_argument("--repeat", type=int, default=None, help="runs of each baseline (1)")
    parser.add_argument(
        "--slow-repeat", type=int, default=1, help="runs of cmdd replay/compaction (1)"
    )
    parser.add_argument(
        "--profile-jobs", type=int, default=None, help="jobs in the profiled journal (100000)"
    )
    parser.add_argument(
        "--sections",
        default=None,
        help="comma-separated subset of baseline,replay,compact,profile "
        "(default: baseline,replay,compact; --quick: all four)",
    )
    parser.add_argument("--no-orjson", action="store_true", help="skip the orjson measurements")
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="rounds of each breakdown stage and [exp] replay; the minimum is kept (3; --quick: 1)",
    )
    parser.add_argument(
        "--retention-drop",
        type=float,
        default=0.01,
        help="after the cmdd replay, drop this fraction of the jobs (the oldest) the way "
        "History.compact applies --retain-jobs, and time it (0.01; 0: skip)",
    )
    parser.add_argument(
        "--exp-jobs",
        type=int,
        default=50_000,
        help="jobs the [exp] replay variants of the profile section replay (50000)",
    )
    parser.add_argument(
        "--orjson-replay",
        action="store_true",
        help="also replay the big journal with orjson in cmdd.codec (the breakdown always "
        "does it on the profile journal)",
    )
    parser.add_argument(
        "--gc-off",
        action="store_true",
        help="also replay with the cyclic GC disabled (an experiment: sizes a suggested fix)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="10,000 jobs, 1 run each, all sections"
    )
    parser.add_argument("--out", default=None, help="JSON result path")
    args = parser.parse_args()
    if args.jobs is None:
        args.jobs = 10_000 if args.quick else 1_000_000
    if args.repeat is None:
        args.repeat = 1
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    if args.profile_jobs is None:
        args.profile_jobs = 10_000 if args.quick else 100_000
    if args.sections is None:
        args.sections = (
            "baseline,replay,compact,profile" if args.quick else "baseline,replay,compact"
        )
    sections = set(args.sections.split(","))
    unknown = sections - {"baseline", "replay", "compact", "profile"}
    if unknown:
        parser.error(f"unknown section(s): {', '.join(sorted(unknown))}")
    orjson = have_orjson() and not args.no_orjson
    started = time.time()

    if args.journal:
        path = args.journal
        if os.path.isdir(path):
            path = os.path.join(path, JOURNAL_NAME)
        if not os.path.isfile(path):
            parser.error(f"no journal at {path}")
    elif sections == {"profile"}:
        path = ensure_journal(args.profile_jobs)
    else:
        path = ensure_journal(args.jobs)
    size = os.path.getsize(path)
    print(f"journal {path}: {size:,} bytes", flush=True)

    results: dict[str, Any] = {}

    def measure(name: str, runs: int, kind: str, *extra: str, target: str = path) -> None:
        samples = []
        for index in range(runs):
            sample = spawn(kind, target, *extra)
            samples.append(sample)
            print(
                f"  {name:22s} run {index + 1}/{runs}: {sample['seconds']:8.2f} s"
                f"  peak RSS {mib(sample['peak_rss'])} MiB",
                flush=True,
            )
        results[name] = median_row(samples)

    # Cheap ones first and interleaved; the slow ones after.
    for index in range(args.repeat if "baseline" in sections else 0):
        for name, impl in (("baseline json", "json"), ("baseline orjson", "orjson")):
            if impl == "orjson" and not orjson:
                continue
            sample = spawn("baseline", path, "--json-impl", impl)
            results.setdefault(f"_{name}", []).append(sample)
            print(
                f"  {name:22s} run {index + 1}/{args.repeat}: {sample['seconds']:8.2f} s"
                f"  peak RSS {mib(sample['peak_rss'])} MiB",
                flush=True,
            )
    for name in ("baseline json", "baseline orjson"):
        if f"_{name}" in results:
            results[name] = median_row(results.pop(f"_{name}"))
    if "replay" in sections:
        measure(
            "cmdd replay", args.slow_repeat, "cmdd", "--retention-drop", str(args.retention_drop)
        )
        if orjson and args.orjson_replay:
            measure("cmdd replay (orjson)", args.slow_repeat, "cmdd", "--json-impl", "orjson")
        if args.gc_off:
            measure("cmdd replay (gc off)", args.slow_repeat, "cmdd", "--gc", "off")
    if "compact" in sections:
        samples = []
        for index in range(args.slow_repeat):
            work = tempfile.mkdtemp(prefix="compact-", dir=os.path.dirname(path))
            try:
                shutil.copyfile(path, os.path.join(work, JOURNAL_NAME))
                sample = spawn("compact", work)
                with open(os.path.join(work, JOURNAL_NAME), "rb") as compacted:
                    sample["lines_after"] = sum(1 for _ in compacted)
            finally:
                shutil.rmtree(work, ignore_errors=True)
            samples.append(sample)
            print(
                f"  {'compact':22s} run {index + 1}/{args.slow_repeat}: "
                f"{sample['seconds']:8.2f} s  peak RSS {mib(sample['peak_rss'])} MiB",
                flush=True,
            )
        results["compact"] = median_row(samples)

    profile: dict[str, Any] = {}
    if "profile" in sections:
        profile_path = (
            path
            if args.journal or sections == {"profile"} or args.profile_jobs == args.jobs
            else ensure_journal(args.profile_jobs)
        )
        print(f"breakdown and profile on {profile_path}", flush=True)
        profile["journal"] = profile_path
        profile["breakdown"] = spawn(
            "breakdown",
            profile_path,
            "--json-impl",
            "orjson" if orjson else "json",
            "--rounds",
            str(args.rounds),
            "--exp-jobs",
            str(min(args.exp_jobs, args.profile_jobs)),
        )
        profile["cprofile"] = spawn("profile", profile_path)

    cmdd = results.get("cmdd replay")
    base = results.get("baseline json")
    ratios: dict[str, float] = {}
    if cmdd and base:
        ratios["cmdd/baseline time"] = cmdd["seconds"] / base["seconds"]
        ratios["cmdd/baseline CPU time"] = cmdd["cpu_seconds"] / base["cpu_seconds"]
        ratios["cmdd/baseline peak RSS growth"] = (cmdd["peak_rss"] - cmdd["rss_before"]) / (
            base["peak_rss"] - base["rss_before"]
        )
    if base and "baseline orjson" in results:
        ratios["baseline json/orjson time"] = (
            base["seconds"] / results["baseline orjson"]["seconds"]
        )
        ratios["baseline json/orjson CPU time"] = (
            base["cpu_seconds"] / results["baseline orjson"]["cpu_seconds"]
        )
    if cmdd and "cmdd replay (orjson)" in results:
        ratios["cmdd json/orjson time"] = (
            cmdd["seconds"] / results["cmdd replay (orjson)"]["seconds"]
        )
    if cmdd and "cmdd replay (gc off)" in results:
        ratios["cmdd gc on/off time"] = cmdd["seconds"] / results["cmdd replay (gc off)"]["seconds"]
    if cmdd and "compact" in results:
        ratios["compact/cmdd replay time"] = results["compact"]["seconds"] / cmdd["seconds"]
        ratios["compact/cmdd replay CPU time"] = (
            results["compact"]["cpu_seconds"] / cmdd["cpu_seconds"]
        )

    if results:
        print()
        first = next(iter(results.values()))
        records = f"{first['records']:,} records, " if "records" in first else ""
        print(f"Journal: {records}{first['jobs']:,} jobs, {size:,} bytes")
        header = (
            f"{'measurement':24s} {'seconds':>8s} {'CPU s':>7s} {'records/s':>10s} {'jobs/s':>9s} "
            f"{'peak RSS MiB':>12s} {'growth B/job':>12s} {'GC s':>6s}"
        )
        print(header)
        print("-" * len(header))
    for name, row in results.items():
        if name == "compact":
            continue
        print(
            f"{name:24s} {row['seconds']:8.2f} {row['cpu_seconds']:7.2f} "
            f"{row['records_per_s']:10,.0f} "
            f"{row['jobs_per_s']:9,.0f} {mib(row['peak_rss']):>12s} "
            f"{row['peak_rss_growth_per_job']:12,.0f} {row['gc_seconds']:6.2f}"
        )
    if "compact" in results:
        row = results["compact"]
        print(
            f"{'compact (offline)':24s} {row['seconds']:8.2f} {row['cpu_seconds']:7.2f} {'':10s} "
            f"{row['jobs'] / row['seconds']:9,.0f} {mib(row['peak_rss']):>12s} "
            f"{'':12s} {row['gc_seconds']:6.2f}"
        )
        print(
            f"  compaction: {row['bytes_before']:,} -> {row['bytes_after']:,} bytes, "
            f"{row['lines_after']:,} lines after; replay {row.get('replay_seconds', 0):.1f} s "
            f"+ snapshot encode/write/fsync {row.get('snapshot_write_seconds', 0):.1f} s"
        )
    if cmdd and cmdd.get("retention_deleted"):
        print(
            f"\nretention after replay (History.compact with --retain-jobs, on the reactor): "
            f"dropping the oldest {cmdd['retention_deleted']:,} of "
            f"{cmdd['retention_jobs_before']:,} jobs: Retention.expired "
            f"{cmdd['retention_expired_seconds']:.2f} s, store.record(Deleted) "
            f"{cmdd['retention_delete_seconds']:.2f} s = "
            f"{cmdd['retention_us_per_delete']:.0f} us per deleted job"
        )
    print()
    for name, value in ratios.items():
        print(f"{name:34s} {value:7.2f}")
    if profile:
        breakdown = profile["breakdown"]
        print(
            f"\nBreakdown, {breakdown['lines']:,} lines (CPU microseconds per line, "
            f"minimum of {breakdown['rounds']} rounds, stages with the cyclic GC off):"
        )
        for stage, value in breakdown["us_per_line"].items():
            print(f"  {stage:54s} {value:7.2f}")
        print(
            f"  GC during whole replay: {breakdown['gc_seconds_in_whole_replay']:.2f} s of "
            f"{breakdown['whole_replay_seconds']:.2f} s"
        )
        print(
            f"\nReplay with parts swapped in the child process only [exp], "
            f"{breakdown['experiment_lines']:,} lines (CPU us/line, min of {breakdown['rounds']}):"
        )
        for name, row in breakdown["experiments"].items():
            print(f"  {name:54s} {row['us_per_line']:7.2f}  {row['vs_stock']:6.2f}x stock")
        if breakdown["experiments_with_different_jobs"]:
            print(f"  WARNING: jobs differ in {breakdown['experiments_with_different_jobs']}")
        else:
            print("  every variant rebuilt exactly the same jobs as stock cmdd")
        cprof = profile["cprofile"]
        print(
            f"\ncProfile of the replay (total {cprof['total_seconds_under_profiler']:.2f} s "
            "under the profiler), top functions by own time:"
        )
        for row in cprof["top_own"]:
            print(
                f"  {row['own_share']:6.1%} {row['own_seconds']:7.2f} s "
                f"{row['calls']:>9,} calls  {row['function']}"
            )
        print("Own time by category:")
        for category, value in cprof["own_time_by_category"].items():
            print(f"  {value['share']:6.1%}  {category}")

    output = {
        "benchmark": "replay_bench",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": round(time.time() - started, 1),
        "journal": path,
        "journal_bytes": size,
        "quick": args.quick,
        "repeat": args.repeat,
        "slow_repeat": args.slow_repeat,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "cmdd_tree": cmdd_tree(),
        "orjson": orjson,
        "results": results,
        "ratios": ratios,
        "profile": profile,
    }
    out = args.out or str(RESULTS / f"replay_bench-{datetime.now().strftime('%Y%m%d-%H%M%S')}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(output, f, indent=2)
        f.write("\n")
    print(f"\nwrote {out} ({output['seconds']} s)")


if __name__ == "__main__":
    main()
