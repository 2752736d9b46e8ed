"""The job manager service: queue, concurrency limit, timeouts, cancel, stop.

It owns the policy (when to start, when and how to kill, which final state a
process's end means); the executor owns the mechanics of processes.
"""

from __future__ import annotations

import collections
import signal
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from cmdd.errors import ClientError, not_found
from cmdd.jobs import Created, Deleted, Ended, Event, Job, Outcome, Started, State, final_state
from cmdd.runner import IExecution, IExecutor, ProcessExit, SpawnError
from cmdd.spec import JobSpec
from cmdd.spool import IOWorker, OutputSpool, output_path, remove_outputs
from cmdd.store import JobStore

log = Logger()


@attrs.define
class Limits:
    """Operator-set limits for running jobs."""

    max_running: int = 8
    max_queued: int = 10_000
    max_output_bytes: int = 16 * 1024 * 1024
    default_timeout: float | None = None
    kill_grace: float = 5.0


@attrs.define(eq=False)
class _Run:
    """A running job's process and the timers and flags around it."""

    job_id: int
    execution: IExecution
    stdout: OutputSpool
    stderr: OutputSpool
    timeout_call: IDelayedCall | None = None
    kill_call: IDelayedCall | None = None
    cancel_reason: str | None = None
    timed_out: bool = False


class JobManager(Service):
    """Starts queued jobs as slots free up and records every change."""

    name = "jobs"

    def __init__(
        self,
        store: JobStore,
        executor: IExecutor,
        io: IOWorker,
        clock: IReactorTime,
        output_dir: str,
        limits: Limits,
    ) -> None:
        self.store = store
        self._executor = executor
        self._io = io
        self._clock = clock
        self.output_dir = output_dir
        self.limits = limits
        self._queue: collections.deque[int] = collections.deque()
        self._running: dict[int, _Run] = {}
        self._final_waiters: dict[int, list[Deferred[Job]]] = {}
        self._pump_call: IDelayedCall | None = None
        self._stopping = False
        self.submitted_total = 0
        store.add_listener(self._job_changed)

    # --- queries -----------------------------------------------------------

    @property
    def running_count(self) -> int:
        """Jobs whose process is alive now."""
        return len(self._running)

    @property
    def queued_count(self) -> int:
        """Jobs waiting for a free slot."""
        return len(self._queue)

    def get(self, job_id: int) -> Job:
        """The job, or a 404 error."""
        job = self.store.get(job_id)
        if job is None:
            raise not_found("job", job_id)
        return job

    def when_final(self, job_id: int) -> Deferred[Job]:
        """A new Deferred that fires with the job once it is in a final state."""
        job = self.get(job_id)
        if job.state.final:
            return succeed(job)
        waiter: Deferred[Job] = Deferred()
        self._final_waiters.setdefault(job_id, []).append(waiter)
        return waiter

    # --- commands ----------------------------------------------------------

    def submit(self, spec: JobSpec) -> Deferred[Job]:
        """Accept a job; the Deferred fires once it is recorded.

        @raise ClientError: 503 while stopping or when the queue is full.
        """
        if self._stopping:
            raise ClientError(
                "SHUTTING_DOWN",
                "the daemon is stopping",
                status=503,
                headers={"Retry-After": "5"},
            )
        if len(self._queue) >= self.limits.max_queued:
            raise ClientError(
                "QUEUE_FULL",
                f"{len(self._queue)} jobs are already waiting; try again later",
                status=503,
                headers={"Retry-After": "1"},
            )
        if spec.timeout is None and self.limits.default_timeout is not None:
            spec = attrs.evolve(spec, timeout=self.limits.default_timeout)
        job = self._record(Created(self.store.allocate_id(), self._clock.seconds(), spec))
        self.submitted_total += 1
        self._queue.append(job.id)
        self._schedule_pump()
        return succeed(job)

    def cancel(self, job_id: int, reason: str = "cancelled by request") -> Deferred[Job]:
        """Cancel a queued or running job; fires with the job once it is final.

        @raise ClientError: 404 unknown job, 409 already finished.
        """
        job = self.get(job_id)
        if job.state.final:
            raise ClientError(
                "JOB_FINISHED",
                f"job {job_id} already ended ({job.state.value})",
                status=409,
            )
        run = self._running.get(job_id)
        if run is None:
            self._queue.remove(job_id)
            self._record(
                Ended(job_id, self._clock.seconds(), Outcome(State.CANCELLED, reason=reason))
            )
        else:
            run.cancel_reason = run.cancel_reason or reason
            self._terminate(run)
        return self.when_final(job_id)

    def delete(self, job_id: int) -> Deferred[None]:
        """Remove a finished job and its output files.

        @raise ClientError: 404 unknown job, 409 not finished yet.
        """
        job = self.get(job_id)
        if not job.state.final:
            raise ClientError(
                "JOB_NOT_FINISHED",
                f"job {job_id} is {job.state.value}; cancel it before deleting",
                status=409,
            )
        self._record(Deleted(job_id, self._clock.seconds()))
        return self._io.run(remove_outputs, self.output_dir, job_id)

    # --- service -----------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._stopping = False
        self._schedule_pump()

    def stopService(self) -> Deferred[None]:
        """Stop starting jobs, end the running ones (TERM, grace, KILL)."""
        super().stopService()
        self._stopping = True
        if self._pump_call is not None and self._pump_call.active():
            self._pump_call.cancel()
        ending = []
        for run in list(self._running.values()):
            run.cancel_reason = "the daemon stopped"
            ending.append(self.when_final(run.job_id))
            self._terminate(run)
        done: Deferred[Any] = DeferredList(ending, consumeErrors=True)
        return done.addCallback(lambda _: None)

    # --- internals ---------------------------------------------------------

    def _record(self, event: Event) -> Job:
        job = self.store.record(event)
        assert job is not None or isinstance(event, Deleted)
        return job  # type: ignore[return-value]  # None only for Deleted

    def _job_changed(self, event: Event, job: Job | None) -> None:
        if job is not None and job.state.final:
            for waiter in self._final_waiters.pop(job.id, []):
                waiter.callback(job)

    def _schedule_pump(self) -> None:
        # Start processes after the current request's response is written,
        # and once for a burst of submissions.
        if self._pump_call is None or not self._pump_call.active():
            self._pump_call = self._clock.callLater(0, self._pump)

    def _pump(self) -> None:
        while not self._stopping and self._queue and len(self._running) < self.limits.max_running:
            self._start(self._queue.popleft())

    def _start(self, job_id: int) -> None:
        job = self.get(job_id)
        cap = self.limits.max_output_bytes
        stdout = OutputSpool(self._io, output_path(self.output_dir, job_id, "stdout"), cap)
        stderr = OutputSpool(self._io, output_path(self.output_dir, job_id, "stderr"), cap)
        try:
            execution = self._executor.launch(job_id, job.spec, stdout, stderr)
        except SpawnError as e:
            log.info("job {job_id} not executed: {why}", job_id=job_id, why=str(e))
            self._record(
                Ended(job_id, self._clock.seconds(), Outcome(State.NOT_EXECUTED, reason=str(e)))
            )
            return
        run = _Run(job_id, execution, stdout, stderr)
        self._running[job_id] = run
        self._record(Started(job_id, self._clock.seconds(), execution.pid))
        if job.spec.timeout is not None:
            run.timeout_call = self._clock.callLater(job.spec.timeout, self._time_out, run)
        execution.ended().addCallback(self._process_ended, run).addErrback(self._end_failed, run)

    def _time_out(self, run: _Run) -> None:
        run.timeout_call = None
        run.timed_out = True
        log.info("job {job_id} timed out", job_id=run.job_id)
        self._terminate(run)

    def _terminate(self, run: _Run) -> None:
        if run.kill_call is not None:
            return
        run.execution.signal_group(signal.SIGTERM)
        run.kill_call = self._clock.callLater(self.limits.kill_grace, self._kill, run)

    def _kill(self, run: _Run) -> None:
        log.info("job {job_id} ignored SIGTERM; sending SIGKILL", job_id=run.job_id)
        run.execution.signal_group(signal.SIGKILL)

    async def _finish(self, exit: ProcessExit, run: _Run) -> None:
        for call in (run.timeout_call, run.kill_call):
            if call is not None and call.active():
                call.cancel()
        # The result is visible only once its output is in the files.
        await run.stdout.close()
        await run.stderr.close()
        state = final_state(
            exit_code=exit.exit_code,
            signal=exit.signal,
            cancelled=run.cancel_reason is not None,
            timed_out=run.timed_out,
        )
        reason = run.cancel_reason
        if run.timed_out and reason is None:
            reason = "timed out"
        outcome = Outcome(
            state=state,
            exit_code=exit.exit_code,
            signal=exit.signal,
            reason=reason,
            stdout_bytes=run.stdout.total,
            stderr_bytes=run.stderr.total,
            stdout_truncated=run.stdout.truncated,
            stderr_truncated=run.stderr.truncated,
        )
        del self._running[run.job_id]
        self._record(Ended(run.job_id, self._clock.seconds(), outcome))
        self._schedule_pump()

    def _process_ended(self, exit: ProcessExit, run: _Run) -> Deferred[None]:
        return Deferred.fromCoroutine(self._finish(exit, run))

    def _end_failed(self, failure: Failure, run: _Run) -> None:
        log.failure("recording the end of job {job_id} failed", failure, job_id=run.job_id)
