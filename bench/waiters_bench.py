"""Memory of many waiting clients: 1,000 long-polls plus 300 followers.

Starts ``twistd -n cmdd`` (tcp on loopback, ``backlog=2048``, no sandbox),
runs one job that prints a line every 0.1 s until a gate file appears, then
opens P connections ``GET /api/statuses/{id}?wait=120`` and F connections
``GET /api/jobs/{id}/output/stdout?follow=1`` (each ``Connection: close``),
samples the daemon's VmRSS once all are connected, opens the gate and waits
until every long-poll got its 303 and every follower its end of stream.

    .venv/bin/python bench/waiters_bench.py               # P=1000, F=300
    .venv/bin/python bench/waiters_bench.py --quick       # P=100, F=30
    .venv/bin/python bench/waiters_bench.py --tls         # over TLS (generated certificate)
"""

from __future__ import annotations

import asyncio
import http.client
import json
import resource
import ssl
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from benchlib import (
    RESULTS,
    arg_parser,
    free_port,
    git_meta,
    proc_cpu_seconds,
    proc_status,
    read_token,
    stop_process,
    twistd_path,
    wait_until_listening,
)

MIB = 1024 * 1024


#: A client TLS context that trusts anything (set by --tls), or None for plain TCP.
TLS: ssl.SSLContext | None = None


async def one_request(port: int, raw: bytes, connected: asyncio.Event, out: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=TLS)
    writer.write(raw)
    await writer.drain()
    connected.set()
    data = await reader.read()  # until the server closes (Connection: close)
    writer.close()
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else -1
    out.append(status)


async def run(port: int, token: str, job_id: int, polls: int, followers: int) -> dict[str, Any]:
    head = f"Host: cmdd\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    poll = f"GET /api/statuses/{job_id}?wait=120 HTTP/1.1\r\n{head}".encode()
    follow = f"GET /api/jobs/{job_id}/output/stdout?follow=1 HTTP/1.1\r\n{head}".encode()
    statuses: list[int] = []
    tasks = []
    events = []
    for index in range(polls + followers):
        event = asyncio.Event()
        events.append(event)
        raw = poll if index < polls else follow
        tasks.append(asyncio.create_task(one_request(port, raw, event, statuses)))
        if index % 100 == 99:
            await asyncio.sleep(0.05)
    for event in events:
        await event.wait()
    return {"tasks": tasks, "statuses": statuses}


def main() -> None:
    parser = arg_parser(__doc__ or "", "100 long-polls and 30 followers")
    parser.add_argument("--polls", type=int, default=1000)
    parser.add_argument("--followers", type=int, default=300)
    parser.add_argument("--tls", action="store_true", help="serve ssl: (generated certificate)")
    args = parser.parse_args()
    global TLS
    if args.tls:
        TLS = ssl.create_default_context()
        TLS.check_hostname = False
        TLS.verify_mode = ssl.CERT_NONE
    polls, followers = (100, 30) if args.quick else (args.polls, args.followers)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    work = Path(tempfile.mkdtemp(prefix="cmdd-waiters-bench-"))
    gates = Path(tempfile.mkdtemp(prefix="cmdd-waiters-gate-"))
    gates.chmod(0o1777)
    gate = gates / "gate"
    port = free_port()
    argv = [
        twistd_path(), "-n", "--pidfile=", "cmdd", "--data-dir", str(work / "data"),
        "--listen", f"{'ssl' if args.tls else 'tcp'}:{port}:interface=127.0.0.1:backlog=2048",
        "--job-sandbox", "off",
    ]  # fmt: skip
    log = open(work / "twistd.log", "wb")  # closed in finally
    proc = subprocess.Popen(argv, cwd=work, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until_listening(port, proc, 60)
        token = read_token(work / "data")
        connection: http.client.HTTPConnection = (
            http.client.HTTPSConnection("127.0.0.1", port, timeout=30, context=TLS)
            if TLS is not None
            else http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        )
        command = f"while [ ! -e '{gate}' ]; do echo tick; sleep 0.1; done; echo done"
        connection.request(
            "POST",
            "/api/jobs",
            json.dumps({"command": command}),
            {"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        job_id = json.loads(connection.getresponse().read())["id"]
        connection.close()
        time.sleep(1.0)
        idle = proc_status(proc.pid, "VmRSS")
        with open(f"/proc/{proc.pid}/clear_refs", "w") as refs:
            refs.write("5")
        cpu_before = proc_cpu_seconds(proc.pid)

        async def scenario() -> dict[str, Any]:
            began = time.monotonic()
            opened = await run(port, token, job_id, polls, followers)
            connect_seconds = time.monotonic() - began
            await asyncio.sleep(3.0)
            connected_rss = proc_status(proc.pid, "VmRSS")
            released = time.monotonic()
            gate.touch()
            await asyncio.gather(*opened["tasks"])
            return {
                "connect_seconds": connect_seconds,
                "connected_rss": connected_rss,
                "release_seconds": time.monotonic() - released,
                "statuses": opened["statuses"],
            }

        outcome = asyncio.run(scenario())
        peak = proc_status(proc.pid, "VmHWM")
        cpu = proc_cpu_seconds(proc.pid) - cpu_before
    finally:
        gate.touch()
        stop_process(proc)
        log.close()
    counts: dict[str, int] = {}
    for status in outcome["statuses"]:
        counts[str(status)] = counts.get(str(status), 0) + 1
    row = {
        "tls": args.tls,
        "polls": polls,
        "followers": followers,
        "idle_rss_mib": idle / MIB,
        "connected_rss_mib": outcome["connected_rss"] / MIB,
        "peak_rss_mib": peak / MIB,
        "kib_per_client": (outcome["connected_rss"] - idle) / 1024 / (polls + followers),
        "connect_seconds": outcome["connect_seconds"],
        "release_seconds": outcome["release_seconds"],
        "daemon_cpu_seconds": cpu,
        "statuses": counts,
    }
    print(
        f"{'TLS' if args.tls else 'TCP'}: {polls} long-polls + {followers} followers: "
        f"idle {row['idle_rss_mib']:.1f} MiB, "
        f"all connected {row['connected_rss_mib']:.1f} MiB "
        f"({row['kib_per_client']:.1f} KiB per client), peak {row['peak_rss_mib']:.1f} MiB; "
        f"connect {row['connect_seconds']:.2f} s, all answered {row['release_seconds']:.2f} s "
        f"after the job ended; daemon CPU {cpu:.2f} s; statuses {counts}"
    )
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = RESULTS / f"waiters-{stamp}{'-quick' if args.quick else ''}.json"
    out.write_text(json.dumps({**git_meta(), **row}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
