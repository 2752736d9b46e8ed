#!/usr/bin/env python3
"""Write a cmdd journal of N finished jobs, for the replay and compaction benchmarks.

Run from the repository root:

    .venv/bin/python bench/make_journal.py [--jobs N] [--data-dir DIR] [--workers W] [--quick]

Every job is three lines, exactly as the daemon writes them (cmdd.codec.encode):
``created`` (a ``{"command": ...}`` spec of about 100 bytes, as
``parse_spec`` returns it), ``started`` and ``ended``. Outcomes vary like a
real history: ~90% succeeded (exit 0), ~7% failed with an exit code, ~2%
failed by timeout (SIGKILL, with a reason), ~1% cancelled; output byte counts
vary too. Timestamps are full-precision floats, as ``time.time()`` gives them.
The content is deterministic for a given --jobs and --seed.

The result is DATA_DIR/journal.jsonl (1,000,000 jobs: 3,000,000 lines, about
0.5 GB) plus DATA_DIR/make_journal.json describing it. The work is split
over W processes (default: one per CPU), each encoding a contiguous range of
jobs into a part file; the parts are then concatenated in order, so sequence
numbers and job ids increase through the file.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import sys
import time
from pathlib import Path

import attrs

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cmdd.codec import encode  # noqa: E402
from cmdd.jobs import Created, Ended, Outcome, Started, State  # noqa: E402
from cmdd.journal import JOURNAL_NAME  # noqa: E402
from cmdd.spec import parse_spec  # noqa: E402

BASE_TIME = 1_790_000_000.0
#: Mean seconds between two jobs' creation (about 70 jobs/s sustained).
JOB_SPACING = 0.0137

_PROGRAMS = (
    "/usr/local/bin/nightly-report --customer c{c:04d} --out /var/spool/reports/r{i:07d}.csv",
    "rsync -a --delete /srv/build/artifacts/{i:07d}/ backup{c:03d}.internal:/archive/builds/",
    "/opt/etl/bin/load-partition --table events_{c:04d} --partition {i:07d} --retries 3 -v",
    "python3 /opt/jobs/thumbnail.py --bucket media-{c:04d} --key uploads/{i:07d}.jpg --w 256",
)

#: Who submitted the jobs (the "owner" of a created line, when cmdd has owners).
_OWNERS = ("admin", "ci", "ci", "ci", "reports", "backup")
_HAS_OWNER = "owner" in attrs.fields_dict(Created)

_TIMEOUT_REASON = "timed out after 600 seconds"
_CANCEL_REASON = "cancelled by a client"


def _job_lines(job_id: int, rng: random.Random) -> list[bytes]:
    c = rng.randrange(10_000)
    command = _PROGRAMS[job_id % len(_PROGRAMS)].format(c=c, i=job_id)
    spec = parse_spec({"command": command})
    created = BASE_TIME + job_id * JOB_SPACING + rng.random() * 0.01
    started = created + 0.0005 + rng.random() * 0.002
    ended = started + rng.expovariate(1 / 3.0)
    roll = rng.random()
    if roll < 0.90:
        outcome = Outcome(
            State.SUCCEEDED,
            exit_code=0,
            stdout_bytes=rng.randrange(0, 20_000),
            stderr_bytes=0,
        )
    elif roll < 0.97:
        outcome = Outcome(
            State.FAILED,
            exit_code=rng.choice((1, 2, 3, 127)),
            stdout_bytes=rng.randrange(0, 5_000),
            stderr_bytes=rng.randrange(1, 3_000),
        )
    elif roll < 0.99:
        outcome = Outcome(
            State.FAILED,
            signal=9,
            reason=_TIMEOUT_REASON,
            stdout_bytes=rng.randrange(0, 2_000_000),
            stdout_truncated=rng.random() < 0.5,
        )
    else:
        outcome = Outcome(State.CANCELLED, signal=15, reason=_CANCEL_REASON)
    seq = 3 * job_id - 2
    if _HAS_OWNER:
        item = Created(job_id, created, spec, owner=_OWNERS[job_id % len(_OWNERS)])
    else:
        item = Created(job_id, created, spec)
    return [
        encode(seq, item),
        encode(seq + 1, Started(job_id, started)),
        encode(seq + 2, Ended(job_id, ended, outcome)),
    ]


def _write_part(args: tuple[int, int, int, str]) -> tuple[str, int, int]:
    """Encode jobs [first, last] into the file C{path}; returns (path, lines, bytes)."""
    first, last, seed, path = args
    rng = random.Random(seed * 1_000_003 + first)
    lines = 0
    size = 0
    with open(path, "wb", buffering=1 << 20) as out:
        chunk: list[bytes] = []
        for job_id in range(first, last + 1):
            chunk.extend(_job_lines(job_id, rng))
            if len(chunk) >= 30_000:
                data = b"".join(chunk)
                out.write(data)
                lines += len(chunk)
                size += len(data)
                chunk = []
        data = b"".join(chunk)
        out.write(data)
        lines += len(chunk)
        size += len(data)
    return path, lines, size


def make_journal(data_dir: str, jobs: int, *, workers: int = 0, seed: int = 1) -> dict[str, object]:
    """Write DATA_DIR/journal.jsonl with C{jobs} finished jobs; returns its description."""
    os.makedirs(data_dir, exist_ok=True)
    path = os.path.join(data_dir, JOURNAL_NAME)
    workers = workers or os.cpu_count() or 1
    # More ranges than workers keeps both CPUs busy to the end.
    ranges = max(1, min(jobs, workers * 8))
    step = -(-jobs // ranges)
    tasks = []
    for index, first in enumerate(range(1, jobs + 1, step)):
        last = min(jobs, first + step - 1)
        tasks.append((first, last, seed, f"{path}.part{index:04d}"))
    started = time.perf_counter()
    if workers == 1 or len(tasks) == 1:
        parts = [_write_part(task) for task in tasks]
    else:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            parts = list(pool.imap(_write_part, tasks))
    encoded = time.perf_counter() - started
    temporary = path + ".making"
    with open(temporary, "wb") as out:
        for part, _, _ in parts:
            with open(part, "rb") as source:
                while True:
                    copied = os.sendfile(out.fileno(), source.fileno(), None, 1 << 30)
                    if not copied:
                        break
            os.unlink(part)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, path)
    elapsed = time.perf_counter() - started
    info: dict[str, object] = {
        "journal": path,
        "jobs": jobs,
        "lines": sum(lines for _, lines, _ in parts),
        "bytes": os.path.getsize(path),
        "seed": seed,
        "workers": workers,
        "encode_seconds": round(encoded, 3),
        "seconds": round(elapsed, 3),
    }
    with open(os.path.join(data_dir, "make_journal.json"), "w") as out:
        json.dump(info, out, indent=2)
        out.write("\n")
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--jobs", type=int, default=None, help="finished jobs (default 1e6; --quick: 10,000)"
    )
    parser.add_argument("--quick", action="store_true", help="10,000 jobs")
    parser.add_argument(
        "--data-dir",
        default=None,
        help="where to write journal.jsonl (default bench/results/journal-JOBS)",
    )
    parser.add_argument("--workers", type=int, default=0, help="processes (default: CPUs)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if args.jobs is None:
        args.jobs = 10_000 if args.quick else 1_000_000
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    data_dir = args.data_dir or str(HERE / "results" / f"journal-{args.jobs}")
    info = make_journal(data_dir, args.jobs, workers=args.workers, seed=args.seed)
    print(
        f"wrote {info['journal']}: {info['jobs']:,} jobs, {info['lines']:,} lines, "
        f"{info['bytes']:,} bytes in {info['seconds']:.1f} s "
        f"({info['workers']} worker process(es))"
    )


if __name__ == "__main__":
    main()
