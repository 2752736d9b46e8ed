"""What the Slurm executor adds to Slurm: latency per job, cost of tracking.

Needs root and Slurm (scripts/slurm-cluster starts and stops the one-node
cluster). Two measures, each against a baseline taken in the same run:

  A. latency: `/bin/true` from submission to its end, one at a time,
     interleaved: raw `sbatch --parsable` then `squeue` every 20 ms until
     COMPLETED, against cmdd's POST then `GET /api/statuses/ID?wait=30`.
  B. tracking: N jobs held PENDING in Slurm (`sbatch --hold`) and tracked by
     cmdd: the daemon's CPU per poll, and the API's p50/p99 for
     `GET /api/statuses/1` while polling, against the same daemon with no
     live job.

    .venv/bin/python bench/slurm_bench.py [--jobs 20] [--pending 1000] [--poll-interval 0.2]
"""

from __future__ import annotations

import http.client
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import (
    arg_parser,
    cmdd_argv,
    free_port,
    git_meta,
    percentile,
    proc_cpu_seconds,
    read_token,
    stop_process,
    wait_until_listening,
)

ROOT = Path(__file__).resolve().parent.parent
CLUSTER = ROOT / "scripts" / "slurm-cluster"


class Api:
    """A tiny HTTP client for one daemon (one connection per call)."""

    def __init__(self, port: int, token: str) -> None:
        self.port = port
        self.token = token

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            data = None if body is None else json.dumps(body).encode()
            headers = {"Authorization": f"Bearer {self.token}"}
            if data is not None:
                headers["Content-Type"] = "application/json"
            connection.request(method, path, body=data, headers=headers)
            response = connection.getresponse()
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
        finally:
            connection.close()


def start_daemon(tmp: Path, name: str, executor: dict[str, Any], *extra: str) -> tuple[Any, Api]:
    data = tmp / name / "data"
    data.parent.mkdir()
    config = tmp / name / "cmdd.toml"
    shared = Path("/tmp") / f"cmdd-slurm-bench-{name}-{time.time_ns()}"
    table = {"type": "slurm", "shared_dir": str(shared), **executor}
    lines = "".join(f"{key} = {json.dumps(value)}\n" for key, value in table.items())
    config.write_text("[executor]\n" + lines)
    port = free_port()
    log = open(tmp / name / "daemon.log", "wb")
    proc = subprocess.Popen(
        [*cmdd_argv(data, port), "--config", str(config), *extra],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    wait_until_listening(port, proc, 60)
    deadline = time.monotonic() + 30
    while not (data / "admin.token").exists():
        if time.monotonic() > deadline:
            raise RuntimeError("no admin token")
        time.sleep(0.05)
    return proc, Api(port, read_token(data))


def raw_once() -> float:
    started = time.monotonic()
    job = subprocess.run(
        ["sbatch", "--parsable", "--output=/dev/null", "--wrap", "/bin/true"],
        capture_output=True, text=True, check=True, cwd="/tmp",
    ).stdout.strip()  # fmt: skip
    while True:
        state = subprocess.run(
            ["squeue", "-h", "-t", "all", "-j", job, "-o", "%T"],
            capture_output=True, text=True, check=False,
        ).stdout.strip()  # fmt: skip
        if state in ("COMPLETED", "FAILED", "CANCELLED"):
            assert state == "COMPLETED", state
            return time.monotonic() - started
        time.sleep(0.02)


def cmdd_once(api: Api) -> float:
    started = time.monotonic()
    status, job = api.call("POST", "/api/jobs", {"command_line": ["/bin/true"]})
    assert status == 202, job
    while True:
        status, state = api.call("GET", f"/api/statuses/{job['id']}?wait=30")
        if state["done"]:
            assert state["state"] == "succeeded", state
            return time.monotonic() - started


def latency(api: Api, jobs: int) -> dict[str, Any]:
    raw, cmdd = [], []
    for _ in range(jobs):
        raw.append(raw_once())
        cmdd.append(cmdd_once(api))
    raw_mean, cmdd_mean = statistics.mean(raw), statistics.mean(cmdd)
    return {
        "jobs": jobs,
        "raw_mean_s": round(raw_mean, 3),
        "raw_p50_s": round(statistics.median(raw), 3),
        "cmdd_mean_s": round(cmdd_mean, 3),
        "cmdd_p50_s": round(statistics.median(cmdd), 3),
        "added_mean_s": round(cmdd_mean - raw_mean, 3),
        "ratio_mean": round(cmdd_mean / raw_mean, 3),
    }


def api_latencies(api: Api, seconds: float) -> list[float]:
    times = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.monotonic()
        status, _ = api.call("GET", "/api/statuses/1")
        assert status == 200
        times.append(time.monotonic() - started)
    return times


def cpu_over(pid: int, seconds: float) -> float:
    """The daemon's CPU seconds over C{seconds} of wall time, no client load."""
    start = proc_cpu_seconds(pid)
    time.sleep(seconds)
    return proc_cpu_seconds(pid) - start


def tracking(tmp: Path, pending: int, poll: float, seconds: float) -> dict[str, Any]:
    proc, api = start_daemon(
        tmp, "tracking", {"poll_interval": poll, "sbatch_options": ["--hold"]},
        "--max-running", str(pending + 10), "--max-queued", str(pending + 10),
    )  # fmt: skip
    try:
        assert api.call("POST", "/api/jobs", {"command": "true"})[0] == 202
        time.sleep(1)
        idle_cpu = cpu_over(proc.pid, seconds)
        idle = api_latencies(api, seconds)
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda _: api.call("POST", "/api/jobs", {"command": "true"}),
                          range(pending)))  # fmt: skip
        journal = tmp / "tracking" / "data" / "journal.jsonl"
        deadline = time.monotonic() + 600
        while journal.read_bytes().count(b'"type":"submitted"') < pending:
            assert time.monotonic() < deadline, "sbatch did not take them all"
            time.sleep(0.5)
        time.sleep(2 * poll)
        busy_cpu = cpu_over(proc.pid, seconds)
        busy = api_latencies(api, seconds)
        polls = seconds / poll
        return {
            "pending": pending,
            "poll_interval_s": poll,
            "cpu_per_poll_ms": round(1000 * (busy_cpu - idle_cpu) / polls, 2),
            "cpu_share_idle": round(idle_cpu / seconds, 4),
            "cpu_share_polling": round(busy_cpu / seconds, 4),
            "api_p50_idle_ms": round(1000 * percentile(idle, 0.5), 2),
            "api_p99_idle_ms": round(1000 * percentile(idle, 0.99), 2),
            "api_p50_polling_ms": round(1000 * percentile(busy, 0.5), 2),
            "api_p99_polling_ms": round(1000 * percentile(busy, 0.99), 2),
        }
    finally:
        subprocess.run(["scancel", "--user=nobody"], check=False)
        stop_process(proc)


def main() -> None:
    parser = arg_parser(__doc__ or "", "5 jobs, 200 pending: a smoke run")
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--pending", type=int, default=1000)
    parser.add_argument("--poll-interval", type=float, default=0.2)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    if args.quick:
        args.jobs, args.pending, args.seconds = 5, 200, 5.0
    subprocess.run([str(CLUSTER), "start"], check=True)
    report: dict[str, Any] = {**git_meta()}
    try:
        with tempfile.TemporaryDirectory() as tmp_name:
            tmp = Path(tmp_name)
            proc, api = start_daemon(tmp, "latency", {"poll_interval": args.poll_interval})
            try:
                report["latency"] = latency(api, args.jobs)
            finally:
                stop_process(proc)
            report["tracking"] = tracking(tmp, args.pending, args.poll_interval, args.seconds)
    finally:
        subprocess.run([str(CLUSTER), "stop"], check=False)
        for shared in Path("/tmp").glob("cmdd-slurm-bench-*"):
            shutil.rmtree(shared, ignore_errors=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
