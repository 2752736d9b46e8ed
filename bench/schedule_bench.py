"""10,000 scheduled jobs armed: daemon start-up time and RSS against none, and
proof that there is one timer for all of them rather than one per job.

Same command, same machine, interleaved: a daemon starts on (a) an empty
journal, (b) 10,000 finished jobs (the same number of jobs, none scheduled),
(c) 10,000 jobs scheduled a day ahead plus 1,000 recurring schedules. Start-up
is the time from exec to the first 200 from /readyz; RSS is VmRSS then.
In-process, the reactor's delayed calls are counted before and after
10,000 scheduled submits and 1,000 schedules.

    .venv/bin/python bench/schedule_bench.py [--quick] [--repeats R]
"""

from __future__ import annotations

import http.client
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from benchlib import arg_parser, cmdd_argv, free_port, git_meta, proc_status, stop_process

from cmdd.codec import encode
from cmdd.jobs import Created, Ended, Outcome, Started, State
from cmdd.schedule import Schedule, ScheduleSaved
from cmdd.spec import JobSpec


def write_journal(data_dir: Path, kind: str, jobs: int, schedules: int) -> None:
    data_dir.mkdir(mode=0o700)
    now = time.time()
    lines: list[bytes] = []
    seq = 0

    def add(item: Any) -> None:
        nonlocal seq
        seq += 1
        lines.append(encode(seq, item))

    for job_id in range(1, jobs + 1 if kind != "empty" else 1):
        if kind == "scheduled":
            add(Created(job_id, now, JobSpec(command="true", run_at=now + 86400 + job_id), "admin"))
        else:
            add(Created(job_id, now, JobSpec(command="true"), "admin"))
            add(Started(job_id, now))
            add(Ended(job_id, now, Outcome(State.SUCCEEDED, exit_code=0)))
    if kind == "scheduled":
        for schedule_id in range(1, schedules + 1):
            schedule = Schedule(
                id=schedule_id, owner="admin", cron=f"{schedule_id % 60} {schedule_id % 24} * * *",
                timezone="Europe/Berlin", job=JobSpec(command="true"), created=now, since=now,
            )  # fmt: skip
            add(ScheduleSaved(now, schedule))
    (data_dir / "journal.jsonl").write_bytes(b"".join(lines))


def start_once(data_dir: Path) -> tuple[float, int]:
    """Seconds from exec to /readyz 200, and VmRSS then."""
    port = free_port()
    began = time.monotonic()
    proc = subprocess.Popen(
        cmdd_argv(data_dir, port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"twistd exited with {proc.returncode}")
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                connection.request("GET", "/readyz")
                if connection.getresponse().status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.01)
        ready = time.monotonic() - began
        return ready, proc_status(proc.pid, "VmRSS")
    finally:
        stop_process(proc)


def delayed_calls(jobs: int, schedules: int) -> dict[str, int]:
    """The reactor's delayed calls before and after arming jobs and schedules."""
    from twisted.internet import reactor

    from cmdd.history import History, MemoryLog
    from cmdd.manager import JobManager, Limits
    from cmdd.runat import RunAtService
    from cmdd.schedule import parse_schedule
    from cmdd.schedules import ScheduleService
    from cmdd.spool import IOWorker
    from cmdd.store import JobStore

    clock: Any = reactor
    history = History(JobStore(), MemoryLog(), clock)
    manager = JobManager(history, None, IOWorker(clock), clock, tempfile.mkdtemp(), Limits())
    run_at, service = RunAtService(manager, clock), ScheduleService(manager, clock)
    for started in (manager, run_at, service):
        started.startService()
    before = len(clock.getDelayedCalls())
    now = clock.seconds()
    for i in range(jobs):
        manager.submit(JobSpec(command="true", run_at=now + 3600 + i))
    for i in range(schedules):
        fields = parse_schedule({"cron": f"{i % 60} * * * *", "job": {"command": "true"}}, now)
        service.create(fields, "admin")
    after = len(clock.getDelayedCalls())
    for call in clock.getDelayedCalls():
        call.cancel()
    return {"before": before, "after": after, "jobs": len(run_at.table),
            "schedules": len(service.table)}  # fmt: skip


def main() -> None:
    parser = arg_parser(__doc__ or "", "1 repeat, 2,000 jobs")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    jobs, schedules = (2000, 200) if args.quick else (10_000, 1000)
    repeats = 1 if args.quick else args.repeats
    kinds = ("empty", "finished", "scheduled")
    samples: dict[str, list[tuple[float, int]]] = {kind: [] for kind in kinds}
    with tempfile.TemporaryDirectory() as tmp:
        dirs = {kind: Path(tmp) / kind for kind in kinds}
        for kind in kinds:
            write_journal(dirs[kind], kind, jobs, schedules)
        for _ in range(repeats):
            for kind in kinds:
                samples[kind].append(start_once(dirs[kind]))
    calls = delayed_calls(jobs, schedules)
    result: dict[str, Any] = {"jobs": jobs, "schedules": schedules, "delayed_calls": calls}
    print(f"{'journal':<44} {'start-up s':>10} {'RSS MiB':>8}")
    for kind in kinds:
        ready = statistics.median(s[0] for s in samples[kind])
        rss = statistics.median(s[1] for s in samples[kind]) / 2**20
        result[kind] = {"startup_s": ready, "rss_mib": rss, "samples": samples[kind]}
        label = {
            "empty": "empty (0 scheduled)",
            "finished": f"{jobs} finished jobs (0 scheduled)",
            "scheduled": f"{jobs} scheduled jobs + {schedules} schedules",
        }[kind]
        print(f"{label:<44} {ready:>10.3f} {rss:>8.1f}")
    base, same, armed = (result[k] for k in kinds)
    print(
        f"scheduled vs finished: start-up x{armed['startup_s'] / same['startup_s']:.2f}, "
        f"RSS x{armed['rss_mib'] / same['rss_mib']:.2f}; "
        f"vs empty: start-up x{armed['startup_s'] / base['startup_s']:.2f}, "
        f"RSS +{armed['rss_mib'] - base['rss_mib']:.1f} MiB"
    )
    print(
        f"reactor delayed calls: {calls['before']} before, {calls['after']} after arming "
        f"{calls['jobs']} scheduled jobs and {calls['schedules']} schedules"
    )
    result.update(git_meta())
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    (out / "schedule_bench.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
