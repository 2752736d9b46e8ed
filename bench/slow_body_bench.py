"""Slow-body flood: many connections each holding an unfinished ~1 MiB body.

No token is needed: the body arrives before authentication. The script starts
a daemon, opens N connections, sends each one's headers and all but the last
byte of its body, then holds them and reads the daemon's RSS. It reports RSS
before, while held (and the peak), after closing, and what each connection
got back (nothing yet, a 503, ...), and whether /healthz still answers.

    .venv/bin/python bench/slow_body_bench.py [--connections 300]
    .venv/bin/python bench/slow_body_bench.py --code /tmp/cmdd-old  # another checkout

With --code, the daemon imports cmdd from that directory first (a checkout
of an older commit, e.g. `git worktree add /tmp/cmdd-old <commit>`).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

TWISTD = str(Path(sys.executable).parent / "twistd")
BODY = 1_000_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_kib(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields


def healthz_ms(port: int) -> float | None:
    started = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            if not sock.recv(100).startswith(b"HTTP/1.1 200"):
                return None
    except OSError:
        return None
    return (time.monotonic() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--connections", type=int, default=300)
    parser.add_argument("--hold", type=float, default=3.0, help="seconds to hold before reading")
    parser.add_argument("--code", help="import cmdd from this checkout instead")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="cmdd-slowbody-"))
    port = free_port()
    env = dict(os.environ)
    if args.code:
        env["PYTHONPATH"] = args.code
    log = open(work / "daemon.log", "wb")
    daemon = subprocess.Popen(
        [TWISTD, "-n", "--pidfile=", "cmdd", "--data-dir", str(work / "data"),
         "--listen", f"tcp:{port}:interface=127.0.0.1:backlog=1024"],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=work,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while healthz_ms(port) is None:
            assert daemon.poll() is None and time.monotonic() < deadline, "daemon did not start"
            time.sleep(0.1)
        time.sleep(1)
        before = rss_kib(daemon.pid)
        head = (
            b"POST /api/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % BODY
        )
        sockets, send_errors = [], 0
        started = time.monotonic()
        for _ in range(args.connections):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            try:
                sock.sendall(head + b" " * (BODY - 1))
            except OSError:
                send_errors += 1
            sockets.append(sock)
        sent_seconds = time.monotonic() - started
        time.sleep(args.hold)
        held = rss_kib(daemon.pid)
        health = healthz_ms(port)
        answers: Counter[str] = Counter()
        for sock in sockets:
            sock.setblocking(False)
            try:
                data = sock.recv(200)
                answers[data.split(b"\r\n")[0].decode() if data else "closed"] += 1
            except BlockingIOError:
                answers["no answer yet"] += 1
            except OSError as error:
                answers[type(error).__name__] += 1
        for sock in sockets:
            sock.close()
        time.sleep(2)
        after = rss_kib(daemon.pid)
        result = {
            "code": args.code or "this checkout",
            "connections": args.connections,
            "body_bytes_each": BODY - 1,
            "send_seconds": round(sent_seconds, 2),
            "send_errors": send_errors,
            "rss_mib_before": round(before["VmRSS"] / 1024, 1),
            "rss_mib_held": round(held["VmRSS"] / 1024, 1),
            "rss_mib_peak": round(held["VmHWM"] / 1024, 1),
            "rss_mib_after_close": round(after["VmRSS"] / 1024, 1),
            "healthz_ms_while_held": None if health is None else round(health, 1),
            "answers": dict(answers),
        }
        print(json.dumps(result, indent=2))
    finally:
        daemon.terminate()
        daemon.wait(timeout=20)
        log.close()


if __name__ == "__main__":
    main()
