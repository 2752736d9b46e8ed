"""The job manager service: queue, concurrency limits, recording, cancel, stop.

It decides when a job starts and records every change in the journal; each
started job's run (spawn, timeout, TERM then KILL, which final state its
process's end means) is L{cmdd.supervision}'s; the executor owns the
mechanics of processes.
"""

from __future__ import annotations

from functools import partial
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
    Submitted,
)
from cmdd.limits import Limits as Limits
from cmdd.runner import IExecutor
from cmdd.slots import SlotQueue
from cmdd.spec import JobSpec
from cmdd.spool import IOWorker, output_path, output_size, remove_outputs
from cmdd.supervision import Run, Supervisor

log = Logger()
T = TypeVar("T")

#: Seconds before a start or an end the journal refused is tried again
#: (doubling up to L{RETRY_MAX_SECONDS}).
RETRY_SECONDS = 1.0
RETRY_MAX_SECONDS = 30.0


class JobManager(Service):
    """Starts queued jobs as slots free up and records every change.

    @param history: the jobs and the journal every change is recorded in.
    @type history: L{History}
    @param executor: where jobs' processes run; C{None} until the
        composition root sets L{executor} (once the sandbox is checked).
    @type executor: L{IExecutor} or C{None}
    @param io: the I/O worker for output files (writes and deletions).
    @type io: L{IOWorker}
    @param clock: the time source for timestamps and every timer.
    @type clock: L{IReactorTime}
    @param output_dir: the directory of the jobs' output files.
    @type output_dir: L{str}
    @param limits: the operator's limits; replaced by L{set_limits}.
    @type limits: L{Limits}
    """

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
        self._io = io
        #: Time source for timers; API code that waits (follow) uses it too.
        self.clock = clock
        self.output_dir = output_dir
        self.limits = limits
        self._queue = SlotQueue()
        self._running: dict[int, Run] = {}
        self._supervisor = Supervisor(
            executor,
            io,
            clock,
            output_dir,
            lambda: self.limits,
            on_output=self._output_flushed,
            on_end=self._end,
        )
        self._final_waiters: dict[int, list[Deferred[Job]]] = {}
        self._output_waiters: dict[int, list[Deferred[None]]] = {}
        self._pump_call: IDelayedCall | None = None
        self._stopping = False
        self._grace_call: IDelayedCall | None = None
        #: Journal ends refused and waiting to be tried again, by job id.
        self._end_retries: dict[int, tuple[IDelayedCall, tuple[Any, ...]]] = {}
        self._backing_off = False
        #: The host jobs run on, recorded with each start (the composition root sets it).
        self.host: str | None = None
        self.store.add_listener(self._job_changed)

    @property
    def executor(self) -> IExecutor | None:
        """Where jobs' processes run (the composition root sets it)."""
        return self._supervisor.executor

    @executor.setter
    def executor(self, executor: IExecutor | None) -> None:
        self._supervisor.executor = executor

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
        unavailable = getattr(self.executor, "unavailable", None)
        if unavailable is not None:
            # A cluster whose controller does not answer would turn every
            # new job into not_executed: refuse them until it answers.
            raise ClientError(
                "EXECUTOR_UNAVAILABLE",
                unavailable,
                status=503,
                headers={"Retry-After": "10"},
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
        created = Created(
            self.store.allocate_id(), self.clock.seconds(), spec, owner, idempotency, schedule_id
        )
        with self.history.together():
            job, durable = self.history.record(created)
            assert job is not None
            if not scheduled:
                # Queued at once: its start is journaled after its creation,
                # and the process is spawned only once that start is durable.
                # If the creation is refused, so is the start (see History).
                self._enqueue(job)
                self._start_now_or_soon()

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
        self._supervisor.cancel(run, reason, by)
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
        reattach = getattr(self.executor, "reattach", None)
        for job in self.store.oldest_first():
            if job.state is State.QUEUED:
                self._enqueue(job)
            elif job.state is State.RUNNING and reattach is not None:
                # It runs on in the cluster: tracked again, never lost.
                run = Run(job.id)
                self._running[job.id] = run
                key = job.spec.concurrency_key
                self._queue.hold(job.id, None if key is None else (job.owner, key))
                self._supervisor.reattach(run, job, partial(reattach, job))
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

    def record_submitted(self, job_id: int, slurm_job_id: str) -> None:
        """Journal the id a cluster scheduler gave a running job (so a
        restart finds it); if refused, a restart finds it by name instead."""
        job = self.history.current(job_id)
        if job is None or job.state is not State.RUNNING:
            return
        _, durable = self.history.record(Submitted(job_id, self.clock.seconds(), slurm_job_id))
        durable.addErrback(
            lambda failure: log.warn(
                "job {job_id}: its Slurm id {slurm_job_id} could not be journaled ({why})",
                job_id=job_id,
                slurm_job_id=slurm_job_id,
                why=failure.getErrorMessage(),
            )
        )

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
        if getattr(self.executor, "reattach", None) is not None:
            # Cluster jobs run on while the daemon is down; the next start
            # tracks them again. Their timers go with the daemon.
            for run in self._running.values():
                self._supervisor.detach(run)
            self._running.clear()
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
            self._supervisor.stop(run, why)

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

    def _start_now_or_soon(self) -> None:
        # With a slot free and nothing queued ahead, the start goes into the
        # creation's journal write: one fsync and one reactor turn less
        # between the POST and the spawn. The 202 still goes first (the
        # creation's waiter fires before the start's). A log that is not
        # written in batches gains nothing, and would spawn before the 202.
        if (
            self.history.shares_writes
            and not self._backing_off
            and len(self._queue) == 1
            and len(self._running) < self.limits.max_running
        ):
            self._pump()
        else:
            self._schedule_pump()

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
        run = Run(job_id)
        self._running[job_id] = run
        _, durable = self.history.record(Started(job_id, self.clock.seconds(), self.host))
        # Spawned only once its start is durable: a job that has had side
        # effects is always at least "running" (so "lost", not run again)
        # after a crash.
        durable.addCallbacks(
            lambda _: self._supervisor.spawn(run, self.get(job_id)),
            lambda failure: self._start_refused(run, failure),
        ).addErrback(self._supervisor.end_failed, run)

    def _start_refused(self, run: Run, failure: Failure) -> None:
        # Its start could not be journaled, so it is not spawned: a restart
        # must never run a job twice. It is still queued, as the journal
        # says, unless its creation was refused too (then it never existed).
        del self._running[run.job_id]
        self._queue.release(run.job_id)
        job = self.history.current(run.job_id)
        if job is None:
            return
        if run.cancel_reason is not None:
            self._record_end(run.job_id, self.clock.seconds(), run.cancelled_outcome)
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

    def _end(self, run: Run, outcome: Outcome) -> None:
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
