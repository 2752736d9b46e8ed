"""The job manager service: queue, concurrency limit, timeouts, cancel, stop.

It owns the policy (when to start, when and how to kill, which final state a
process's end means); the executor owns the mechanics of processes.
"""

from __future__ import annotations

import signal
from typing import Any, NoReturn, TypeVar

import attrs
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, DeferredList, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from cmdd.errors import ClientError, not_found
from cmdd.history import History
from cmdd.jobs import (
    Created,
    Deleted,
    Ended,
    Event,
    Idempotency,
    Job,
    Modified,
    Outcome,
    Released,
    Started,
    State,
    final_state,
)
from cmdd.runner import IExecution, IExecutor, ProcessExit, SpawnError
from cmdd.slots import SlotQueue
from cmdd.spec import JobSpec
from cmdd.spool import IOWorker, OutputSpool, output_path, output_size, remove_outputs

log = Logger()
T = TypeVar("T")

#: Seconds before a start or an end the journal refused is tried again
#: (doubling up to L{RETRY_MAX_SECONDS}).
RETRY_SECONDS = 1.0
RETRY_MAX_SECONDS = 30.0


@attrs.define
class Limits:
    """Operator-set limits for running jobs."""

    max_running: int = 8
    max_queued: int = 10_000
    #: Jobs waiting for their C{run_at} (they hold no queue place until then).
    max_scheduled: int = 100_000
    max_output_bytes: int = 16 * 1024 * 1024
    default_timeout: float | None = None
    kill_grace: float = 5.0
    #: Seconds a stop waits for running jobs to finish before ending them.
    stop_grace: float = 30.0


@attrs.define(eq=False)
class _Run:
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


class JobManager(Service):
    """Starts queued jobs as slots free up and records every change."""

    name = "jobs"

    def __init__(
        self,
        history: History,
        executor: IExecutor | None,
        io: IOWorker,
        clock: IReactorTime,
        output_dir: str,
        limits: Limits,
    ) -> None:
        self.history = history
        self.store = history.store
        self.executor = executor
        self._io = io
        #: Time source for timers; API code that waits (follow) uses it too.
        self.clock = clock
        self.output_dir = output_dir
        self.limits = limits
        self._queue = SlotQueue()
        self._running: dict[int, _Run] = {}
        self._final_waiters: dict[int, list[Deferred[Job]]] = {}
        self._output_waiters: dict[int, list[Deferred[None]]] = {}
        self._pump_call: IDelayedCall | None = None
        self._stopping = False
        self._grace_call: IDelayedCall | None = None
        #: Journal ends refused and waiting to be tried again, by job id.
        self._end_retries: dict[int, tuple[IDelayedCall, tuple[Any, ...]]] = {}
        self._backing_off = False
        self.submitted_total = 0
        #: The host jobs run on, recorded with each start (the composition root sets it).
        self.host: str | None = None
        self.store.add_listener(self._job_changed)

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
        return _new_waiter(self._final_waiters, job_id)

    def output_changed(self, job_id: int) -> Deferred[None]:
        """A new Deferred that fires when more of the job's output is in its
        files, or the job ends (whichever comes first)."""
        return _new_waiter(self._output_waiters, job_id)

    def _output_flushed(self, job_id: int) -> None:
        for waiter in self._output_waiters.pop(job_id, []):
            waiter.callback(None)

    def wait_final(self, job_id: int, seconds: float) -> Deferred[Job]:
        """The job once it is final, or as it is after C{seconds}, whichever
        comes first. Costs one timer and no thread per waiter."""
        waiter = self.when_final(job_id)
        if waiter.called:
            return waiter
        timer = self.clock.callLater(seconds, waiter.cancel)

        def settle(result: Job | Failure) -> Job:
            if timer.active():
                timer.cancel()
            if isinstance(result, Failure):
                result.trap(CancelledError)
                return self.get(job_id)
            return result

        return waiter.addBoth(settle)

    # --- commands ----------------------------------------------------------

    def submit(
        self,
        spec: JobSpec,
        owner: str = "admin",
        idempotency: Idempotency | None = None,
        schedule_id: int | None = None,
    ) -> Deferred[Job]:
        """Accept a job; the Deferred fires once its creation is durable.

        C{idempotency} (the client's key) is journaled with the creation. A
        job with a C{run_at} is C{scheduled}: L{release} queues it later.

        @raise ClientError: 503 while stopping or when the queue is full.
        """
        if self._stopping:
            raise ClientError(
                "SHUTTING_DOWN",
                "the daemon is stopping",
                status=503,
                headers={"Retry-After": "5"},
            )
        scheduled = spec.run_at is not None
        if scheduled and self.store.counts[State.SCHEDULED] >= self.limits.max_scheduled:
            raise ClientError(
                "TOO_MANY_SCHEDULED",
                f"{self.limits.max_scheduled} jobs are already scheduled; try again later",
                status=503,
                headers={"Retry-After": "60"},
            )
        if not scheduled and len(self._queue) >= self.limits.max_queued:
            raise ClientError(
                "QUEUE_FULL",
                f"{len(self._queue)} jobs are already waiting; try again later",
                status=503,
                headers={"Retry-After": "1"},
            )
        if spec.timeout is None and self.limits.default_timeout is not None:
            spec = attrs.evolve(spec, timeout=self.limits.default_timeout)
        job, durable = self.history.record(
            Created(
                self.store.allocate_id(),
                self.clock.seconds(),
                spec,
                owner,
                idempotency,
                schedule_id,
            )
        )
        assert job is not None
        self.submitted_total += 1
        if not scheduled:
            # Queued at once: its start is journaled after its creation, and
            # the process is spawned only once that start is durable. If the
            # creation is refused, so is the start (see History).
            self._enqueue(job)
            self._schedule_pump()

        def refused(failure: Failure) -> Job:
            self._queue.remove(job.id)
            return _not_durable(failure, "the job could not be recorded durably; it will not run")

        return durable.addCallbacks(lambda _: job, refused)

    def cancel(self, job_id: int, by: str | None = None) -> Deferred[Job]:
        """Cancel a queued or running job; fires with the job once it is final.

        C{by} (who asked) is kept in the job's outcome for the audit trail.

        @raise ClientError: 404 unknown job, 409 already finished.
        """
        job = self._current(job_id)
        if job.state.final:
            raise ClientError(
                "JOB_FINISHED",
                f"job {job_id} already ended ({job.state.value})",
                status=409,
            )
        reason = f"cancelled by {by}" if by else "cancelled by request"
        run = self._running.get(job_id)
        if run is None:
            queued = job_id in self._queue
            if not queued and job.state is not State.SCHEDULED:
                # Its process ended and its end is being journaled.
                return self.when_final(job_id)
            if queued:
                self._queue.remove(job_id)
            outcome = Outcome(State.CANCELLED, reason=reason, cancelled_by=by)
            _, durable = self.history.record(Ended(job_id, self.clock.seconds(), outcome))

            def refused(failure: Failure) -> Job:
                # Still queued (or scheduled), as the journal says.
                if queued:
                    self._enqueue(job, front=True)
                    self._schedule_pump()
                return _not_durable(failure, "the cancel could not be recorded durably")

            return durable.addCallbacks(lambda _: self.when_final(job_id), refused)
        elif run.cancel_reason is None and run.exit is None:
            run.cancel_reason = reason
            run.cancelled_by = by
            self._terminate(run)
        return self.when_final(job_id)

    def release(self, job_id: int) -> Deferred[None]:
        """Queue a scheduled job whose C{run_at} came; fires once that is durable.

        Queued at once, like a submit: its start is journaled after the release.
        """
        job = self.history.current(job_id)
        if job is None or job.state is not State.SCHEDULED or self._stopping:
            return succeed(None)
        _, durable = self.history.record(Released(job_id, self.clock.seconds()))
        self._enqueue(job)
        self._schedule_pump()

        def refused(failure: Failure) -> Failure:
            self._queue.remove(job_id)
            return failure

        return durable.addErrback(refused)

    def modify(self, job_id: int, spec: JobSpec) -> Deferred[Job]:
        """Replace the spec of a job that has not started (a new C{run_at}
        schedules it again; none queues it now).

        @raise ClientError: 404 unknown job, 409 once it runs or ended.
        """
        job = self._current(job_id)
        if job.state not in (State.SCHEDULED, State.QUEUED) or job_id in self._running:
            raise ClientError(
                "JOB_STARTED",
                f"job {job_id} is {job.state.value}; only a job that has not started changes",
                status=409,
            )
        if spec.timeout is None and self.limits.default_timeout is not None:
            spec = attrs.evolve(spec, timeout=self.limits.default_timeout)
        after, durable = self.history.record(Modified(job_id, self.clock.seconds(), spec))
        assert after is not None
        moved = after.state is not job.state
        if moved and after.state is State.QUEUED:
            self._enqueue(after)
            self._schedule_pump()
        elif moved:
            self._queue.remove(job_id)

        def refused(failure: Failure) -> Job:
            # Unchanged, as the journal says: back where it was.
            if moved and after.state is State.QUEUED:
                self._queue.remove(job_id)
            elif moved:
                self._enqueue(job, front=True)
                self._schedule_pump()
            return _not_durable(failure, "the change could not be recorded durably")

        return durable.addCallbacks(lambda _: self.get(job_id), refused)

    def delete(self, job_id: int, by: str | None = None) -> Deferred[None]:
        """Remove a finished job and its output files (C{by}: who asked).

        @raise ClientError: 404 unknown job, 409 not finished yet.
        """
        job = self._current(job_id)
        if not job.state.final:
            raise ClientError(
                "JOB_NOT_FINISHED",
                f"job {job_id} is {job.state.value}; cancel it before deleting",
                status=409,
            )
        _, durable = self.history.record(Deleted(job_id, self.clock.seconds(), by))
        # Files go only once the deletion is durable: a crash in between must
        # not leave a job whose output is missing. A refused deletion leaves
        # the job as it was, in memory and on disk.
        return durable.addCallbacks(
            lambda _: self.remove_outputs([job_id]),
            lambda failure: _not_durable(
                failure, "the deletion could not be recorded durably; the job is kept"
            ),
        )

    def _current(self, job_id: int) -> Job:
        """The job as its recorded events make it (some may not be durable
        yet), or a 404 error."""
        self.get(job_id)
        job = self.history.current(job_id)
        if job is None:
            raise not_found("job", job_id)
        return job

    def remove_outputs(self, job_ids: list[int]) -> Deferred[None]:
        """Delete these jobs' output files (on the I/O thread)."""

        def remove_all() -> None:
            for job_id in job_ids:
                remove_outputs(self.output_dir, job_id)

        return self._io.run(remove_all)

    def adopt_history(self) -> Deferred[Any]:
        """After replay: queue the queued jobs again, mark the running ones lost.

        A job that was running when the daemon died may or may not have
        finished its work; it is never run again.

        @return: fires once each C{lost} end was written or refused (the
            store shows a job as lost only once its end is durable, so
            nothing should be served before: see L{cmdd.listening}).
        """
        now = self.clock.seconds()
        recorded: list[Deferred[None]] = []
        for job in self.store.oldest_first():
            if job.state is State.QUEUED:
                self._enqueue(job)
            elif job.state is State.RUNNING:
                stdout_bytes, stderr_bytes = (
                    output_size(output_path(self.output_dir, job.id, stream))
                    for stream in ("stdout", "stderr")
                )
                recorded.append(self._record_end(
                    job.id,
                    now,
                    Outcome(
                        State.LOST,
                        reason="the daemon stopped while the job ran; its outcome is unknown",
                        stdout_bytes=stdout_bytes,
                        stderr_bytes=stderr_bytes,
                    ),
                ))
        return DeferredList(recorded, consumeErrors=True)

    # --- service -----------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._stopping = False
        self._schedule_pump()

    def set_limits(self, limits: Limits) -> None:
        """New limits (SIGHUP); a higher max_running starts queued jobs now."""
        self.limits = limits
        if not self._stopping:
            self._schedule_pump()

    @property
    def stopping(self) -> bool:
        """True from the start of a stop (drain) on: no job is accepted or started."""
        return self._stopping

    def stopService(self) -> Deferred[None]:
        """Drain: accept and start no more jobs, let the running ones finish
        for up to C{limits.stop_grace} seconds, then end the rest (TERM,
        C{kill_grace}, KILL), recorded as cancelled. Queued jobs stay queued
        for the next start. Fires once every running job's end is recorded.
        """
        super().stopService()
        self._stopping = True
        if self._pump_call is not None and self._pump_call.active():
            self._pump_call.cancel()
        ending = [self.when_final(job_id) for job_id in list(self._running)]
        done: Deferred[Any] = DeferredList(ending, consumeErrors=True)
        if ending:
            grace = self.limits.stop_grace
            log.info(
                "stopping: waiting up to {grace} s for {count} running job(s) to finish",
                grace=grace,
                count=len(ending),
            )
            self._grace_call = self.clock.callLater(
                grace, self.stop_now, f"stop_grace of {grace:g} s passed"
            )
        return done.addCallback(self._drained)

    def stop_now(self, why: str) -> None:
        """During a stop: end every running job at once (the grace period is
        over, or the operator asked again). Their outcome is C{cancelled}
        with the reason "the daemon stopped (C{why})"."""
        if self._grace_call is not None and self._grace_call.active():
            self._grace_call.cancel()
        self._grace_call = None
        for run in list(self._running.values()):
            if run.exit is None and run.cancel_reason is None:
                log.info("stopping: ending job {job_id} ({why})", job_id=run.job_id, why=why)
                run.cancel_reason = f"the daemon stopped ({why})"
            self._terminate(run)

    def _drained(self, _: object) -> None:
        if self._grace_call is not None and self._grace_call.active():
            self._grace_call.cancel()
        self._grace_call = None
        # Ends still waiting for the journal get one last try now, not a
        # timer that would fire after the stop.
        retries, self._end_retries = self._end_retries, {}
        for call, args in retries.values():
            if call.active():
                call.cancel()
                self._record_end(*args)

    # --- internals ---------------------------------------------------------

    def _enqueue(self, job: Job, front: bool = False) -> None:
        # Concurrency keys are per owner: alice's "db" is not bob's.
        key = job.spec.concurrency_key
        slot_key = None if key is None else (job.owner, key)
        self._queue.enqueue(job.id, slot_key, job.spec.concurrency_limit, front=front)

    def _job_changed(self, event: Event, job: Job | None) -> None:
        if job is not None and job.state.final:
            for waiter in self._final_waiters.pop(job.id, []):
                waiter.callback(job)
            self._output_flushed(job.id)

    def _schedule_pump(self, delay: float = 0) -> None:
        # Start processes after the current request's response is written,
        # and once for a burst of submissions.
        if self._pump_call is None or not self._pump_call.active():
            self._pump_call = self.clock.callLater(delay, self._pump)

    def _pump(self) -> None:
        self._backing_off = False
        while (
            not self._stopping
            and not self._backing_off
            and len(self._running) < self.limits.max_running
        ):
            job_id = self._queue.next_startable()
            if job_id is None:
                break
            job = self.history.current(job_id)
            if job is not None and job.state is State.QUEUED:
                self._start(job_id)
            else:
                self._queue.release(job_id)

    def _start(self, job_id: int) -> None:
        run = _Run(job_id)
        self._running[job_id] = run
        _, durable = self.history.record(Started(job_id, self.clock.seconds(), self.host))
        durable.addCallbacks(
            lambda _: self._spawn(run), lambda failure: self._start_refused(run, failure)
        ).addErrback(self._end_failed, run)

    def _spawn(self, run: _Run) -> None:
        if run.cancel_reason is not None:
            outcome = Outcome(
                State.CANCELLED, reason=run.cancel_reason, cancelled_by=run.cancelled_by
            )
            self._end(run, outcome)
            return
        job = self.get(run.job_id)
        cap = self.limits.max_output_bytes
        run.stdout, run.stderr = (
            OutputSpool(
                self._io, output_path(self.output_dir, job.id, stream), cap, clock=self.clock
            )
            for stream in ("stdout", "stderr")
        )
        run.stdout.on_flushed = run.stderr.on_flushed = lambda: self._output_flushed(job.id)
        try:
            assert self.executor is not None, "the composition root sets the executor"
            run.execution = self.executor.launch(job.id, job.spec, run.stdout, run.stderr)
        except SpawnError as e:
            log.info("job {job_id} not executed: {why}", job_id=job.id, why=str(e))
            self._end(run, Outcome(State.NOT_EXECUTED, reason=str(e)))
            return
        except Exception:
            # Never leave a job "running" with no process behind it.
            log.failure("starting job {job_id} failed", job_id=job.id)
            self._end(run, Outcome(State.NOT_EXECUTED, reason="cmdd could not start it"))
            return
        if job.spec.timeout is not None:
            run.timeout_call = self.clock.callLater(job.spec.timeout, self._time_out, run)
        run.execution.ended().addCallback(self._process_ended, run).addErrback(
            self._end_failed, run
        )

    def _start_refused(self, run: _Run, failure: Failure) -> None:
        # Its start could not be journaled, so it is not spawned: a restart
        # must never run a job twice. It is still queued, as the journal
        # says, unless its creation was refused too (then it never existed).
        del self._running[run.job_id]
        self._queue.release(run.job_id)
        job = self.history.current(run.job_id)
        if job is None:
            return
        if run.cancel_reason is not None:
            outcome = Outcome(
                State.CANCELLED, reason=run.cancel_reason, cancelled_by=run.cancelled_by
            )
            self._record_end(run.job_id, self.clock.seconds(), outcome)
            return
        log.warn(
            "job {job_id} stays queued: its start could not be journaled ({why})",
            job_id=run.job_id,
            why=failure.getErrorMessage(),
        )
        self._enqueue(job, front=True)
        # No more starts until the journal had a moment (a refusal may come
        # at once, from inside the pump).
        self._backing_off = True
        self._schedule_pump(RETRY_SECONDS)

    def _end(self, run: _Run, outcome: Outcome) -> None:
        del self._running[run.job_id]
        self._queue.release(run.job_id)
        self._record_end(run.job_id, self.clock.seconds(), outcome)
        self._schedule_pump()

    def _record_end(
        self, job_id: int, at: float, outcome: Outcome, delay: float | None = None
    ) -> Deferred[None]:
        """Journal a job's end; if refused, try again until it is taken.

        Its process is gone: the end is a fact, and the job shows as it was
        (running) until the fact is durable. Stopping gives up instead:
        after a restart such a job is C{lost}.
        """
        self._end_retries.pop(job_id, None)
        job = self.history.current(job_id)
        if job is None or job.state.final:
            return succeed(None)
        wait = RETRY_SECONDS if delay is None else delay
        _, durable = self.history.record(Ended(job_id, at, outcome))

        def refused(failure: Failure) -> None:
            # Whoever waits for the end (a cancel, a long poll, the stop)
            # hears now that it is not durable rather than wait for the disk.
            unavailable = ClientError(
                "JOURNAL_UNAVAILABLE",
                f"job {job_id} ended but its end could not be recorded durably yet",
                status=503,
                headers={"Retry-After": "5"},
            )
            for waiter in self._final_waiters.pop(job_id, []):
                waiter.errback(unavailable)
            if self._stopping:
                log.error(
                    "job {job_id} ended {state} but the journal refused its end ({why}); "
                    "after a restart it is lost",
                    job_id=job_id,
                    state=outcome.state.value,
                    why=failure.getErrorMessage(),
                )
                return
            log.warn(
                "job {job_id}: its end could not be journaled ({why}); trying again in {delay} s",
                job_id=job_id,
                why=failure.getErrorMessage(),
                delay=wait,
            )
            args = (job_id, at, outcome, min(2 * wait, RETRY_MAX_SECONDS))
            self._end_retries[job_id] = (self.clock.callLater(wait, self._record_end, *args), args)

        return durable.addErrback(refused)

    def _time_out(self, run: _Run) -> None:
        run.timeout_call = None
        run.timed_out = True
        log.info("job {job_id} timed out", job_id=run.job_id)
        self._terminate(run)

    def _terminate(self, run: _Run) -> None:
        if run.execution is None or run.kill_call is not None or run.exit is not None:
            # Not spawned yet (_spawn sees the cancel reason and does not
            # spawn), already being killed, or already ended: its pid may be
            # reused, so it must not be signalled again.
            return
        run.execution.signal_group(signal.SIGTERM)
        run.kill_call = self.clock.callLater(self.limits.kill_grace, self._kill, run)

    def _kill(self, run: _Run) -> None:
        log.info("job {job_id} ignored SIGTERM; sending SIGKILL", job_id=run.job_id)
        assert run.execution is not None
        run.execution.signal_group(signal.SIGKILL)

    async def _finish(self, exit: ProcessExit, run: _Run) -> None:
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
        self._end(
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

    def _process_ended(self, exit: ProcessExit, run: _Run) -> Deferred[None]:
        return Deferred.fromCoroutine(self._finish(exit, run))

    def _end_failed(self, failure: Failure, run: _Run) -> None:
        log.failure("recording the end of job {job_id} failed", failure, job_id=run.job_id)


def _new_waiter(registry: dict[int, list[Deferred[T]]], job_id: int) -> Deferred[T]:
    """A fresh Deferred listed under C{job_id}; cancelling it (the client went
    away) removes it, so abandoned waiters leave nothing behind."""
    waiters = registry.setdefault(job_id, [])
    waiter: Deferred[T] = Deferred(waiters.remove)
    waiters.append(waiter)
    return waiter


def _not_durable(failure: Failure, message: str) -> NoReturn:
    """A 503 for a change the journal refused (a full or failing disk)."""
    log.warn("{message}: {why}", message=message, why=failure.getErrorMessage())
    raise ClientError(
        "JOURNAL_UNAVAILABLE",
        message,
        status=503,
        headers={"Retry-After": "5"},
    )
