#!/usr/bin/env python3
"""Restart with a big history: time to ready, RSS per job, head-of-line blocking.

Run from the repository root:

    .venv/bin/python bench/ready_bench.py [--jobs 200000,1000000] [--repeat 2] [--quick]

For every size N (a journal of N finished jobs made by bench/make_journal.py,
cached in bench/results/journal-N/):

- ``baseline``: a bare Python loop that only ``json.loads`` every line of the
  journal (a child process, the file in the page cache);
- ``cmdd ready``: a copy of the journal in a fresh data directory, ``twistd -n
  cmdd`` started on it, timed until ``/readyz`` answers 200 *and*
  ``/api/jobs?limit=1`` lists job N (the newest). The daemon's VmRSS then,
  minus that of the same daemon on an empty data directory, over N, is the
  RSS per finished job;
- ``head of line`` (the largest N only): the p50/p99 of ``/api/jobs?limit=1``
  on one connection, alone and while a second connection keeps asking a
  scanning query (``q=``, ``sort=duration``, ``created_after``).

Baseline and cmdd runs alternate (interleaved repeats: the machine is noisy);
the medians and their same-run ratio are printed and written as JSON to
bench/results/ready_bench-*.json.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import benchlib
from replay_bench import ensure_journal

RESULTS = benchlib.RESULTS
#: Another checkout whose cmdd the daemon imports (--tree: a "before" run).
TREE = ""
BASELINE = """
import json, sys, time
t0 = time.perf_counter()
n = 0
with open(sys.argv[1], "rb") as f:
    for line in f:
        json.loads(line)
        n += 1
print(json.dumps({"seconds": time.perf_counter() - t0, "lines": n}))
"""

#: Scanning queries: each walks every job (no index narrows them).
SCANS = {
    "q": {"q": "customer c9999x", "limit": "50"},
    "sort=duration": {"sort": "duration", "limit": "50"},
    "created_after": {"created_after": "2026-09-01T00:00:00Z", "sort": "duration", "limit": "50"},
}


class Client:
    """One keep-alive HTTP/1.1 connection with the bearer token."""

    def __init__(self, port: int, token: str | None) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    def get(self, path: str) -> tuple[int, bytes, float]:
        t0 = time.perf_counter()
        self.conn.request("GET", path, headers=self.headers)
        response = self.conn.getresponse()
        body = response.read()
        return response.status, body, time.perf_counter() - t0

    def close(self) -> None:
        self.conn.close()


def baseline(journal: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", BASELINE, journal], capture_output=True, text=True, check=True
    )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


class Daemon:
    """twistd cmdd on a data directory (a copy of a journal, or empty)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = benchlib.free_port()
        self.log = open(data_dir.with_suffix(".log"), "wb")
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(
            benchlib.cmdd_argv(data_dir, self.port),
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=data_dir,
            env={**os.environ, "PYTHONPATH": TREE} if TREE else None,
        )

    def wait_ready(self, newest: int, timeout: float = 900) -> float:
        """Seconds from start until /readyz is 200 and the newest job is listed."""
        deadline = self.t0 + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"twistd exited with {self.proc.returncode}")
            try:
                client = Client(self.port, None)
                status, _, _ = client.get("/readyz")
                client.close()
            except OSError:
                status = 0
            if status == 200:
                break
            time.sleep(0.02)
        else:
            raise RuntimeError("not ready in time")
        client = Client(self.port, benchlib.read_token(self.data_dir))
        status, body, _ = client.get("/api/jobs?limit=1")
        client.close()
        jobs = json.loads(body)["jobs"] if status == 200 else []
        if newest and (not jobs or jobs[0]["id"] != newest):
            raise RuntimeError(f"/api/jobs?limit=1 gave {status} {body[:200]!r}")
        return time.monotonic() - self.t0

    def rss(self) -> int:
        return benchlib.proc_status(self.proc.pid, "VmRSS")

    def stop(self) -> None:
        benchlib.stop_process(self.proc)
        self.log.close()


def fresh_dir(name: str, journal: str | None) -> Path:
    path = RESULTS / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    if journal is not None:
        shutil.copyfile(journal, path / "journal.jsonl")
        snapshot = Path(journal).with_name("journal.snapshot")
        if snapshot.exists():
            shutil.copyfile(snapshot, path / "journal.snapshot")
    return path


def compacted_journal(journal: str) -> str:
    """A copy of C{journal} compacted by ``cmdd journal compact`` (with the
    snapshot it writes, if this cmdd writes one), made once and cached."""
    source = Path(journal)
    target_dir = source.parent.with_name(source.parent.name + "-compacted")
    target = target_dir / "journal.jsonl"
    stamp = target_dir / "compacted-from.json"
    expected = {"bytes": source.stat().st_size, "tree": TREE or str(benchlib.ROOT)}
    if target.exists() and stamp.exists() and json.loads(stamp.read_text()) == expected:
        return str(target)
    shutil.rmtree(target_dir, ignore_errors=True)
    target_dir.mkdir(parents=True)
    shutil.copyfile(source, target)
    print(f"compacting a copy of {source} ...", flush=True)
    subprocess.run(
        [str(Path(sys.executable).with_name("cmdd")), "journal", "compact",
         "--data-dir", str(target_dir)],
        check=True,
        env={**os.environ, "PYTHONPATH": TREE} if TREE else None,
    )  # fmt: skip
    stamp.write_text(json.dumps(expected))
    return str(target)


def cmdd_ready(journal: str | None, jobs: int, head_of_line: bool) -> dict[str, Any]:
    data_dir = fresh_dir(f"ready-{jobs}", journal)
    daemon = Daemon(data_dir)
    try:
        seconds = daemon.wait_ready(jobs)
        time.sleep(0.5)
        result: dict[str, Any] = {"seconds": seconds, "rss": daemon.rss()}
        if head_of_line:
            result["head_of_line"] = measure_head_of_line(daemon)
        return result
    finally:
        daemon.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def _latencies(client: Client, count: int, budget: float = 20.0) -> list[float]:
    samples: list[float] = []
    deadline = time.monotonic() + budget
    while len(samples) < count and time.monotonic() < deadline:
        status, _, seconds = client.get("/api/jobs?limit=1")
        assert status == 200
        samples.append(seconds)
        time.sleep(0.005)
    return samples


def _ms(samples: list[float]) -> dict[str, float]:
    return {
        "n": len(samples),
        "p50_ms": statistics.median(samples) * 1e3,
        "p99_ms": benchlib.percentile(samples, 0.99) * 1e3,
        "max_ms": max(samples) * 1e3,
    }


def _hammer(client: Client, path: str, stop: threading.Event, scans: list[float]) -> None:
    while not stop.is_set():
        status, _, seconds = client.get(path)
        assert status == 200, status
        scans.append(seconds)


def measure_head_of_line(daemon: Daemon, count: int = 200) -> dict[str, Any]:
    token = benchlib.read_token(daemon.data_dir)
    probe = Client(daemon.port, token)
    out: dict[str, Any] = {"idle": _ms(_latencies(probe, count))}
    for name, params in SCANS.items():
        busy = Client(daemon.port, token)
        stop = threading.Event()
        scans: list[float] = []

        path = "/api/jobs?" + urlencode(params)
        thread = threading.Thread(target=_hammer, args=(busy, path, stop, scans), daemon=True)
        thread.start()
        time.sleep(0.1)
        row = _ms(_latencies(probe, count))
        stop.set()
        thread.join(300)
        busy.close()
        row["scan_median_ms"] = statistics.median(scans) * 1e3 if scans else None
        row["added_p99_ms"] = row["p99_ms"] - out["idle"]["p99_ms"]
        out[name] = row
    probe.close()
    return out


def main() -> None:
    parser = benchlib.arg_parser(__doc__, "20,000 jobs, 1 repeat")
    parser.add_argument("--jobs", default="200000,1000000", help="comma-separated sizes")
    parser.add_argument("--repeat", type=int, default=2, help="interleaved repeats (2)")
    parser.add_argument("--out", default=None)
    parser.add_argument("--tree", default="", help="run the cmdd of this checkout (a baseline)")
    parser.add_argument(
        "--compacted",
        action="store_true",
        help="start on the journal as `cmdd journal compact` leaves it (with its snapshot)",
    )
    args = parser.parse_args()
    global TREE
    TREE = os.path.abspath(args.tree) if args.tree else ""
    sizes = [20_000] if args.quick else [int(n) for n in args.jobs.split(",")]
    repeat = 1 if args.quick else args.repeat
    began = time.time()
    journals = {n: ensure_journal(n) for n in sizes}
    if args.compacted:
        journals = {n: compacted_journal(path) for n, path in journals.items()}
    empty = [cmdd_ready(None, 0, False)["rss"] for _ in range(2)]
    empty_rss = min(empty)
    print(f"empty daemon RSS {empty_rss / 2**20:.1f} MiB", flush=True)
    results: dict[str, Any] = {}
    for n in sizes:
        base: list[float] = []
        ready: list[dict[str, Any]] = []
        for index in range(repeat):
            base.append(baseline(journals[n])["seconds"])
            last = n == sizes[-1] and index == repeat - 1
            ready.append(cmdd_ready(journals[n], n, head_of_line=last))
            print(
                f"{n:>9,} jobs run {index + 1}: json.loads {base[-1]:6.2f} s, "
                f"cmdd ready {ready[-1]['seconds']:6.2f} s, "
                f"RSS {ready[-1]['rss'] / 2**20:,.0f} MiB",
                flush=True,
            )
        row: dict[str, Any] = {
            "baseline_s": statistics.median(base),
            "ready_s": statistics.median(r["seconds"] for r in ready),
            "rss_per_job_b": (statistics.median(r["rss"] for r in ready) - empty_rss) / n,
            "baseline_samples": base,
            "ready_samples": [r["seconds"] for r in ready],
        }
        row["ratio"] = row["ready_s"] / row["baseline_s"]
        if "head_of_line" in ready[-1]:
            row["head_of_line"] = ready[-1]["head_of_line"]
        results[str(n)] = row
    print(f"\n{'jobs':>10} {'cmdd ready s':>12} {'json.loads s':>12} {'ratio':>6} {'B/job':>6}")
    for n, row in results.items():
        print(
            f"{int(n):>10,} {row['ready_s']:12.2f} {row['baseline_s']:12.2f} "
            f"{row['ratio']:6.2f} {row['rss_per_job_b']:6.0f}"
        )
        for name, hol in row.get("head_of_line", {}).items():
            print(
                f"  /api/jobs?limit=1 {name:14s} p50 {hol['p50_ms']:8.2f} ms  "
                f"p99 {hol['p99_ms']:8.2f} ms  max {hol['max_ms']:8.2f} ms"
                + (f"  (scan {hol['scan_median_ms']:.0f} ms)" if hol.get("scan_median_ms") else "")
            )
    output = {
        "benchmark": "ready_bench",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": round(time.time() - began, 1),
        "git": benchlib.git_meta(),
        "tree": TREE or str(benchlib.ROOT),
        "compacted": args.compacted,
        "empty_rss": empty_rss,
        "results": results,
    }
    out = args.out or str(RESULTS / f"ready_bench-{datetime.now().strftime('%Y%m%d-%H%M%S')}.json")
    Path(out).write_text(json.dumps(output, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    os.chdir(benchlib.ROOT)
    main()
