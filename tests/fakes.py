"""Test doubles for the I/O edges: an executor without processes, inline file work."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from cmdd.runner import IExecution, IExecutor, ProcessExit, SpawnError
from cmdd.spec import JobSpec
from cmdd.spool import OutputSpool


class InlineIO:
    """Runs "blocking" file work at once, in the calling thread."""

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def run(self, fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        try:
            return succeed(fn(*args))
        except Exception as e:
            return fail(e)


class ManualThreads:
    """A "thread pool" whose work runs only when the test says so, so a test
    can have many blocking calls (password checks) in flight at once."""

    def __init__(self) -> None:
        self.pending: list[tuple[Callable[..., Any], tuple[Any, ...], Deferred[Any]]] = []

    def run(self, fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.pending.append((fn, args, d))
        return d

    def run_all(self) -> int:
        """Run every waiting call (and any they queue); returns how many ran."""
        ran = 0
        while self.pending:
            fn, args, d = self.pending.pop(0)
            ran += 1
            try:
                result = fn(*args)
            except Exception as e:
                d.errback(e)
            else:
                d.callback(result)
        return ran


@implementer(IExecution)
class FakeExecution:
    """A process the test ends by hand; records the signals it was sent."""

    def __init__(self, job_id: int, spec: JobSpec, stdout: OutputSpool, stderr: OutputSpool):
        self.job_id = job_id
        self.spec = spec
        self.stdout = stdout
        self.stderr = stderr
        self.pid = 1000 + job_id
        self.signals: list[int] = []
        self._waiters: list[Deferred[ProcessExit]] = []
        self.exit: ProcessExit | None = None

    def signal_group(self, signum: int) -> None:
        self.signals.append(signum)

    def ended(self) -> Deferred[ProcessExit]:
        if self.exit is not None:
            return succeed(self.exit)
        waiter: Deferred[ProcessExit] = Deferred()
        self._waiters.append(waiter)
        return waiter

    def finish(self, exit_code: int | None = 0, signal: int | None = None,
               stdout: bytes = b"", stderr: bytes = b"",
               not_executed: str | None = None, failure: str | None = None) -> None:
        """The process writes its output and ends (or was refused, or lost)."""
        if stdout:
            self.stdout.write(stdout)
        if stderr:
            self.stderr.write(stderr)
        self.exit = ProcessExit(exit_code, signal, not_executed=not_executed, failure=failure)
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(self.exit)


@implementer(IExecutor)
class FakeExecutor:
    """Starts L{FakeExecution}s; programs named "missing" fail to spawn."""

    def __init__(self) -> None:
        self.started: list[FakeExecution] = []

    def launch(self, job_id: int, spec: JobSpec, stdout: OutputSpool,
               stderr: OutputSpool) -> IExecution:
        if spec.argv()[0] == "missing":
            raise SpawnError("missing: executable not found")
        execution = FakeExecution(job_id, spec, stdout, stderr)
        self.started.append(execution)
        return execution

    def by_job(self, job_id: int) -> FakeExecution:
        return next(e for e in self.started if e.job_id == job_id)

    @property
    def alive(self) -> list[FakeExecution]:
        return [e for e in self.started if e.exit is None]
