#!/usr/bin/env python3
"""Latency of list queries (GET /api/jobs filters, sorts, cursors) against 10k, 100k and 1M jobs.

Run from the repository root:

    .venv/bin/python bench/lists_bench.py [--quick] [--sizes 10000,100000,1000000]
                                          [--http-jobs 100000] [--seed 1]

In-process part (no HTTP, no reactor): one cmdd.store.JobStore is grown to
each size in turn by recording cmdd.jobs events (Created with a
cmdd.spec.parse_spec spec, Started, Ended), exactly as the daemon records
them. The history is deterministic for a seed and varied: 100 owners
(user00..user99, uniform), labels team (20 values) and env on 70 % of jobs,
shell commands and argv lists (a quarter with Cyrillic text), states
succeeded ~96 %, failed ~1 % (exit codes 1/2/127, or SIGKILL by timeout),
cancelled ~1 %, not_executed ~1 %, lost ~1 %; the newest 8 jobs are running
and the 20 before them queued, as in a live daemon. One job in 50,000 has the
rare text "отчёт-квартал" in its command.

At each size every query in QUERIES is timed as cmdd/api.py's _list runs
it: cmdd.query.parse_query(args, JOB_FIELDS) + cmdd.query.run_query (called
as run_query(query, store) since commit a151ae6, as run_query(query,
store.newest_first, store.oldest_first) before; the script detects which).
Rendering the 50 rows to JSON is not included; the HTTP part includes it.
The queries: no filter, state=failed, owner=, label=, q= (rare text),
sort=duration, page 10 by cursor (newest first and sort=duration),
owner&state=failed, state=succeeded&state=failed, created_before (the oldest
10 %). Queries are interleaved round-robin with the baseline, a plain
``for job in store.oldest_first(): pass`` over the whole store, so "/scan"
is a paired ratio from the same moments. "examined" counts the jobs the query
pulled from the store's iterators (one untimed extra run, also the warm-up):
the number that tells whether a query scans. Rounds: 30 at 10k, 15 at 100k,
7 at 1M (--quick: 10 and 5); a query with 3 samples that has used 6 s
(--quick: 1.5 s) stops early. Python's GC stays on during the queries, as in
the daemon (it is off while building).

CMDD_BENCH_TREE=DIR measures the cmdd package in DIR/cmdd instead of this
checkout (in-process and the daemon, via PYTHONPATH), e.g. an older commit:
``git archive COMMIT cmdd | tar -x -C DIR``.

HTTP part (once, --http-jobs, default 100,000; --quick: 10,000): the same
history, every job final, is encoded with cmdd.codec.encode into
DATA_DIR/journal.jsonl; twistd cmdd replays it and serves on
tcp:PORT:interface=127.0.0.1; with the admin token (DATA_DIR/admin.token) and
one keep-alive connection the script times GET /api/jobs?state=failed&limit=50
and, interleaved, its baselines /healthz and /api/jobs?limit=50 (no filter)
plus the owner, q and sort=duration lists (50 rounds; --quick: 20; a list
that has 10 samples and used 3 s stops early).
Then head-of-line blocking: /healthz latency measured from a second
connection while the first one keeps asking the slowest list query.

Results go to bench/results/lists_bench-TIMESTAMP.json. The daemon and its
data directory are removed at the end (try/finally).
"""

from __future__ import annotations

import gc
import http.client
import inspect
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import benchlib

#: CMDD_BENCH_TREE=DIR measures the cmdd package in DIR/cmdd instead (e.g. an
#: older commit unpacked with `git archive COMMIT cmdd | tar -x -C DIR`).
TREE = os.environ.get("CMDD_BENCH_TREE")
if TREE:
    sys.path.insert(0, os.path.abspath(TREE))
elif str(benchlib.ROOT) not in sys.path:
    sys.path.insert(0, str(benchlib.ROOT))

import cmdd  # noqa: E402

try:
    from cmdd.representations import JOB_FIELDS
except ImportError:  # trees before e594d0c kept it in cmdd.api
    from cmdd.api import JOB_FIELDS  # type: ignore[attr-defined]
from cmdd.codec import encode  # noqa: E402
from cmdd.jobs import Created, Ended, Event, Job, Outcome, Started, State  # noqa: E402
from cmdd.query import parse_query, run_query  # noqa: E402
from cmdd.spec import parse_spec  # noqa: E402
from cmdd.store import JobStore  # noqa: E402

BASE_TIME = 1_790_000_000.0
USERS = [f"user{n:02d}" for n in range(100)]
TEAMS = (
    "search", "billing", "infra", "data", "web", "mobile", "ml", "security", "payments",
    "reports", "ops", "qa", "docs", "sre", "growth", "ads", "maps", "mail", "chat", "video",
)  # fmt: skip
ENVS = ("prod", "staging", "dev")
RARE_TEXT = "отчёт-квартал"
RARE_EVERY = 50_000
#: The newest jobs at each measured size: RUNNING_TAIL running, QUEUED_TAIL queued before them.
RUNNING_TAIL = 8
QUEUED_TAIL = 20

OWNER = "user42"
LABEL = "team:payments"

#: name -> query parameters (as cmdd.api._args gives them to parse_query).
#: "created_before" gets a time per size (see queries_for).
QUERIES: dict[str, dict[str, list[str]]] = {
    "newest, no filter": {},
    "state=failed": {"state": ["failed"]},
    f"owner={OWNER}": {"owner": [OWNER]},
    f"label={LABEL}": {"label": [LABEL]},
    f"q={RARE_TEXT}": {"q": [RARE_TEXT]},
    "sort=duration": {"sort": ["duration"]},
    "page 10, newest": {},  # a cursor is added per size
    "page 10, sort=duration": {"sort": ["duration"]},
    f"owner={OWNER}&state=failed": {"owner": [OWNER], "state": ["failed"]},
    "state=succeeded&state=failed": {"state": ["succeeded", "failed"]},
    "created_before=(oldest 10%)": {},
}
PAGED = {"page 10, newest", "page 10, sort=duration"}
PAGE_DEPTH = 10


# --------------------------------------------------------------------------
# The history
# --------------------------------------------------------------------------


def _command(i: int, rng: random.Random) -> dict[str, Any]:
    c = rng.randrange(10_000)
    kind = rng.randrange(4)
    if i % RARE_EVERY == RARE_EVERY // 2:
        return {"command": f"/opt/reports/build --name '{RARE_TEXT} {c:04d}' --out /srv/r/{i}"}
    if kind == 0:
        return {"command": f"/usr/local/bin/nightly-report --customer c{c:04d} --out /var/r{i}.csv"}
    if kind == 1:
        return {"command_line": ["rsync", "-a", f"/srv/build/{i:07d}/", f"backup{c % 50}:/arch/"]}
    if kind == 2:
        return {"command": f"echo 'сборка {i} завершена' && make -C /srv/проект-{c % 50} test"}
    return {"command_line": ["python3", "/opt/jobs/thumb.py", "--key", f"uploads/{i:07d}.jpg"]}


def make_job(i: int, rng: random.Random) -> list[Event]:
    """The events of job C{i}: Created, then Started and Ended as its fate says."""
    body = _command(i, rng)
    if rng.random() < 0.7:
        body["labels"] = {"team": rng.choice(TEAMS), "env": rng.choice(ENVS)}
    if rng.random() < 0.1:
        body["timeout"] = 600
    spec = parse_spec(body)
    created = BASE_TIME + i * 0.05 + rng.random() * 0.01
    started = created + 0.001 + rng.random() * 0.003
    ended = started + rng.expovariate(1 / 5.0)
    owner = USERS[rng.randrange(len(USERS))]
    roll = rng.random()
    events: list[Event] = [Created(i, created, spec, owner)]
    if roll < 0.96:
        outcome = Outcome(State.SUCCEEDED, exit_code=0, stdout_bytes=rng.randrange(20_000))
    elif roll < 0.97:
        if rng.random() < 0.8:
            code = rng.choice((1, 2, 127))
            outcome = Outcome(State.FAILED, exit_code=code, stderr_bytes=rng.randrange(1, 3000))
        else:
            outcome = Outcome(State.FAILED, signal=9, reason="timed out after 600 seconds")
    elif roll < 0.98:
        outcome = Outcome(State.CANCELLED, signal=15, reason="cancelled by admin",
                          cancelled_by="admin")  # fmt: skip
        if rng.random() < 0.5:  # cancelled while still queued: never started
            return [*events, Ended(i, started, outcome)]
    elif roll < 0.99:
        outcome = Outcome(State.NOT_EXECUTED, reason="thumb.py: executable not found")
        ended = started + 0.002
    else:
        outcome = Outcome(State.LOST, reason="the daemon stopped while it ran")
    return [*events, Started(i, started), Ended(i, ended, outcome)]


class History:
    """Grows one JobStore through the sizes; optionally writes a journal of the first jobs."""

    def __init__(self, seed: int) -> None:
        self.store = JobStore()
        self.rng = random.Random(seed)
        self.built = 0
        self.deferred: list[Event] = []
        self.build_seconds = 0.0

    def grow_to(self, size: int, journal: Any = None, journal_jobs: int = 0) -> float:
        """Record jobs up to C{size}; the newest ones stay running/queued. Returns seconds."""
        gc.disable()
        started = time.perf_counter()
        try:
            for event in self.deferred:  # the previous size's tail ends now
                self.store.record(event)
            self.deferred = []
            seq = 3 * self.built  # journal sequence numbers: any increasing numbers do
            for i in range(self.built + 1, size + 1):
                events = make_job(i, self.rng)
                if journal is not None and i <= journal_jobs:
                    for event in events:
                        seq += 1
                        journal.write(encode(seq, event))
                from_end = size - i
                if from_end < RUNNING_TAIL + QUEUED_TAIL:
                    keep = 1
                    if from_end < RUNNING_TAIL and isinstance(events[1], Started):
                        keep = 2
                    self.deferred.extend(events[keep:])
                    events = events[:keep]
                for event in events:
                    self.store.record(event)
            self.built = size
        finally:
            gc.enable()
        gc.collect()
        elapsed = time.perf_counter() - started
        self.build_seconds += elapsed
        return elapsed


# --------------------------------------------------------------------------
# In-process timing
# --------------------------------------------------------------------------


_RUN_QUERY_PARAMS = len(inspect.signature(run_query).parameters)
#: run_query's calling convention in the tree being measured (it changed on 2026-11-22).
RUN_QUERY_API = (
    "run_query(query, store.newest_first, store.oldest_first)"
    if _RUN_QUERY_PARAMS >= 3
    else "run_query(query, store)"
)


def call_run_query(query: Any, store: Any) -> tuple[list[Job], str | None]:
    """Call run_query as cmdd/api.py's _list does, in either calling convention."""
    if _RUN_QUERY_PARAMS >= 3:
        three_args: Any = run_query  # the convention before 2026-11-22 12:09
        page: tuple[list[Job], str | None] = three_args(
            query, store.newest_first, store.oldest_first
        )
        return page
    return run_query(query, store)


class CountingStore:
    """The store, counting every job its iterators hand out."""

    def __init__(self, store: JobStore) -> None:
        self._store = store
        self.count = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def newest_first(self, *args: Any, **kwargs: Any) -> Iterator[Job]:
        for job in self._store.newest_first(*args, **kwargs):
            self.count += 1
            yield job

    def oldest_first(self, *args: Any, **kwargs: Any) -> Iterator[Job]:
        for job in self._store.oldest_first(*args, **kwargs):
            self.count += 1
            yield job


def queries_for(n: int) -> dict[str, dict[str, list[str]]]:
    """QUERIES with the per-size values filled in (not the cursors)."""
    queries = dict(QUERIES)
    moment = BASE_TIME + (n // 10) * 0.05
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(moment)) + "Z"
    queries["created_before=(oldest 10%)"] = {"created_before": [stamp]}
    return queries


def scan(store: JobStore) -> float:
    t0 = time.perf_counter()
    for _job in store.oldest_first():
        pass
    return time.perf_counter() - t0


def one_query(store: JobStore, args: dict[str, list[str]]) -> tuple[float, list[Job], str | None]:
    t0 = time.perf_counter()
    query = parse_query(args, JOB_FIELDS)
    jobs, cursor = call_run_query(query, store)
    return time.perf_counter() - t0, jobs, cursor


def examined(store: JobStore, args: dict[str, list[str]]) -> tuple[int, int]:
    """Jobs the query pulls from the store's iterators, and rows it returns (untimed)."""
    counting = CountingStore(store)
    jobs, _ = call_run_query(parse_query(args, JOB_FIELDS), counting)
    return counting.count, len(jobs)


def cursor_at_depth(store: JobStore, args: dict[str, list[str]], depth: int) -> str | None:
    """The cursor that asks for page C{depth} of 50: the next cursor of one
    page of 50 * (depth - 1) rows (the same cursor paging would reach)."""
    _, _, cursor = one_query(store, {**args, "limit": [str(50 * (depth - 1))]})
    return cursor


def measure_size(store: JobStore, reps: int, min_reps: int, budget: float) -> dict[str, Any]:
    """Median time of every query, interleaved with the baseline scan.

    A query stops repeating once it has C{min_reps} samples and C{budget}
    seconds of them (the full-scan sorts at 1M take seconds each)."""
    queries: dict[str, dict[str, list[str]]] = {}
    for name, args in queries_for(len(store)).items():
        if name in PAGED:
            cursor = cursor_at_depth(store, args, PAGE_DEPTH)
            args = {**args, "cursor": [cursor]} if cursor else args
        queries[name] = args
    # The counting run doubles as the warm-up.
    counts = {name: examined(store, args) for name, args in queries.items()}
    samples: dict[str, list[float]] = {name: [] for name in queries}
    samples["baseline scan"] = []
    scan(store)
    for _ in range(reps):
        samples["baseline scan"].append(scan(store))
        for name, args in queries.items():
            done = samples[name]
            if len(done) >= min_reps and sum(done) > budget:
                continue
            seconds, _, _ = one_query(store, args)
            done.append(seconds)
    base = statistics.median(samples["baseline scan"])
    rows: dict[str, Any] = {}
    for name, values in samples.items():
        median = statistics.median(values)
        row: dict[str, Any] = {
            "median_ms": median * 1e3,
            "min_ms": min(values) * 1e3,
            "max_ms": max(values) * 1e3,
            "samples_ms": [round(v * 1e3, 4) for v in values],
            "vs_scan": median / base,
        }
        if name in counts:
            row["examined"], row["rows"] = counts[name]
        rows[name] = row
    return rows


# --------------------------------------------------------------------------
# The daemon
# --------------------------------------------------------------------------


def wait_idle(pid: int, timeout: float = 60.0) -> float:
    """Wait until the daemon uses < 2 % CPU over 0.5 s (replay, compaction done)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = benchlib.proc_cpu_seconds(pid)
        time.sleep(0.5)
        if benchlib.proc_cpu_seconds(pid) - before < 0.01:
            break
    return benchlib.proc_cpu_seconds(pid)


class Client:
    """One keep-alive HTTP/1.1 connection with the bearer token."""

    def __init__(self, port: int, token: str) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        self.headers = {"Authorization": f"Bearer {token}"}

    def get(self, path: str) -> tuple[int, bytes, float]:
        t0 = time.perf_counter()
        self.conn.request("GET", path, headers=self.headers)
        response = self.conn.getresponse()
        body = response.read()
        return response.status, body, time.perf_counter() - t0

    def close(self) -> None:
        self.conn.close()


def http_part(journal_dir: Path, jobs: int, reps: int, log_path: Path) -> dict[str, Any]:
    port = benchlib.free_port()
    argv = benchlib.cmdd_argv(journal_dir, port)
    result: dict[str, Any] = {"jobs": jobs, "argv": argv[1:]}
    log = open(log_path, "wb")
    proc: subprocess.Popen[bytes] | None = None
    clients: list[Client] = []
    try:
        t0 = time.monotonic()
        env = None
        if TREE:  # the daemon imports cmdd from the same tree
            env = {**os.environ, "PYTHONPATH": os.path.abspath(TREE)}
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, cwd=journal_dir, env=env
        )
        benchlib.wait_until_listening(port, proc, 300)
        result["start_to_listen_s"] = time.monotonic() - t0
        wait_idle(proc.pid)
        result["idle_after_start_s"] = time.monotonic() - t0
        result["rss_idle_mib"] = benchlib.proc_status(proc.pid, "VmRSS") / 2**20
        token = benchlib.read_token(journal_dir)
        client = Client(port, token)
        clients.append(client)
        failed = "/api/jobs?state=failed&limit=50"
        paths = {
            "/healthz": "/healthz",
            "/api/jobs?limit=50 (no filter)": "/api/jobs?limit=50",
            "/api/jobs?state=failed&limit=50": failed,
            f"/api/jobs?owner={OWNER}&limit=50": f"/api/jobs?owner={OWNER}&limit=50",
            f"/api/jobs?q={RARE_TEXT}&limit=50": "/api/jobs?"
            + urlencode({"q": RARE_TEXT})
            + "&limit=50",
            "/api/jobs?sort=duration&limit=50": "/api/jobs?sort=duration&limit=50",
        }
        checks: dict[str, Any] = {}
        for name, path in paths.items():  # warm-up and a sanity check
            status, body, _ = client.get(path)
            if status != 200:
                raise RuntimeError(f"GET {path} answered {status}: {body[:300]!r}")
            if path.startswith("/api/jobs"):
                rows = json.loads(body)["jobs"]
                checks[name] = {"rows": len(rows), "bytes": len(body)}
        if checks["/api/jobs?state=failed&limit=50"]["rows"] != 50:
            raise RuntimeError(f"state=failed gave {checks}")
        samples: dict[str, list[float]] = {name: [] for name in paths}
        cpu0 = benchlib.proc_cpu_seconds(proc.pid)
        # The full-scan lists stop after 10 samples once they have used 3 s.
        for _ in range(reps):
            for name, path in paths.items():
                if len(samples[name]) >= 10 and sum(samples[name]) > 3.0:
                    continue
                status, _, seconds = client.get(path)
                if status != 200:
                    raise RuntimeError(f"GET {path} answered {status}")
                samples[name].append(seconds)
        result["daemon_cpu_s"] = benchlib.proc_cpu_seconds(proc.pid) - cpu0
        base = statistics.median(samples["/api/jobs?limit=50 (no filter)"])
        health = statistics.median(samples["/healthz"])
        result["requests"] = {
            name: {
                "n": len(values),
                "median_ms": statistics.median(values) * 1e3,
                "p90_ms": benchlib.percentile(values, 0.9) * 1e3,
                "max_ms": max(values) * 1e3,
                "vs_unfiltered": statistics.median(values) / base,
                "vs_healthz": statistics.median(values) / health,
                **checks.get(name, {}),
                "samples_ms": [round(v * 1e3, 3) for v in values],
            }
            for name, values in samples.items()
        }
        # Head-of-line blocking: /healthz from a second connection while the
        # first keeps asking the slowest list.
        slowest = max(
            (n for n in paths if n != "/healthz"),
            key=lambda n: statistics.median(samples[n]),
        )
        other = Client(port, token)
        clients.append(other)
        hol_reps = min(reps, 20)
        idle_health = [other.get("/healthz")[2] for _ in range(hol_reps)]
        stop = threading.Event()
        busy: list[float] = []

        def hammer() -> None:
            while not stop.is_set():
                busy.append(client.get(paths[slowest])[2])

        thread = threading.Thread(target=hammer, daemon=True)
        thread.start()
        time.sleep(0.05)
        loaded_health = []
        for _ in range(hol_reps):
            loaded_health.append(other.get("/healthz")[2])
            time.sleep(0.01)
        stop.set()
        thread.join(120)
        result["head_of_line"] = {
            "busy_query": slowest,
            "busy_query_median_ms": statistics.median(busy) * 1e3 if busy else None,
            "healthz_idle_median_ms": statistics.median(idle_health) * 1e3,
            "healthz_idle_max_ms": max(idle_health) * 1e3,
            "healthz_busy_median_ms": statistics.median(loaded_health) * 1e3,
            "healthz_busy_p90_ms": benchlib.percentile(loaded_health, 0.9) * 1e3,
            "healthz_busy_max_ms": max(loaded_health) * 1e3,
        }
        result["rss_after_mib"] = benchlib.proc_status(proc.pid, "VmRSS") / 2**20
        result["peak_rss_mib"] = benchlib.proc_status(proc.pid, "VmHWM") / 2**20
    except Exception as e:
        tail = log_path.read_bytes()[-2000:].decode(errors="replace") if log_path.exists() else ""
        result["error"] = f"{type(e).__name__}: {e}"
        result["log_tail"] = tail
        print(f"HTTP part failed: {e}\n{tail}", file=sys.stderr)
    finally:
        for c in clients:
            c.close()
        if proc is not None:
            result["exit_status"] = benchlib.stop_process(proc)
        log.close()
    return result


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------


def render_sizes(sizes: dict[int, Any]) -> list[str]:
    labels = {n: (f"{n // 1_000_000}M" if n >= 1_000_000 else f"{n // 1000}k") for n in sizes}
    head = f"{'query':34s}" + "".join(
        f" {labels[n] + ' ms':>10s} {'/scan':>7s} {'examined':>10s} {'rows':>5s}" for n in sizes
    )
    lines = [head]
    names = ["baseline scan", *QUERIES]
    for name in names:
        line = f"{name:34s}"
        for n in sizes:
            row = sizes[n]["queries"][name]
            line += f" {row['median_ms']:10.3f} {row['vs_scan']:6.2f}x"
            if "examined" in row:
                line += f" {row['examined']:10,d} {row['rows']:5d}"
            else:
                line += f" {n:10,d} {'':5s}"
        lines.append(line)
    return lines


def main() -> None:
    parser = benchlib.arg_parser(__doc__, quick_help="10k and 100k only; HTTP at 10k")
    parser.add_argument("--sizes", default=None, help="comma-separated job counts")
    parser.add_argument("--http-jobs", type=int, default=None, help="0 skips the HTTP part")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default=None, help="JSON result path")
    args = parser.parse_args()
    sizes = [int(s) for s in (args.sizes or ("10000,100000" if args.quick else
                                             "10000,100000,1000000")).split(",")]  # fmt: skip
    sizes.sort()
    http_jobs = (
        args.http_jobs if args.http_jobs is not None else (10_000 if args.quick else 100_000)
    )
    http_reps = 20 if args.quick else 50
    if http_jobs and http_jobs not in sizes and http_jobs > sizes[-1]:
        parser.error("--http-jobs must be at most the largest size")

    def reps_for(n: int) -> int:
        if args.quick:
            return 10 if n <= 10_000 else 5
        return 30 if n <= 10_000 else (15 if n <= 100_000 else 7)

    min_reps = 3
    budget = 1.5 if args.quick else 6.0

    benchlib.RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_path = (
        Path(args.out)
        if args.out
        else benchlib.RESULTS / f"lists_bench-{stamp}{'-quick' if args.quick else ''}.json"
    )
    started = time.time()
    meta = {
        "benchmark": "lists_bench",
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "quick": args.quick,
        "seed": args.seed,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
        "run_query_api": RUN_QUERY_API,
        "cmdd_package": os.path.dirname(cmdd.__file__ or ""),
        **benchlib.git_meta(),
    }
    print(
        f"lists_bench {meta['when']}  sizes {sizes}  HTTP at {http_jobs}  "
        + (
            f"cmdd from {meta['cmdd_package']}"
            if TREE
            else f"cmdd at {meta['git_commit']}"
            + (" + uncommitted changes" if meta["git_dirty_files"] else "")
        )
        + f"  {RUN_QUERY_API}"
        f"  loadavg {' '.join(f'{x:.2f}' for x in meta['loadavg_start'])}",
        flush=True,
    )
    workdir = Path(tempfile.mkdtemp(prefix="lists-bench-", dir=benchlib.RESULTS))
    results: dict[str, Any] = {**meta, "sizes": {}}
    try:
        history = History(args.seed)
        journal = None
        data_dir = workdir / "data"
        if http_jobs:
            data_dir.mkdir(mode=0o700)
            journal = open(data_dir / "journal.jsonl", "wb", buffering=1 << 20)
        for n in sizes:
            seconds = history.grow_to(n, journal, http_jobs)
            if journal is not None and n >= http_jobs:
                journal.close()
                journal = None
            counts = {s.value: c for s, c in history.store.counts.items() if c}
            rss = benchlib.proc_status(os.getpid(), "VmRSS") / 2**20
            print(
                f"  {n:,} jobs built in {seconds:.1f} s (RSS {rss:,.0f} MiB) {counts}", flush=True
            )
            t0 = time.perf_counter()
            rows = measure_size(history.store, reps_for(n), min_reps, budget)
            print(f"    measured in {time.perf_counter() - t0:.1f} s", flush=True)
            results["sizes"][n] = {
                "build_seconds": seconds,
                "rss_mib": rss,
                "states": counts,
                "reps": reps_for(n),
                "min_reps": min_reps,
                "budget_seconds_per_query": budget,
                "queries": rows,
            }
        del history
        gc.collect()
        if http_jobs:
            print(f"  HTTP: starting twistd cmdd on a {http_jobs:,}-job journal ...", flush=True)
            results["http"] = http_part(data_dir, http_jobs, http_reps, workdir / "twistd.log")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results["seconds"] = time.time() - started
    results["loadavg_end"] = os.getloadavg()
    out_path.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")

    print()
    print("In-process: parse_query + run_query, median ms; /scan = query / one oldest_first() scan")
    for line in render_sizes(results["sizes"]):
        print(line)
    http = results.get("http")
    if http and "requests" in http:
        print()
        print(
            f"HTTP, {http['jobs']:,} jobs: daemon listening "
            f"{http['start_to_listen_s']:.1f} s after start, "
            f"RSS {http['rss_idle_mib']:.0f} MiB idle; one keep-alive connection"
        )
        print(
            f"{'request':44s} {'n':>3s} {'p50 ms':>8s} {'p90 ms':>8s} {'max ms':>8s} "
            f"{'/unfilt':>8s} {'/healthz':>9s} {'rows':>5s}"
        )
        for name, row in http["requests"].items():
            print(
                f"{name:44s} {row['n']:3d} {row['median_ms']:8.2f} {row['p90_ms']:8.2f} "
                f"{row['max_ms']:8.2f} "
                f"{row['vs_unfiltered']:7.2f}x {row['vs_healthz']:8.1f}x {row.get('rows', ''):>5}"
            )
        hol = http["head_of_line"]
        print(
            f"head of line: /healthz p50 {hol['healthz_idle_median_ms']:.2f} ms idle, "
            f"{hol['healthz_busy_median_ms']:.2f} ms (p90 {hol['healthz_busy_p90_ms']:.2f}, "
            f"max {hol['healthz_busy_max_ms']:.2f}) while another connection repeats "
            f"{hol['busy_query']} ({hol['busy_query_median_ms']:.1f} ms each)"
        )
    elif http:
        print(f"\nHTTP part failed: {http.get('error')}")
    print(f"\n{results['seconds']:.0f} s; results in {out_path}")


if __name__ == "__main__":
    main()
