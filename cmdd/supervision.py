"""Per-run supervision: one started job's process, from spawn to outcome.

The manager decides I{when} a job starts (queue, limits) and records what
happens; a L{Supervisor} runs each started job: it spawns the process once
the job's start is durable, arms its timeout, ends it (TERM, C{kill_grace},
KILL) on a cancel or a timeout, and decides the outcome from what happened
before the process ended. It then hands the outcome back (C{on_end}); it
never touches the queue or the journal.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from cmdd.jobs import Job, Outcome, State, final_state
from cmdd.runner import IExecution, IExecutor, ProcessExit, SpawnError
from cmdd.spool import IOWorker, OutputSpool, output_path

if TYPE_CHECKING:
    from cmdd.limits import Limits

log = Logger()


@attrs.define(eq=False)
class Run:
    """A job holding a slot: its process (once spawned), timers and flags."""

    job_id: int
    execution: IExecution | None = None
    stdout: OutputSpool | None = None
    stderr: OutputSpool | None = None
    timeout_call: IDelayedCall | None = None
    kill_call: IDelayedCall | None = None
    cancel_reason: str | None = None
    cancelled_by: str | None = None
    #: Set once the process has ended (its output may still be being written).
    exit: ProcessExit | None = None
    timed_out: bool = False
    #: The daemon stopped and left the run to its cluster (see L{Supervisor.detach}).
    detached: bool = False

    @property
    def cancelled_outcome(self) -> Outcome:
        """The outcome of a run cancelled before its process was spawned."""
        return Outcome(State.CANCELLED, reason=self.cancel_reason, cancelled_by=self.cancelled_by)


class Supervisor:
    """Spawns, times, ends and judges the runs of started jobs.

    @param executor: where processes run; C{None} until the composition root
        sets L{executor} (it needs the sandbox checked first).
    @type executor: L{IExecutor} or C{None}
    @param io: the I/O worker the output spools write on.
    @type io: L{IOWorker}
    @param clock: the time source for the timeout and kill timers.
    @type clock: L{IReactorTime}
    @param output_dir: the directory of the jobs' output files.
    @type output_dir: L{str}
    @param limits: returns the limits in force now (C{kill_grace} and
        C{max_output_bytes} are read when used, so a reload applies).
    @type limits: callable returning L{cmdd.limits.Limits}
    @param on_output: called with a job id when more of its output is in
        its files.
    @type on_output: callable taking an L{int}
    @param on_end: called once per run with the run and its outcome, once
        the process is gone (or never started) and its output is in the
        files; the run no longer needs its slot.
    @type on_end: callable taking a L{Run} and an L{Outcome}
    """

    def __init__(
        self,
        executor: IExecutor | None,
        io: IOWorker,
        clock: IReactorTime,
        output_dir: str,
        limits: Callable[[], Limits],
        on_output: Callable[[int], None],
        on_end: Callable[[Run, Outcome], None],
    ) -> None:
        self.executor = executor
        self._io = io
        self._clock = clock
        self._output_dir = output_dir
        self._limits = limits
        self._on_output = on_output
        self._on_end = on_end

    def spawn(self, run: Run, job: Job) -> None:
        """Start C{job}'s process now (its start is durable), unless it was
        cancelled meanwhile."""
        if run.cancel_reason is not None:
            self._on_end(run, run.cancelled_outcome)
            return
        self._open_spools(run, job)
        assert run.stdout is not None and run.stderr is not None
        try:
            assert self.executor is not None, "the composition root sets the executor"
            run.execution = self.executor.launch(job.id, job.spec, run.stdout, run.stderr)
        except SpawnError as e:
            log.info("job {job_id} not executed: {why}", job_id=job.id, why=str(e))
            self._on_end(run, Outcome(State.NOT_EXECUTED, reason=str(e)))
            return
        except Exception:
            # Never leave a job "running" with no process behind it.
            log.failure("starting job {job_id} failed", job_id=job.id)
            self._on_end(run, Outcome(State.NOT_EXECUTED, reason="cmdd could not start it"))
            return
        self._supervise(run, job.spec.timeout)

    def reattach(self, run: Run, job: Job, execution: Callable[..., IExecution]) -> None:
        """Supervise again a job that runs on elsewhere (a cluster) after a
        restart: C{execution(stdout, stderr)} tracks it; its timeout counts
        from its recorded start."""
        self._open_spools(run, job)
        assert run.stdout is not None and run.stderr is not None
        run.execution = execution(run.stdout, run.stderr)
        timeout = job.spec.timeout
        if timeout is not None and job.started is not None:
            timeout = max(0.0, job.started + timeout - self._clock.seconds())
        self._supervise(run, timeout)

    def _open_spools(self, run: Run, job: Job) -> None:
        cap = self._limits().max_output_bytes
        run.stdout, run.stderr = (
            OutputSpool(
                self._io, output_path(self._output_dir, job.id, stream), cap, clock=self._clock
            )
            for stream in ("stdout", "stderr")
        )
        run.stdout.on_flushed = run.stderr.on_flushed = lambda: self._on_output(job.id)

    def _supervise(self, run: Run, timeout: float | None) -> None:
        assert run.execution is not None
        if timeout is not None:
            run.timeout_call = self._clock.callLater(timeout, self._time_out, run)
        run.execution.ended().addCallback(self._process_ended, run).addErrback(
            self.end_failed, run
        )

    def cancel(self, run: Run, reason: str, by: str | None) -> None:
        """End the run's process (if it has one) and report it cancelled;
        a second cancel, or one after the process ended, changes nothing."""
        if run.cancel_reason is None and run.exit is None:
            run.cancel_reason = reason
            run.cancelled_by = by
            self.terminate(run)

    def stop(self, run: Run, why: str) -> None:
        """End the run for the daemon's stop (C{why}: the grace is over, or
        the operator asked again); it is C{cancelled} unless already ending."""
        if run.exit is None and run.cancel_reason is None:
            log.info("stopping: ending job {job_id} ({why})", job_id=run.job_id, why=why)
            run.cancel_reason = f"the daemon stopped ({why})"
        self.terminate(run)

    def terminate(self, run: Run) -> None:
        """SIGTERM to the run's process group, SIGKILL after C{kill_grace}."""
        if run.execution is None or run.kill_call is not None or run.exit is not None:
            # Not spawned yet (spawn sees the cancel reason and does not
            # spawn), already being killed, or already ended: its pid may be
            # reused, so it must not be signalled again.
            return
        run.execution.signal_group(signal.SIGTERM)
        run.kill_call = self._clock.callLater(self._limits().kill_grace, self._kill, run)

    def detach(self, run: Run) -> None:
        """Stop supervising a run that goes on without the daemon (a cluster
        job at a stop): its timers are cancelled, its process left alone,
        and its end, if it comes before the daemon is gone, is not recorded
        (the next start finds it)."""
        run.detached = True
        for call in (run.timeout_call, run.kill_call):
            if call is not None and call.active():
                call.cancel()

    def end_failed(self, failure: Failure, run: Run) -> None:
        """Log a failure to bring a run to its end (a bug, never a job's fault)."""
        log.failure("recording the end of job {job_id} failed", failure, job_id=run.job_id)

    def _time_out(self, run: Run) -> None:
        run.timeout_call = None
        run.timed_out = True
        log.info("job {job_id} timed out", job_id=run.job_id)
        self.terminate(run)

    def _kill(self, run: Run) -> None:
        log.info("job {job_id} ignored SIGTERM; sending SIGKILL", job_id=run.job_id)
        assert run.execution is not None
        run.execution.signal_group(signal.SIGKILL)

    async def _finish(self, exit: ProcessExit, run: Run) -> None:
        run.exit = exit
        for call in (run.timeout_call, run.kill_call):
            if call is not None and call.active():
                call.cancel()
        assert run.stdout is not None and run.stderr is not None
        # The outcome is decided now, by what happened before the process ended.
        state = final_state(
            exit_code=exit.exit_code,
            signal=exit.signal,
            cancelled=run.cancel_reason is not None,
            timed_out=run.timed_out,
        )
        reason = run.cancel_reason or exit.failure
        if exit.not_executed is not None:
            state, reason = State.NOT_EXECUTED, exit.not_executed
        # The result is visible only once its output is in the files.
        await run.stdout.close()
        await run.stderr.close()
        if run.timed_out and reason is None:
            reason = "timed out"
        self._on_end(
            run,
            Outcome(
                state=state,
                exit_code=exit.exit_code,
                signal=exit.signal,
                reason=reason,
                stdout_bytes=run.stdout.total,
                stderr_bytes=run.stderr.total,
                stdout_truncated=run.stdout.truncated,
                stderr_truncated=run.stderr.truncated,
                cancelled_by=run.cancelled_by,
                output_error=run.stdout.error or run.stderr.error,
            ),
        )

    def _process_ended(self, exit: ProcessExit, run: Run) -> Deferred[None] | None:
        if run.detached:
            return None
        return Deferred.fromCoroutine(self._finish(exit, run))
