"""The job manager's policy, with a fake clock and fake processes."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeExecutor, InlineIO
from twisted.internet.task import Clock

from cmdd.errors import ClientError
from cmdd.history import History, MemoryLog
from cmdd.jobs import Job, State
from cmdd.manager import JobManager, Limits
from cmdd.spec import parse_spec
from cmdd.store import JobStore


class World:
    """A manager wired to a fake clock, fake executor and inline I/O."""

    def __init__(self, tmp_path: Path, **limits: Any) -> None:
        self.clock = Clock()
        self.executor = FakeExecutor()
        self.store = JobStore()
        self.output_dir = str(tmp_path)
        self.log = MemoryLog()
        self.history = History(self.store, self.log, self.clock)
        self.manager = JobManager(
            self.history, self.executor, InlineIO(), self.clock,  # type: ignore[arg-type]
            self.output_dir, Limits(**limits),
        )
        self.manager.startService()

    def submit(self, body: dict[str, Any] | None = None) -> Job:
        results: list[Job] = []
        self.manager.submit(parse_spec(body or {"command": "true"})).addCallback(results.append)
        return results[0]

    def state(self, job_id: int) -> State:
        job = self.store.get(job_id)
        assert job is not None
        return job.state


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path, max_running=2, max_queued=3, kill_grace=5.0)


def test_jobs_start_after_the_response_in_fifo_order(world: World) -> None:
    """Submitted jobs are queued, then start in order up to max_running."""
    jobs = [world.submit() for _ in range(3)]
    assert [job.state for job in jobs] == [State.QUEUED] * 3
    assert world.executor.started == []
    world.clock.advance(0)
    assert [e.job_id for e in world.executor.started] == [1, 2]
    assert world.state(3) is State.QUEUED
    world.executor.by_job(1).finish(0)
    world.clock.advance(0)
    assert world.state(1) is State.SUCCEEDED
    assert [e.job_id for e in world.executor.started] == [1, 2, 3]


def test_full_queue_answers_503_with_retry_after(world: World) -> None:
    """Beyond max_queued waiting jobs, a submission is refused, not lost."""
    for _ in range(3):
        world.submit()
    with pytest.raises(ClientError) as info:
        world.submit()
    assert info.value.status == 503 and info.value.code == "QUEUE_FULL"
    assert "Retry-After" in info.value.headers
    assert len(world.store) == 3


def test_exit_codes_become_states(world: World) -> None:
    """Exit 0 is succeeded; non-zero or a signal is failed, with the details kept."""
    for _ in range(2):
        world.submit()
    world.clock.advance(0)
    world.executor.by_job(1).finish(3, stdout=b"out", stderr=b"err!")
    world.executor.by_job(2).finish(None, signal=9)
    one, two = world.store.get(1), world.store.get(2)
    assert one is not None and one.outcome is not None
    assert one.state is State.FAILED and one.outcome.exit_code == 3
    assert (one.outcome.stdout_bytes, one.outcome.stderr_bytes) == (3, 4)
    assert (Path(world.output_dir) / "1.stdout").read_bytes() == b"out"
    assert two is not None and two.outcome is not None
    assert two.state is State.FAILED and two.outcome.signal == 9


def test_spawn_failure_is_not_executed(world: World) -> None:
    """A job that cannot start ends not_executed with the reason, and frees its slot."""
    world.submit({"command_line": ["missing"]})
    world.clock.advance(0)
    job = world.store.get(1)
    assert job is not None and job.outcome is not None
    assert job.state is State.NOT_EXECUTED
    assert job.outcome.reason == "missing: executable not found"
    assert world.manager.running_count == 0


def test_timeout_terminates_then_kills(world: World) -> None:
    """At the timeout the group gets SIGTERM, SIGKILL after the grace; state failed."""
    world.submit({"command": "sleep 100", "timeout": 10})
    world.clock.advance(0)
    execution = world.executor.by_job(1)
    world.clock.advance(9.9)
    assert execution.signals == []
    world.clock.advance(0.1)
    assert execution.signals == [signal.SIGTERM]
    world.clock.advance(5)
    assert execution.signals == [signal.SIGTERM, signal.SIGKILL]
    execution.finish(0)
    job = world.store.get(1)
    assert job is not None and job.outcome is not None
    assert job.state is State.FAILED and job.outcome.reason == "timed out"


def test_default_timeout_applies_to_jobs_without_one(tmp_path: Path) -> None:
    """The operator's default timeout is recorded in the job and enforced."""
    world = World(tmp_path, default_timeout=3.0)
    job = world.submit()
    assert job.spec.timeout == 3.0
    world.clock.advance(0)
    world.clock.advance(3)
    assert world.executor.by_job(1).signals == [signal.SIGTERM]


def test_cancel_running_job_reports_cancelled_even_on_exit_0(world: World) -> None:
    """A cancelled job that exits 0 on SIGTERM is cancelled, not succeeded."""
    world.submit()
    world.clock.advance(0)
    results: list[Job] = []
    world.manager.cancel(1).addCallback(results.append)
    execution = world.executor.by_job(1)
    assert execution.signals == [signal.SIGTERM]
    assert results == []
    execution.finish(0)
    assert results[0].state is State.CANCELLED
    assert results[0].outcome is not None
    assert results[0].outcome.reason == "cancelled by request"
    world.clock.advance(10)
    assert execution.signals == [signal.SIGTERM], "the SIGKILL timer was left running"


def test_cancel_queued_job_never_runs(world: World) -> None:
    """A queued job cancelled before its turn is never started."""
    for _ in range(3):
        world.submit()
    results: list[Job] = []
    world.manager.cancel(3).addCallback(results.append)
    assert results[0].state is State.CANCELLED
    world.clock.advance(0)
    world.executor.by_job(1).finish(0)
    world.clock.advance(0)
    assert 3 not in [e.job_id for e in world.executor.started]


def test_cancel_and_delete_conflicts(world: World) -> None:
    """Cancelling a finished job or deleting a running one is a 409; unknown is 404."""
    world.submit()
    world.clock.advance(0)
    with pytest.raises(ClientError) as info:
        world.manager.delete(1)
    assert info.value.status == 409 and info.value.code == "JOB_NOT_FINISHED"
    world.executor.by_job(1).finish(0, stdout=b"x")
    with pytest.raises(ClientError) as info:
        world.manager.cancel(1)
    assert info.value.status == 409 and info.value.code == "JOB_FINISHED"
    with pytest.raises(ClientError) as info:
        world.manager.get(99)
    assert info.value.status == 404


def test_delete_removes_job_and_output(world: World) -> None:
    """Deleting a finished job removes it and its output files."""
    world.submit()
    world.clock.advance(0)
    world.executor.by_job(1).finish(0, stdout=b"data")
    assert (Path(world.output_dir) / "1.stdout").exists()
    world.manager.delete(1)
    assert world.store.get(1) is None
    assert not (Path(world.output_dir) / "1.stdout").exists()


def test_stop_lets_running_jobs_finish_within_the_grace(tmp_path: Path) -> None:
    """A stop (drain) accepts no new job and starts no queued one, but lets
    the running ones finish on their own: they end succeeded, not cancelled."""
    world = World(tmp_path, max_running=2, stop_grace=30.0)
    for _ in range(3):
        world.submit()
    world.clock.advance(0)
    stopped: list[object] = []
    world.manager.stopService().addCallback(stopped.append)
    with pytest.raises(ClientError) as info:
        world.submit()
    assert info.value.status == 503 and info.value.code == "SHUTTING_DOWN"
    assert "Retry-After" in info.value.headers
    world.clock.advance(29)
    assert stopped == []
    for execution in world.executor.alive:
        assert execution.signals == []
        execution.finish(0)
    assert stopped == [None]
    assert [world.state(job_id) for job_id in (1, 2, 3)] == [
        State.SUCCEEDED,
        State.SUCCEEDED,
        State.QUEUED,
    ]
    world.clock.advance(0)  # the pump a job's end schedules (a no-op while stopping)
    assert not world.clock.getDelayedCalls(), "the grace timer is cancelled"


def test_stop_ends_jobs_still_running_after_the_grace(tmp_path: Path) -> None:
    """After stop_grace the jobs still running get SIGTERM, SIGKILL after
    kill_grace, and are recorded cancelled with the reason."""
    world = World(tmp_path, max_running=2, stop_grace=10.0, kill_grace=5.0)
    for _ in range(2):
        world.submit()
    world.clock.advance(0)
    stopped: list[object] = []
    world.manager.stopService().addCallback(stopped.append)
    first, second = world.executor.alive
    world.clock.advance(10)
    assert first.signals == second.signals == [signal.SIGTERM]
    first.finish(None, signal=15)
    world.clock.advance(5)
    assert second.signals == [signal.SIGTERM, signal.SIGKILL]
    assert stopped == []
    second.finish(None, signal=9)
    assert stopped == [None]
    for job_id in (1, 2):
        job = world.store.get(job_id)
        assert job is not None and job.outcome is not None
        assert job.state is State.CANCELLED
        assert job.outcome.reason == "the daemon stopped (stop_grace of 10 s passed)"


def test_stop_now_ends_running_jobs_before_the_grace(tmp_path: Path) -> None:
    """A second stop signal (stop_now) ends the running jobs at once."""
    world = World(tmp_path, stop_grace=30.0)
    world.submit()
    world.clock.advance(0)
    stopped: list[object] = []
    world.manager.stopService().addCallback(stopped.append)
    assert world.manager.stopping
    world.manager.stop_now("SIGTERM received twice")
    (execution,) = world.executor.alive
    assert execution.signals == [signal.SIGTERM]
    execution.finish(None, signal=15)
    assert stopped == [None]
    job = world.store.get(1)
    assert job is not None and job.outcome is not None
    assert job.outcome.reason == "the daemon stopped (SIGTERM received twice)"
    world.clock.advance(0)
    assert not world.clock.getDelayedCalls()


def test_stop_with_nothing_running_is_immediate(world: World) -> None:
    """With no job running a stop has nothing to wait for."""
    stopped: list[object] = []
    world.manager.stopService().addCallback(stopped.append)
    assert stopped == [None]
    assert not world.clock.getDelayedCalls()


def test_when_final_gives_each_waiter_its_own_deferred(world: World) -> None:
    """Waiters are independent: cancelling one does not affect the others."""
    world.submit()
    world.clock.advance(0)
    first = world.manager.when_final(1)
    second = world.manager.when_final(1)
    first.cancel()
    first.addErrback(lambda _: None)
    results: list[Job] = []
    second.addCallback(results.append)
    world.executor.by_job(1).finish(0)
    assert results[0].state is State.SUCCEEDED


def test_abandoned_waiters_are_forgotten(world: World) -> None:
    """A waiter whose client went away (cancelled) leaves nothing behind."""
    world.submit()
    world.clock.advance(0)
    waiter = world.manager.when_final(1)
    waiter.addErrback(lambda _: None)
    waiter.cancel()
    assert world.manager._final_waiters[1] == []


def test_a_job_the_spawner_refused_is_not_executed(world: World) -> None:
    """When the spawner cannot exec the program (say, a missing #! interpreter),
    the job is not_executed with its reason; a shell's own exit 127 stays failed."""
    world.submit({"command_line": ["/opt/script"]})
    world.submit({"command": "exit 127"})
    world.clock.advance(0)
    reason = "/opt/script: its interpreter was not found"
    world.executor.by_job(1).finish(None, not_executed=reason)
    world.executor.by_job(2).finish(127, stderr=b"sh: 1: nosuchcmd: not found\n")
    one, two = world.store.get(1), world.store.get(2)
    assert one is not None and one.outcome is not None
    assert one.state is State.NOT_EXECUTED
    assert one.outcome.reason == reason
    assert two is not None and two.state is State.FAILED, "a shell's own 127 stays failed"


def test_a_job_whose_spawner_died_is_failed_with_the_reason(world: World) -> None:
    """A job whose end is unknown (the spawner died) is failed, saying why."""
    world.submit({"command": "sleep 60"})
    world.clock.advance(0)
    world.executor.by_job(1).finish(None, failure="the job spawner stopped while it ran")
    job = world.store.get(1)
    assert job is not None and job.outcome is not None
    assert job.state is State.FAILED
    assert job.outcome.reason == "the job spawner stopped while it ran"


def test_adoption_says_when_the_lost_ends_are_durable(tmp_path: Path) -> None:
    """After a restart, adopt_history's Deferred fires only once the jobs the
    previous daemon left running are durably lost (until then the store
    still shows them running, so the daemon must not serve yet)."""
    from twisted.internet.defer import Deferred

    from cmdd.codec import Meta
    from cmdd.jobs import Event

    world = World(tmp_path, max_running=2)
    world.submit()
    world.clock.advance(0)
    assert world.state(1) is State.RUNNING

    class HeldLog(MemoryLog):
        def __init__(self) -> None:
            super().__init__()
            self.held: list[Deferred[None]] = []

        def append(self, item: Event | Meta) -> Deferred[None]:
            waiter: Deferred[None] = Deferred()
            self.held.append(waiter)
            return waiter

    held = HeldLog()
    history = History(world.store, held, world.clock)
    restarted = JobManager(
        history, FakeExecutor(), InlineIO(), world.clock,  # type: ignore[arg-type]
        world.output_dir, Limits(),
    )
    adopted = restarted.adopt_history()
    fired: list[object] = []
    adopted.addCallback(fired.append)
    assert not fired and world.state(1) is State.RUNNING
    for waiter in held.held:
        waiter.callback(None)
    assert fired and world.state(1) is State.LOST

