"""Webhook callbacks: delivery latency, and 1,000 jobs whose receiver is down.

Starts ``twistd -n cmdd`` (tcp on loopback) and a receiver in this process
(a threaded HTTP server on loopback that records when each callback
arrives and answers 204).

Part 1, latency: N jobs (``true``) run one after another, each with an
``ended`` webhook and, as the baseline measured in the same run, a client
long-polling ``GET /api/statuses/{id}?wait=30`` (the fastest way a client
learns of an end without webhooks). Both are timed from the job's ``end``
(its journaled completion time) to arrival.

Part 2, outage: the receiver stops listening (connections are refused),
J jobs with ``begun`` and ``ended`` webhooks are submitted, the receiver
stays down for D seconds, then listens again. Reported: whether every
callback arrived, in order per job (begun before ended, no gaps),
duplicates, the time from the comeback to the last callback, and the
daemon's RSS and peak RSS (VmHWM) before the jobs, while down and after.

    .venv/bin/python bench/webhook_bench.py                # N=200, J=1000, D=60
    .venv/bin/python bench/webhook_bench.py --down 20      # a 20 s outage
    .venv/bin/python bench/webhook_bench.py --quick        # N=30, J=100, D=5
"""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import tempfile
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from benchlib import (
    RESULTS,
    arg_parser,
    cmdd_argv,
    free_port,
    git_meta,
    percentile,
    proc_status,
    read_token,
    stop_process,
    wait_until_listening,
)

MIB = 1024 * 1024


class Arrivals:
    """Every callback that reached the receiver: (time, job, sequence, type)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.items: list[tuple[float, int, int, str, str]] = []
        #: While down, kept-alive connections are dropped unanswered too.
        self.down = False


class _Handler(BaseHTTPRequestHandler):
    arrivals: Arrivals
    protocol_version = "HTTP/1.1"  # keep-alive, as real receivers do

    def do_PUT(self) -> None:
        data = self.rfile.read(int(self.headers["Content-Length"]))
        if self.arrivals.down:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        body = json.loads(data)
        now = time.time()
        with self.arrivals.lock:
            self.arrivals.items.append(
                (now, body["job_id"], body["sequence"], body["callback_type"], body["end"] or "")
            )
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


class Receiver:
    def __init__(self, port: int, arrivals: Arrivals) -> None:
        self.port = port
        self.arrivals = arrivals
        handler = type("Handler", (_Handler,), {"arrivals": arrivals})
        self.server: ThreadingHTTPServer | None = None
        self.handler = handler

    def up(self) -> None:
        self.arrivals.down = False
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), self.handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def down(self) -> None:
        self.arrivals.down = True
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


class Api:
    def __init__(self, port: int, token: str) -> None:
        self.port, self.token = port, token

    def call(self, method: str, path: str, body: Any = None, timeout: float = 60) -> Any:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            headers = {"Authorization": f"Bearer {self.token}"}
            data = None
            if body is not None:
                headers["Content-Type"] = "application/json"
                data = json.dumps(body).encode()
            connection.request(method, path, body=data, headers=headers)
            response = connection.getresponse()
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
        finally:
            connection.close()


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def latency(api: Api, arrivals: Arrivals, url: str, jobs: int) -> dict[str, Any]:
    hook_ms: list[float] = []
    poll_ms: list[float] = []
    for _ in range(jobs):
        status, job = api.call("POST", "/api/jobs", {"command": "true", "webhooks": {"ended": url}})
        assert status == 202, job
        status, _ = api.call("GET", f"/api/statuses/{job['id']}?wait=30")
        polled = time.time()
        assert status == 303
        _, full = api.call("GET", f"/api/jobs/{job['id']}")
        end = _epoch(full["completed"])
        poll_ms.append((polled - end) * 1000)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with arrivals.lock:
                got = [a for a in arrivals.items if a[1] == job["id"]]
            if got:
                hook_ms.append((got[0][0] - end) * 1000)
                break
            time.sleep(0.001)
    return {
        "jobs": jobs,
        "webhook_p50_ms": percentile(hook_ms, 0.5),
        "webhook_p99_ms": percentile(hook_ms, 0.99),
        "longpoll_p50_ms": percentile(poll_ms, 0.5),
        "longpoll_p99_ms": percentile(poll_ms, 0.99),
    }


def outage(
    api: Api, pid: int, arrivals: Arrivals, receiver: Receiver, url: str, jobs: int, down: float
) -> dict[str, Any]:
    with arrivals.lock:
        arrivals.items.clear()
    rss_before, hwm_before = proc_status(pid, "VmRSS"), proc_status(pid, "VmHWM")
    receiver.down()
    went_down = time.monotonic()
    ids = []
    for _ in range(jobs):
        status, job = api.call(
            "POST", "/api/jobs", {"command": "true", "webhooks": {"begun": url, "ended": url}}
        )
        assert status == 202, job
        ids.append(job["id"])
    time.sleep(max(0.0, down - (time.monotonic() - went_down)))
    rss_down, hwm_down = proc_status(pid, "VmRSS"), proc_status(pid, "VmHWM")
    receiver.up()
    back = time.monotonic()
    deadline = back + 1800
    while time.monotonic() < deadline:
        with arrivals.lock:
            seen = {(a[1], a[2]) for a in arrivals.items}
        if len(seen) >= 2 * jobs:
            break
        time.sleep(0.05)
    drained = time.monotonic() - back
    with arrivals.lock:
        items = sorted(arrivals.items)
    per_job: dict[int, list[int]] = {}
    for _, job_id, sequence, _, _ in items:
        per_job.setdefault(job_id, []).append(sequence)
    in_order = all(_ordered(per_job.get(job_id, [])) for job_id in ids)
    complete = all({1, 2} <= set(per_job.get(job_id, [])) for job_id in ids)
    return {
        "jobs": jobs,
        "down_seconds": down,
        "callbacks_expected": 2 * jobs,
        "callbacks_received": len(items),
        "duplicates": len(items) - len({(a[1], a[2]) for a in items}),
        "all_delivered": complete,
        "in_order_per_job": in_order,
        "seconds_from_comeback_to_last": round(drained, 2),
        "rss_mib": {"before": rss_before / MIB, "while_down": rss_down / MIB,
                    "after": proc_status(pid, "VmRSS") / MIB},
        "peak_rss_mib": {"before": hwm_before / MIB, "while_down": hwm_down / MIB,
                         "after": proc_status(pid, "VmHWM") / MIB},
    }  # fmt: skip


def _ordered(sequences: list[int]) -> bool:
    """Each sequence first arrives only after every lower one arrived."""
    highest = 0
    for sequence in sequences:
        if sequence > highest + 1:
            return False
        highest = max(highest, sequence)
    return True


def main() -> None:
    parser = arg_parser(__doc__ or "", "N=30, J=100, D=5")
    parser.add_argument("--latency-jobs", type=int, default=200)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--down", type=float, default=60.0, help="seconds the receiver is down")
    args = parser.parse_args()
    if args.quick:
        args.latency_jobs, args.jobs, args.down = 30, 100, 5.0
    arrivals = Arrivals()
    receiver = Receiver(free_port(), arrivals)
    receiver.up()
    url = f"http://127.0.0.1:{receiver.port}/callback"
    with tempfile.TemporaryDirectory(prefix="cmdd-webhook-bench-") as tmp:
        data_dir = Path(tmp) / "data"
        port = free_port()
        argv = [*cmdd_argv(data_dir, port), "--max-running", "16",
                "--max-queued", str(args.jobs + 100)]  # fmt: skip
        log = open(Path(tmp) / "daemon.log", "wb")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_until_listening(port, proc, 60)
            api = Api(port, read_token(data_dir))
            report: dict[str, Any] = {**git_meta(), "argv": argv[1:]}
            report["latency"] = latency(api, arrivals, url, args.latency_jobs)
            report["outage"] = outage(
                api, proc.pid, arrivals, receiver, url, args.jobs, args.down
            )
        finally:
            stop_process(proc)
            receiver.down()
            log.close()
    print(json.dumps(report, indent=2))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "webhook_bench.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
