#!/usr/bin/env python3
"""Submit-to-result latency: one long-poll (?wait=30) versus polling every 100 ms.

Run from the repository root:

    .venv/bin/python bench/wait_bench.py [--quick] [--jobs N] [--interval 0.1]

Starts ``twistd -n cmdd`` on a fresh data directory (under bench/results/,
removed at the end), serving tcp:PORT:interface=127.0.0.1, and uses the admin
token it writes to DATA_DIR/admin.token. One client, one keep-alive
HTTP/1.1 connection (http.client), jobs strictly one after the other. Each job
is ``POST /api/jobs {"command_line": ["true"]}`` (202, Location
/api/statuses/ID), then:

  (a) wait   GET /api/statuses/ID?wait=30: one request that answers 303 (see
             Other, Location /api/results/ID) as soon as the job is final
             (repeated only if it answers 200 after 30 s, which did not happen).
  (b) poll   GET /api/statuses/ID at once, then every --interval (100 ms)
             after each 200 answer, until one answers 303.

Latency is from just before the POST to the 303 response being read. Requests
per job count the POST. The modes alternate in blocks of 25 jobs (after 10
untimed warm-up jobs of each), so both see the same machine load; the daemon's
own CPU time (utime+stime from /proc/PID/stat) is read around every block and
gives CPU ms per job for each mode. From the jobs' own timestamps (GET
/api/jobs, after the run) the report also gives how long the daemon took from
created to completed: the part of the latency no client can save.

N = 200 jobs per mode (--quick: 30). Results go to
bench/results/wait_bench-TIMESTAMP.json.
"""

from __future__ import annotations

import http.client
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import benchlib

BLOCK = 25
WARMUP = 10
BODY = json.dumps({"command_line": ["true"]}).encode()


# --------------------------------------------------------------------------
# The client
# --------------------------------------------------------------------------


class Client:
    """One keep-alive HTTP/1.1 connection with the bearer token; counts requests."""

    def __init__(self, port: int, token: str) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.auth = f"Bearer {token}"
        self.requests = 0

    def call(
        self, method: str, path: str, body: bytes | None = None
    ) -> tuple[int, Any, str | None]:
        headers = {"Authorization": self.auth}
        if body is not None:
            headers["Content-Type"] = "application/json"
        self.requests += 1
        self.conn.request(method, path, body=body, headers=headers)
        response = self.conn.getresponse()
        data = response.read()
        return response.status, json.loads(data) if data else None, response.getheader("Location")

    def close(self) -> None:
        self.conn.close()


def submit(client: Client) -> int:
    status, job, location = client.call("POST", "/api/jobs", BODY)
    if status != 202 or location != f"/api/statuses/{job['id']}":
        raise RuntimeError(f"POST answered {status} {job} (Location {location})")
    return int(job["id"])


def run_wait(client: Client, interval: float) -> tuple[int, float, int]:
    """(a) POST, then one long-poll. Returns (job id, seconds, requests)."""
    before = client.requests
    t0 = time.perf_counter()
    job_id = submit(client)
    while True:
        status, _, location = client.call("GET", f"/api/statuses/{job_id}?wait=30")
        if status == 303:
            break
        if status != 200:
            raise RuntimeError(f"status answered {status}")
    elapsed = time.perf_counter() - t0
    if location != f"/api/results/{job_id}":
        raise RuntimeError(f"303 to {location}")
    return job_id, elapsed, client.requests - before


def run_poll(client: Client, interval: float) -> tuple[int, float, int]:
    """(b) POST, then GET the status at once and every C{interval} until 303."""
    before = client.requests
    t0 = time.perf_counter()
    job_id = submit(client)
    while True:
        status, _, location = client.call("GET", f"/api/statuses/{job_id}")
        if status == 303:
            break
        if status != 200:
            raise RuntimeError(f"status answered {status}")
        time.sleep(interval)
    elapsed = time.perf_counter() - t0
    if location != f"/api/results/{job_id}":
        raise RuntimeError(f"303 to {location}")
    return job_id, elapsed, client.requests - before


MODES = {"wait": run_wait, "poll": run_poll}


def stamp(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def server_times(client: Client, ids: set[int]) -> dict[int, float]:
    """Seconds from created to completed of each job, from GET /api/jobs."""
    found: dict[int, float] = {}
    path: str | None = "/api/jobs?limit=1000&fields=id,created,completed,state"
    while path:
        status, body, _ = client.call("GET", path)
        if status != 200:
            raise RuntimeError(f"GET {path} answered {status}")
        for job in body["jobs"]:
            if job["id"] in ids and job["completed"]:
                found[job["id"]] = stamp(job["completed"]) - stamp(job["created"])
        path = body["next"]
    return found


def main() -> None:
    parser = benchlib.arg_parser(__doc__, quick_help="30 jobs per mode")
    parser.add_argument("--jobs", type=int, default=None, help="jobs per mode (200)")
    parser.add_argument("--interval", type=float, default=0.1, help="polling interval, s")
    parser.add_argument("--out", default=None, help="JSON result path")
    args = parser.parse_args()
    jobs = args.jobs or (30 if args.quick else 200)
    benchlib.RESULTS.mkdir(exist_ok=True)
    when = time.strftime("%Y%m%d-%H%M%S")
    suffix = "-quick" if args.quick else ""
    out_path = Path(args.out) if args.out else benchlib.RESULTS / f"wait_bench-{when}{suffix}.json"
    meta: dict[str, Any] = {
        "benchmark": "wait_bench",
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "quick": args.quick,
        "jobs_per_mode": jobs,
        "interval_s": args.interval,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
        **benchlib.git_meta(),
    }
    print(
        f"wait_bench {meta['when']}  {jobs} jobs per mode, poll interval "
        f"{args.interval * 1e3:.0f} ms  cmdd at {meta['git_commit']}"
        f"{' + uncommitted changes' if meta['git_dirty_files'] else ''}  loadavg "
        f"{' '.join(f'{x:.2f}' for x in meta['loadavg_start'])}",
        flush=True,
    )
    workdir = Path(tempfile.mkdtemp(prefix="wait-bench-", dir=benchlib.RESULTS))
    data_dir = workdir / "data"
    port = benchlib.free_port()
    argv = benchlib.cmdd_argv(data_dir, port)
    meta["argv"] = argv[1:]
    log_path = workdir / "twistd.log"
    log = open(log_path, "wb")
    proc: subprocess.Popen[bytes] | None = None
    client: Client | None = None
    started = time.time()
    samples: dict[str, list[tuple[int, float, int]]] = {mode: [] for mode in MODES}
    cpu: dict[str, float] = dict.fromkeys(MODES, 0.0)
    try:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
        benchlib.wait_until_listening(port, proc, 60)
        token = benchlib.read_token(data_dir)
        client = Client(port, token)
        for warm_up in MODES.values():
            for _ in range(WARMUP):
                warm_up(client, args.interval)
        meta["rss_idle_mib"] = benchlib.proc_status(proc.pid, "VmRSS") / 2**20
        done = 0
        while done < jobs:
            block = min(BLOCK, jobs - done)
            for mode, run in MODES.items():
                cpu0 = benchlib.proc_cpu_seconds(proc.pid)
                for _ in range(block):
                    samples[mode].append(run(client, args.interval))
                cpu[mode] += benchlib.proc_cpu_seconds(proc.pid) - cpu0
            done += block
            print(f"  {done}/{jobs} jobs per mode", flush=True)
        ids = {job_id for rows in samples.values() for job_id, _, _ in rows}
        server = server_times(client, ids)
        meta["peak_rss_mib"] = benchlib.proc_status(proc.pid, "VmHWM") / 2**20
    finally:
        if client is not None:
            client.close()
        if proc is not None:
            meta["exit_status"] = benchlib.stop_process(proc)
        log.close()
        if proc is None or proc.returncode not in (0, -signal.SIGTERM):
            print(log_path.read_text(errors="replace")[-3000:], file=sys.stderr)
        shutil.rmtree(workdir, ignore_errors=True)

    results: dict[str, Any] = {**meta, "modes": {}}
    for mode, rows in samples.items():
        latencies = [seconds for _, seconds, _ in rows]
        requests = [count for _, _, count in rows]
        daemon = [server[job_id] for job_id, _, _ in rows if job_id in server]
        results["modes"][mode] = {
            "n": len(rows),
            "median_ms": statistics.median(latencies) * 1e3,
            "p99_ms": benchlib.percentile(latencies, 0.99) * 1e3,
            "min_ms": min(latencies) * 1e3,
            "max_ms": max(latencies) * 1e3,
            "requests_per_job_mean": statistics.mean(requests),
            "requests_per_job_median": statistics.median(requests),
            "requests_per_job_max": max(requests),
            "requests_histogram": {str(k): requests.count(k) for k in sorted(set(requests))},
            "daemon_cpu_ms_per_job": cpu[mode] / len(rows) * 1e3,
            "server_created_to_completed_median_ms": statistics.median(daemon) * 1e3,
            "server_created_to_completed_p99_ms": benchlib.percentile(daemon, 0.99) * 1e3,
            "samples": [
                {"id": job_id, "ms": round(seconds * 1e3, 3), "requests": count}
                for job_id, seconds, count in rows
            ],
        }
    a, b = results["modes"]["wait"], results["modes"]["poll"]
    results["ratios_wait_over_poll"] = {
        "median_latency": a["median_ms"] / b["median_ms"],
        "p99_latency": a["p99_ms"] / b["p99_ms"],
        "requests_per_job": a["requests_per_job_mean"] / b["requests_per_job_mean"],
        "daemon_cpu_per_job": a["daemon_cpu_ms_per_job"] / b["daemon_cpu_ms_per_job"],
    }
    results["seconds"] = time.time() - started
    results["loadavg_end"] = os.getloadavg()
    out_path.write_text(json.dumps(results, indent=1) + "\n")

    print()
    print(
        f"{'mode':34s} {'n':>4s} {'p50 ms':>8s} {'p99 ms':>8s} {'max ms':>8s} "
        f"{'req/job':>8s} {'req max':>7s} {'CPU ms/job':>10s} {'server p50 ms':>13s}"
    )
    names = {
        "wait": "(a) POST + GET ?wait=30",
        "poll": f"(b) POST + poll every {args.interval * 1e3:.0f} ms",
    }
    for mode, row in results["modes"].items():
        print(
            f"{names[mode]:34s} {row['n']:4d} {row['median_ms']:8.2f} {row['p99_ms']:8.2f} "
            f"{row['max_ms']:8.2f} {row['requests_per_job_mean']:8.2f} "
            f"{row['requests_per_job_max']:7d} {row['daemon_cpu_ms_per_job']:10.2f} "
            f"{row['server_created_to_completed_median_ms']:13.2f}"
        )
    r = results["ratios_wait_over_poll"]
    print(
        f"(a)/(b): median latency {r['median_latency']:.3f}x, p99 {r['p99_latency']:.3f}x, "
        f"requests per job {r['requests_per_job']:.2f}x, daemon CPU per job "
        f"{r['daemon_cpu_per_job']:.2f}x"
    )
    print(f"poll requests per job: {b['requests_histogram']}")
    print(f"\n{results['seconds']:.0f} s; results in {out_path}")


if __name__ == "__main__":
    main()
