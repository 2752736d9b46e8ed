"""Fault injection: fail the Nth file operation of a scripted history, replay.

For every N and every kind of fault (a torn write on a full disk, a short
write, ENOSPC, EIO, a failed fsync), the journal is run through the same
scripted history with that one operation failing, then replayed as a
restart would: every job that got a 202 is there exactly once, nothing the
daemon refused is there, and it starts without any recovery option.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from cmdd import manager as manager_module
from cmdd.errors import ClientError
from cmdd.history import History
from cmdd.journal import JournalFailed, JournalWriter, replay
from cmdd.manager import JobManager, Limits
from cmdd.spec import parse_spec
from cmdd.store import JobStore
from tests.fakes import FakeExecutor, InlineIO
from tests.faults import KINDS, FaultyOps

reactor: Any = _reactor


#: Every test here injects disk faults; each refusal and each loss of output is
#: logged at error level by design (an operator must see it). Anything else
#: logged as an error still fails the test.
pytestmark = pytest.mark.logs_errors(
    "journal: refused",
    "refuses every record until cmdd restarts",
    "the journal refused its end",
    "cannot write output",
    "the token could not be stored",
)


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Refused starts and ends are retried within milliseconds, not seconds."""
    monkeypatch.setattr(manager_module, "RETRY_SECONDS", 0.001)
    monkeypatch.setattr(manager_module, "RETRY_MAX_SECONDS", 0.002)


class Run:
    """One daemon life on a journal whose file operations are C{ops}."""

    def __init__(self, directory: Path, ops: FaultyOps) -> None:
        self.path = directory / "journal.jsonl"
        (directory / "output").mkdir(parents=True)
        # A journal that cannot be created stops start-up; that is not the point here.
        self.path.touch()
        self.writer = JournalWriter(reactor, str(self.path), ops=ops)
        self.writer.open()
        self.store = JobStore()
        self.history = History(self.store, self.writer, reactor)
        self.executor = FakeExecutor()
        self.manager = JobManager(
            self.history, self.executor, InlineIO(), reactor,  # type: ignore[arg-type]
            str(directory / "output"), Limits(max_running=2),
        )
        self.manager.startService()
        self.acked: set[int] = set()
        self.refused: set[int] = set()

    async def settle(self) -> None:
        """Let the pump, the journal thread and retries run."""
        for _ in range(5):
            await deferLater(reactor, 0.003, lambda: None)
            await self.writer.when_idle()

    async def submit(self, count: int) -> None:
        """Submit C{count} jobs at once; note which got a 202 and which a 503."""
        waiting: list[tuple[int, Deferred[Any]]] = []
        for n in range(count):
            job_id = self.store.peek_next_id()
            spec = parse_spec({"command_line": ["echo", f"job {job_id} #{n}"]})
            waiting.append((job_id, self.manager.submit(spec)))
        for job_id, submitted in waiting:
            try:
                job = await submitted
            except ClientError as e:
                assert e.status == 503 and e.code == "JOURNAL_UNAVAILABLE"
                self.refused.add(job_id)
            else:
                assert job.id == job_id
                self.acked.add(job_id)

    async def tolerate(self, call: Callable[[], Deferred[Any]]) -> None:
        """A command that may be refused (503) or find the job changed (404, 409)."""
        try:
            await call()
        except ClientError as e:
            assert e.status in (404, 409, 503), e.to_json()

    async def finish_alive(self) -> None:
        await self.settle()
        for execution in self.executor.alive:
            execution.finish(exit_code=execution.job_id % 2, stdout=b"out %d\n" % execution.job_id)
        await self.settle()

    async def script(self) -> None:
        """Submissions, runs, a cancel, a delete, a compaction, more submissions."""
        await self.submit(3)
        await self.finish_alive()
        await self.submit(2)
        queued = [job.id for job in self.store.oldest_first() if job.state.value == "queued"]
        if queued:
            await self.tolerate(lambda: self.manager.cancel(queued[-1], by="admin"))
        await self.finish_alive()
        finished = [job.id for job in self.store.oldest_first() if job.state.final]
        if finished:
            await self.tolerate(lambda: self.manager.delete(finished[0], by="admin"))
        with contextlib.suppress(JournalFailed):  # a refused compaction is one of the faults
            await self.history.compact()
        await self.submit(2)
        for _ in range(4):
            await self.finish_alive()
        await self.manager.stopService()
        await self.writer.close()


async def run_once(directory: Path, ops: FaultyOps) -> Run:
    run = Run(directory, ops)
    try:
        await run.script()
    finally:
        # Even when the script fails: a journal thread left running would
        # keep pytest from exiting.
        await run.writer.close()
    return run


def check_restart(run: Run) -> None:
    """What a restart finds: the acknowledged jobs, once each, nothing refused,
    the same jobs the daemon showed, and no recovery needed."""
    store = JobStore()
    history = History(store, _NullLog(), reactor)  # type: ignore[arg-type]
    report = replay(str(run.path), history.load)  # no recover option: must not raise
    assert report.torn_bytes == 0 and not report.quarantined
    created: dict[int, int] = {}
    for line in run.path.read_bytes().splitlines():
        fields = json.loads(line)
        if fields["type"] == "created":
            created[fields["job"]] = created.get(fields["job"], 0) + 1
    deleted = {job_id for job_id in run.acked if store.get(job_id) is None}
    assert all(count == 1 for count in created.values()), created
    for job_id in run.acked - deleted:
        assert store.get(job_id) is not None, f"acknowledged job {job_id} lost"
    assert not (run.refused & set(created)), "a refused job is in the journal"
    assert all(store.get(job_id) is None for job_id in run.refused)
    assert all(run.store.get(job_id) is None for job_id in run.refused), "a refused job is shown"
    assert list(store.oldest_first()) == list(run.store.oldest_first()), (
        "the daemon showed exactly what a restart finds"
    )


class _NullLog:
    size = 0

    def append(self, item: object) -> None:
        raise AssertionError("replay writes nothing")


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("kind", KINDS)
async def test_every_nth_operation_failing_loses_nothing_acknowledged(
    tmp_path: Path, kind: str
) -> None:
    """Fail the Nth write/fsync/create for every N of a scripted history: after
    a restart every 202 job is there once, nothing refused is, no recovery
    option is needed, and the daemon showed only what the journal holds."""
    counting = FaultyOps(kind)
    check_restart(await run_once(tmp_path / "clean", counting))
    total = counting.count
    assert total > 5, "the script must exercise the journal"
    refusals = hits = 0
    for n in range(1, total + 1):
        ops = FaultyOps(kind, n)
        run = await run_once(tmp_path / f"fail-{n}", ops)
        # A fault changes what follows (a refused job never runs), so the
        # last few operations of the clean run may not happen at all.
        hits += ops.failed
        check_restart(run)
        refusals += len(run.refused)
    assert hits > total // 2
    if kind != "short":
        assert refusals > 0, "some faults must have refused a submission"


@pytest_twisted.ensureDeferred
async def test_a_journal_that_cannot_be_cut_back_refuses_everything(tmp_path: Path) -> None:
    """If a failed write cannot even be cut off again (the disk is gone), the
    journal refuses every later record instead of writing after a torn one;
    the restart cuts the torn tail and starts without a recovery option."""
    ops = FaultyOps("torn", 6, sticky=True, also_truncate=True)
    run = await run_once(tmp_path, ops)
    assert run.writer.broken is not None
    assert run.refused, "submissions after the failure are refused"
    store = JobStore()
    history = History(store, _NullLog(), reactor)  # type: ignore[arg-type]
    replay(str(run.path), history.load)
    for job_id in run.acked:
        assert store.get(job_id) is not None or run.store.get(job_id) is None
    assert all(store.get(job_id) is None for job_id in run.refused)


@pytest.mark.parametrize("kind", ["torn", "enospc", "eio"])
def test_output_lost_to_a_full_disk_is_visible(tmp_path: Path, kind: str) -> None:
    """When an output write fails at any point, the file holds exactly the bytes
    the spool says it kept (no half-written chunk), the stream counts as
    truncated and the spool says why; before the failure nothing is lost."""
    from cmdd.spool import OutputSpool

    chunks = [b"chunk %d\n" % n for n in range(6)]
    data = b"".join(chunks)
    for n in range(1, len(chunks) + 1):
        path = tmp_path / f"{kind}-{n}.stdout"
        spool = OutputSpool(InlineIO(), str(path), cap=1000, ops=FaultyOps(kind, n))  # type: ignore[arg-type]
        for chunk in chunks:
            spool.write(chunk)
        kept = path.read_bytes() if path.exists() else b""
        assert spool.total == len(data)
        assert kept == data[: spool.kept], "the file holds exactly what is counted as kept"
        boundaries = {len(b"".join(chunks[:k])) for k in range(len(chunks))}
        assert spool.kept in boundaries, "only whole writes are kept"
        assert spool.truncated and spool.error is not None and "output lost" in spool.error


def test_a_token_the_disk_refuses_is_not_handed_out(tmp_path: Path) -> None:
    """POST /api/tokens on a full disk: a 503 (not a 500), no token that would
    vanish at restart, and no temporary file left behind."""
    from twisted.internet.defer import ensureDeferred
    from twisted.internet.task import Clock

    from cmdd.accounts import Accounts
    from cmdd.files import write_private_file

    clock = Clock()
    accounts = Accounts(str(tmp_path), clock, InlineIO().run)
    accounts.load()
    before = set(accounts.book.dumps().split(b'"id"'))
    faulty = FaultyOps("enospc", 1)
    accounts._run_io = lambda fn, *args: InlineIO().run(  # type: ignore[method-assign]
        write_private_file, args[0], args[1], faulty
    )
    failure = ensureDeferred(accounts.issue_token("admin", None, "test"))
    error = failure.result.value  # type: ignore[attr-defined]
    failure.addErrback(lambda _: None)
    assert isinstance(error, ClientError) and error.status == 503
    assert set(accounts.book.dumps().split(b'"id"')) == before, "the token is not kept"
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]


class _NewFileWillNotOpen(FaultyOps):
    """Opening the compacted file for appending fails (EMFILE, say)."""

    def open(self, path: str, flags: int, mode: int = 0o600) -> int:
        if path.endswith(".compact") and not flags & os.O_CREAT:
            raise OSError(24, "Too many open files", path)
        return super().open(path, flags, mode)


@pytest_twisted.ensureDeferred
async def test_a_compaction_whose_new_file_will_not_open_changes_nothing(
    tmp_path: Path,
) -> None:
    """If the compacted journal cannot be opened, the old journal stays in
    place and open, later appends go into it (not into a deleted file), and
    no .compact file is left."""
    run = Run(tmp_path, _NewFileWillNotOpen("short"))
    try:
        await run.submit(2)
        with pytest.raises(JournalFailed):
            await run.history.compact()
        await run.submit(2)
        for _ in range(3):
            await run.finish_alive()
        await run.manager.stopService()
    finally:
        await run.writer.close()
    assert run.acked == {1, 2, 3, 4}
    assert not list(tmp_path.glob("*.compact"))
    check_restart(run)


class _TooManyOpenFiles(FaultyOps):
    """The first C{times} opens fail with EMFILE (1,000 clients hold every fd)."""

    def __init__(self, times: int) -> None:
        super().__init__("short")
        self.times = times

    def open(self, path: str, flags: int, mode: int = 0o600) -> int:
        if self.times:
            self.times -= 1
            raise OSError(24, "Too many open files", path)
        return super().open(path, flags, mode)


def test_output_survives_a_passing_emfile(tmp_path: Path) -> None:
    """Output writes that fail with EMFILE are tried again (the job's pipes
    paused meanwhile) and keep every byte once descriptors are free; if the
    condition outlasts the retries, the loss is visible and reading resumes."""
    from twisted.internet.task import Clock

    from cmdd.spool import RETRY_DELAYS, OutputSpool

    for times, lost in ((3, False), (len(RETRY_DELAYS) + 1, True)):
        clock = Clock()
        path = tmp_path / f"{times}.stdout"
        flow: list[str] = []
        spool = OutputSpool(
            InlineIO(), str(path), cap=1000, ops=_TooManyOpenFiles(times), clock=clock  # type: ignore[arg-type]
        )
        spool.set_flow(partial(flow.append, "pause"), partial(flow.append, "resume"))
        spool.write(b"first\n")
        spool.write(b"second\n")
        closed = spool.close()
        for delay in RETRY_DELAYS:
            clock.advance(delay)
        assert closed.called
        assert flow[0] == "pause" and flow[-1] == "resume"
        if lost:
            assert spool.truncated and spool.error is not None and "Too many open" in spool.error
            assert not path.exists() or path.read_bytes() == b""
        else:
            assert path.read_bytes() == b"first\nsecond\n"
            assert not spool.truncated and spool.error is None
