"""Issue 11's remaining figures, each as a ratio against a baseline of the same run.

Three parts, all against ``twistd -n cmdd`` (the one beside this Python) on a
fresh data directory, over HTTPS with the admin's bearer token:

* ``light``: submit -> result at light load. One client, one keep-alive
  connection, one request at a time: ``POST /api/jobs`` of ``/bin/true``,
  ``GET /api/statuses/{id}?wait=30`` until the 303, ``GET /api/results/{id}``.
  Against webhook's synchronous ``POST /hooks/true`` (waits for the command and
  returns its output) from the same client, in interleaved rounds. Also the
  servers' CPU ms per job and peak RSS.
* ``busy``: short ``/bin/true`` jobs' completion rate (``hey``, C connections)
  with none else running, then with 1,000 ``sleep 30`` jobs running
  (``--max-running 1100``), then with none again; meanwhile a prober sends
  ``GET /api/statuses/{id}`` every 20 ms and the API p50/p99 is its latency.
* ``capture``: a job writing 1 GiB of NUL bytes to stdout (the default 16 MiB
  cap applies; the rest is counted and dropped), against ``head -c 1G
  /dev/zero | cat > file`` on the same disk, interleaved; and the daemon's RSS
  growth while it captures (VmHWM reset before, read after).

    .venv/bin/python bench/issue11_bench.py                 # all parts, ~3 min
    .venv/bin/python bench/issue11_bench.py --quick         # small, ~1 min
    .venv/bin/python bench/issue11_bench.py --part light    # one part (repeatable)

Run it with another checkout's venv (``/work/main/.venv/bin/python
bench/issue11_bench.py``) to measure that checkout's code.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from benchlib import (
    RESULTS,
    arg_parser,
    free_port,
    git_meta,
    percentile,
    proc_cpu_seconds,
    proc_status,
    read_token,
    stop_process,
    twistd_path,
    wait_until_listening,
)

GIB = 1024**3
MIB = 1024**2
TRUE = ["/bin/true"]
#: Which code the daemons run: (name, PYTHONPATH or "" for this venv's).
VARIANT = ["new", ""]
#: More options for every daemon (--cmdd-arg).
CMDD_ARGS: list[str] = []


class Daemon:
    """A cmdd over TLS on 127.0.0.1 and a keep-alive client for it."""

    def __init__(self, workdir: Path, name: str, extra: list[str]) -> None:
        name = f"{name}-{VARIANT[0]}-{time.monotonic_ns()}"
        self.data_dir = workdir / name
        self.port = free_port()
        argv = [
            twistd_path(), "-n", "--pidfile=", "cmdd", "--data-dir", str(self.data_dir),
            "--listen", f"ssl:{self.port}:interface=127.0.0.1", *extra, *CMDD_ARGS,
        ]  # fmt: skip
        self.log_path = workdir / f"{name}.log"
        self._log = open(self.log_path, "wb")
        env = dict(os.environ)
        if VARIANT[1]:
            # Another checkout's code, ahead of this venv's editable install.
            env["PYTHONPATH"] = VARIANT[1]
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        wait_until_listening(self.port, self.proc, 60)
        self.token = read_token(self.data_dir)
        self.context = ssl.create_default_context(cafile=str(self.data_dir / "tls" / "cert.pem"))

    def connect(self) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(
            "127.0.0.1", self.port, context=self.context, timeout=120
        )

    def request(
        self, conn: http.client.HTTPConnection, method: str, path: str, body: Any = None
    ) -> tuple[int, http.client.HTTPResponse, bytes]:
        headers = {"Authorization": f"Bearer {self.token}"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn.request(method, path, data, headers)
        response = conn.getresponse()
        return response.status, response, response.read()

    def submit(self, conn: http.client.HTTPConnection, spec: dict[str, Any]) -> int:
        status, _, body = self.request(conn, "POST", "/api/jobs", spec)
        if status != 202:
            raise RuntimeError(f"POST answered {status}: {body[:200]!r}")
        job_id: int = json.loads(body)["id"]
        return job_id

    def wait_done(self, conn: http.client.HTTPConnection, job_id: int) -> None:
        while True:
            status, _, _ = self.request(conn, "GET", f"/api/statuses/{job_id}?wait=60")
            if status == 303:
                return
            if status != 200:
                raise RuntimeError(f"status answered {status}")

    def jobs(self, label: str) -> Iterator[dict[str, Any]]:
        conn = self.connect()
        url: str | None = f"/api/jobs?limit=1000&label=phase:{label}"
        while url:
            status, _, body = self.request(conn, "GET", url)
            if status != 200:
                raise RuntimeError(f"GET {url} answered {status}: {body[:200]!r}")
            page = json.loads(body)
            yield from page["jobs"]
            url = page["next"]
        conn.close()

    def stop(self) -> None:
        stop_process(self.proc)
        self._log.close()
        text = self.log_path.read_text(errors="replace")
        bad = [line for line in text.splitlines() if "Traceback" in line or "CRITICAL" in line]
        if bad:
            print(f"warning: {self.log_path.name} has {len(bad)} problem lines: {bad[:3]}")


def _ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _stats(samples: list[float]) -> dict[str, float]:
    return {
        "n": len(samples),
        "p50_ms": percentile(samples, 0.5) * 1000,
        "p99_ms": percentile(samples, 0.99) * 1000,
    }


# --- light: submit -> result, one client --------------------------------------


def start_webhook(workdir: Path) -> tuple[subprocess.Popen[bytes], int] | None:
    webhook = shutil.which("webhook")
    if webhook is None:
        return None
    hooks = workdir / "hooks.json"
    hooks.write_text(json.dumps([{
        "id": "true", "execute-command": "/bin/true",
        "include-command-output-in-response": True,
    }]))  # fmt: skip
    port = free_port()
    proc = subprocess.Popen(
        [webhook, "-hooks", str(hooks), "-ip", "127.0.0.1", "-port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=workdir,
    )  # fmt: skip
    wait_until_listening(port, proc, 15)
    return proc, port


def part_light(workdir: Path, rounds: int, per_round: int) -> dict[str, Any]:
    daemon = Daemon(workdir, "cmdd-light", [])
    hook = start_webhook(workdir)
    cmdd_lat: list[float] = []
    hook_lat: list[float] = []
    steps: list[tuple[float, float, float]] = []
    cpu = {"cmdd": 0.0, "webhook": 0.0}
    try:
        conn = daemon.connect()
        daemon.wait_done(conn, daemon.submit(conn, {"command_line": TRUE}))  # warm up
        hconn = http.client.HTTPConnection("127.0.0.1", hook[1], timeout=30) if hook else None
        for _ in range(rounds):
            c0 = proc_cpu_seconds(daemon.proc.pid)
            for _ in range(per_round):
                t0 = time.perf_counter()
                job_id = daemon.submit(conn, {"command_line": TRUE, "labels": {"phase": "light"}})
                t1 = time.perf_counter()
                daemon.wait_done(conn, job_id)
                t2 = time.perf_counter()
                status, _, _ = daemon.request(conn, "GET", f"/api/results/{job_id}")
                cmdd_lat.append(time.perf_counter() - t0)
                steps.append((t1 - t0, t2 - t1, cmdd_lat[-1] - (t2 - t0)))
                if status != 200:
                    raise RuntimeError(f"result answered {status}")
            cpu["cmdd"] += proc_cpu_seconds(daemon.proc.pid) - c0
            if hook and hconn:
                c0 = proc_cpu_seconds(hook[0].pid)
                for _ in range(per_round):
                    t0 = time.perf_counter()
                    hconn.request(
                        "POST", "/hooks/true", b"{}", {"Content-Type": "application/json"}
                    )
                    response = hconn.getresponse()
                    response.read()
                    hook_lat.append(time.perf_counter() - t0)
                cpu["webhook"] += proc_cpu_seconds(hook[0].pid) - c0
        n = rounds * per_round
        out: dict[str, Any] = {
            "cmdd": {**_stats(cmdd_lat), "cpu_ms_per_job": cpu["cmdd"] * 1000 / n,
                     "peak_rss_mib": proc_status(daemon.proc.pid, "VmHWM") / MIB,
                     "rss_mib": proc_status(daemon.proc.pid, "VmRSS") / MIB},
            "steps_p50_ms": {
                name: percentile([s[i] for s in steps], 0.5) * 1000
                for i, name in enumerate(("post", "wait", "result"))
            },
        }  # fmt: skip
        if hook:
            out["webhook"] = {
                **_stats(hook_lat), "cpu_ms_per_job": cpu["webhook"] * 1000 / n,
                "peak_rss_mib": proc_status(hook[0].pid, "VmHWM") / MIB,
            }  # fmt: skip
            out["p50_ratio"] = out["cmdd"]["p50_ms"] / out["webhook"]["p50_ms"]
            out["p99_ratio"] = out["cmdd"]["p99_ms"] / out["webhook"]["p99_ms"]
        return out
    finally:
        daemon.stop()
        if hook:
            stop_process(hook[0])


# --- busy: short jobs beside 1,000 sleeping ones -----------------------------


def hey(daemon: Daemon, spec: dict[str, Any], n: int, concurrency: int) -> list[float]:
    """N POSTs of SPEC over C connections with hey; the latencies in seconds."""
    argv = [
        "hey", "-n", str(n), "-c", str(concurrency), "-m", "POST", "-T", "application/json",
        "-H", f"Authorization: Bearer {daemon.token}", "-d", json.dumps(spec),
        "-t", "60", "-disable-redirects", "-o", "csv",
        f"https://127.0.0.1:{daemon.port}/api/jobs",
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, timeout=600, check=True)
    rows = done.stdout.decode().splitlines()[1:]
    statuses = [row.split(",")[6] for row in rows]
    if len(rows) != n or set(statuses) != {"202"}:
        raise RuntimeError(f"hey: {len(rows)} rows, statuses {set(statuses)}")
    return [float(row.split(",")[0]) for row in rows]


class Prober(threading.Thread):
    """GET /api/statuses/{id} every 20 ms on its own connection."""

    def __init__(self, daemon: Daemon, job_id: int) -> None:
        super().__init__(daemon=True)
        self.d, self.job_id, self.samples = daemon, job_id, [0.0][:0]
        self.halt = threading.Event()

    def run(self) -> None:
        conn = self.d.connect()
        while not self.halt.is_set():
            t0 = time.perf_counter()
            self.d.request(conn, "GET", f"/api/statuses/{self.job_id}")
            self.samples.append(time.perf_counter() - t0)
            self.halt.wait(0.02)
        conn.close()


def _running(daemon: Daemon, conn: http.client.HTTPConnection) -> int:
    _, _, body = daemon.request(conn, "GET", "/metrics")
    for line in body.decode().splitlines():
        if line.startswith('cmdd_jobs{state="running"}'):
            return int(float(line.rsplit(" ", 1)[1]))
    return 0


def _short_run(daemon: Daemon, label: str, n: int, c: int, probe_id: int) -> dict[str, Any]:
    prober = Prober(daemon, probe_id)
    prober.start()
    c0 = proc_cpu_seconds(daemon.proc.pid)
    posts = hey(daemon, {"command_line": TRUE, "labels": {"phase": label}}, n, c)
    conn = daemon.connect()
    for job in list(daemon.jobs(label)):
        if not job["completed"]:
            daemon.wait_done(conn, job["id"])
    cpu = proc_cpu_seconds(daemon.proc.pid) - c0
    prober.halt.set()
    prober.join()
    jobs = list(daemon.jobs(label))
    span = max(_ts(j["completed"]) for j in jobs) - min(_ts(j["created"]) for j in jobs)
    return {
        "label": label, "jobs": len(jobs), "jobs_per_second": len(jobs) / span,
        "post": _stats(posts), "api": _stats(prober.samples),
        "cpu_ms_per_job": cpu * 1000 / n,
    }  # fmt: skip


def part_busy(workdir: Path, n: int, c: int, sleepers: int) -> dict[str, Any]:
    daemon = Daemon(workdir, "cmdd-busy", ["--max-running", str(sleepers + 100)])
    try:
        conn = daemon.connect()
        probe_id = daemon.submit(conn, {"command_line": TRUE})
        daemon.wait_done(conn, probe_id)
        runs = [_short_run(daemon, "none-1", n, c, probe_id)]
        hey(daemon, {"command_line": ["sleep", "30"], "labels": {"phase": "sleep"}}, sleepers, 8)
        t0 = time.monotonic()
        while _running(daemon, conn) < sleepers:
            if time.monotonic() - t0 > 25:
                raise RuntimeError(f"only {_running(daemon, conn)} sleepers running")
            time.sleep(0.2)
        busy = _short_run(daemon, "busy", n, c, probe_id)
        busy["sleepers_running_after"] = _running(daemon, conn)
        runs.append(busy)
        while _running(daemon, conn) > 0:
            time.sleep(0.5)
        runs.append(_short_run(daemon, "none-2", n, c, probe_id))
        none_rate = max(runs[0]["jobs_per_second"], runs[2]["jobs_per_second"])
        return {
            "runs": runs, "sleepers": sleepers,
            "busy_vs_none": busy["jobs_per_second"] / none_rate,
            "rss_mib": proc_status(daemon.proc.pid, "VmRSS") / MIB,
        }  # fmt: skip
    finally:
        daemon.stop()


# --- capture: 1 GiB of stdout --------------------------------------------------


def _raw_pipe(workdir: Path, size: int) -> float:
    target = workdir / "raw.out"
    t0 = time.perf_counter()
    subprocess.run(["sh", "-c", f"head -c {size} /dev/zero | cat > {target}"], check=True)
    seconds = time.perf_counter() - t0
    target.unlink()
    return seconds


def part_capture(workdir: Path, size: int, repeats: int) -> dict[str, Any]:
    daemon = Daemon(workdir, "cmdd-capture", [])
    rows: list[dict[str, Any]] = []
    try:
        conn = daemon.connect()
        for i in range(repeats):
            raw = _raw_pipe(workdir, size)
            with open(f"/proc/{daemon.proc.pid}/clear_refs", "w") as refs:
                refs.write("5")  # VmHWM := VmRSS
            rss0 = proc_status(daemon.proc.pid, "VmRSS")
            t0 = time.perf_counter()
            job_id = daemon.submit(conn, {
                "command_line": ["head", "-c", str(size), "/dev/zero"],
                "labels": {"phase": f"capture-{i}"},
            })  # fmt: skip
            daemon.wait_done(conn, job_id)
            wall = time.perf_counter() - t0
            growth = proc_status(daemon.proc.pid, "VmHWM") - rss0
            _, _, body = daemon.request(conn, "GET", f"/api/jobs/{job_id}")
            job = json.loads(body)
            run = _ts(job["completed"]) - _ts(job["started"])
            _, _, body = daemon.request(
                conn, "GET", f"/api/results/{job_id}?fields=stdout_bytes,truncated,exit_code"
            )
            rows.append({
                "raw_seconds": raw, "cmdd_wall_seconds": wall, "cmdd_run_seconds": run,
                "rate_ratio": raw / wall, "rss_growth_mib": growth / MIB,
                "result": body.decode()[:300],
            })  # fmt: skip
        return {"size": size, "rows": rows}
    finally:
        daemon.stop()


PARTS: dict[str, Callable[..., dict[str, Any]]] = {
    "light": part_light, "busy": part_busy, "capture": part_capture,
}  # fmt: skip


def main() -> None:
    parser = arg_parser(__doc__ or "", "small sizes, about a minute")
    parser.add_argument("--part", action="append", choices=sorted(PARTS))
    parser.add_argument("--jobs", type=int, default=2000, help="short jobs per busy run")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument(
        "--old", metavar="DIR", help="also run DIR's cmdd (a `git archive` of cmdd/ and twisted/)"
    )
    parser.add_argument("--repeats", type=int, default=1, help="old/new rounds, interleaved")
    parser.add_argument(
        "--cmdd-arg", action="append", default=[], help="an option for every twistd cmdd"
    )
    args = parser.parse_args()
    CMDD_ARGS[:] = args.cmdd_arg
    parts = args.part or ["light", "busy", "capture"]
    variants = [("new", "")] + ([("old", args.old)] if args.old else [])
    out: dict[str, Any] = {"git": git_meta(), "quick": args.quick, "old": args.old, "runs": []}
    with tempfile.TemporaryDirectory(prefix="cmdd-i11-") as tmp:
        workdir = Path(tmp)
        for part, repeat, variant in (
            (p, r, v) for p in parts for r in range(args.repeats) for v in variants
        ):
            VARIANT[:] = variant
            print(f"--- {part} {variant[0]} #{repeat + 1}", flush=True)
            if part == "light":
                out[part] = part_light(workdir, 3 if args.quick else 5, 40 if args.quick else 200)
            elif part == "busy":
                n = 400 if args.quick else args.jobs
                out[part] = part_busy(workdir, n, args.concurrency, 200 if args.quick else 1000)
            else:
                size = 256 * MIB if args.quick else GIB
                out[part] = part_capture(workdir, size, 2 if args.quick else 3)
            out["runs"].append({"part": part, "variant": variant[0], "result": out.pop(part)})
            print(json.dumps(out["runs"][-1]), flush=True)
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    (RESULTS / f"issue11-{stamp}.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
