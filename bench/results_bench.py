"""What serving big results costs the daemon: peak RSS and reactor stalls.

Starts ``twistd -n cmdd`` (the one beside this Python) on a fresh data
directory, runs one job per output kind (16 MiB of NUL bytes, which JSON
escapes as ``\\u0000``, and 16 MiB of ``a``), then for each: resets the
daemon's VmHWM, sends C concurrent ``GET /api/results/{id}`` (bodies read
and discarded) while a prober sends ``GET /healthz`` every 20 ms, and
reports the peak RSS above the idle RSS, the longest /healthz answer (how
long the reactor was blocked), the wall time and the body size.

    .venv/bin/python bench/results_bench.py                 # 16 MiB, C=1 and C=8
    .venv/bin/python bench/results_bench.py --quick         # 4 MiB, C=1 and 2
    .venv/bin/python bench/results_bench.py --raw           # GET .../output/stdout instead

Run it with another checkout's venv (e.g. ``/work/main/.venv/bin/python
bench/results_bench.py``) to measure that checkout's code.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchlib import (
    RESULTS,
    arg_parser,
    cmdd_argv,
    free_port,
    git_meta,
    proc_status,
    read_token,
    stop_process,
    wait_until_listening,
)

MIB = 1024 * 1024


def request(port: int, token: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    headers = {"Authorization": f"Bearer {token}"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    connection.request(method, path, data, headers)
    response = connection.getresponse()
    content = response.read()
    connection.close()
    return response.status, json.loads(content) if content else None


def fetch_discarding(port: int, token: str, path: str, sizes: list[int]) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    connection.request("GET", path, headers={"Authorization": f"Bearer {token}"})
    response = connection.getresponse()
    size = 0
    while chunk := response.read(256 * 1024):
        size += len(chunk)
    connection.close()
    sizes.append(size if response.status == 200 else -response.status)


class Prober(threading.Thread):
    """GET /healthz every 20 ms; remembers the slowest answer."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.worst = 0.0
        self.count = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            began = time.monotonic()
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            connection.request("GET", "/healthz")
            connection.getresponse().read()
            connection.close()
            self.worst = max(self.worst, time.monotonic() - began)
            self.count += 1
            time.sleep(0.02)


def measure(
    pid: int, port: int, token: str, path: str, concurrency: int
) -> dict[str, Any]:
    with open(f"/proc/{pid}/clear_refs", "w") as refs:
        refs.write("5")  # VmHWM := VmRSS
    time.sleep(0.2)
    idle = proc_status(pid, "VmRSS")
    prober = Prober(port)
    prober.start()
    time.sleep(0.1)
    sizes: list[int] = []
    began = time.monotonic()
    clients = [
        threading.Thread(
            target=fetch_discarding, args=(port, token, path, sizes)
        )
        for _ in range(concurrency)
    ]
    for client in clients:
        client.start()
    for client in clients:
        client.join()
    seconds = time.monotonic() - began
    prober.stop.set()
    prober.join()
    peak = proc_status(pid, "VmHWM")
    return {
        "concurrency": concurrency,
        "idle_rss_mib": idle / MIB,
        "peak_rss_mib": peak / MIB,
        "peak_above_idle_mib": (peak - idle) / MIB,
        "worst_healthz_s": prober.worst,
        "healthz_probes": prober.count,
        "seconds": seconds,
        "body_mib": sizes[0] / MIB if sizes else None,
        "bodies": sizes,
    }


def main() -> None:
    parser = arg_parser(__doc__ or "", "4 MiB outputs, concurrency 1 and 2")
    parser.add_argument("--mib", type=int, default=16, help="output size in MiB (default 16)")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent GETs (default 8)")
    parser.add_argument(
        "--raw", action="store_true", help="read the raw stdout bytes, not the JSON result"
    )
    args = parser.parse_args()
    mib = 4 if args.quick else args.mib
    concurrency = 2 if args.quick else args.concurrency
    size = mib * MIB
    kinds = {
        "nul": f"head -c {size} /dev/zero",
        "text": f"head -c {size} /dev/zero | tr '\\0' a",
    }
    work = Path(tempfile.mkdtemp(prefix="cmdd-results-bench-"))
    port = free_port()
    argv = [*cmdd_argv(work / "data", port), "--max-output-bytes", str(size)]
    argv += ["--job-sandbox", "off"]
    log = open(work / "twistd.log", "wb")  # closed in finally
    proc = subprocess.Popen(argv, cwd=work, stdout=log, stderr=subprocess.STDOUT)
    rows: list[dict[str, Any]] = []
    try:
        wait_until_listening(port, proc, 60)
        token = read_token(work / "data")
        ids = {}
        for kind, command in kinds.items():
            status, job = request(port, token, "POST", "/api/jobs", {"command": command})
            assert status == 202, (status, job)
            ids[kind] = job["id"]
        for job_id in ids.values():
            while request(port, token, "GET", f"/api/jobs/{job_id}")[1]["state"] != "succeeded":
                time.sleep(0.1)
        for kind, job_id in ids.items():
            for c in sorted({1, concurrency}):
                path = f"/api/jobs/{job_id}/output/stdout" if args.raw else f"/api/results/{job_id}"
                row = {"kind": kind, "route": path.split("/")[2], "output_mib": mib,
                       **measure(proc.pid, port, token, path, c)}
                rows.append(row)
                print(
                    f"{kind:5} {mib:3d} MiB  C={c:<2d} body {row['body_mib']:7.1f} MiB  "
                    f"idle {row['idle_rss_mib']:6.1f} MiB  peak {row['peak_rss_mib']:7.1f} MiB "
                    f"(+{row['peak_above_idle_mib']:6.1f})  worst /healthz "
                    f"{row['worst_healthz_s'] * 1000:7.1f} ms  wall {row['seconds']:6.2f} s",
                    flush=True,
                )
    finally:
        stop_process(proc)
        log.close()
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    suffix = ("-raw" if args.raw else "") + ("-quick" if args.quick else "")
    out = RESULTS / f"results-{stamp}{suffix}.json"
    import cmdd  # which checkout's code the daemon ran (the venv's editable install)

    meta = {**git_meta(), "cmdd_package": str(Path(cmdd.__file__).parent)}
    out.write_text(json.dumps({**meta, "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
