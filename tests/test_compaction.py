"""Compaction writes the new journal aside while appends go on, then swaps:
appends never wait for the whole rewrite, and kill -9 at any step of it
loses no acknowledged record and doubles none."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from functools import partial
from pathlib import Path

import pytest_twisted
from twisted.internet import task

from cmdd.files import FileOps
from cmdd.history import load_record
from cmdd.jobs import Created, Ended, Outcome, Started, State
from cmdd.journal import JournalWriter, replay
from cmdd.restore import restore
from cmdd.schedule import ScheduleBook
from cmdd.spec import parse_spec
from cmdd.store import JobStore

CHILD = str(Path(__file__).with_name("compaction_child.py"))
SPEC = parse_spec({"command": "echo aside"})


def replayed(path: Path) -> JobStore:
    store = JobStore()
    replay(str(path), partial(load_record, store, sections=[ScheduleBook()]))
    return store


class GatedOps(FileOps):
    """Holds the first write to the compacted file until C{gate} is set."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.held = threading.Event()
        self._compact_fds: set[int] = set()

    def open(self, path: str, flags: int, mode: int = 0o600) -> int:
        fd = super().open(path, flags, mode)
        if path.endswith(".compact") and flags & os.O_CREAT:
            self._compact_fds.add(fd)
        return fd

    def write(self, fd: int, data: bytes | memoryview) -> int:
        if fd in self._compact_fds:
            self._compact_fds.discard(fd)
            self.held.set()
            self.gate.wait(30)
        return super().write(fd, data)


@pytest_twisted.ensureDeferred
async def test_appends_are_durable_while_the_compaction_writes(tmp_path: Path) -> None:
    """While the new file is being written, appends are made durable in the
    old one (they used to wait for the whole rewrite); after the swap they
    are all in the new journal, once each, after the compacted jobs."""
    from twisted.internet import reactor

    path = tmp_path / "journal.jsonl"
    ops = GatedOps()
    writer = JournalWriter(reactor, str(path), fsync=True, ops=ops)
    writer.open()
    store = JobStore()
    for job_id in (1, 2):
        for event in (Created(job_id, 1.0, SPEC), Started(job_id, 2.0),
                      Ended(job_id, 3.0, Outcome(State.SUCCEEDED, exit_code=0))):  # fmt: skip
            store.record(event)
            await writer.append(event)
    compaction = writer.compact(list(store.oldest_first()), 4.0, 3)
    while not ops.held.is_set():
        await task.deferLater(reactor, 0.01, lambda: None)
    appended = [writer.append(Created(job_id, 5.0, SPEC)) for job_id in range(3, 13)]
    for _ in range(500):
        if all(d.called for d in appended):
            break
        await task.deferLater(reactor, 0.01, lambda: None)
    durable_while_held = all(d.called for d in appended)
    ops.gate.set()
    await compaction
    for durable in appended:
        await durable
    await writer.close()
    assert durable_while_held, "appends waited for the compaction's rewrite"
    rebuilt = replayed(path)
    assert [job.id for job in rebuilt.oldest_first()] == list(range(1, 13))
    assert path.read_bytes().count(b'"type":"meta"') == 1


def _run_child(path: Path, kill_at: int) -> tuple[int, list[str]]:
    done = subprocess.run(
        [sys.executable, CHILD, str(path), str(kill_at)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    return done.returncode, done.stdout.splitlines()


def test_kill_9_at_every_step_of_a_compaction_loses_nothing(tmp_path: Path) -> None:
    """SIGKILL at each file operation of a compaction racing 120 appends:
    after restart (snapshot or not) every acknowledged job is there, the
    300 older ones too, and the journal replays without a doubled line."""
    (tmp_path / "count").mkdir()
    status, lines = _run_child(tmp_path / "count" / "journal.jsonl", 0)
    assert status == 0, lines[-5:]
    total = int(lines[-1].split()[1])
    assert total > 10
    for kill_at in range(1, total + 1):
        directory = tmp_path / f"kill-{kill_at}"
        directory.mkdir()
        path = directory / "journal.jsonl"
        status, lines = _run_child(path, kill_at)
        # Batching varies from run to run: a run may do fewer operations.
        finished = status == 0 and int(lines[-1].split()[1]) < kill_at
        assert status == -9 or finished, (kill_at, status, lines[-3:])
        acked = {int(line.split()[1]) for line in lines if line.startswith("ACK ")}
        for leftover in directory.glob("*.compact"):
            leftover.unlink()  # what JournalWriter.open does at the next start
        store = replayed(path)  # raises on a doubled or damaged line
        ids = {job.id for job in store.oldest_first()}
        assert set(range(1, 301)) <= ids, kill_at
        assert acked <= ids, (kill_at, sorted(acked - ids))
        fast = JobStore()
        restore(str(path), fast, partial(load_record, fast, sections=[ScheduleBook()]))
        assert list(fast.oldest_first()) == list(store.oldest_first()), kill_at
