"""The daemon's CPU per request on the submit path, without the network or the disk.

Builds cmdd's site (``make_site``, the auth gate, the Klein API, the job
manager, the job log as a store listener) in this process with a task.Clock
and an in-memory journal, then feeds N ``POST /api/jobs`` of ``/bin/true``
with the admin's bearer token over one keep-alive connection on an in-memory
transport. No job is started (the clock never runs the pump): what is timed is
parse -> auth -> validate -> journal -> 202, the access line and the job's
"queued" log line, written by a Twisted text observer to /dev/null as twistd's
would. Prints the CPU microseconds per request (best of R rounds).

    .venv/bin/python bench/request_bench.py                   # 3 rounds of 3,000
    .venv/bin/python bench/request_bench.py --profile         # + cProfile, top 25
    .venv/bin/python bench/request_bench.py --old /tmp/base   # old code beside, interleaved

``--old DIR`` runs the same measurement with DIR (a ``git archive`` of ``cmdd``)
first on ``PYTHONPATH``, in a subprocess, alternating with this checkout's.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BODY = b'{"command_line":["/bin/true"]}'


def build(tmp: str) -> tuple[Any, str, Any]:
    """The site, the admin token and the clock, wired as the daemon does."""
    from twisted.internet.defer import fail, succeed
    from twisted.internet.task import Clock

    from cmdd.accounts import Accounts
    from cmdd.api import CmddAPI
    from cmdd.auth import AuthGate, FailureThrottle, make_portal
    from cmdd.history import History, MemoryLog
    from cmdd.joblog import log_transition
    from cmdd.manager import JobManager, Limits
    from cmdd.store import JobStore
    from cmdd.web import make_site

    def inline(fn: Any, *args: Any) -> Any:
        try:
            return succeed(fn(*args))
        except Exception as e:
            return fail(e)

    class IO:
        run = staticmethod(inline)

    clock = Clock()
    store = JobStore()
    store.add_listener(log_transition)
    history = History(store, MemoryLog(), clock)
    limits = Limits(max_running=64, max_queued=10**7)
    manager = JobManager(history, None, IO(), clock, tmp, limits)  # type: ignore[arg-type]
    manager.startService()
    accounts = Accounts(tmp, clock, inline)
    accounts.load()
    api = CmddAPI(manager, inline, accounts)
    portal = make_portal(accounts.users, accounts.book_view, clock, inline)
    gate = AuthGate(api.app.resource(), portal, FailureThrottle(clock))
    site = make_site(gate, max_body=1 << 20, idle_timeout=60)
    token = Path(tmp, "admin.token").read_text().strip()
    return site, token, clock


def measure(n: int, rounds: int, profile: bool, quiet: bool = False) -> dict[str, Any]:
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import StringTransport
    from twisted.logger import globalLogBeginner, textFileLogObserver

    devnull = open(os.devnull, "w")
    observers = [] if quiet else [textFileLogObserver(devnull)]
    globalLogBeginner.beginLoggingTo(observers, redirectStandardIO=False)
    with tempfile.TemporaryDirectory() as tmp:
        site, token, _ = build(tmp)
        site.startFactory()
        request = (
            b"POST /api/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Authorization: Bearer " + token.encode() + b"\r\n"
            b"Content-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(BODY) + BODY
        )
        proto = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 4000))
        transport = StringTransport(
            peerAddress=IPv4Address("TCP", "127.0.0.1", 4000),
            hostAddress=IPv4Address("TCP", "127.0.0.1", 8080),
        )
        proto.makeConnection(transport)
        per_request = []
        profiler = cProfile.Profile() if profile else None
        for _ in range(rounds):
            t0 = time.process_time()
            if profiler:
                profiler.enable()
            for _ in range(n):
                proto.dataReceived(request)
            if profiler:
                profiler.disable()
            per_request.append((time.process_time() - t0) / n * 1e6)
            answers = transport.value().count(b"HTTP/1.1 202 ")
            if answers != n:
                raise RuntimeError(f"{answers} 202s of {n}: {transport.value()[-400:]!r}")
            transport.clear()
        proto.connectionLost(None)
    if profiler:
        profiler.dump_stats(os.environ.get("CMDD_PROFILE_OUT", "/tmp/request_bench.prof"))
        stats = pstats.Stats(profiler, stream=sys.stderr)
        stats.sort_stats("cumulative").print_stats(40)
        stats.sort_stats("tottime").print_stats(25)
    return {"us_per_request": min(per_request), "rounds": per_request}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--old", metavar="DIR")
    parser.add_argument(
        "--no-log", action="store_true", help="no log observer: what the log lines cost"
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.n, args.rounds, args.profile, args.no_log)))
        return
    variants = [("new", "")] + ([("old", args.old)] if args.old else [])
    results: dict[str, list[float]] = {name: [] for name, _ in variants}
    for _ in range(args.rounds):
        for name, path in variants:
            env = dict(os.environ)
            if path:
                env["PYTHONPATH"] = path
            argv = [sys.executable, __file__, "--child", "-n", str(args.n), "--rounds", "1"]
            if args.profile and name == "new":
                argv.append("--profile")
            if args.no_log:
                argv.append("--no-log")
            done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
            if done.returncode:
                raise SystemExit(done.stderr[-3000:])
            if args.profile:
                sys.stderr.write(done.stderr)
            results[name].append(json.loads(done.stdout.splitlines()[-1])["us_per_request"])
    for name, samples in results.items():
        print(f"{name}: {min(samples):.0f} us/request (rounds {[round(s) for s in samples]})")
    if args.old:
        print(f"new/old: {min(results['new']) / min(results['old']):.2f}")


if __name__ == "__main__":
    main()
