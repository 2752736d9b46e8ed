"""The Slurm executor: jobs run on a Slurm cluster instead of this host.

Behind the same L{IExecutor} as the local executor, so the API, journal,
caps, follow and callbacks are unchanged. Each job is handed to Slurm with
C{sbatch --parsable} (L{cmdd.slurmplan} builds its command line); one
C{squeue --json} call per poll interval tracks every live job; output is
copied from the files Slurm writes in the shared directory into the job's
spools as it grows; C{scancel} ends a job. Every command runs through the
reactor (L{cmdd.slurmcmd}), every file operation on the I/O thread
(L{cmdd.slurmfiles}), so nothing here blocks the reactor.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Mapping
from typing import Any

import attrs
from twisted.internet.defer import Deferred, DeferredSemaphore
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from cmdd import slurmfiles
from cmdd.jobs import Job, State
from cmdd.runner import (
    Identity,
    IExecution,
    IExecutor,
    ProcessExit,
    SpawnError,
    job_environment,
)
from cmdd.slurmcmd import Answer, run
from cmdd.slurmplan import (
    SlurmJob,
    SlurmOptions,
    cmdd_state,
    export_file,
    failure_reason,
    job_name,
    job_paths,
    parse_sbatch,
    parse_squeue,
    parse_status,
    sbatch_argv,
    squeue_argv,
)
from cmdd.spec import JobSpec
from cmdd.spool import OutputSpool

log = Logger()

#: Seconds a Slurm command may take before it is killed (the controller
#: did not answer: the command failed).
COMMAND_SECONDS = 60.0
#: Bytes read of each output stream per poll (the rest at the next one).
CHUNK = 1024 * 1024
#: sbatch and scancel processes at once: a burst of 1,000 submissions is
#: 8 processes at a time, not 1,000 (the controller serializes them anyway).
COMMANDS_AT_ONCE = 8


@attrs.define
class SlurmSetup:
    """Everything the executor needs besides the reactor.

    @param options: the operator's Slurm settings.
    @param shared_dir: the directory the nodes write job output in.
    @param wrapper: the batch wrapper script's path (L{cmdd.slurmplan.WRAPPER}).
    @param commands: sbatch, squeue, scancel and scontrol by name, full paths.
    @param environment: the commands' environment (PATH, SLURM_CONF...).
    @param instance: this daemon's name, in each Slurm job's name.
    """

    options: SlurmOptions
    shared_dir: str
    wrapper: str
    commands: Mapping[str, str]
    environment: Mapping[str, str]
    instance: str


@implementer(IExecution)
class SlurmExecution:
    """One cmdd job as a Slurm job: its id, state, output offsets and end."""

    pid = 0

    def __init__(self, executor: SlurmExecutor, job_id: int, uid: int | None, spools: Any) -> None:
        self._executor = executor
        self.job_id = job_id
        self.uid = uid
        self.paths = job_paths(executor.setup.shared_dir, job_id)
        self.spools: tuple[OutputSpool, OutputSpool] = spools
        self.slurm_id: str | None = None
        self.slurm_state: str | None = None
        self.offsets = (0, 0)
        #: Signals asked for before sbatch answered, sent once it did.
        self.pending_signal: int | None = None
        self.exit: ProcessExit | None = None
        self._waiters: list[Deferred[ProcessExit]] = []

    def signal_group(self, signum: int) -> None:
        if self.exit is not None:
            return
        if self.slurm_id is None:
            self.pending_signal = signum
            return
        self._executor.cancel(self, signum)

    def ended(self) -> Deferred[ProcessExit]:
        waiter: Deferred[ProcessExit] = Deferred()
        if self.exit is not None:
            waiter.callback(self.exit)
        else:
            self._waiters.append(waiter)
        return waiter

    def finish(self, exit: ProcessExit) -> None:
        """The job ended and its output is in the spools."""
        if self.exit is not None:
            return
        self.exit = exit
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(exit)


@implementer(IExecutor)
class SlurmExecutor:
    """Runs jobs on a Slurm cluster (see the module docstring).

    @param reactor: spawns Slurm's commands and runs the poll.
    @param io_run: runs a blocking function on the I/O thread (a Deferred).
    @param setup: the L{SlurmSetup}.
    @param job_identity: who jobs run as when their spec names no user.
    @param identities: looks up a spec's user (raises L{SpawnError}).
    """

    def __init__(
        self,
        reactor: Any,
        io_run: Callable[..., Deferred[Any]],
        setup: SlurmSetup,
        job_identity: Identity,
        identities: Callable[[str], Identity],
    ) -> None:
        self._reactor = reactor
        self._io_run = io_run
        self.setup = setup
        self._job_identity = job_identity
        self._identities = identities
        self._live: dict[int, SlurmExecution] = {}
        self._commands = DeferredSemaphore(COMMANDS_AT_ONCE)
        self._poll = LoopingCall(self._poll_once)
        self._poll.clock = reactor
        self._polling = False
        self._stopped = False
        #: Called with (cmdd job id, Slurm job id) once sbatch accepted a job.
        self.on_submitted: Callable[[int, str], None] = lambda job_id, slurm_id: None
        #: Why new jobs are refused now (the controller does not answer), or None.
        self.unavailable: str | None = None

    # --- IExecutor ------------------------------------------------------

    def launch(
        self, job_id: int, spec: JobSpec, stdout: OutputSpool, stderr: OutputSpool
    ) -> IExecution:
        identity = self._job_identity if spec.user is None else self._identities(spec.user)
        base = {"HOME": identity.home, "USER": identity.name, "LOGNAME": identity.name}
        env = job_environment(spec, job_id, base)
        execution = SlurmExecution(self, job_id, identity.uid, (stdout, stderr))
        stdin = None if spec.stdin is None else spec.stdin.encode("utf-8")
        argv = sbatch_argv(
            options=self.setup.options,
            wrapper=self.setup.wrapper,
            paths=execution.paths,
            name=job_name(self.setup.instance, job_id),
            argv=spec.argv(),
            cwd=spec.working_directory or identity.default_directory,
            umask=spec.umask_value(),
            timeout=spec.timeout,
            labels=spec.labels,
            uid=identity.uid,
            gid=identity.gid,
            has_stdin=stdin is not None,
        )
        argv = (self.setup.commands["sbatch"], *argv[1:])
        submitting = Deferred.fromCoroutine(self._submit(execution, argv, env, identity, stdin))
        submitting.addErrback(self._failed, execution, "submitting")
        return execution

    def reattach(self, job: Job, stdout: OutputSpool, stderr: OutputSpool) -> IExecution:
        """Track again a job a previous daemon handed to Slurm (after a restart).

        Its output is copied again from the start of Slurm's files. Without
        its Slurm id (the daemon died before it was journaled) the job is
        found by name at the next poll.
        """
        try:
            user = job.spec.user
            uid = (self._job_identity if user is None else self._identities(user)).uid
        except SpawnError:
            uid = -1  # its user is gone: none of its files is read
        execution = SlurmExecution(self, job.id, uid, (stdout, stderr))
        execution.slurm_id = job.slurm_job_id
        self._track(execution)
        return execution

    def slurm_state(self, job_id: int) -> str | None:
        """A live job's state in Slurm at the last poll (PENDING, RUNNING...)."""
        execution = self._live.get(job_id)
        return None if execution is None else execution.slurm_state

    # --- submitting -----------------------------------------------------

    async def _submit(
        self,
        execution: SlurmExecution,
        argv: tuple[str, ...],
        env: dict[str, str],
        identity: Identity,
        stdin: bytes | None,
    ) -> None:
        try:
            await self._io_run(
                slurmfiles.prepare, execution.paths, identity.uid, identity.gid, stdin
            )
        except OSError as e:
            await self._end(execution, ProcessExit(
                None, None, not_executed=f"cannot make the job's directory: {e.strerror}"
            ))
            return
        await self._commands.acquire()
        try:
            if execution.pending_signal is not None:
                # Cancelled before it was submitted: it never ran.
                await self._end(execution, ProcessExit(None, None))
                return
            answer = await run(
                self._reactor, argv, self.setup.environment, timeout=COMMAND_SECONDS,
                fd3=export_file(env),
            )
        finally:
            self._commands.release()
        self._heard(answer)
        try:
            if answer.code != 0:
                raise ValueError(answer.message)
            execution.slurm_id = parse_sbatch(answer.stdout)
        except ValueError as e:
            log.info("job {job_id}: sbatch refused it: {why}", job_id=execution.job_id, why=str(e))
            await self._end(execution, ProcessExit(None, None, not_executed=f"sbatch: {e}"))
            return
        self.on_submitted(execution.job_id, execution.slurm_id)
        self._track(execution)
        if execution.pending_signal is not None:
            self.cancel(execution, execution.pending_signal)

    def _track(self, execution: SlurmExecution) -> None:
        self._live[execution.job_id] = execution
        self._start_polling()

    def _start_polling(self) -> None:
        if not self._poll.running and not self._stopped:
            self._poll.start(self.setup.options.poll_interval, now=False)

    def _heard(self, answer: Answer) -> None:
        """Note whether the controller answered (see L{unavailable})."""
        if answer.unreachable:
            if self.unavailable is None:
                log.warn("the Slurm controller does not answer: {why}", why=answer.message)
            self.unavailable = f"the Slurm controller does not answer ({answer.message})"
            self._start_polling()  # until it answers again (see _poll_all)
        elif answer.code == 0 and self.unavailable is not None:
            log.info("the Slurm controller answers again")
            self.unavailable = None

    # --- cancelling -----------------------------------------------------

    def cancel(self, execution: SlurmExecution, signum: int) -> None:
        """TERM: signal the job's processes (a pending job is just removed);
        KILL: cancel it in Slurm, which kills whatever is left."""
        assert execution.slurm_id is not None
        scancel = self.setup.commands["scancel"]
        if signum == signal.SIGKILL or execution.slurm_state in (None, "PENDING"):
            argv = [scancel, execution.slurm_id]
        else:
            name = signal.Signals(signum).name.removeprefix("SIG")
            argv = [scancel, "--full", f"--signal={name}", execution.slurm_id]
        done = self._commands.run(
            run, self._reactor, argv, self.setup.environment, timeout=COMMAND_SECONDS
        )
        done.addCallback(self._cancelled, execution).addErrback(
            self._failed, execution, "cancelling"
        )

    def _cancelled(self, answer: Answer, execution: SlurmExecution) -> None:
        self._heard(answer)
        if answer.code != 0:
            log.warn(
                "job {job_id}: scancel {slurm_id} failed: {why}",
                job_id=execution.job_id, slurm_id=execution.slurm_id, why=answer.message,
            )

    # --- polling --------------------------------------------------------

    def _poll_once(self) -> Deferred[None] | None:
        if self._polling:
            return None  # the last poll is still waiting for squeue
        if not self._live and self.unavailable is None:
            self._poll.stop()
            return None
        self._polling = True
        polling = Deferred.fromCoroutine(self._poll_all())

        def done(result: object) -> None:
            self._polling = False

        polling.addErrback(lambda failure: log.failure("polling Slurm failed", failure))
        return polling.addBoth(done)

    async def _poll_all(self) -> None:
        live = list(self._live.values())
        if not live:
            # Nothing to track, but new jobs are refused: is it back?
            ping = [self.setup.commands["scontrol"], "ping"]
            answer = await run(self._reactor, ping, self.setup.environment, timeout=COMMAND_SECONDS)
            self._heard(answer)
            return
        ids = [e.slurm_id for e in live if e.slurm_id is not None]
        names = [job_name(self.setup.instance, e.job_id) for e in live if e.slurm_id is None]
        jobs: dict[str, SlurmJob] = {}
        # One call for every live job (two right after a crash: squeue ANDs
        # --jobs and --name).
        for wanted in ({"ids": ids}, {"names": names}):
            if not any(wanted.values()):
                continue
            argv = squeue_argv(self.setup.commands["squeue"], **wanted)
            answer = await run(self._reactor, argv, self.setup.environment, timeout=COMMAND_SECONDS)
            if answer.code != 0 and b"Invalid job id" in answer.stderr:
                continue  # every listed job is gone from the controller
            try:
                if answer.code != 0:
                    raise ValueError(answer.message)
                jobs.update(parse_squeue(answer.stdout))
            except ValueError as e:
                # Never "every job is gone": wait for an answer that lists them.
                if answer.code != 0:
                    self._heard(answer)
                log.warn("squeue failed: {why}", why=str(e))
                return
        self._heard(Answer(0, b"", b""))  # it answered with the jobs
        # Oldest first, so that the newest job of a name wins.
        ordered = sorted(jobs.values(), key=lambda job: int(job.job_id))
        by_name = {job.name: job for job in ordered}
        for execution in live:
            if execution.slurm_id is None:
                found = by_name.get(job_name(self.setup.instance, execution.job_id))
                execution.slurm_id = None if found is None else found.job_id
            job = None if execution.slurm_id is None else jobs.get(execution.slurm_id)
            await self._update(execution, job)

    async def _update(self, execution: SlurmExecution, job: SlurmJob | None) -> None:
        if job is not None:
            execution.slurm_state = job.state
            if job.state == "PENDING":
                return  # nothing to read yet: no file access for a waiting job
        await self._copy_output(execution, final=False)
        state = None if job is None else cmdd_state(job.state)
        if job is not None and (state is None or not state.final):
            return
        await self._copy_output(execution, final=True)
        raw = await self._io_run(slurmfiles.read_status, execution.paths, execution.uid)
        await self._end(execution, exit_of(job, parse_status(raw) if raw else None))

    async def _copy_output(self, execution: SlurmExecution, final: bool) -> None:
        while True:
            out, err = await self._io_run(
                slurmfiles.read_new, execution.paths, execution.uid, execution.offsets, CHUNK
            )
            execution.offsets = (execution.offsets[0] + len(out), execution.offsets[1] + len(err))
            for spool, data in zip(execution.spools, (out, err), strict=True):
                if data:
                    spool.write(data)
            if not final or (len(out) < CHUNK and len(err) < CHUNK):
                return

    async def _end(self, execution: SlurmExecution, exit: ProcessExit) -> None:
        self._live.pop(execution.job_id, None)
        await self._io_run(slurmfiles.remove, execution.paths)
        execution.finish(exit)

    def _failed(self, failure: Any, execution: SlurmExecution, what: str) -> None:
        log.failure("job {job_id}: {what} failed", failure, job_id=execution.job_id, what=what)
        self._live.pop(execution.job_id, None)
        execution.finish(ProcessExit(None, None, failure=f"cmdd failed while {what} the job"))

    def stop(self) -> None:
        """Stop polling (the daemon stops; Slurm jobs run on, see reattach)."""
        self._stopped = True
        if self._poll.running:
            self._poll.stop()


def exit_of(job: SlurmJob | None, status: dict[str, Any] | None) -> ProcessExit:
    """How a job ended: the wrapper's status file first (exact exit code or
    signal), Slurm's record otherwise; with Slurm's reason when Slurm ended it."""
    why = None if job is None else failure_reason(job)
    if status is not None and isinstance(status.get("not_executed"), str):
        return ProcessExit(None, None, not_executed=status["not_executed"][:500])
    if status is not None:
        code, signum = status.get("exit_code"), status.get("signal")
        if isinstance(code, int | None) and isinstance(signum, int | None):
            return ProcessExit(code, signum, failure=why)
    if job is None:
        why = "Slurm no longer knows the job; its outcome is unknown"
        return ProcessExit(None, None, failure=why)
    if cmdd_state(job.state) is State.SUCCEEDED:
        return ProcessExit(0, None)
    return ProcessExit(job.exit_code, job.signal, failure=why or f"Slurm: {job.state}")


def shared_directory(path: str) -> str:
    """Make the shared directory (root's, searchable, not listable) and
    return its real path."""
    os.makedirs(path, mode=0o711, exist_ok=True)
    os.chmod(path, 0o711)  # noqa: S103 (job users reach their own directory; no listing)
    return os.path.realpath(path)
