"""Integration: the job manager and the local executor with real processes.

These tests run on the real reactor (via pytest-twisted) with
L{cmdd.manager.JobManager}, L{cmdd.runner.LocalExecutor} with a real spawner
process (without a sandbox, so pids are the host's), L{cmdd.spool.IOWorker}
and L{cmdd.store.JobStore} wired as C{cmdd.tap.CmddService} wires them, and
check what happens to real child processes through C{/proc}.

Every test is bounded: the whole test body runs under a Deferred timeout, and
every wait polls with a deadline.
"""

from __future__ import annotations

import errno
import functools
import os
import signal
import sys
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
import pytest_twisted  # type: ignore[import-untyped]  # ships no type information
from procs import children_of, is_alive, living_in_group, proc_stat, read_pid_file
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from zope.interface import implementer

from cmdd import runner, spawner
from cmdd.errors import ClientError
from cmdd.history import History
from cmdd.isolation import spawner_command
from cmdd.jobhost import SPAWNER_ENVIRONMENT
from cmdd.jobs import Ended, Event, Job, Started, State
from cmdd.journal import JournalWriter
from cmdd.manager import JobManager, Limits
from cmdd.runner import Identity, IExecution, IExecutor, LocalExecutor
from cmdd.spawnerlink import SpawnerLink
from cmdd.spec import JobSpec, parse_spec
from cmdd.spool import IOWorker, OutputSpool, output_path
from cmdd.store import JobStore

pytestmark = pytest.mark.integration

T = TypeVar("T")

#: The global reactor pytest-twisted runs (typed loosely: it provides every
#: reactor interface the daemon's objects ask for).
reactor: Any = _reactor

#: Seconds between SIGTERM and SIGKILL in these tests.
KILL_GRACE = 1.0
#: Seconds the executor waits for pipes after the process exited.
DRAIN_SECONDS = 1.0


# --- helpers ---------------------------------------------------------------


def bounded(seconds: float) -> Callable[[Callable[..., Coroutine[Any, Any, T]]], Any]:
    """Run an C{async def} test on the reactor, failing it after C{seconds}."""

    def decorate(test: Callable[..., Coroutine[Any, Any, T]]) -> Any:
        @functools.wraps(test)
        async def wrapper(*args: Any, **kwargs: Any) -> T:
            running = Deferred.fromCoroutine(test(*args, **kwargs))
            running.addTimeout(seconds, reactor)
            return await running

        return pytest_twisted.ensureDeferred(wrapper)

    return decorate


async def within(seconds: float, awaitable: Any) -> Any:
    """Await a Deferred or coroutine, failing with a timeout after C{seconds}."""
    if not isinstance(awaitable, Deferred):
        awaitable = Deferred.fromCoroutine(awaitable)
    awaitable.addTimeout(seconds, reactor)
    return await awaitable


async def until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll C{predicate} until it returns something true, at most C{timeout} s."""
    deadline = reactor.seconds() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if reactor.seconds() > deadline:
            raise AssertionError(f"gave up after {timeout}s waiting for {what}")
        await deferLater(reactor, 0.02, lambda: None)


@implementer(IExecution)
class RecordedExecution:
    """An execution whose signal requests are logged (time, job, signal)."""

    def __init__(self, inner: IExecution, job_id: int, log: list[tuple[float, int, int]]) -> None:
        self._inner = inner
        self._job_id = job_id
        self._log = log

    @property
    def pid(self) -> int:  # type: ignore[override]  # a read-only view of the inner pid
        """The job's pid, as the spawner reported it."""
        return self._inner.pid

    def signal_group(self, signum: int) -> None:
        """Log the request, then pass it on."""
        self._log.append((reactor.seconds(), self._job_id, signum))
        self._inner.signal_group(signum)

    def ended(self) -> Deferred[Any]:
        """The inner execution's end."""
        return self._inner.ended()


@implementer(IExecutor)
class RecordingExecutor:
    """Delegates to the real executor and keeps each job's execution."""

    def __init__(self, inner: IExecutor) -> None:
        self._inner = inner
        self.executions: dict[int, IExecution] = {}
        #: (time, job id, signal) of every signal the manager asked for.
        self.signals: list[tuple[float, int, int]] = []
        #: Called (on the next reactor turn) with each launched job's id.
        self.on_launch: Callable[[int], object] | None = None

    def launch(
        self, job_id: int, spec: JobSpec, stdout: OutputSpool, stderr: OutputSpool
    ) -> IExecution:
        execution = RecordedExecution(
            self._inner.launch(job_id, spec, stdout, stderr), job_id, self.signals
        )
        self.executions[job_id] = execution
        if self.on_launch is not None:
            reactor.callLater(0, self.on_launch, job_id)
        return execution


class Harness:
    """The daemon's job machinery, wired like C{CmddService}, on the real reactor."""

    def __init__(self, root: Path, limits: Limits) -> None:
        self.root = root
        self.output_dir = root / "output"
        self.output_dir.mkdir(mode=0o700, parents=True)
        self.home = root / "home"
        self.home.mkdir()
        self.io = IOWorker(reactor)
        self.store = JobStore()
        self.events: list[Event] = []
        self.store.add_listener(lambda event, job: self.events.append(event))
        self.journal = JournalWriter(reactor, str(root / "journal.jsonl"))
        self.history = History(self.store, self.journal, reactor)
        self.spawner = SpawnerLink(
            reactor,
            spawner_command(
                sys.executable, spawner.__file__, None, as_root=False, allow_root_jobs=True
            ),
            SPAWNER_ENVIRONMENT,
        )
        identity = Identity(name="tester", uid=None, gid=None, groups=(), home=str(self.home))
        self.executor = RecordingExecutor(
            LocalExecutor(
                reactor,
                self.spawner,
                identity,
                lambda name: identity,
                drain_seconds=DRAIN_SECONDS,
            )
        )
        self.manager = JobManager(
            self.history, self.executor, self.io, reactor, str(self.output_dir), limits
        )

    def start(self) -> None:
        """Open the journal, start the I/O thread and the manager (as CmddService)."""
        self.journal.open()
        self.io.start()
        self.spawner.start()
        self.manager.startService()

    async def stop(self) -> None:
        """End running jobs (TERM, grace, KILL), then close the journal and I/O thread."""
        await self.manager.stopService()
        await self.spawner.stop()
        await self.journal.close()
        self.io.stop()

    async def submit(self, **fields: Any) -> Job:
        """Submit a job described like a POST body; fires once it is durable."""
        job: Job = await within(10, self.manager.submit(parse_spec(fields)))
        return job

    async def run(self, wait: float = 20.0, **fields: Any) -> Job:
        """Submit a job and wait (at most C{wait} seconds) until it is final."""
        job = await self.submit(**fields)
        final: Job = await within(wait, self.manager.when_final(job.id))
        return final

    async def wait_spawned(self, job_id: int, timeout: float = 10.0) -> IExecution:
        """Wait until the job's process has been spawned; its execution."""
        execution: IExecution = await until(
            lambda: self.executor.executions.get(job_id), timeout, f"job {job_id} to spawn"
        )
        return execution

    def output(self, job_id: int, stream: str) -> bytes:
        """The bytes kept for a job's stream (empty if none)."""
        path = output_path(str(self.output_dir), job_id, stream)
        try:
            with open(path, "rb") as kept:
                return kept.read()
        except FileNotFoundError:
            return b""


@pytest_twisted.async_yield_fixture  # type: ignore[untyped-decorator]  # untyped library
async def make_harness(tmp_path: Path) -> Any:
    """A factory of started harnesses, all stopped (jobs killed) afterwards."""
    harnesses: list[Harness] = []

    def make(**limits: Any) -> Harness:
        limits.setdefault("kill_grace", KILL_GRACE)
        harness = Harness(tmp_path / f"h{len(harnesses)}", Limits(**limits))
        harness.start()
        harnesses.append(harness)
        return harness

    yield make
    for harness in harnesses:
        await within(30, harness.stop())


@pytest.fixture
def secret_in_daemon_env(monkeypatch: pytest.MonkeyPatch) -> str:
    """A variable only the daemon's own environment has."""
    monkeypatch.setenv("CMDD_TEST_DAEMON_SECRET", "hunter2")
    return "CMDD_TEST_DAEMON_SECRET"


# --- what a job sees ---------------------------------------------------------


@bounded(30)
async def test_stdout_and_stderr_are_captured_separately(make_harness: Any) -> None:
    """A job's stdout and stderr are kept apart, byte for byte, and counted."""
    harness = make_harness()
    job = await harness.run(command="echo out; echo error >&2; printf 'привет'")
    assert job.state is State.SUCCEEDED
    assert job.outcome is not None and job.outcome.exit_code == 0
    greeting = "привет".encode()
    assert harness.output(job.id, "stdout") == b"out\n" + greeting
    assert harness.output(job.id, "stderr") == b"error\n"
    assert job.outcome.stdout_bytes == len(b"out\n" + greeting)
    assert job.outcome.stderr_bytes == 6
    assert not job.outcome.stdout_truncated and not job.outcome.stderr_truncated


@bounded(30)
async def test_non_zero_exit_is_failed_with_the_exit_code(make_harness: Any) -> None:
    """A command that exits non-zero ends failed and reports its exit code."""
    harness = make_harness()
    job = await harness.run(command="exit 3")
    assert job.state is State.FAILED
    assert job.outcome is not None
    assert (job.outcome.exit_code, job.outcome.signal) == (3, None)


@bounded(30)
async def test_stdin_is_fed_to_the_job(make_harness: Any) -> None:
    """The spec's stdin reaches the process as UTF-8 and is then closed (EOF)."""
    harness = make_harness()
    text = "привет\nsecond line\n"
    job = await harness.run(command_line=["cat"], stdin=text)
    assert job.state is State.SUCCEEDED
    assert harness.output(job.id, "stdout") == text.encode("utf-8")


@bounded(30)
async def test_without_stdin_the_job_reads_eof(make_harness: Any) -> None:
    """A job without stdin does not hang waiting for input: it reads EOF."""
    harness = make_harness()
    job = await harness.run(command="cat; echo end")
    assert job.state is State.SUCCEEDED
    assert harness.output(job.id, "stdout") == b"end\n"


@bounded(30)
async def test_environment_is_passed_and_daemon_environment_is_not(
    make_harness: Any, secret_in_daemon_env: str
) -> None:
    """Jobs get the client's variables and a small base, never the daemon's own."""
    harness = make_harness()
    job = await harness.run(command_line=["env"], environment={"GREETING": "привет", "LANG": "C"})
    assert job.state is State.SUCCEEDED
    lines = harness.output(job.id, "stdout").decode("utf-8").splitlines()
    variables = dict(line.split("=", 1) for line in lines)
    assert variables["GREETING"] == "привет"
    assert variables["LANG"] == "C", "the client's value overrides the base"
    assert variables["CMDD_JOB_ID"] == str(job.id)
    assert variables["HOME"] == str(harness.home)
    assert "/bin" in variables["PATH"].split(":")
    assert secret_in_daemon_env not in variables
    assert os.environ[secret_in_daemon_env] == "hunter2"


@bounded(30)
async def test_working_directory_is_honoured(make_harness: Any, tmp_path: Path) -> None:
    """A job runs in its working_directory; without one, in the default (HOME)."""
    harness = make_harness()
    workdir = tmp_path / "work dir"
    workdir.mkdir()
    before = os.getcwd()
    job = await harness.run(command="pwd", working_directory=str(workdir))
    default = await harness.run(command="pwd")
    assert job.state is State.SUCCEEDED
    assert harness.output(job.id, "stdout").decode() == os.path.realpath(workdir) + "\n"
    assert harness.output(default.id, "stdout").decode() == (os.path.realpath(harness.home) + "\n")
    assert os.getcwd() == before, "the daemon's own directory is restored"


@bounded(30)
async def test_umask_is_honoured(make_harness: Any, tmp_path: Path) -> None:
    """A job's umask applies to the files it creates; the daemon's is untouched."""
    harness = make_harness()
    created = tmp_path / "created"
    daemon_umask = os.umask(0o022)
    os.umask(daemon_umask)
    job = await harness.run(command=f"umask; touch '{created}'", umask="0027")
    assert job.state is State.SUCCEEDED
    assert harness.output(job.id, "stdout") == b"0027\n"
    assert created.stat().st_mode & 0o777 == 0o640
    restored = os.umask(daemon_umask)
    assert restored == daemon_umask, "the daemon's umask is restored"


# --- jobs that cannot start --------------------------------------------------


@bounded(30)
async def test_missing_working_directory_is_not_executed(make_harness: Any) -> None:
    """A job whose working directory does not exist ends not_executed, saying why."""
    harness = make_harness()
    job = await harness.run(command="echo hi", working_directory="/nonexistent/cmdd")
    assert job.state is State.NOT_EXECUTED
    assert job.outcome is not None and job.outcome.reason is not None
    assert "/nonexistent/cmdd" in job.outcome.reason
    assert "No such file or directory" in job.outcome.reason
    assert harness.executor.executions[job.id].pid == 0, "no process was started"
    follower = await harness.run(command="echo next")
    assert follower.state is State.SUCCEEDED, "the queue keeps going"


@pytest.mark.parametrize("program", ["/nonexistent/program", "cmdd-no-such-program"])
@bounded(30)
async def test_missing_executable_is_not_executed(make_harness: Any, program: str) -> None:
    """A command_line whose program does not exist ends not_executed, naming it."""
    harness = make_harness()
    job = await harness.run(command_line=[program, "arg"])
    assert job.state is State.NOT_EXECUTED
    assert job.outcome is not None and job.outcome.reason is not None
    assert program in job.outcome.reason
    assert "not found" in job.outcome.reason


# --- output cap ----------------------------------------------------------------


@bounded(60)
async def test_output_beyond_the_cap_is_counted_and_discarded(make_harness: Any) -> None:
    """Output over max_output_bytes is counted, not kept, and never blocks the child."""
    harness = make_harness(max_output_bytes=1000)
    job = await harness.run(wait=30, command_line=["head", "-c", "5000000", "/dev/zero"])
    assert job.state is State.SUCCEEDED
    assert job.outcome is not None
    assert job.outcome.stdout_bytes == 5_000_000
    assert job.outcome.stdout_truncated is True
    assert job.outcome.stderr_truncated is False
    path = output_path(str(harness.output_dir), job.id, "stdout")
    assert os.path.getsize(path) == 1000


def test_output_is_read_a_full_pipe_at_a_time() -> None:
    """A job writing fast costs a read (a reactor turn, a spool write) per
    64 KiB, not per 8 KiB: one doRead takes what a full pipe holds, and EOF
    still ends the stream."""
    read_end, write_end = os.pipe()
    received: list[tuple[int, bytes]] = []

    class Proc:
        def childDataReceived(self, fd: int, data: bytes) -> None:
            received.append((fd, data))

    reader = runner.OutputReader(_reactor, Proc(), 1, read_end)
    try:
        reader.stopReading()
        os.write(write_end, b"x" * 65536)
        assert reader.doRead() is None
        assert [(fd, len(data)) for fd, data in received] == [(1, 65536)]
        os.close(write_end)
        write_end = -1
        assert reader.doRead() is not None  # CONNECTION_DONE
    finally:
        if write_end >= 0:
            os.close(write_end)
        os.close(read_end)


@bounded(120)
async def test_large_output_below_the_cap_is_kept_exactly(make_harness: Any) -> None:
    """Tens of MiB of fast output are kept completely, in order, up to the cap."""
    harness = make_harness(max_output_bytes=24 * 1024 * 1024)
    size = 20 * 1024 * 1024
    # Numbered 8-byte records, so a lost or reordered chunk shows up.
    job = await harness.run(
        wait=90,
        command=f"seq -w 0 9999999 | head -c {size}; seq 1 100000 >&2",
    )
    assert job.state is State.SUCCEEDED, job.outcome
    assert job.outcome is not None
    assert job.outcome.stdout_bytes == size
    assert job.outcome.stdout_truncated is False
    kept = harness.output(job.id, "stdout")
    assert len(kept) == size
    records = kept.split(b"\n")
    assert records[:3] == [b"0000000", b"0000001", b"0000002"]
    assert all(int(record) == i for i, record in enumerate(records[:-1]))
    stderr = harness.output(job.id, "stderr").split()
    assert stderr[0] == b"1" and stderr[-1] == b"100000" and len(stderr) == 100000


# --- ending jobs ----------------------------------------------------------------


@bounded(30)
async def test_timeout_kills_the_job_and_it_fails(make_harness: Any) -> None:
    """A job over its timeout is killed and ends failed with reason "timed out"."""
    harness = make_harness()
    started = reactor.seconds()
    job = await harness.run(command="sleep 600", timeout=0.5)
    elapsed = reactor.seconds() - started
    assert job.state is State.FAILED
    assert job.outcome is not None
    assert job.outcome.reason == "timed out"
    assert job.outcome.signal == signal.SIGTERM
    assert elapsed < 0.5 + KILL_GRACE + 5


@bounded(30)
async def test_cancel_of_a_running_job(make_harness: Any) -> None:
    """Cancelling a running job ends its process and the job is cancelled."""
    harness = make_harness()
    job = await harness.submit(command="sleep 600")
    await harness.wait_spawned(job.id)
    ended = await within(10, harness.manager.cancel(job.id))
    assert ended.state is State.CANCELLED
    assert ended.outcome is not None
    assert ended.outcome.reason == "cancelled by request"
    assert ended.outcome.signal == signal.SIGTERM


@bounded(30)
async def test_cancel_of_a_queued_job(make_harness: Any) -> None:
    """A job still waiting for a slot can be cancelled and never starts."""
    harness = make_harness(max_running=1)
    blocker = await harness.submit(command="sleep 600")
    waiting = await harness.submit(command="echo never")
    await harness.wait_spawned(blocker.id)
    ended = await within(10, harness.manager.cancel(waiting.id))
    assert ended.state is State.CANCELLED
    assert ended.started is None
    await within(10, harness.manager.cancel(blocker.id))
    assert harness.output(waiting.id, "stdout") == b""


@bounded(30)
async def test_job_ignoring_sigterm_is_killed_after_the_grace(
    make_harness: Any, tmp_path: Path
) -> None:
    """A job that ignores SIGTERM gets SIGKILL after kill_grace and ends cancelled."""
    harness = make_harness()
    ready = tmp_path / "ready"
    job = await harness.submit(command=f"trap '' TERM; echo $$ > '{ready}'; sleep 600")
    await until(lambda: read_pid_file(ready), 10, "the job to trap SIGTERM")
    asked = reactor.seconds()
    ended = await within(15, harness.manager.cancel(job.id))
    elapsed = reactor.seconds() - asked
    assert ended.state is State.CANCELLED
    assert ended.outcome is not None
    assert ended.outcome.signal == signal.SIGKILL
    assert KILL_GRACE * 0.9 <= elapsed < KILL_GRACE + 5


@bounded(30)
async def test_cancel_leaves_no_process_of_the_job_behind(
    make_harness: Any, tmp_path: Path
) -> None:
    """Cancel ends the job's whole process group, background children included."""
    harness = make_harness()
    ready = tmp_path / "ready"
    job = await harness.submit(command=f"sleep 600 & sleep 600 & echo $$ > '{ready}'; wait")
    pgid = await until(lambda: read_pid_file(ready), 10, "the job to start")
    members = await until(
        lambda: len(group := living_in_group(pgid)) >= 3 and group,
        10,
        "the shell and both sleeps",
    )
    assert pgid in members
    ended = await within(15, harness.manager.cancel(job.id))
    assert ended.state is State.CANCELLED
    await until(lambda: not living_in_group(pgid), 5, f"group {pgid} to be gone")
    assert not any(is_alive(pid) for pid in members)


@bounded(30)
async def test_grandchild_holding_stdout_does_not_keep_the_job_running(
    make_harness: Any, tmp_path: Path
) -> None:
    """A job whose background child keeps stdout open still ends after the drain."""
    harness = make_harness()
    background = tmp_path / "background"
    started = reactor.seconds()
    job = await harness.run(
        wait=DRAIN_SECONDS + 10,
        command=f"(sleep 600 & echo $! > '{background}'); echo done",
    )
    elapsed = reactor.seconds() - started
    assert job.state is State.SUCCEEDED
    assert job.outcome is not None and job.outcome.exit_code == 0
    assert harness.output(job.id, "stdout") == b"done\n"
    assert elapsed < DRAIN_SECONDS + 5
    sleeper = read_pid_file(background)
    assert sleeper is not None
    await until(lambda: not is_alive(sleeper), 5, "the background sleep to be killed")


@bounded(30)
async def test_job_runs_in_its_own_session_and_process_group(
    make_harness: Any, tmp_path: Path
) -> None:
    """Each job leads its own session and process group, apart from the daemon's."""
    harness = make_harness()
    ready = tmp_path / "ready"
    job = await harness.submit(command=f"echo $$ > '{ready}'; sleep 600")
    pid = await until(lambda: read_pid_file(ready), 10, "the job to start")
    assert harness.manager.get(job.id).state is State.RUNNING
    assert harness.executor.executions[job.id].pid == pid, "signals go to this pid"
    stat = proc_stat(pid)
    assert stat is not None
    _, _, pgrp, session = stat
    assert pgrp == pid
    assert session == pid
    assert pgrp != os.getpgrp()
    assert session != os.getsid(0)
    await within(10, harness.manager.cancel(job.id))


# --- concurrency ------------------------------------------------------------------


@bounded(60)
async def test_max_running_limits_concurrency_and_keeps_fifo_order(
    make_harness: Any,
) -> None:
    """With max_running=2, five jobs never run more than two at once, in FIFO order."""
    harness = make_harness(max_running=2)
    jobs = [await harness.submit(command="sleep 0.3") for _ in range(5)]
    finals = [await within(30, harness.manager.when_final(job.id)) for job in jobs]
    assert [job.state for job in finals] == [State.SUCCEEDED] * 5
    running: set[int] = set()
    most = 0
    started_order = []
    for event in harness.events:
        if isinstance(event, Started):
            running.add(event.job_id)
            started_order.append(event.job_id)
            most = max(most, len(running))
        elif isinstance(event, Ended):
            running.discard(event.job_id)
    assert most == 2
    assert started_order == [job.id for job in jobs]
    starts = sorted(job.started for job in finals if job.started is not None)
    assert len(starts) == 5
    # The third job could only start once one of the first two had ended.
    first_end = min(job.completed for job in finals[:2] if job.completed is not None)
    assert finals[2].started is not None and finals[2].started >= first_end


@bounded(30)
async def test_a_job_with_a_free_slot_costs_two_journal_writes(make_harness: Any) -> None:
    """Its creation and its start share one write (one fsync), its end is the
    other: a POST at light load waits for one fsync less before its process
    runs, and the start is still durable before the spawn."""
    harness = make_harness()
    job = await harness.submit(command_line=["/bin/true"])
    before = harness.journal.batches
    final = await within(20, harness.manager.when_final(job.id))
    assert final.state is State.SUCCEEDED
    assert (before, harness.journal.batches) == (1, 2)
    started = [event for event in harness.events if isinstance(event, Started)]
    assert [event.job_id for event in started] == [job.id]


@bounded(30)
async def test_job_that_ignores_its_stdin_still_ends(make_harness: Any) -> None:
    """A job that exits without reading a large stdin ends normally (no hang, no error)."""
    harness = make_harness()
    job = await harness.run(command="echo quick", stdin="x" * (1024 * 1024))
    assert job.state is State.SUCCEEDED
    assert harness.output(job.id, "stdout") == b"quick\n"


@bounded(30)
async def test_script_with_missing_interpreter_is_not_executed(
    make_harness: Any, tmp_path: Path
) -> None:
    """A program the kernel cannot execute (missing #! interpreter) is not_executed."""
    harness = make_harness()
    script = tmp_path / "script"
    script.write_text("#!/nonexistent/interpreter\necho hi\n")
    script.chmod(0o755)
    job = await harness.run(command_line=[str(script)])
    assert job.state is State.NOT_EXECUTED, (job.state, job.outcome)
    assert job.outcome is not None and job.outcome.reason is not None
    assert str(script) in job.outcome.reason


@bounded(30)
async def test_no_signal_is_sent_after_the_job_is_final(make_harness: Any) -> None:
    """Once a job's process has ended cmdd never signals it again (its pid may
    be reused), also when a cancel arrives while the job's output is still being
    written; the job keeps the outcome its process had."""
    harness = make_harness()
    release = threading.Event()
    # Hold the I/O thread, as a slow disk would: the job's output cannot be
    # written, so the manager waits for it before recording the end.
    held = harness.io.run(release.wait, 20)
    try:
        job = await harness.submit(command="echo finished")
        execution = await harness.wait_spawned(job.id)
        exit_ = await within(10, execution.ended())
        assert exit_.exit_code == 0
        assert harness.manager.get(job.id).state is State.RUNNING, "output not written yet"
        cancelling = harness.manager.cancel(job.id)
    finally:
        release.set()
    await within(10, held)
    final = await within(10, cancelling)
    assert final.state is State.SUCCEEDED, "it had ended on its own before the cancel"
    final_at = reactor.seconds()
    await deferLater(reactor, KILL_GRACE + 0.5, lambda: None)
    late = [sent for sent in harness.executor.signals if sent[0] >= final_at]
    assert late == [], f"signals sent after the job was final: {late}"


@bounded(30)
async def test_cancel_of_a_job_that_exits_at_once(make_harness: Any) -> None:
    """A cancel that races a job exiting at once ends the job once, with a real pid."""
    harness = make_harness()
    cancels: list[Deferred[Job]] = []

    def cancel_at_once(job_id: int) -> None:
        try:
            cancels.append(harness.manager.cancel(job_id))
        except ClientError:
            pass  # it already ended

    harness.executor.on_launch = cancel_at_once
    job = await harness.run(command_line=["true"])
    assert job.state in (State.SUCCEEDED, State.CANCELLED)
    assert cancels, "the cancel reached the job while the manager saw it running"
    assert (await within(10, cancels[0])).state is job.state
    harness.executor.on_launch = None
    follower = await harness.run(command="echo next")
    assert follower.state is State.SUCCEEDED, "the spawner keeps serving"


# --- nothing of a job outlives it ----------------------------------------------


@bounded(30)
async def test_cancel_ends_a_child_that_left_the_session(make_harness: Any, tmp_path: Path) -> None:
    """A child that moved to its own session (setsid) is gone after cancel too."""
    harness = make_harness()
    escaped = tmp_path / "escaped"
    job = await harness.submit(command=f"setsid sh -c 'echo $$ > {escaped}; exec sleep 600' & wait")
    sleeper = await until(lambda: read_pid_file(escaped), 10, "the escaped child to start")
    stat = proc_stat(sleeper)
    assert stat is not None and stat[3] == sleeper, "it leads its own session"
    ended = await within(15, harness.manager.cancel(job.id))
    assert ended.state is State.CANCELLED
    await until(lambda: not is_alive(sleeper), 5, "the escaped child to be killed")


@bounded(30)
async def test_a_job_leaves_nothing_running_when_it_exits(
    make_harness: Any, tmp_path: Path
) -> None:
    """A daemonized leftover (own session, no pipes) is killed when the job exits."""
    harness = make_harness()
    escaped = tmp_path / "escaped"
    job = await harness.run(
        command=f"setsid sh -c 'echo $$ > {escaped}; exec sleep 600' </dev/null >/dev/null 2>&1 &"
        f" until [ -s {escaped} ]; do sleep 0.01; done"
    )
    assert job.state is State.SUCCEEDED
    sleeper = read_pid_file(escaped)
    assert sleeper is not None
    await until(lambda: not is_alive(sleeper), 5, "the leftover to be killed")


@bounded(30)
async def test_a_job_sees_only_its_three_standard_descriptors(make_harness: Any) -> None:
    """No descriptor of the daemon or the spawner leaks into a job."""
    harness = make_harness()
    job = await harness.run(command_line=["sh", "-c", "ls /proc/$$/fd"])
    assert job.state is State.SUCCEEDED
    assert harness.output(job.id, "stdout").split() == [b"0", b"1", b"2"]


# The spawner is killed on purpose; its loss is logged as an error.
@pytest.mark.logs_errors("the job spawner went away")
@bounded(30)
async def test_a_dead_spawner_fails_its_jobs_and_is_replaced(
    make_harness: Any, tmp_path: Path
) -> None:
    """If the spawner dies, its running jobs end failed (outcome unknown) and the
    next job runs on a new spawner."""
    harness = make_harness()
    ready = tmp_path / "ready"
    job = await harness.submit(
        command=f"echo $PPID > '{ready}.tmp'; mv '{ready}.tmp' '{ready}'; exec sleep 600"
    )
    spawner_pid = await until(lambda: read_pid_file(ready), 10, "the job to start")
    sleeper = await until(lambda: children_of(spawner_pid), 10, "the job's process")
    os.kill(spawner_pid, signal.SIGKILL)
    ended = await within(10, harness.manager.when_final(job.id))
    assert ended.state is State.FAILED
    assert ended.outcome is not None and "spawner" in (ended.outcome.reason or "")
    await until(lambda: not any(map(is_alive, sleeper)), 5, "the job to die with the spawner")
    follower = await harness.run(command="echo next")
    assert follower.state is State.SUCCEEDED
    assert harness.output(follower.id, "stdout") == b"next\n"


@bounded(30)
async def test_a_huge_program_name_is_refused_and_harms_no_other_job(make_harness: Any) -> None:
    """A client-chosen name echoed in a refusal is cut short: the answer stays
    small, and the spawner (with every other running job) carries on."""
    harness = make_harness()
    sleeper = await harness.submit(command="sleep 600")
    execution = await harness.wait_spawned(sleeper.id)
    await until(lambda: execution.pid > 0, 10, "the sleeper to start")
    job = await harness.run(command_line=["x" * 70000])
    assert job.state is State.NOT_EXECUTED
    assert job.outcome is not None and job.outcome.reason is not None
    assert job.outcome.reason.endswith("…: File name too long"), job.outcome.reason
    assert len(job.outcome.reason) < 300
    assert harness.manager.get(sleeper.id).state is State.RUNNING
    ended = await within(10, harness.manager.cancel(sleeper.id))
    assert ended.state is State.CANCELLED and ended.outcome is not None
    assert ended.outcome.signal == signal.SIGTERM, "it was still the spawner's job"


@bounded(30)
async def test_out_of_descriptors_a_job_is_not_executed_and_nothing_leaks(
    make_harness: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the daemon runs out of descriptors (EMFILE) making a job's pipes, the
    job ends not_executed at once (never stuck running), no descriptor leaks,
    and the next job runs."""
    harness = make_harness()
    await harness.run(command="true")
    before = len(os.listdir("/proc/self/fd"))
    real_pipe2 = os.pipe2
    calls = []

    def pipe2_then_emfile(flags: int) -> tuple[int, int]:
        calls.append(flags)
        if len(calls) == 3:
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        return real_pipe2(flags)

    monkeypatch.setattr(runner.os, "pipe2", pipe2_then_emfile)
    job = await harness.run(command="echo never")
    monkeypatch.undo()
    assert job.state is State.NOT_EXECUTED
    assert job.outcome is not None and "Too many open files" in (job.outcome.reason or "")
    assert len(os.listdir("/proc/self/fd")) == before
    follower = await harness.run(command="echo next")
    assert follower.state is State.SUCCEEDED


# The spawner is killed on purpose; its loss is logged as an error.
@pytest.mark.logs_errors("the job spawner went away")
@bounded(30)
async def test_a_cancel_waits_with_its_job_for_a_restarting_spawner(
    make_harness: Any, tmp_path: Path
) -> None:
    """A spawner that dies right after it started is restarted after a pause;
    a job submitted and cancelled meanwhile is spawned then and gets its
    SIGTERM (the cancel is not lost while it waited)."""
    harness = make_harness(kill_grace=30)
    first = await harness.run(command="echo $PPID")
    os.kill(int(harness.output(first.id, "stdout")), signal.SIGKILL)
    # (A job sent before the daemon sees the loss would be not_executed.)
    await until(lambda: harness.spawner.starts == 2, 5, "the first restart")
    second = await harness.run(command="echo $PPID")
    assert second.state is State.SUCCEEDED, "the first restart is at once"
    os.kill(int(harness.output(second.id, "stdout")), signal.SIGKILL)
    # Restarted after a pause (it had just started), unless this machine is
    # so slow that a second passed: then the cancel simply has no wait.
    await until(lambda: not harness.spawner.running or harness.spawner.starts >= 3, 5, "its end")
    job = await harness.submit(command="sleep 600")
    await harness.wait_spawned(job.id)
    ended = await within(10, harness.manager.cancel(job.id))
    assert ended.state is State.CANCELLED and ended.outcome is not None
    assert ended.outcome.signal == signal.SIGTERM, "SIGTERM, not the KILL after the grace"
