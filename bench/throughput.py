#!/usr/bin/env python3
"""Throughput benchmark for cmdd, against baselines measured in the same run.

Run from the repository root:

    .venv/bin/python bench/throughput.py [--jobs N] [--concurrency C] [--quick]

What it measures (see bench/README.md for the details):

  A  reactor.spawnProcess of /bin/true in a bare Twisted process, N processes,
     up to C at once: the ceiling of any Twisted daemon that spawns.
  B  os.posix_spawn + waitpid of /bin/true in a loop: the machine's ceiling.
  C  adnanh/webhook (Debian package "webhook") running /bin/true per request,
     synchronously, under the same HTTP load (N requests, C connections).
  cmdd over plain TCP and over TLS: N jobs {"command_line": ["/bin/true"]}
     POSTed by C concurrent keep-alive clients, each request with the admin
     bearer token cmdd wrote to DATA_DIR/admin.token; jobs/s from the first job
     created to the last job completed (the daemon's own timestamps), POST
     latency p50/p99, peak RSS (VmHWM) and CPU seconds of the daemon.
  D  (context only) 100-byte appends + fsync in a loop, on the disk of the
     temporary directory, where the daemon's journal is.
  heap  spawn rates in two bare Twisted processes, one of which grew its heap
     by ~1 GiB of Python objects, measured in alternation: posix_spawn,
     subprocess (vfork and forced fork), Twisted's posix_spawnp path, Twisted's
     fork path (path=...), and cmdd's own LocalExecutor.

Runs A, B, C and cmdd are repeated (--repeats, interleaved) and the best run
of each is shown: the machine is shared, and noise only ever slows a run down.

The load generator is `hey` (Debian package "hey", a Go program) when it is on
PATH, else a small asyncio client in a separate process (--client python).
Everything binds to 127.0.0.1; every process started here is stopped at the
end, also on error or Ctrl-C.

Internal: the same file runs its helper processes (`--child ...`).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import gc
import io
import json
import os
import platform
import resource
import select
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS_DIR = HERE / "results"
BODY = b'{"command_line":["/bin/true"]}'
TRUE = "/bin/true"
CHILD_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
MIB = 1024 * 1024
#: How the bearer token reaches the --client python helper (not its argv).
TOKEN_ENV = "CMDD_BENCH_TOKEN"

# --------------------------------------------------------------------------
# Child process: spawn-rate measurements (baselines A, B and the heap test)
# --------------------------------------------------------------------------

TWISTED_METHODS = ("twisted", "twisted_setsid", "cmdd_executor", "twisted_path")
SYNC_METHODS = ("posix_spawn", "popen_vfork", "popen_fork", "fsync")

METHOD_LABELS = {
    "posix_spawn": "os.posix_spawn + waitpid loop",
    "popen_vfork": "subprocess.Popen (vfork), loop",
    "popen_fork": "subprocess.Popen + preexec_fn (fork), loop",
    "twisted": "Twisted spawnProcess (posix_spawnp)",
    "twisted_setsid": "Twisted spawnProcess setsid -- /bin/true",
    "cmdd_executor": "cmdd LocalExecutor.launch (setsid, no path)",
    "twisted_path": "Twisted spawnProcess path=/ (fork path)",
    "fsync": "append 100 bytes + fsync, loop",
}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _noop() -> None:
    pass


def _sync_rate(method: str, n: int, seconds: float) -> dict[str, Any]:
    """Spawn /bin/true and wait for it, one at a time (or fsync appends)."""
    fd = -1
    if method == "fsync":
        # On the file system of the temporary directory, where cmdd's data is.
        scratch = tempfile.mkdtemp(prefix="cmdd-bench-fsync-")
        fd = os.open(os.path.join(scratch, "f"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    done = 0
    cpu0 = time.process_time()
    start = time.perf_counter()
    deadline = start + seconds
    while done < n and time.perf_counter() < deadline:
        if method == "posix_spawn":
            pid = os.posix_spawn(TRUE, [TRUE], CHILD_ENV)
            os.waitpid(pid, 0)
        elif method == "popen_vfork":
            subprocess.Popen([TRUE], close_fds=True, env=CHILD_ENV).wait()
        elif method == "popen_fork":
            # A preexec_fn makes _posixsubprocess use fork() instead of vfork().
            subprocess.Popen(
                [TRUE], close_fds=True, env=CHILD_ENV, preexec_fn=_noop
            ).wait()
        elif method == "fsync":
            os.write(fd, b"x" * 99 + b"\n")
            os.fsync(fd)
        else:
            raise ValueError(method)
        done += 1
    elapsed = time.perf_counter() - start
    if fd >= 0:
        os.close(fd)
        shutil.rmtree(scratch, ignore_errors=True)
    return {
        "count": done,
        "seconds": elapsed,
        "rate": done / elapsed,
        "concurrency": 1,
        "cpu_ms_per_spawn": 1000 * (time.process_time() - cpu0) / max(1, done),
    }


async def _twisted_rate(
    reactor: Any, method: str, n: int, concurrency: int, seconds: float
) -> dict[str, Any]:
    """Spawn /bin/true through Twisted, up to C at once, until N or T is reached."""
    from twisted.internet.defer import Deferred
    from twisted.internet.protocol import ProcessProtocol

    setsid = shutil.which("setsid") or "/usr/bin/setsid"
    finished: Deferred[None] = Deferred()
    state = {"started": 0, "inflight": 0, "done": 0, "failed": 0}
    cpu0 = time.process_time()
    start = time.perf_counter()
    deadline = start + seconds
    end_time = [start]

    class Ender(ProcessProtocol):
        def processEnded(self, reason: Any) -> None:
            ended(getattr(reason.value, "exitCode", None) == 0)

    executor = None
    io_worker = None
    if method == "cmdd_executor":
        from cmdd.runner import LocalExecutor
        from cmdd.spec import parse_spec
        from cmdd.spool import IOWorker, OutputSpool

        io_worker = IOWorker(reactor)
        io_worker.start()
        executor = LocalExecutor(
            reactor,
            setsid,
            base_environment={"HOME": os.path.expanduser("~")},
            default_directory=os.path.expanduser("~"),
        )
        spec = parse_spec({"command_line": [TRUE]})
        spool_dir = tempfile.mkdtemp(prefix="cmdd-bench-spool-")

    # Twisted takes its fork path when path differs from the current directory.
    other_dir = "/" if os.path.abspath(".") != "/" else "/tmp"

    def spawn_one() -> None:
        if method == "twisted":
            reactor.spawnProcess(Ender(), TRUE, [TRUE], env=CHILD_ENV)
        elif method == "twisted_setsid":
            reactor.spawnProcess(Ender(), setsid, [setsid, "--", TRUE], env=CHILD_ENV)
        elif method == "twisted_path":
            reactor.spawnProcess(Ender(), TRUE, [TRUE], env=CHILD_ENV, path=other_dir)
        elif method == "cmdd_executor":
            assert executor is not None
            job_id = state["started"]
            out = OutputSpool(io_worker, os.path.join(spool_dir, f"{job_id}.o"), MIB)  # type: ignore[arg-type]
            err = OutputSpool(io_worker, os.path.join(spool_dir, f"{job_id}.e"), MIB)  # type: ignore[arg-type]
            execution = executor.launch(job_id, spec, out, err)
            execution.ended().addCallback(lambda exit: ended(exit.exit_code == 0))
        else:
            raise ValueError(method)

    def launch_more() -> None:
        while (
            state["inflight"] < concurrency
            and state["started"] < n
            and time.perf_counter() < deadline
        ):
            state["started"] += 1
            state["inflight"] += 1
            spawn_one()
        if state["inflight"] == 0 and not finished.called:
            end_time[0] = time.perf_counter()
            finished.callback(None)

    def ended(ok: bool) -> None:
        state["inflight"] -= 1
        state["done"] += 1
        if not ok:
            state["failed"] += 1
        launch_more()

    reactor.callLater(0, launch_more)
    await finished
    cpu = time.process_time() - cpu0
    if io_worker is not None:
        io_worker.stop()
        shutil.rmtree(spool_dir, ignore_errors=True)
    elapsed = end_time[0] - start
    return {
        "count": state["done"],
        "failed": state["failed"],
        "seconds": elapsed,
        "rate": state["done"] / elapsed,
        "concurrency": concurrency,
        "cpu_ms_per_spawn": 1000 * cpu / max(1, state["done"]),
    }


def _grow_heap(heap: list[bytes], mib: int) -> dict[str, Any]:
    """Grow the process's heap by about MIB MiB of small Python objects."""
    t0 = time.perf_counter()
    target = _rss_bytes() + mib * MIB
    while _rss_bytes() < target:
        # ~120 bytes each (88-byte payload + header + list slot).
        heap.extend([bytes(88) for _ in range(1 << 20)])
    # Keep the collector out of the measurement (not what is measured).
    gc.collect()
    gc.freeze()
    return {"heap_grow_seconds": time.perf_counter() - t0, "heap_objects": len(heap)}


async def _measure(
    reactor: Any, method: str, n: int, concurrency: int, seconds: float
) -> dict[str, Any]:
    if method in SYNC_METHODS:
        return _sync_rate(method, n, seconds)
    return await _twisted_rate(reactor, method, n, concurrency, seconds)


def child_spawn_server(config: dict[str, Any]) -> None:
    """A bare Twisted process that measures on request: one JSON command per
    line on stdin ({"grow_heap_mib": M} or {"method": ..., "n": ...,
    "concurrency": ..., "seconds": ...}), one JSON answer per line on stdout.

    Two of these, one with a small heap and one with a big heap, measured in
    alternation, see the same noise from the shared machine."""
    from twisted.internet import reactor, stdio
    from twisted.internet.defer import Deferred
    from twisted.protocols.basic import LineReceiver

    heap: list[bytes] = []

    class Server(LineReceiver):
        delimiter = b"\n"

        def connectionMade(self) -> None:
            self.sendLine(json.dumps({"ready": True, "rss_mib": _rss_bytes() / MIB}).encode())

        def lineReceived(self, line: bytes) -> None:
            Deferred.fromCoroutine(self._handle(json.loads(line))).addErrback(
                lambda failure: self.sendLine(
                    json.dumps({"error": failure.getTraceback()}).encode()
                )
            )

        async def _handle(self, command: dict[str, Any]) -> None:
            if "grow_heap_mib" in command:
                answer = _grow_heap(heap, int(command["grow_heap_mib"]))
            else:
                answer = await _measure(
                    reactor, command["method"], command["n"], command["concurrency"],
                    command["seconds"],
                )
            answer["rss_mib"] = _rss_bytes() / MIB
            self.sendLine(json.dumps(answer).encode())

        def connectionLost(self, reason: Any = None) -> None:
            if reactor.running:
                reactor.stop()

    stdio.StandardIO(Server())
    reactor.run()


def child_spawn(config: dict[str, Any]) -> None:
    """Run the phases in CONFIG in one bare Twisted process; print JSON."""
    from twisted.internet.defer import Deferred
    from twisted.internet.task import react

    results: dict[str, Any] = {"phases": []}
    heap: list[bytes] = []

    async def run(reactor: Any) -> None:
        for phase in config["phases"]:
            grow = int(phase.get("grow_heap_mib", 0))
            out: dict[str, Any] = {"name": phase["name"], "methods": {}}
            if grow:
                out.update(_grow_heap(heap, grow))
            out["rss_mib"] = _rss_bytes() / MIB
            methods = list(phase["methods"])
            rounds = int(phase.get("rounds", 1))
            samples: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
            for round_index in range(rounds):
                # Rotate the order each round so no method always follows another.
                shift = round_index % len(methods)
                for method in methods[shift:] + methods[:shift]:
                    result = await _measure(
                        reactor, method, phase["n"], phase["concurrency"],
                        phase["seconds"],
                    )
                    samples[method].append(result)
            for method in methods:
                # The best round: on a shared machine noise only ever slows down.
                chosen = dict(max(samples[method], key=lambda r: r["rate"]))
                chosen["samples"] = [round(r["rate"], 1) for r in samples[method]]
                out["methods"][method] = chosen
            results["phases"].append(out)

    def main(reactor: Any) -> Deferred[None]:
        return Deferred.fromCoroutine(run(reactor))

    try:
        react(main)
    except SystemExit as e:
        if e.code:
            raise
    print(json.dumps(results))


# --------------------------------------------------------------------------
# Child process: asyncio HTTP/1.1 keep-alive load generator (fallback client)
# --------------------------------------------------------------------------


async def _python_load(
    url: str, n: int, concurrency: int, body: bytes, token: str | None = None
) -> dict[str, Any]:
    parsed = urllib.parse.urlsplit(url)
    host = parsed.hostname or "127.0.0.1"
    tls = parsed.scheme == "https"
    port = parsed.port or (443 if tls else 80)
    context = None
    if tls:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    authorization = f"Authorization: Bearer {token}\r\n" if token else ""
    request = (
        f"POST {parsed.path or '/'} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"{authorization}"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode("ascii") + body
    tickets = iter(range(n))
    latencies: list[float] = []
    offsets: list[float] = []
    statuses: Counter[int] = Counter()
    start = time.perf_counter()

    async def worker() -> None:
        reader = writer = None
        for _ in tickets:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port, ssl=context)
            assert reader is not None
            sent = time.perf_counter()
            writer.write(request)
            status_line = await reader.readline()
            status = int(status_line.split()[1])
            length = 0
            close = False
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b"\n", b""):
                    break
                name, _, value = line.decode("latin-1").partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    length = int(value)
                elif name == "connection" and value.strip().lower() == "close":
                    close = True
            if length:
                await reader.readexactly(length)
            now = time.perf_counter()
            latencies.append(now - sent)
            offsets.append(sent - start)
            statuses[status] += 1
            if close:
                writer.close()
                reader = writer = None
        if writer is not None:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    total = time.perf_counter() - start
    return {
        "total_seconds": total,
        "latencies": latencies,
        "offsets": offsets,
        "statuses": {str(k): v for k, v in statuses.items()},
    }


def child_load(config: dict[str, Any]) -> None:
    result = asyncio.run(
        _python_load(
            config["url"], config["n"], config["concurrency"], BODY,
            os.environ.get(TOKEN_ENV) or None,
        )
    )
    print(json.dumps(result))


# --------------------------------------------------------------------------
# Orchestrator
# --------------------------------------------------------------------------


class Processes:
    """Every long-running process this run started, to stop them all at the end."""

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, **kwargs)
        self._procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], grace: float = 15.0) -> int | None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if proc in self._procs:
            self._procs.remove(proc)
        return proc.returncode

    def stop_all(self) -> None:
        for proc in list(self._procs):
            try:
                self.stop(proc)
            except Exception as e:  # keep stopping the others
                print(f"warning: could not stop pid {proc.pid}: {e}", file=sys.stderr)


def run_child(
    kind: str, config: dict[str, Any], timeout: float, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Run this file as a helper process and return the JSON it prints.

    ENV is added to this process's environment (secrets go there, not in argv)."""
    completed = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", kind, json.dumps(config)],
        capture_output=True,
        timeout=timeout,
        cwd=tempfile.gettempdir(),
        env={**os.environ, **env} if env else None,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(
            f"helper {kind} failed ({completed.returncode}):\n"
            + completed.stderr.decode(errors="replace")[-3000:]
        )
    result: dict[str, Any] = json.loads(completed.stdout.decode().strip().splitlines()[-1])
    return result


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def proc_status(pid: int, key: str) -> int:
    """A kB field of /proc/PID/status (VmHWM, VmRSS), in bytes."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process (not its children)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[index]


@dataclass
class LoadResult:
    client: str
    requests: int
    concurrency: int
    seconds: float  # first request sent to last response received
    p50_ms: float
    p99_ms: float
    statuses: dict[str, int]
    client_cpu_seconds: float
    errors: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else float("nan")


def run_load(
    client: str, url: str, n: int, concurrency: int, timeout: float,
    token: str | None = None,
) -> LoadResult:
    """POST BODY to URL N times over C persistent connections, with
    C{Authorization: Bearer TOKEN} on every request if TOKEN is given."""
    cpu0 = children_cpu_seconds()
    if client == "hey":
        # hey only takes headers on its command line, so while it runs the
        # token is visible in `ps` to other users of this machine.
        auth = ["-H", f"Authorization: Bearer {token}"] if token else []
        argv = [
            "hey", "-n", str(n), "-c", str(concurrency), "-m", "POST",
            "-T", "application/json", *auth, "-d", BODY.decode(), "-t", "60",
            "-disable-redirects", "-o", "csv", url,
        ]
        completed = subprocess.run(argv, capture_output=True, timeout=timeout, check=False)
        if completed.returncode != 0:
            raise RuntimeError("hey failed: " + completed.stderr.decode(errors="replace"))
        rows = list(csv.DictReader(io.StringIO(completed.stdout.decode())))
        latencies = [float(r["response-time"]) for r in rows]
        ends = [float(r["offset"]) + float(r["response-time"]) for r in rows]
        starts = [float(r["offset"]) for r in rows]
        statuses = Counter(r["status-code"] for r in rows)
        seconds = max(ends) - min(starts) if rows else float("nan")
        errors = []
        if len(rows) != n:
            errors.append(f"hey reported {len(rows)} responses of {n} requests")
            errors.extend(completed.stdout.decode(errors="replace").splitlines()[-5:])
    else:
        data = run_child(
            "load", {"url": url, "n": n, "concurrency": concurrency}, timeout,
            env={TOKEN_ENV: token} if token else None,
        )
        latencies = data["latencies"]
        seconds = data["total_seconds"]
        statuses = Counter(data["statuses"])
        errors = [] if len(latencies) == n else [f"{len(latencies)} responses of {n}"]
    return LoadResult(
        client=client,
        requests=len(latencies),
        concurrency=concurrency,
        seconds=seconds,
        p50_ms=percentile(latencies, 0.50) * 1000,
        p99_ms=percentile(latencies, 0.99) * 1000,
        statuses=dict(statuses),
        client_cpu_seconds=children_cpu_seconds() - cpu0,
        errors=errors,
    )


def http_get(
    url: str, context: ssl.SSLContext | None, timeout: float = 5.0, token: str | None = None
) -> tuple[int, bytes]:
    """GET URL; with C{Authorization: Bearer TOKEN} if TOKEN is given."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    opener = urllib.request.build_opener(
        NoRedirect(), urllib.request.HTTPSHandler(context=context)
    )
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with opener.open(request, timeout=timeout) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_until_listening(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited early with status {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                # A connect to an unused port in the ephemeral range can
                # connect the socket to itself (TCP simultaneous open).
                if s.getsockname()[1] != port:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


# --- baseline C: webhook -----------------------------------------------------


def bench_webhook(args: argparse.Namespace, procs: Processes, workdir: Path) -> dict[str, Any]:
    webhook = shutil.which("webhook")
    if webhook is None:
        return {"skipped": "webhook not installed (apt-get install -y webhook)"}
    version = subprocess.run(
        [webhook, "-version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    hooks = workdir / "hooks.json"
    hooks.write_text(
        json.dumps(
            [
                {
                    "id": "true",
                    "execute-command": TRUE,
                    # Makes webhook wait for the command before answering.
                    "include-command-output-in-response": True,
                }
            ]
        )
    )
    port = free_port()
    log = open(workdir / "webhook.log", "wb")
    try:
        proc = procs.start(
            [webhook, "-hooks", str(hooks), "-ip", "127.0.0.1", "-port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
        )
        wait_until_listening(port, proc, 15)
        cpu0 = proc_cpu_seconds(proc.pid)
        load = run_load(
            args.client, f"http://127.0.0.1:{port}/hooks/true", args.jobs,
            args.concurrency, args.timeout,
        )
        cpu = proc_cpu_seconds(proc.pid) - cpu0
        peak = proc_status(proc.pid, "VmHWM")
        procs.stop(proc)
    finally:
        log.close()
    return {
        "version": version,
        "jobs_per_second": load.rate,
        "load": asdict(load),
        "peak_rss_bytes": peak,
        "server_cpu_seconds": cpu,
        "ok": load.statuses.get("200", 0),
    }


# --- cmdd --------------------------------------------------------------------


def _timestamp(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _metrics(base: str, context: ssl.SSLContext | None, token: str) -> dict[str, float]:
    status, body = http_get(base + "/metrics", context, token=token)
    if status != 200:
        raise RuntimeError(f"/metrics answered {status}")
    out = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def _all_jobs(
    base: str, context: ssl.SSLContext | None, token: str
) -> Iterator[dict[str, Any]]:
    url: str | None = "/api/jobs?limit=1000"
    while url:
        status, body = http_get(base + url, context, timeout=30, token=token)
        if status != 200:
            raise RuntimeError(f"GET {url} answered {status}")
        page = json.loads(body)
        yield from page["jobs"]
        url = page["next"]


FINAL_STATES = ("succeeded", "failed", "not_executed", "cancelled", "lost")


def read_admin_token(data_dir: Path) -> str:
    """The admin bearer token cmdd writes to DATA_DIR/admin.token on first
    start (before it listens), one line."""
    path = data_dir / "admin.token"
    try:
        token = path.read_text(encoding="ascii").strip()
    except OSError as e:
        raise RuntimeError(f"cannot read the admin token: {e}") from None
    if not token or len(token.splitlines()) != 1:
        raise RuntimeError(f"{path} does not hold one token line")
    return token


def twistd_path() -> str:
    beside = Path(sys.executable).with_name("twistd")
    if beside.exists():
        return str(beside)
    found = shutil.which("twistd")
    if found is None:
        raise RuntimeError("twistd not found beside this Python nor on PATH")
    return found


def bench_cmdd(
    args: argparse.Namespace, procs: Processes, workdir: Path, scheme: str
) -> dict[str, Any]:
    port = free_port()
    data_dir = workdir / f"cmdd-{scheme}"
    kind = "tcp" if scheme == "http" else "ssl"
    argv = [
        twistd_path(), "-n", "--pidfile=", "cmdd",
        "--data-dir", str(data_dir),
        "--listen", f"{kind}:{port}:interface=127.0.0.1",
        "--max-running", str(args.max_running),
        *args.cmdd_arg,
    ]
    log_path = workdir / f"twistd-{kind}.log"
    log = open(log_path, "wb")
    proc: subprocess.Popen[bytes] | None = None
    try:
        t_start = time.monotonic()
        proc = procs.start(argv, stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
        wait_until_listening(port, proc, 30)
        startup = time.monotonic() - t_start
        # Every route but /healthz needs a bearer token; use the admin's.
        token = read_admin_token(data_dir)
        context = None
        if scheme == "https":
            context = ssl.create_default_context(cafile=str(data_dir / "tls" / "cert.pem"))
        base = f"{scheme}://127.0.0.1:{port}"
        status, _ = http_get(base + "/healthz", context, token=token)
        if status != 200:
            raise RuntimeError(f"/healthz answered {status}")
        # Check the token once before the load: a refused token would
        # otherwise give N 401s (and, after ten, 429s for this address).
        _metrics(base, context, token)
        idle_rss = proc_status(proc.pid, "VmRSS")
        cpu0 = proc_cpu_seconds(proc.pid)
        wall0 = time.monotonic()
        load = run_load(
            args.client, base + "/api/jobs", args.jobs, args.concurrency, args.timeout,
            token=token,
        )
        load_done = time.monotonic()
        if not load.statuses.get("202"):
            raise RuntimeError(f"no POST was accepted: statuses {load.statuses}")
        # Wait for every job to reach a final state, polling at a modest rate.
        deadline = load_done + args.timeout
        while True:
            metrics = _metrics(base, context, token)
            final = sum(metrics.get(f'cmdd_jobs{{state="{s}"}}', 0) for s in FINAL_STATES)
            if final >= metrics.get("cmdd_jobs_submitted_total", 0):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"jobs not done after {args.timeout} s: {metrics}")
            time.sleep(0.05)
        all_done = time.monotonic()
        cpu = proc_cpu_seconds(proc.pid) - cpu0
        peak = proc_status(proc.pid, "VmHWM")
        jobs = list(_all_jobs(base, context, token))
        states = Counter(job["state"] for job in jobs)
        created = [_timestamp(job["created"]) for job in jobs]
        completed = [_timestamp(job["completed"]) for job in jobs if job["completed"]]
        started = [_timestamp(job["started"]) for job in jobs if job["started"]]
        waits = [
            _timestamp(job["started"]) - _timestamp(job["created"])
            for job in jobs
            if job["started"]
        ]
        span = max(completed) - min(created)
        # Jobs that ended after the last POST arrived: the daemon's execution
        # rate once it no longer serves requests (a queue had built up).
        last_created = max(created)
        after = [t for t in completed if t > last_created]
        drain_rate = (
            len(after) / (max(after) - last_created)
            if len(after) >= 50 and max(after) > last_created
            else float("nan")
        )
        exit_status = procs.stop(proc)
    except Exception as e:
        log.flush()
        tail = log_path.read_text(errors="replace").splitlines()[-15:]
        state = "not started" if proc is None else f"exit status {proc.poll()}"
        raise RuntimeError(
            f"{type(e).__name__}: {e} (twistd {state}; log tail:\n  "
            + "\n  ".join(tail) + ")"
        ) from e
    finally:
        log.close()
    log_text = log_path.read_text(errors="replace")
    problems = [
        line for line in log_text.splitlines()
        if "Traceback" in line or "Unhandled" in line or "CRITICAL" in line
        or "#error" in line or "#critical" in line
    ]
    return {
        "listen": kind,
        "jobs": len(jobs),
        "states": dict(states),
        "jobs_per_second": len(jobs) / span if span > 0 else float("nan"),
        "server_span_seconds": span,
        "submit_span_seconds": max(created) - min(created),
        "drain_jobs": len(after),
        "drain_jobs_per_second": drain_rate,
        "wall_seconds_until_done": all_done - wall0,
        "drain_after_load_seconds": all_done - load_done,
        "queue_wait_p50_ms": percentile(waits, 0.5) * 1000,
        "queue_wait_max_ms": max(waits) * 1000 if waits else float("nan"),
        "started_span_seconds": max(started) - min(started) if started else float("nan"),
        "load": asdict(load),
        "idle_rss_bytes": idle_rss,
        "peak_rss_bytes": peak,
        "server_cpu_seconds": cpu,
        "startup_seconds": startup,
        "exit_status": exit_status,
        "log_problems": problems[:20],
        "log_lines": log_text.count("\n"),
    }


# --- the spawn children --------------------------------------------------------


def bench_baselines(args: argparse.Namespace) -> dict[str, Any]:
    config = {
        "phases": [
            {
                "name": "baselines",
                "methods": ["twisted", "posix_spawn"],
                "n": args.jobs,
                "concurrency": args.concurrency,
                "seconds": args.timeout,
            },
            {
                "name": "fsync",
                "methods": ["fsync"],
                "n": 100_000,
                "concurrency": 1,
                "seconds": 0.5,
            },
        ]
    }
    phases = run_child("spawn", config, args.timeout * 3)["phases"]
    phase: dict[str, Any] = phases[0]
    phase["methods"].update(phases[1]["methods"])
    return phase


HEAP_METHODS = [
    "posix_spawn", "popen_vfork", "popen_fork",
    "twisted", "twisted_setsid", "cmdd_executor", "twisted_path",
]


class SpawnServer:
    """The orchestrator's side of one C{--child spawn-server} process."""

    def __init__(self, procs: Processes, name: str) -> None:
        self.name = name
        self.proc = procs.start(
            [sys.executable, str(Path(__file__).resolve()), "--child", "spawn-server", "{}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=tempfile.gettempdir(),
        )
        self._buffer = b""
        self.ready = self._read(60)

    def ask(self, command: dict[str, Any], timeout: float) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command).encode() + b"\n")
        self.proc.stdin.flush()
        answer = self._read(timeout)
        if "error" in answer:
            raise RuntimeError(f"{self.name} heap helper failed:\n{answer['error']}")
        return answer

    def _read(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"{self.name} heap helper: no answer in {timeout} s")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise RuntimeError(f"{self.name} heap helper exited ({self.proc.poll()})")
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        answer: dict[str, Any] = json.loads(line)
        return answer


def bench_heap(args: argparse.Namespace, procs: Processes) -> dict[str, Any]:
    """Spawn rates in two identical bare Twisted processes, one of which has
    grown its heap, measured in alternation (paired samples)."""
    small = SpawnServer(procs, "small-heap")
    big = SpawnServer(procs, "big-heap")
    try:
        grown = big.ask({"grow_heap_mib": args.heap_mib}, 300)
        samples: dict[str, dict[str, list[dict[str, Any]]]] = {
            m: {"small": [], "big": []} for m in HEAP_METHODS
        }
        for round_index in range(args.heap_rounds):
            shift = round_index % len(HEAP_METHODS)
            for method in HEAP_METHODS[shift:] + HEAP_METHODS[:shift]:
                command = {
                    "method": method,
                    "n": args.heap_spawns,
                    "concurrency": args.concurrency,
                    "seconds": args.heap_seconds,
                }
                pair = [("small", small), ("big", big)]
                if round_index % 2:
                    pair.reverse()
                for label, server in pair:
                    samples[method][label].append(server.ask(command, 120))
        phases: dict[str, Any] = {
            "small": {"name": "small", "rss_mib": small.ready["rss_mib"], "methods": {}},
            "big": {"name": "big", "rss_mib": grown["rss_mib"], **grown, "methods": {}},
        }
        for method in HEAP_METHODS:
            pairs = samples[method]
            for label in ("small", "big"):
                chosen = dict(max(pairs[label], key=lambda r: r["rate"]))
                chosen["samples"] = [round(r["rate"], 1) for r in pairs[label]]
                phases[label]["methods"][method] = chosen
            # Each round's big/small ratio compares two runs made seconds apart.
            ratios = [
                b["rate"] / s["rate"]
                for s, b in zip(pairs["small"], pairs["big"], strict=True)
                if s["rate"] > 0
            ]
            phases["big"]["methods"][method]["paired_ratios"] = [round(r, 3) for r in ratios]
            phases["big"]["methods"][method]["paired_ratio_median"] = statistics.median(ratios)
        return {"phases": [phases["small"], phases["big"]]}
    finally:
        for server in (small, big):
            if server.proc.stdin is not None:
                server.proc.stdin.close()  # the helper stops when its stdin closes
        for server in (small, big):
            try:
                server.proc.wait(15)
            except subprocess.TimeoutExpired:
                pass
            procs.stop(server.proc)


# --- summary and report ---------------------------------------------------------


def _best_run(entries: list[dict[str, Any]], key: str) -> dict[str, Any] | None:
    """The entry with the highest KEY (all its figures come from that one run),
    plus the KEY of every run in run order as "samples".

    The best run, not the median: the machine is shared, and other tenants
    only ever slow a run down."""
    valid = [e for e in entries if isinstance(e.get(key), float) and e[key] == e[key]]
    if not valid:
        return None
    chosen = dict(max(valid, key=lambda e: e[key]))
    chosen["samples"] = [round(e[key], 1) for e in valid]
    return chosen


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "bare_twisted_rss_mib": statistics.median(
            r["baselines"]["rss_mib"] for r in runs
        ),
    }
    for method, name in (("twisted", "A"), ("posix_spawn", "B"), ("fsync", "D")):
        summary[name] = _best_run([r["baselines"]["methods"][method] for r in runs], "rate")
    webhooks = [r["webhook"] for r in runs if "webhook" in r]
    if webhooks and all("skipped" in w for w in webhooks):
        summary["C"] = {"skipped": webhooks[0]["skipped"]}
    else:
        summary["C"] = _best_run(
            [w for w in webhooks if "skipped" not in w], "jobs_per_second"
        )
    for kind in ("tcp", "ssl"):
        entries = [r["cmdd"][kind] for r in runs if kind in r.get("cmdd", {})]
        errors = [e["error"] for e in entries if "error" in e]
        chosen = _best_run([e for e in entries if "error" not in e], "jobs_per_second")
        if chosen is not None:
            chosen["failed_runs"] = errors
            summary[kind] = chosen
        elif errors:
            summary[kind] = {"error": "; ".join(errors)}
    return summary


def _ratio(a: float | None, b: float | None) -> str:
    if not a or not b or a != a or b != b:
        return "-"
    return f"{a / b:.2f}x"


def _num(value: float | None, digits: int = 0) -> str:
    if value is None or value != value:
        return "-"
    return f"{value:,.{digits}f}"


def _spread(samples: list[float]) -> str:
    if len(samples) < 2:
        return ""
    return f"{min(samples):,.0f}-{max(samples):,.0f}"


def render(results: dict[str, Any]) -> str:
    meta = results["meta"]
    summary = results["summary"]
    a, b, c, d = summary["A"], summary["B"], summary["C"], summary["D"]
    rate_a, rate_b = a["rate"], b["rate"]
    cpu_a = a["cpu_ms_per_spawn"]
    c_ok = c is not None and "skipped" not in c
    rate_c = c["jobs_per_second"] if c_ok else None
    lines = [
        f"cmdd throughput  {meta['date']}  N={meta['jobs']} C={meta['concurrency']} "
        f"max-running={meta['max_running']} client={meta['client']} "
        f"repeats={meta['repeats']} (best shown)  {meta['cpus']} CPUs  "
        f"loadavg {meta['loadavg_start']}",
        f"cmdd at {meta['git_commit']}"
        + (f" + uncommitted changes in {len(meta['git_dirty_files'])} files"
           if meta["git_dirty_files"] else "")
        + f"; Python {meta['python']}, Twisted {meta['twisted']}"
        + (f"; cmdd args {' '.join(meta['cmdd_args'])}" if meta["cmdd_args"] else ""),
        "",
        f"{'baseline (same run)':<52}{'rate/s':>9}{'range':>13}{'CPU ms/spawn':>14}",
        f"{'A  Twisted spawnProcess /bin/true, C=' + str(meta['concurrency']):<52}"
        f"{_num(rate_a):>9}{_spread(a['samples']):>13}{_num(cpu_a, 3):>14}"
        f"   (its process: RSS {_num(summary['bare_twisted_rss_mib'], 1)}M)",
        f"{'B  os.posix_spawn+waitpid /bin/true, sequential':<52}"
        f"{_num(rate_b):>9}{_spread(b['samples']):>13}"
        f"{_num(b['cpu_ms_per_spawn'], 3):>14}",
    ]
    if c_ok:
        c_cpu = 1000 * c["server_cpu_seconds"] / max(1, c["load"]["requests"])
        lines.append(
            f"{'C  ' + c['version'] + ', 1 request = 1 /bin/true':<52}"
            f"{_num(rate_c):>9}{_spread(c['samples']):>13}{_num(c_cpu, 3):>14}"
        )
    else:
        c_cpu = None
        lines.append(f"C  webhook: skipped ({(c or {}).get('skipped', 'no result')})")
    if d:
        lines.append(
            f"{'(D  100-byte append + fsync, loop: the journal disk)':<52}"
            f"{_num(d['rate']):>9}{_spread(d['samples']):>13}"
        )
    lines += [
        "",
        f"{'server':<12}{'jobs/s':>7}{'range':>12}{'vs A':>7}{'vs B':>7}{'vs C':>7}"
        f"{'p50ms':>7}{'p99ms':>7}{'p50/C':>7}{'p99/C':>7}{'peakRSS':>9}"
        f"{'/A':>7}{'/C':>7}{'CPUms/job':>10}{'/A':>7}{'/C':>7}{'ok':>6}",
    ]
    rows = []
    failures = []
    if c_ok:
        rows.append(("webhook (C)", c, c.get("ok", 0)))
    for kind in ("tcp", "ssl"):
        entry = summary.get(kind)
        if entry and "error" not in entry:
            rows.append((f"cmdd {kind}", entry, entry["states"].get("succeeded", 0)))
        elif entry:
            failures.append(f"cmdd {kind}: FAILED: {entry['error']}")
    for name, entry, ok in rows:
        load = entry["load"]
        rate = entry["jobs_per_second"]
        cpu_ms = 1000 * entry["server_cpu_seconds"] / max(1, load["requests"])
        c_load = c["load"] if c_ok else {}
        lines.append(
            f"{name:<12}{_num(rate):>7}{_spread(entry['samples']):>12}"
            f"{_ratio(rate, rate_a):>7}{_ratio(rate, rate_b):>7}{_ratio(rate, rate_c):>7}"
            f"{_num(load['p50_ms'], 1):>7}{_num(load['p99_ms'], 1):>7}"
            f"{_ratio(load['p50_ms'], c_load.get('p50_ms')):>7}"
            f"{_ratio(load['p99_ms'], c_load.get('p99_ms')):>7}"
            f"{_num(entry['peak_rss_bytes'] / MIB, 1) + 'M':>9}"
            f"{_ratio(entry['peak_rss_bytes'] / MIB, summary['bare_twisted_rss_mib']):>7}"
            f"{_ratio(entry['peak_rss_bytes'], c['peak_rss_bytes'] if c_ok else None):>7}"
            f"{_num(cpu_ms, 2):>10}{_ratio(cpu_ms, cpu_a):>7}{_ratio(cpu_ms, c_cpu):>7}"
            f"{ok:>6}"
        )
    lines += failures
    for kind in ("tcp", "ssl"):
        entry = summary.get(kind)
        if entry and "error" not in entry:
            load = entry["load"]
            lines.append(
                f"  cmdd {kind}: POSTs {_num(load['requests'] / load['seconds'])}/s; "
                f"last job done {_num(entry['drain_after_load_seconds'], 2)} s after "
                f"the last POST ({entry['drain_jobs']} jobs ended after it, "
                f"{_num(entry['drain_jobs_per_second'])}/s); queue wait p50 "
                f"{_num(entry['queue_wait_p50_ms'], 1)} ms, max "
                f"{_num(entry['queue_wait_max_ms'], 1)} ms; RSS idle "
                f"{_num(entry['idle_rss_bytes'] / MIB, 1)}M"
            )
            others = {k: v for k, v in load["statuses"].items() if k != "202"}
            if others:
                lines.append(f"  cmdd {kind}: POSTs not accepted (status: count): {others}")
            if entry["log_problems"]:
                lines.append(
                    f"  cmdd {kind}: {len(entry['log_problems'])} error lines in its log"
                )
            if entry.get("failed_runs"):
                lines.append(f"  cmdd {kind}: {len(entry['failed_runs'])} failed runs, "
                             "see the JSON file")
    heap = results.get("heap")
    if heap:
        small, big = heap["phases"]
        lines += [
            "",
            f"spawn vs heap: two bare Twisted processes, one grown by {meta['heap_mib']} MiB "
            f"of bytes objects (RSS {_num(small['rss_mib'])}M vs {_num(big['rss_mib'])}M),",
            f"measured in alternation, {meta['heap_rounds']} rounds x {meta['heap_seconds']} s; "
            "rates: best round; big/small: median of the rounds' paired ratios",
            f"  {'method':<46}{'small/s':>9}{'big/s':>9}{'big/small':>11}"
            f"{'small/B':>9}{'big/B':>8}{'CPU ms small':>14}{'big':>7}",
        ]
        for method, result in small["methods"].items():
            after = big["methods"][method]
            ratio = after.get("paired_ratio_median")
            lines.append(
                f"  {METHOD_LABELS[method]:<46}{_num(result['rate']):>9}"
                f"{_num(after['rate']):>9}"
                f"{(_num(ratio, 2) + 'x') if ratio else _ratio(after['rate'], result['rate']):>11}"
                f"{_ratio(result['rate'], rate_b):>9}{_ratio(after['rate'], rate_b):>8}"
                f"{_num(result['cpu_ms_per_spawn'], 2):>14}"
                f"{_num(after['cpu_ms_per_spawn'], 2):>7}"
            )
    elif results.get("heap_error"):
        lines.append(f"spawn vs heap: FAILED: {results['heap_error']}")
    return "\n".join(lines)


# --- main ------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--jobs", "-n", type=int,
        help="jobs, requests and spawns per measurement (default 2000; quick 320)",
    )
    parser.add_argument(
        "--concurrency", "-c", type=int, help="concurrent clients (default 16; quick 8)"
    )
    parser.add_argument(
        "--max-running", type=int, default=8, help="cmdd --max-running (default 8)"
    )
    parser.add_argument(
        "--repeats", type=int,
        help="interleaved repeats of A, B, C and cmdd; the best is shown (default 3; quick 1)",
    )
    parser.add_argument(
        "--cmdd-arg", action="append", default=[], metavar="ARG",
        help="extra argument for twistd cmdd (repeatable), e.g. --cmdd-arg=--config=FILE",
    )
    parser.add_argument("--quick", action="store_true", help="a small run, under 30 s")
    parser.add_argument("--client", choices=("auto", "hey", "python"), default="auto")
    parser.add_argument(
        "--heap-mib", type=int, default=1024, help="heap growth for the heap test"
    )
    parser.add_argument(
        "--heap-seconds", type=float, help="time cap per heap-test sample (default 1; quick 0.3)"
    )
    parser.add_argument(
        "--heap-rounds", type=int, help="samples per heap-test method (default 3; quick 2)"
    )
    parser.add_argument(
        "--heap-spawns", type=int, help="count cap per heap-test sample (default 2000)"
    )
    parser.add_argument(
        "--skip", action="append", default=[], choices=("webhook", "tcp", "ssl", "heap"),
        help="leave a part out (repeatable)",
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="limit for one load run")
    parser.add_argument("--output", type=Path, help="JSON file (default bench/results/...)")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    quick = args.quick
    defaults = {
        "jobs": 320 if quick else 2000,
        "concurrency": 8 if quick else 16,
        "repeats": 1 if quick else 3,
        "heap_seconds": 0.3 if quick else 1.0,
        "heap_rounds": 2 if quick else 3,
        "heap_spawns": 2000,
    }
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.child:
        return args
    if args.client == "auto":
        args.client = "hey" if shutil.which("hey") else "python"
    if args.jobs < args.concurrency:
        parser.error("--jobs must be at least --concurrency")
    if args.jobs % args.concurrency:
        # hey sends N // C requests per connection: keep every tool at the same N.
        args.jobs -= args.jobs % args.concurrency
        print(f"note: --jobs rounded down to {args.jobs}, a multiple of --concurrency",
              file=sys.stderr)
    return args


def git_state() -> dict[str, Any]:
    """Which cmdd was measured: the commit and any uncommitted changes."""

    def git(*words: str) -> str:
        try:
            return subprocess.run(
                ["git", "-C", str(REPO), *words], capture_output=True, text=True,
                timeout=10, check=False,
            ).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    # Not stripped: a porcelain line starts with a two-letter status that may
    # begin with a space (" M cmdd/api.py").
    changed = git("status", "--porcelain", "--", "cmdd", "twisted")
    return {
        "git_commit": git("rev-parse", "--short", "HEAD").strip() or "unknown",
        "git_dirty_files": [line[3:] for line in changed.splitlines() if line.strip()],
    }


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.child:
        kind, config = args.child
        children = {
            "spawn": child_spawn,
            "spawn-server": child_spawn_server,
            "load": child_load,
        }
        children[kind](json.loads(config))
        return 0
    signal.signal(signal.SIGTERM, _terminate)
    started = time.monotonic()

    def step(name: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {name}", file=sys.stderr, flush=True)

    import twisted

    results: dict[str, Any] = {
        "meta": {
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "command": " ".join([Path(sys.executable).name, "bench/throughput.py", *argv]),
            "jobs": args.jobs,
            "concurrency": args.concurrency,
            "max_running": args.max_running,
            "repeats": args.repeats,
            "client": args.client,
            "quick": args.quick,
            "heap_mib": args.heap_mib,
            "heap_seconds": args.heap_seconds,
            "heap_rounds": args.heap_rounds,
            "cmdd_args": args.cmdd_arg,
            "cpus": os.cpu_count(),
            "loadavg_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
            "python": platform.python_version(),
            "twisted": twisted.__version__,
            "kernel": platform.release(),
            **git_state(),
        },
        "runs": [],
    }
    procs = Processes()
    workdir = Path(tempfile.mkdtemp(prefix="cmdd-bench-"))
    try:
        for repeat in range(args.repeats):
            run: dict[str, Any] = {"cmdd": {}}
            results["runs"].append(run)
            tag = f"run {repeat + 1}/{args.repeats}:"
            run_dir = workdir / f"run{repeat + 1}"
            run_dir.mkdir()
            step(f"{tag} baselines A and B (bare Twisted process)")
            run["baselines"] = bench_baselines(args)
            if "webhook" in args.skip:
                run["webhook"] = {"skipped": "--skip webhook"}
            else:
                step(f"{tag} baseline C: webhook")
                run["webhook"] = bench_webhook(args, procs, run_dir)
            for scheme, kind in (("http", "tcp"), ("https", "ssl")):
                if kind in args.skip:
                    continue
                step(f"{tag} cmdd over {kind}")
                try:
                    run["cmdd"][kind] = bench_cmdd(args, procs, run_dir, scheme)
                except Exception as e:
                    run["cmdd"][kind] = {"error": f"{type(e).__name__}: {e}"}
                    print(f"cmdd {kind} failed: {e}", file=sys.stderr)
        if "heap" not in args.skip:
            step(f"spawn vs heap (+{args.heap_mib} MiB)")
            try:
                results["heap"] = bench_heap(args, procs)
            except Exception as e:
                results["heap_error"] = f"{type(e).__name__}: {e}"
                print(f"heap test failed: {e}", file=sys.stderr)
        step("done")
    finally:
        procs.stop_all()
        if os.environ.get("CMDD_BENCH_KEEP"):
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    results["meta"]["total_seconds"] = time.monotonic() - started
    results["summary"] = summarize(results["runs"])
    table = render(results)
    results["table"] = table
    print(table)
    output = args.output
    if output is None:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        output = RESULTS_DIR / f"throughput-{stamp}{'-quick' if args.quick else ''}.json"
    output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nresults: {output}  ({results['meta']['total_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
