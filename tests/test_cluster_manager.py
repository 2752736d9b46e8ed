"""The manager with an executor that runs jobs elsewhere (a cluster):
re-adoption after a restart, the stop that leaves jobs running, 503 while
the cluster does not answer. Fake clock, fake executor."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fakes import FakeExecution, FakeExecutor, InlineIO
from twisted.internet.task import Clock

from cmdd.errors import ClientError
from cmdd.history import History, MemoryLog
from cmdd.jobs import Job, State
from cmdd.manager import JobManager, Limits
from cmdd.spec import parse_spec
from cmdd.store import JobStore


class ClusterExecutor(FakeExecutor):
    """A fake executor whose jobs survive the daemon (it can reattach)."""

    def __init__(self) -> None:
        super().__init__()
        self.unavailable: str | None = None
        self.reattached: list[FakeExecution] = []

    def reattach(self, job: Job, stdout: Any, stderr: Any) -> FakeExecution:
        execution = FakeExecution(job.id, job.spec, stdout, stderr)
        self.reattached.append(execution)
        return execution


def _manager(
    store: JobStore, log: MemoryLog, clock: Clock, executor: Any, out: Path
) -> JobManager:
    history = History(store, log, clock)
    return JobManager(
        history, executor, InlineIO(), clock,  # type: ignore[arg-type]
        str(out), Limits(max_running=4, kill_grace=1.0, stop_grace=5.0),
    )  # fmt: skip


def _submit(manager: JobManager, body: dict[str, Any]) -> Job:
    done: list[Job] = []
    manager.submit(parse_spec(body)).addCallback(done.append)
    return done[0]


def test_restart_readopts_running_cluster_jobs(tmp_path: Path) -> None:
    """After a restart a running cluster job is tracked again, never lost; its
    real end is recorded, its Slurm id kept, and its timeout counts from its
    recorded start."""
    clock, store, log = Clock(), JobStore(), MemoryLog()
    first = _manager(store, log, clock, ClusterExecutor(), tmp_path)
    first.startService()
    job = _submit(first, {"command": "sleep 100", "timeout": 10})
    clock.advance(0)
    first.record_submitted(job.id, "4242")
    clock.advance(4)
    executor = ClusterExecutor()
    restarted = _manager(store, log, clock, executor, tmp_path)
    restarted.adopt_history()
    restarted.startService()
    assert store.get(job.id).state is State.RUNNING  # type: ignore[union-attr]
    (execution,) = executor.reattached
    clock.advance(5.9)
    assert execution.signals == []
    clock.advance(0.2)  # 10 s after its start, not after the restart
    assert execution.signals == [15]
    execution.finish(exit_code=None, signal=15)
    ended = store.get(job.id)
    assert ended is not None and ended.state is State.FAILED
    assert ended.outcome is not None and ended.outcome.reason == "timed out"
    assert ended.slurm_job_id == "4242"


def test_stop_leaves_cluster_jobs_running(tmp_path: Path) -> None:
    """A stop neither waits for nor cancels jobs that run on in the cluster;
    they stay running in the journal, for the next start to re-adopt."""
    clock, store, log = Clock(), JobStore(), MemoryLog()
    executor = ClusterExecutor()
    manager = _manager(store, log, clock, executor, tmp_path)
    manager.startService()
    job = _submit(manager, {"command": "sleep 100"})
    clock.advance(0)
    stopped: list[object] = []
    manager.stopService().addCallback(stopped.append)
    assert stopped, "the stop does not wait for cluster jobs"
    (execution,) = executor.started
    assert execution.signals == []
    execution.finish(exit_code=0)  # a late end is not recorded: re-adopted later
    assert store.get(job.id).state is State.RUNNING  # type: ignore[union-attr]
    assert clock.getDelayedCalls() == []


def test_unavailable_cluster_refuses_new_jobs_with_503(tmp_path: Path) -> None:
    """While the cluster does not answer, POST gets 503 with Retry-After."""
    clock, store, log = Clock(), JobStore(), MemoryLog()
    executor = ClusterExecutor()
    manager = _manager(store, log, clock, executor, tmp_path)
    manager.startService()
    executor.unavailable = "the Slurm controller does not answer (connect failure)"
    with pytest.raises(ClientError) as raised:
        manager.submit(parse_spec({"command": "true"}))
    assert raised.value.status == 503 and raised.value.code == "EXECUTOR_UNAVAILABLE"
    assert raised.value.headers["Retry-After"] == "10"
    executor.unavailable = None
    assert _submit(manager, {"command": "true"}).state is State.QUEUED
