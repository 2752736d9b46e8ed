#!/usr/bin/env python3
"""Live output followers: daemon memory and CPU with 0, 10 and 1,000 followers of a
chatty job, and one slow follower of a 50 MB job.

Run from the repository root:

    .venv/bin/python bench/follow_bench.py [--quick] [--followers 0,10,1000]
                                           [--lines 2000] [--slow-mb 50] [--profile]
                                           [--backlog N]

Every phase starts its own ``twistd -n cmdd`` on a fresh data directory under
bench/results/ (removed at the end), serving tcp:PORT:interface=127.0.0.1,
with the admin token from DATA_DIR/admin.token, so each phase's peak RSS
(VmHWM in /proc/PID/status) is its own. The daemon is stopped in a finally.

Chatty phases (0, 10 and 1,000 followers; --quick: 0, 10, 100). The job is

    while [ ! -e GATE ]; do sleep 0.05; done
    for i in $(seq 2000); do echo line $i; sleep 0.01; done

(--quick: 150 lines): about 2,000 lines at up to 100 lines/s. The script
POSTs it, opens the followers (batches of 50 connections, since cmdd listens
with a backlog of 50), waits until the daemon is idle (every request handled,
every follower waiting), then creates the GATE file: so every follower is
there before the first line, and the measured window starts at the gate.
(--backlog 1024 passes ``:backlog=1024`` in the endpoint, and the 1,000
connect in well under a second instead of ~10 s.) Followers are raw asyncio
sockets in this process, each sending
``GET /api/jobs/ID/output/stdout?follow=1`` with ``Connection: close`` and
keeping every byte. Meanwhile one more connection long-polls
``GET /api/statuses/ID?wait=120`` to learn when the job is final, and the
daemon is sampled every 0.2 s (VmRSS, threads, open fds). Reported:

  * daemon CPU seconds (utime+stime from /proc/PID/stat) from the gate until
    every stream has ended, and the ratio to the 0-follower phase (the same
    job, nobody following): the baseline of the same run; marginal CPU per
    follower and per follower-line;
  * daemon peak RSS (VmHWM, reset through /proc/PID/clear_refs once the
    fresh daemon is idle) and its ratio to the 0-follower phase; and what
    connecting the followers cost (seconds until handled, daemon CPU);
  * every follower's body, de-chunked, must equal "line 1\\n" ... "line N\\n"
    exactly (all lines, in order, nothing else);
  * every stream must end (the server closes it) once the job is final:
    stream end minus the moment the long-poll saw the job final, p50/max;
    a stream still open 30 s after the job ended is counted as never ended;
  * fan-out skew: for every 100th line, how much later each follower got it
    than the first follower to get it (50 followers sampled), p50/p99/max;
  * this client's own CPU (it shares the 2 cores with the daemon).

Slow-follower phases (--slow-mb 50; --quick: 10), with --max-output-bytes
64 MiB so the whole output is kept. The job emits the output in 10 slices
of 5 MB, one per second (--quick: 1 MB slices, 0.2 s apart):

    sleep 1; for i in $(seq 10); do head -c 5000000 /dev/zero | tr '\\0' x; sleep 1; done

  slow-0     nobody follows (baseline);
  slow-1     one follower whose socket (SO_RCVBUF 64 KiB) reads nothing for
             10 s (--quick: 2 s) after connecting, then reads everything;
  fast-1     one follower that reads at once (second baseline).

For these the report gives the daemon's RSS over time (sampled every 0.2 s),
its peak (also just before the slow follower resumes), the bytes queued in the
kernel for that connection at that moment (/proc/net/tcp: the daemon socket's
send queue + the client's receive queue), the body the follower finally
received (de-chunked: must be exactly the output, all "x") and when its
stream ended.

Every phase's daemon starts from a copy of one template data directory made
by a first start (which creates the admin user: its scrypt hash alone takes
VmHWM to ~72 MiB, which would hide everything else).

--profile runs the largest chatty phase under twistd --profile (cProfile) and
prints the top functions by cumulative and own time (that phase's figures are
then inflated by the profiler; for diagnosis only).

Results go to bench/results/follow_bench-TIMESTAMP.json.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import platform
import pstats
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import benchlib

BATCH = 50
SKEW_SAMPLE = 50
END_GRACE = 30.0
MIB = 2**20


# --------------------------------------------------------------------------
# Helpers (the shared ones are in bench/benchlib.py)
# --------------------------------------------------------------------------


def proc_cpu_split(pid: int) -> tuple[float, float]:
    """(utime, stime) of the process itself, in seconds."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / ticks, int(fields[12]) / ticks


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def tcp_queues(server_port: int, client_port: int) -> dict[str, int]:
    """Bytes queued in the kernel for one loopback connection, from
    /proc/net/tcp: the daemon socket's send queue and the client's receive
    queue."""
    found = {"daemon_send_queue": -1, "client_receive_queue": -1}
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            local = int(fields[1].split(":")[1], 16)
            remote = int(fields[2].split(":")[1], 16)
            tx, rx = (int(x, 16) for x in fields[4].split(":"))
            if local == server_port and remote == client_port:
                found["daemon_send_queue"] = tx
            elif local == client_port and remote == server_port:
                found["client_receive_queue"] = rx
    return found


def self_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def file_limit(needed: int) -> dict[str, Any]:
    """Raise this process's soft RLIMIT_NOFILE to C{needed} if it is lower
    (the daemon inherits it). Returns what was found and done."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    found: dict[str, Any] = {"soft": soft, "hard": hard, "needed": needed, "raised_to": None}
    if soft != resource.RLIM_INFINITY and soft < needed:
        new = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        found["raised_to"] = new
    return found


# --------------------------------------------------------------------------
# The daemon
# --------------------------------------------------------------------------


def reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to clear_refs)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


#: Added to the daemon's tcp: endpoint (--backlog N gives ":backlog=N").
LISTEN_SUFFIX = ""

#: Every daemon started, so main() can stop any a phase left behind.
STARTED: list[Daemon] = []


class Daemon:
    """One twistd cmdd on a fresh copy of a template data directory.

    The template comes from one first start (which creates the admin user:
    its scrypt hash alone takes VmHWM to about 72 MiB), so the phases' peak
    RSS is their own."""

    def __init__(
        self,
        workdir: Path,
        name: str,
        extra: list[str],
        profile: Path | None,
        template: Path | None = None,
    ) -> None:
        self.dir = workdir / name
        self.dir.mkdir()
        if template is not None:
            shutil.copytree(template, self.dir / "data", symlinks=True)
        self.port = benchlib.free_port()
        self.argv = [benchlib.twistd_path(), "-n", "--pidfile="]
        if profile is not None:
            self.argv += [f"--profile={profile}", "--profiler=cprofile", "--savestats"]
        self.argv += [
            "cmdd", "--data-dir", str(self.dir / "data"),
            "--listen", f"tcp:{self.port}:interface=127.0.0.1{LISTEN_SUFFIX}", *extra,
        ]  # fmt: skip
        self.log_path = self.dir / "twistd.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.token = ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.dir
            )
        STARTED.append(self)
        benchlib.wait_until_listening(self.port, self.proc, 60)
        self.token = benchlib.read_token(self.dir / "data")

    def stop(self, grace: float = 20.0) -> int | None:
        proc = self.proc
        if proc is None:
            return None
        return benchlib.stop_process(proc, grace)

    def log_tail(self) -> str:
        try:
            return self.log_path.read_bytes()[-3000:].decode(errors="replace")
        except OSError:
            return ""

    def call(self, method: str, path: str, body: Any = None, timeout: float = 60) -> Any:
        """One blocking request on a new connection; the JSON answer (any status)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            headers = {"Authorization": f"Bearer {self.token}"}
            data = None
            if body is not None:
                data = json.dumps(body).encode()
                headers["Content-Type"] = "application/json"
            conn.request(method, path, body=data, headers=headers)
            response = conn.getresponse()
            payload = response.read()
            return response.status, json.loads(payload) if payload else None
        finally:
            conn.close()

    def submit(self, command: str) -> int:
        status, job = self.call("POST", "/api/jobs", {"command": command})
        if status != 202:
            raise RuntimeError(f"POST answered {status}: {job}")
        return int(job["id"])

    def wait_final(self, job_id: int) -> tuple[float, dict[str, Any]]:
        """Long-poll until the job is final; (monotonic time of the 303, the job)."""
        while True:
            status, _ = self.call("GET", f"/api/statuses/{job_id}?wait=120", timeout=130)
            if status == 303:
                seen = time.monotonic()
                _, job = self.call("GET", f"/api/jobs/{job_id}")
                return seen, job
            if status != 200:
                raise RuntimeError(f"status answered {status}")


class Sampler:
    """Samples the daemon's RSS, threads and fds every 0.2 s."""

    def __init__(self, pid: int, t0: float) -> None:
        self.pid = pid
        self.t0 = t0
        self.rows: list[tuple[float, float, int, int]] = []
        self._task: asyncio.Task[None] | None = None

    def sample(self) -> None:
        try:
            self.rows.append(
                (
                    round(time.monotonic() - self.t0, 3),
                    round(benchlib.proc_status(self.pid, "VmRSS") / MIB, 2),
                    benchlib.proc_status(self.pid, "Threads"),
                    open_fds(self.pid),
                )
            )
        except OSError:
            pass

    async def _run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(0.2)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            # Not try/except CancelledError: that would also swallow a
            # cancellation of the caller (Ctrl-C, SIGTERM) and carry on.
            await asyncio.gather(self._task, return_exceptions=True)
        self.sample()

    def summary(self) -> dict[str, Any]:
        return {
            "max_rss_mib": max((r[1] for r in self.rows), default=None),
            "max_threads": max((r[2] for r in self.rows), default=None),
            "max_fds": max((r[3] for r in self.rows), default=None),
            "samples": self.rows,
        }


# --------------------------------------------------------------------------
# Followers
# --------------------------------------------------------------------------


class Follower(asyncio.Protocol):
    """One ?follow=1 stream; keeps every raw byte (or only counts them)."""

    def __init__(self, request: bytes, log_arrivals: bool, keep: bool = True) -> None:
        self.request = request
        self.log_arrivals = log_arrivals
        self.keep = keep
        self.chunks: list[bytes] = []
        self.received = 0
        self.arrivals: list[tuple[float, int]] = []
        self.connected_at: float | None = None
        self.first_byte_at: float | None = None
        self.ended_at: float | None = None
        self.error: str | None = None
        self.transport: asyncio.Transport | None = None
        self.on_data: Callable[[bytes], None] | None = None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.connected_at = time.monotonic()
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        if self.first_byte_at is None:
            self.first_byte_at = now
        self.received += len(data)
        if self.keep:
            self.chunks.append(data)
        if self.on_data is not None:
            self.on_data(data)
        if self.log_arrivals:
            self.arrivals.append((now, self.received))

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.ended_at = time.monotonic()
        if exc is not None:
            self.error = f"{type(exc).__name__}: {exc}"
        if not self.done.done():
            self.done.set_result(None)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()


def follow_request(job_id: int, token: str) -> bytes:
    return (
        f"GET /api/jobs/{job_id}/output/stdout?follow=1 HTTP/1.1\r\n"
        f"Host: 127.0.0.1\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    ).encode("ascii")


async def connect(
    port: int, request: bytes, log_arrivals: bool, keep: bool = True, rcvbuf: int | None = None
) -> Follower:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, ("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    _, protocol = await loop.create_connection(
        lambda: Follower(request, log_arrivals, keep), sock=sock
    )
    return protocol


def parse_response(raw: bytes) -> tuple[int, dict[str, str], bytes, list[tuple[int, int]]]:
    """(status, headers, body, segments): segments map body offsets to raw
    offsets, as (raw offset of a chunk's data, body offset of its first byte)."""
    head, sep, rest = raw.partition(b"\r\n\r\n")
    if not sep:
        raise ValueError(f"no complete response head in {raw[:200]!r}")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    base = len(head) + 4
    if "chunked" not in headers.get("transfer-encoding", "").lower():
        return status, headers, rest, [(base, 0)]
    body = bytearray()
    segments = []
    position = 0
    while True:
        end = rest.index(b"\r\n", position)
        size = int(rest[position:end].split(b";")[0], 16)
        position = end + 2
        if size == 0:
            break
        segments.append((base + position, len(body)))
        body += rest[position : position + size]
        if len(rest) < position + size:
            raise ValueError("truncated chunk")
        position += size + 2
    return status, headers, bytes(body), segments


def arrival_of(follower: Follower, segments: list[tuple[int, int]], body_offset: int) -> float:
    """When the follower received the byte at C{body_offset} of the body."""
    raw_offset = 0
    for raw_start, body_start in segments:
        if body_start > body_offset:
            break
        raw_offset = raw_start + (body_offset - body_start)
    for when, received in follower.arrivals:
        if received > raw_offset:
            return when
    return float("nan")


def check_body(body: bytes, expected: bytes) -> str | None:
    """None if the body is exactly the expected lines; else what is wrong."""
    if body == expected:
        return None
    got = body.split(b"\n")
    want = expected.split(b"\n")
    for index, (a, b) in enumerate(zip(got, want, strict=False)):
        if a != b:
            return f"line {index + 1}: got {a[:40]!r}, expected {b[:40]!r}"
    return f"{len(got) - 1} lines instead of {len(want) - 1}"


# --------------------------------------------------------------------------
# Phases
# --------------------------------------------------------------------------


async def settle(daemon: Daemon, result: dict[str, Any]) -> None:
    """Let the fresh daemon go idle, note its RSS and reset its peak to it."""
    await asyncio.sleep(0.5)
    result["rss_idle_mib"] = benchlib.proc_status(daemon.pid, "VmRSS") / MIB
    result["peak_rss_at_start_mib"] = benchlib.proc_status(daemon.pid, "VmHWM") / MIB
    result["peak_reset"] = reset_peak_rss(daemon.pid)


async def wait_daemon_idle(pid: int, timeout: float = 60.0) -> float:
    """Wait until the daemon uses under 2 % CPU over 0.3 s; returns seconds waited."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        before = benchlib.proc_cpu_seconds(pid)
        await asyncio.sleep(0.3)
        if benchlib.proc_cpu_seconds(pid) - before <= 0.006:
            break
    return time.monotonic() - t0


async def chatty_phase(
    workdir: Path,
    template: Path,
    followers: int,
    lines: int,
    profile: Path | None,
) -> dict[str, Any]:
    daemon = Daemon(workdir, f"chatty-{followers}", [], profile, template)
    gate = daemon.dir / "go"
    # The job waits for the gate file, so every follower is connected (and its
    # request handled) before the first line; then ~100 lines/s.
    command = (
        f"while [ ! -e {gate} ]; do sleep 0.05; done; "
        f"for i in $(seq {lines}); do echo line $i; sleep 0.01; done"
    )
    expected = b"".join(b"line %d\n" % i for i in range(1, lines + 1))
    result: dict[str, Any] = {"followers": followers, "command": command}
    streams: list[Follower] = []
    loop = asyncio.get_running_loop()
    try:
        daemon.start()
        await settle(daemon, result)
        t0 = time.monotonic()
        sampler = Sampler(daemon.pid, t0)
        sampler.start()
        cpu_connect0 = benchlib.proc_cpu_seconds(daemon.pid)
        job_id = await loop.run_in_executor(None, daemon.submit, command)
        final = loop.run_in_executor(None, daemon.wait_final, job_id)
        request = follow_request(job_id, daemon.token)
        step = max(1, followers // SKEW_SAMPLE)
        for first in range(0, followers, BATCH):
            batch = range(first, min(followers, first + BATCH))
            streams += await asyncio.gather(
                *(connect(daemon.port, request, i % step == 0) for i in batch)
            )
        result["all_connected_after_s"] = time.monotonic() - t0
        await wait_daemon_idle(daemon.pid)
        result["requests_handled_after_s"] = time.monotonic() - t0
        result["daemon_cpu_s_connecting"] = benchlib.proc_cpu_seconds(daemon.pid) - cpu_connect0
        result["rss_connected_mib"] = benchlib.proc_status(daemon.pid, "VmRSS") / MIB
        # The measured window: from the gate opening until every stream ended.
        client0 = self_cpu_seconds()
        cpu0 = benchlib.proc_cpu_seconds(daemon.pid)
        user0, sys0 = proc_cpu_split(daemon.pid)
        gate.touch()
        t_gate = time.monotonic()
        final_seen, job = await final
        cpu_final = benchlib.proc_cpu_seconds(daemon.pid)
        result["job"] = {
            k: job.get(k) for k in ("id", "state", "exit_code", "created", "completed")
        }
        result["job_final_after_s"] = final_seen - t_gate
        if streams:
            await asyncio.wait([s.done for s in streams], timeout=END_GRACE)
        all_done = time.monotonic()
        cpu_done = benchlib.proc_cpu_seconds(daemon.pid)
        user1, sys1 = proc_cpu_split(daemon.pid)
        result["daemon_user_s"] = user1 - user0
        result["daemon_sys_s"] = sys1 - sys0
        client_cpu = self_cpu_seconds() - client0
        await sampler.stop()
        result["daemon_cpu_s_to_final"] = cpu_final - cpu0
        result["daemon_cpu_s"] = cpu_done - cpu0
        result["window_s"] = all_done - t_gate
        result["peak_rss_mib"] = benchlib.proc_status(daemon.pid, "VmHWM") / MIB
        result["client_cpu_s"] = client_cpu
        result["daemon"] = sampler.summary()
        # Verify every stream.
        ok = 0
        problems: dict[str, int] = {}
        end_lags: list[float] = []
        never_ended = 0
        skews: list[float] = []
        per_line: dict[int, list[float]] = {}
        offsets = {}
        position = 0
        for i in range(1, lines + 1):
            position += len(b"line %d\n" % i)
            if i % 100 == 0 or i == lines:
                offsets[i] = position - 1
        for stream in streams:
            if stream.ended_at is None:
                never_ended += 1
                continue
            end_lags.append(stream.ended_at - final_seen)
            try:
                status, _, body, segments = parse_response(b"".join(stream.chunks))
            except ValueError as e:
                problems[f"unparsable: {e}"] = problems.get(f"unparsable: {e}", 0) + 1
                continue
            wrong = f"HTTP {status}" if status != 200 else check_body(body, expected)
            if wrong is None:
                ok += 1
            else:
                problems[wrong] = problems.get(wrong, 0) + 1
            if stream.log_arrivals and wrong is None:
                for i, offset in offsets.items():
                    per_line.setdefault(i, []).append(arrival_of(stream, segments, offset))
        for times in per_line.values():
            earliest = min(times)
            skews += [t - earliest for t in times]
        result["streams"] = {
            "complete_in_order": ok,
            "problems": problems,
            "never_ended": never_ended,
            "end_lag_p50_ms": statistics.median(end_lags) * 1e3 if end_lags else None,
            "end_lag_max_ms": max(end_lags) * 1e3 if end_lags else None,
            "skew_sampled_followers": len({id(s) for s in streams if s.log_arrivals}),
            "skew_p50_ms": benchlib.percentile(skews, 0.5) * 1e3 if skews else None,
            "skew_p99_ms": benchlib.percentile(skews, 0.99) * 1e3 if skews else None,
            "skew_max_ms": max(skews) * 1e3 if skews else None,
            "errors": sorted({s.error for s in streams if s.error}),
        }
    except Exception as e:
        result["error"] = f"{type(e).__name__}: {e}"
        result["log_tail"] = daemon.log_tail()
        print(f"  phase failed: {e}\n{daemon.log_tail()}", file=sys.stderr)
    finally:
        for stream in streams:
            stream.close()
        result["exit_status"] = daemon.stop()
    if profile is not None and profile.exists():
        result["profile"] = profile_summary(profile)
    return result


class ChunkedBody:
    """Incremental HTTP/1.1 response reader: counts the body's bytes and
    checks that every one of them is C{fill}, without keeping them."""

    def __init__(self, fill: int) -> None:
        self.fill = fill
        self.head = bytearray()
        self.in_body = False
        self.chunked = False
        self.status_line = ""
        self.body_bytes = 0
        self.all_fill = True
        self._pending = b""
        self._left = 0  # bytes left in the current chunk's data
        self._finished = False

    def _take(self, data: bytes) -> None:
        self.body_bytes += len(data)
        if self.all_fill and data.count(self.fill) != len(data):
            self.all_fill = False

    def feed(self, data: bytes) -> None:
        if not self.in_body:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.head[:end]).decode("latin-1")
            self.status_line = head.split("\r\n")[0]
            self.chunked = "transfer-encoding: chunked" in head.lower()
            data = bytes(self.head[end + 4 :])
            self.in_body = True
        if not self.chunked:
            self._take(data)
            return
        buffer = self._pending + data
        position = 0
        while position < len(buffer) and not self._finished:
            if self._left > 0:
                piece = buffer[position : position + self._left]
                self._take(piece)
                self._left -= len(piece)
                position += len(piece)
                if self._left == 0:
                    self._left = -2  # the CRLF after the data
                continue
            if self._left < 0:
                skip = min(-self._left, len(buffer) - position)
                self._left += skip
                position += skip
                continue
            end = buffer.find(b"\r\n", position)
            if end < 0:
                break
            size = int(buffer[position:end].split(b";")[0], 16)
            position = end + 2
            if size == 0:
                self._finished = True
            self._left = size
        self._pending = buffer[position:]


async def slow_phase(
    workdir: Path, template: Path, mode: str, megabytes: int, gap: float, stall: float
) -> dict[str, Any]:
    """mode: none (nobody follows), slow (reads nothing for C{stall} s), fast."""
    slice_bytes = megabytes * 1_000_000 // 10
    command = (
        f"sleep 1; for i in $(seq 10); do head -c {slice_bytes} /dev/zero | tr '\\0' x; "
        f"sleep {gap:g}; done"
    )
    total = slice_bytes * 10
    extra = ["--max-output-bytes", str(64 * MIB)]
    daemon = Daemon(workdir, f"slow-{mode}", extra, None, template)
    result: dict[str, Any] = {"mode": mode, "command": command, "bytes": total}
    stream: Follower | None = None
    loop = asyncio.get_running_loop()
    try:
        daemon.start()
        await settle(daemon, result)
        t0 = time.monotonic()
        sampler = Sampler(daemon.pid, t0)
        sampler.start()
        cpu0 = benchlib.proc_cpu_seconds(daemon.pid)
        job_id = await loop.run_in_executor(None, daemon.submit, command)
        final = loop.run_in_executor(None, daemon.wait_final, job_id)
        reader = ChunkedBody(ord("x"))
        if mode != "none":
            stream = await connect(
                daemon.port,
                follow_request(job_id, daemon.token),
                log_arrivals=False,
                keep=False,
                rcvbuf=64 * 1024 if mode == "slow" else None,
            )
            stream.on_data = reader.feed
            if mode == "slow":
                assert stream.transport is not None
                stream.transport.pause_reading()
                await asyncio.sleep(stall)
                result["rss_at_resume_mib"] = benchlib.proc_status(daemon.pid, "VmRSS") / MIB
                result["peak_rss_at_resume_mib"] = benchlib.proc_status(daemon.pid, "VmHWM") / MIB
                result["received_before_resume"] = stream.received
                client_port = stream.transport.get_extra_info("sockname")[1]
                result["kernel_queues_at_resume"] = tcp_queues(daemon.port, client_port)
                result["resumed_after_s"] = time.monotonic() - t0
                stream.transport.resume_reading()
        final_seen, job = await final
        result["job"] = {
            k: job.get(k) for k in ("id", "state", "exit_code", "created", "completed")
        }
        result["job_final_after_s"] = final_seen - t0
        if stream is not None:
            await asyncio.wait([stream.done], timeout=END_GRACE)
            result["stream_ended"] = stream.ended_at is not None
            result["stream_end_after_final_ms"] = (
                (stream.ended_at - final_seen) * 1e3 if stream.ended_at else None
            )
            result["status_line"] = reader.status_line
            result["received_raw_bytes"] = stream.received
            result["body_bytes"] = reader.body_bytes
            result["body_all_x"] = reader.all_fill
            result["body_complete"] = reader.body_bytes == total and reader.all_fill
        result["daemon_cpu_s"] = benchlib.proc_cpu_seconds(daemon.pid) - cpu0
        await sampler.stop()
        result["peak_rss_mib"] = benchlib.proc_status(daemon.pid, "VmHWM") / MIB
        result["daemon"] = sampler.summary()
        status, outcome = await loop.run_in_executor(
            None, daemon.call, "GET", f"/api/results/{job_id}"
        )
        result["stdout_bytes"] = outcome.get("stdout_bytes") if status == 200 else None
        result["stdout_truncated"] = (
            outcome.get("truncated", {}).get("stdout") if status == 200 else None
        )
    except Exception as e:
        result["error"] = f"{type(e).__name__}: {e}"
        result["log_tail"] = daemon.log_tail()
        print(f"  phase failed: {e}\n{daemon.log_tail()}", file=sys.stderr)
    finally:
        if stream is not None:
            stream.close()
        result["exit_status"] = daemon.stop()
    return result


def profile_summary(path: Path, top: int = 25) -> dict[str, Any]:
    stats = pstats.Stats(str(path))
    rows: dict[str, Any] = {}
    for key in ("cumulative", "tottime"):
        entries = sorted(
            stats.stats.items(),  # type: ignore[attr-defined]
            key=lambda item: item[1][3] if key == "cumulative" else item[1][2],
            reverse=True,
        )[:top]
        rows[key] = [
            {
                "function": f"{Path(file).name}:{line}({name})",
                "calls": calls,
                "tottime_s": round(tottime, 3),
                "cumtime_s": round(cumtime, 3),
            }
            for (file, line, name), (_, calls, tottime, cumtime, _) in entries
        ]
    return rows


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------


def render(results: dict[str, Any]) -> list[str]:
    out = []
    chatty = results["chatty"]
    base = next((p for p in chatty if p["followers"] == 0 and "error" not in p), None)
    out.append(
        f"{'followers':>9s} {'CPU s':>7s} {'/0':>7s} {'ms/follower':>11s} {'peak RSS':>9s} "
        f"{'/0':>6s} {'idle':>6s} {'thr':>4s} {'fds':>5s} {'complete':>9s} {'ended':>6s} "
        f"{'end lag p50/max ms':>19s} {'skew p50/p99/max ms':>21s} {'job s':>6s} "
        f"{'client CPU':>10s} {'connect s':>9s} {'CPU s':>6s}"
    )
    for p in chatty:
        if "error" in p:
            out.append(f"{p['followers']:9d} failed: {p['error']}")
            continue
        s = p["streams"]
        n = p["followers"]
        cpu_ratio = p["daemon_cpu_s"] / base["daemon_cpu_s"] if base else float("nan")
        rss_ratio = p["peak_rss_mib"] / base["peak_rss_mib"] if base else float("nan")
        per = (p["daemon_cpu_s"] - base["daemon_cpu_s"]) / n * 1e3 if base and n else None

        def fmt(v: float | None, spec: str = ".0f") -> str:
            return "-" if v is None else format(v, spec)

        lag = f"{fmt(s['end_lag_p50_ms'])}/{fmt(s['end_lag_max_ms'])}"
        skew = f"{fmt(s['skew_p50_ms'])}/{fmt(s['skew_p99_ms'])}/{fmt(s['skew_max_ms'])}"
        job_s = p["job_final_after_s"]
        out.append(
            f"{n:9d} {p['daemon_cpu_s']:7.2f} {cpu_ratio:6.2f}x {fmt(per, '11.2f'):>11s} "
            f"{p['peak_rss_mib']:8.1f}M {rss_ratio:5.2f}x {p['rss_idle_mib']:5.1f}M "
            f"{p['daemon']['max_threads']:4d} {p['daemon']['max_fds']:5d} "
            f"{s['complete_in_order']:4d}/{n:<4d} {n - s['never_ended']:6d} {lag:>19s} "
            f"{skew:>21s} {job_s:6.1f} {p['client_cpu_s']:9.1f}s "
            f"{p['requests_handled_after_s']:9.1f} {p['daemon_cpu_s_connecting']:6.2f}"
        )
        if s["problems"] or s["errors"]:
            out.append(f"          problems: {s['problems']} errors: {s['errors']}")
    out.append("")
    out.append(
        f"{'slow phase':10s} {'peak RSS':>9s} {'idle':>6s} {'peak@resume':>11s} "
        f"{'kernel queues@resume':>20s} {'CPU s':>6s} {'body bytes':>12s} {'exact':>5s} "
        f"{'ended':>5s} {'end-final ms':>12s} {'job s':>6s} {'kept bytes':>11s}"
    )
    for p in results["slow"]:
        if "error" in p:
            out.append(f"{p['mode']:10s} failed: {p['error']}")
            continue
        resume = p.get("peak_rss_at_resume_mib")
        queues = p.get("kernel_queues_at_resume")
        sent = (
            f"{queues['daemon_send_queue'] / MIB:.1f}M+{queues['client_receive_queue'] / MIB:.1f}M"
            if queues
            else None
        )
        end_ms = p.get("stream_end_after_final_ms")
        out.append(
            f"{p['mode']:10s} {p['peak_rss_mib']:8.1f}M {p['rss_idle_mib']:5.1f}M "
            f"{('-' if resume is None else f'{resume:.1f}M'):>11s} "
            f"{('-' if sent is None else sent):>20s} "
            f"{p['daemon_cpu_s']:6.2f} {p.get('body_bytes', 0):12,d} "
            f"{p.get('body_complete', '-')!s:>5s} {p.get('stream_ended', '-')!s:>5s} "
            f"{('-' if end_ms is None else f'{end_ms:.0f}'):>12s} {p['job_final_after_s']:6.1f} "
            f"{p.get('stdout_bytes') or 0:11,d}"
        )
    return out


def make_template(workdir: Path) -> Path:
    """A data directory after one first start (admin user and token made)."""
    daemon = Daemon(workdir, "template", [], None)
    try:
        daemon.start()
    finally:
        daemon.stop()
    return daemon.dir / "data"


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    results: dict[str, Any] = {"chatty": [], "slow": []}
    template = make_template(workdir)
    largest = max(args.followers)
    for n in args.followers:
        profile = workdir / "profile.pstats" if args.profile and n == largest else None
        print(f"  chatty job, {n} followers ...", flush=True)
        results["chatty"].append(await chatty_phase(workdir, template, n, args.lines, profile))
    for mode in ("none", "slow", "fast"):
        if args.quick and mode == "fast":
            continue
        print(f"  {args.slow_mb} MB job, follower: {mode} ...", flush=True)
        results["slow"].append(
            await slow_phase(workdir, template, mode, args.slow_mb, args.gap, args.stall)
        )
    return results


def main() -> None:
    parser = benchlib.arg_parser(__doc__, quick_help="150 lines, 0/10/100, 10 MB")
    parser.add_argument("--followers", default=None, help="comma-separated (0,10,1000)")
    parser.add_argument("--lines", type=int, default=None, help="lines of the chatty job (2000)")
    parser.add_argument("--slow-mb", type=int, default=None, help="MB of the slow job (50)")
    parser.add_argument("--stall", type=float, default=None, help="slow follower stall (10 s)")
    parser.add_argument("--profile", action="store_true", help="cProfile the largest phase")
    parser.add_argument(
        "--backlog", type=int, default=None, help="listen backlog for cmdd (default: cmdd's, 50)"
    )
    parser.add_argument("--out", default=None, help="JSON result path")
    args = parser.parse_args()
    global LISTEN_SUFFIX
    if args.backlog:
        LISTEN_SUFFIX = f":backlog={args.backlog}"
    args.followers = [
        int(n) for n in (args.followers or ("0,10,100" if args.quick else "0,10,1000")).split(",")
    ]
    args.lines = args.lines or (150 if args.quick else 2000)
    args.slow_mb = args.slow_mb or (10 if args.quick else 50)
    args.stall = args.stall if args.stall is not None else (2.0 if args.quick else 10.0)
    # Seconds between the slow job's 10 slices.
    args.gap = 0.2 if args.quick else 1.0
    benchlib.RESULTS.mkdir(exist_ok=True)
    when = time.strftime("%Y%m%d-%H%M%S")
    suffix = "-quick" if args.quick else ""
    out_path = (
        Path(args.out) if args.out else benchlib.RESULTS / f"follow_bench-{when}{suffix}.json"
    )
    # Each follower is one socket here and one in the daemon (which inherits
    # this limit), plus the daemon's own files.
    limits = file_limit(max(args.followers) + 512)
    meta: dict[str, Any] = {
        "benchmark": "follow_bench",
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "quick": args.quick,
        "followers": args.followers,
        "lines": args.lines,
        "slow_mb": args.slow_mb,
        "stall_s": args.stall,
        "profile": args.profile,
        "backlog": args.backlog,
        "nofile_limit": limits,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
        **benchlib.git_meta(),
    }
    print(
        f"follow_bench {meta['when']}  followers {args.followers}, {args.lines} lines, "
        f"{args.slow_mb} MB slow job  cmdd at {meta['git_commit']}"
        f"{' + uncommitted changes' if meta['git_dirty_files'] else ''}  "
        f"RLIMIT_NOFILE {limits['soft']}/{limits['hard']}"
        f"{' raised to ' + str(limits['raised_to']) if limits['raised_to'] else ''}  loadavg "
        f"{' '.join(f'{x:.2f}' for x in meta['loadavg_start'])}",
        flush=True,
    )
    started = time.time()
    workdir = Path(tempfile.mkdtemp(prefix="follow-bench-", dir=benchlib.RESULTS))
    try:
        results = {**meta, **asyncio.run(run(args, workdir))}
    finally:
        for daemon in STARTED:
            daemon.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    results["seconds"] = time.time() - started
    results["loadavg_end"] = os.getloadavg()
    out_path.write_text(json.dumps(results, indent=1) + "\n")
    print()
    for line in render(results):
        print(line)
    for p in results["chatty"]:
        if "profile" in p:
            print(f"\ncProfile of the {p['followers']}-follower phase, top by own time:")
            for row in p["profile"]["tottime"][:15]:
                print(
                    f"  {row['tottime_s']:8.2f} s own {row['cumtime_s']:8.2f} s cum "
                    f"{row['calls']:>9,d}  {row['function']}"
                )
    print(f"\n{results['seconds']:.0f} s; results in {out_path}")


if __name__ == "__main__":
    main()
