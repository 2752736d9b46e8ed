"""What one job's spawn costs: the spawner against the old trampolines.

Runs `/bin/true` N times on the real reactor through each path and measures
launch-to-end latency (one at a time) and completions per second (C at once):

  A. old path: Twisted's spawnProcess of `setsid -- /bin/true` (what cmdd did
     before the spawner; a root daemon's job then ran as root);
  B. old run-as path: `setsid -- setpriv --reuid ... -- /bin/true`;
  C. a bubblewrap sandbox per job (the alternative the isolation issue
     measured at ~7.7 ms);
  D. the job spawner without a sandbox (as root: jobs switch to `nobody`);
  E. the job spawner inside bubblewrap (the default when bwrap works).

Every figure is also given as a ratio to A, measured in the same run.

    .venv/bin/python bench/spawn_bench.py [--jobs 300] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet import defer, task
from twisted.internet.protocol import ProcessProtocol

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cmdd import spawner
from cmdd.isolation import Sandbox, spawner_command
from cmdd.jobhost import SPAWNER_ENVIRONMENT, identity_of, own_identity
from cmdd.runner import LocalExecutor
from cmdd.spawnerlink import SpawnerLink
from cmdd.spec import parse_spec

ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}


class NullSpool:
    """Takes output and drops it (the spool's interface, no files)."""

    def write(self, data: bytes) -> None:
        """Drop the bytes."""

    def set_flow(self, pause: Callable[[], None], resume: Callable[[], None]) -> None:
        """No back-pressure: nothing is ever behind."""


class _Ended(ProcessProtocol):
    def __init__(self) -> None:
        self.done: defer.Deferred[None] = defer.Deferred()

    def processEnded(self, reason: Any) -> None:
        self.done.callback(None)


def trampoline(reactor: Any, argv: list[str]) -> Callable[[], defer.Deferred[Any]]:
    """Spawn C{argv} with Twisted's spawnProcess (the old executor's call)."""

    def run() -> defer.Deferred[Any]:
        protocol = _Ended()
        reactor.spawnProcess(protocol, argv[0], argv, env=ENV)
        return protocol.done

    return run


def via_spawner(reactor: Any, executor: LocalExecutor) -> Callable[[], defer.Deferred[Any]]:
    """Launch a /bin/true job through the spawner."""
    spec = parse_spec({"command_line": ["/bin/true"]})
    counter = iter(range(1, 10**9))

    def run() -> defer.Deferred[Any]:
        return executor.launch(next(counter), spec, NullSpool(), NullSpool()).ended()  # type: ignore[arg-type]

    return run


async def measure(
    reactor: Any, run: Callable[[], defer.Deferred[Any]], jobs: int, concurrency: int
) -> dict[str, float]:
    """Latency one at a time, then the rate with C in flight."""
    for _ in range(20):  # warm up (page cache, the spawner's imports)
        await run()
    latencies = []
    for _ in range(jobs):
        started = time.perf_counter()
        await run()
        latencies.append((time.perf_counter() - started) * 1000)
    started = time.perf_counter()

    async def worker(count: int) -> None:
        for _ in range(count):
            await run()

    await defer.gatherResults(
        [defer.Deferred.fromCoroutine(worker(jobs // concurrency)) for _ in range(concurrency)]
    )
    rate = (jobs // concurrency) * concurrency / (time.perf_counter() - started)
    latencies.sort()
    return {
        "p50_ms": statistics.median(latencies),
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1],
        "mean_ms": statistics.fmean(latencies),
        "jobs_per_s": rate,
    }


async def main(reactor: Any, args: argparse.Namespace) -> None:
    as_root = os.geteuid() == 0
    bwrap = shutil.which("bwrap")
    setsid = shutil.which("setsid") or "/usr/bin/setsid"
    setpriv = shutil.which("setpriv") or "/usr/bin/setpriv"
    nobody = pwd.getpwnam("nobody")
    data_dir = tempfile.mkdtemp(prefix="cmdd-spawn-bench-")
    paths: dict[str, Callable[[], defer.Deferred[Any]]] = {
        "A old: spawnProcess(setsid)": trampoline(reactor, [setsid, "--", "/bin/true"])
    }
    if as_root:
        paths["B old run-as: setsid + setpriv"] = trampoline(
            reactor,
            [setsid, "--", setpriv, f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}",
             "--init-groups", "--", "/bin/true"],
        )  # fmt: skip
    sandbox = Sandbox(bwrap, hidden_directories=(data_dir,)) if bwrap else None
    if sandbox is not None:
        paths["C bwrap per job"] = trampoline(
            reactor, [*sandbox.arguments(as_root=False), "/bin/true"]
        )
    links = []
    identity = identity_of(nobody) if as_root else own_identity()
    for name, box in (("D spawner", None), ("E spawner in bwrap", sandbox)):
        if name.startswith("E") and box is None:
            continue
        command = spawner_command(
            sys.executable, spawner.__file__, box, as_root=as_root, allow_root_jobs=False
        )
        link = SpawnerLink(reactor, command, SPAWNER_ENVIRONMENT)
        link.start()
        links.append(link)
        executor = LocalExecutor(reactor, link, identity, lambda _: identity)
        paths[name] = via_spawner(reactor, executor)
    results = {}
    for name, run in paths.items():
        results[name] = await measure(reactor, run, args.jobs, args.concurrency)
    for link in links:
        await link.stop()
    os.rmdir(data_dir)
    base = results["A old: spawnProcess(setsid)"]
    print(f"{args.jobs} x /bin/true per path, {args.concurrency} at once for the rate; "
          f"daemon {'root' if as_root else 'unprivileged'}")  # fmt: skip
    print(f"{'path':34} {'p50 ms':>8} {'p99 ms':>8} {'jobs/s':>8} {'p50 vs A':>9} {'rate vs A':>9}")
    for name, r in results.items():
        print(
            f"{name:34} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} {r['jobs_per_s']:8.0f}"
            f" {r['p50_ms'] / base['p50_ms']:8.2f}x {r['jobs_per_s'] / base['jobs_per_s']:8.2f}x"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=8)
    options = parser.parse_args()
    task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor, options)))
