"""Executors: where a job's process runs. The local one asks the spawner.

The daemon never forks a job itself: L{LocalExecutor} hands each job to the
spawner process (L{cmdd.spawner}, reached through L{SpawnerLink}) with the
three pipe ends the job will use, and reads the other ends here with
Twisted's pipe readers and writer. Identity, session, working directory,
umask and environment are applied by the spawner in the job's child, so no
process-wide state of the daemon ever changes for a job, and nothing the
client sends runs with the daemon's privileges.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Mapping
from typing import Any

from attrs import frozen
from twisted.internet import main as twisted_main
from twisted.internet import process as twisted_process
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from cmdd.leftovers import MARKER, marker_value
from cmdd.spec import JobSpec
from cmdd.spool import OutputSpool

log = Logger()

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class SpawnError(Exception):
    """The job's process could not be started (the job is C{not_executed})."""


@frozen
class ProcessExit:
    """How a job's process ended, before policy (cancel/timeout) is applied.

    C{not_executed} says why it never started; C{failure} why its end is
    unknown (the spawner went away while it ran).
    """

    exit_code: int | None
    signal: int | None
    not_executed: str | None = None
    failure: str | None = None


class IExecution(Interface):
    """A job's running process, as the manager sees it."""

    pid: int

    def signal_group(signum: int) -> None:  # noqa: N805 (zope interface methods take no self)
        """Send C{signum} to the job's whole process group."""

    def ended() -> Deferred[ProcessExit]:
        """A new Deferred that fires when the process has ended and its output
        is drained."""


class IExecutor(Interface):
    """Runs job specs somewhere: the local host, or a cluster scheduler."""

    def launch(
        job_id: int,  # noqa: N805 (zope interface methods take no self)
        spec: JobSpec,
        stdout: OutputSpool,
        stderr: OutputSpool,
    ) -> IExecution:
        """Start the job's process now.

        @raise SpawnError: it could not be started.
        """


@frozen
class Identity:
    """Who a job runs as: the Unix account and what it implies."""

    name: str
    uid: int | None
    gid: int | None
    groups: tuple[int, ...]
    home: str

    @property
    def default_directory(self) -> str:
        """Where a job runs when its spec names no working directory."""
        return self.home if os.path.isdir(self.home) else "/"


def job_environment(spec: JobSpec, job_id: int, base: Mapping[str, str]) -> dict[str, str]:
    """The child's environment: a small base, then the client's variables.

    The daemon's own environment is never passed on: it may hold secrets.
    """
    env = {"PATH": DEFAULT_PATH, "LANG": "C.UTF-8", **base, "CMDD_JOB_ID": str(job_id)}
    env.update(spec.environment)
    return env


@implementer(IExecution)
class JobProcess:
    """One job's pipes and end, fed by the spawner's answers.

    The job has ended once the spawner reported its exit and both output
    pipes are closed. Output pipes held open by a leftover process are
    closed after C{drain_seconds} (the spawner kills leftovers at once; this
    is the backstop).
    """

    def __init__(
        self,
        link: Any,
        job_id: int,
        clock: IReactorTime,
        stdout: OutputSpool,
        stderr: OutputSpool,
        drain_seconds: float,
    ) -> None:
        self._link = link
        self.job_id = job_id
        self._clock = clock
        self._spools = {1: stdout, 2: stderr}
        self._drain_seconds = drain_seconds
        self._drain_timer: IDelayedCall | None = None
        self._pipes: dict[int, Any] = {}
        self._exit: ProcessExit | None = None
        self._done = False
        self._waiters: list[Deferred[ProcessExit]] = []
        self.pid = 0

    def attach(self, reactor: Any, stdin_fd: int, stdout_fd: int, stderr_fd: int) -> None:
        """Read and write the daemon's ends of the job's pipes."""
        self._pipes[0] = twisted_process.ProcessWriter(reactor, self, 0, stdin_fd)
        self._pipes[1] = OutputReader(reactor, self, 1, stdout_fd)
        self._pipes[2] = OutputReader(reactor, self, 2, stderr_fd)

    def feed(self, data: bytes) -> None:
        """Write the job's stdin and close it."""
        writer = self._pipes[0]
        if data:
            writer.write(data)
        writer.loseConnection()

    def pause(self) -> None:
        """Stop reading output (a spool is behind); the job blocks on write."""
        for fd in (1, 2):
            if fd in self._pipes:
                self._pipes[fd].stopReading()

    def resume(self) -> None:
        """Read output again."""
        for fd in (1, 2):
            if fd in self._pipes:
                self._pipes[fd].startReading()

    # --- Twisted's pipe callbacks -------------------------------------------

    def childDataReceived(self, fd: int, data: bytes) -> None:
        self._spools[fd].write(data)

    def childConnectionLost(self, fd: int, reason: Failure) -> None:
        # Twisted's pipe objects leave closing the descriptor to their owner.
        pipe = self._pipes.pop(fd, None)
        if pipe is not None:
            os.close(pipe.fd)
        self._maybe_ended()

    # --- the spawner's answers ----------------------------------------------

    def started(self, pid: int) -> None:
        """The spawner forked the job as C{pid} (in the spawner's namespace)."""
        self.pid = pid

    def exited(self, exit: ProcessExit) -> None:
        """The job's first process ended (or never started)."""
        if self._exit is not None:
            return
        self._exit = exit
        if exit.not_executed is not None or exit.failure is not None:
            self._close_pipes()
        elif self._has_output_pipes():
            self._drain_timer = self._clock.callLater(self._drain_seconds, self._drain_expired)
        self._maybe_ended()

    def _drain_expired(self) -> None:
        self._drain_timer = None
        log.warn("job {job_id} exited but its output pipes stayed open", job_id=self.job_id)
        self._close_pipes()

    def _close_pipes(self) -> None:
        for pipe in list(self._pipes.values()):
            pipe.loseConnection()

    def _has_output_pipes(self) -> bool:
        return 1 in self._pipes or 2 in self._pipes

    def _maybe_ended(self) -> None:
        if self._done or self._exit is None or self._has_output_pipes():
            return
        if self._drain_timer is not None:
            self._drain_timer.cancel()
            self._drain_timer = None
        self._done = True
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(self._exit)

    # --- IExecution -----------------------------------------------------------

    def signal_group(self, signum: int) -> None:
        if self._exit is not None:
            return  # ended: nothing of it is left to signal
        # The spawner gets it after the spawn request, so it reaches a job
        # that has not been reported started yet, and never a reaped one.
        self._link.signal(self.job_id, signum)

    def ended(self) -> Deferred[ProcessExit]:
        waiter: Deferred[ProcessExit] = Deferred()
        if self._done:
            assert self._exit is not None
            waiter.callback(self._exit)
        else:
            self._waiters.append(waiter)
        return waiter


#: Bytes read from a job's output pipe per reactor turn: a full default pipe
#: (64 KiB), where Twisted's readers take 8 KiB, so a job writing fast costs a
#: turn (and a spool write) per 64 KiB, not per 8 KiB.
READ_SIZE = 65536


class OutputReader(twisted_process.ProcessReader):
    """A job's stdout or stderr pipe, read L{READ_SIZE} bytes at a time."""

    def doRead(self) -> Any:
        try:
            data = os.read(self.fd, READ_SIZE)
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EINTR):
                return None
            return twisted_main.CONNECTION_LOST
        if not data:
            return twisted_main.CONNECTION_DONE
        self.dataReceived(data)
        return None


@implementer(IExecutor)
class LocalExecutor:
    """Runs each job on this host, forked by the spawner of its identity.

    @param reactor: the reactor (pipe readers, timers).
    @param link: the L{cmdd.spawnerlink.SpawnerLink} to the spawner.
    @param job_identity: who jobs run as when their spec names no C{user}.
    @param identities: looks up the identity for a spec's C{user}
        (raises L{SpawnError} for an unknown one).
    @param drain_seconds: how long output pipes may stay open after the job's
        first process exited.
    @param instance: the daemon's name in each job's C{CMDD_RUN} marker (see
        L{cmdd.leftovers}); C{None} adds no marker.
    """

    def __init__(
        self,
        reactor: Any,
        link: Any,
        job_identity: Identity,
        identities: Any,
        *,
        drain_seconds: float = 2.0,
        instance: str | None = None,
    ) -> None:
        self._reactor = reactor
        self._instance = instance
        self._link = link
        self._job_identity = job_identity
        self._identities = identities
        self._drain_seconds = drain_seconds

    def launch(
        self, job_id: int, spec: JobSpec, stdout: OutputSpool, stderr: OutputSpool
    ) -> IExecution:
        identity = self._job_identity if spec.user is None else self._identities(spec.user)
        base = {"HOME": identity.home}
        if spec.user is not None:
            base.update(USER=identity.name, LOGNAME=identity.name)
        env = job_environment(spec, job_id, base)
        if self._instance is not None:
            # After the client's variables: a job cannot change its marker.
            env[MARKER] = marker_value(self._instance, job_id)
        process = JobProcess(self._link, job_id, self._reactor, stdout, stderr, self._drain_seconds)
        # The job's ends go to the spawner; ours are read and written here.
        stdin_read, stdin_write, stdout_read, stdout_write, stderr_read, stderr_write = _pipes(3)
        process.attach(self._reactor, stdin_write, stdout_read, stderr_read)
        stdout.set_flow(process.pause, process.resume)
        stderr.set_flow(process.pause, process.resume)
        request = {
            "op": "spawn",
            "job": job_id,
            "argv": spec.argv(),
            "env": env,
            "cwd": spec.working_directory or identity.default_directory,
            "umask": spec.umask_value(),
            "uid": identity.uid,
            "gid": identity.gid,
            "groups": list(identity.groups),
        }
        self._link.spawn(request, (stdin_read, stdout_write, stderr_write), process)
        process.feed((spec.stdin or "").encode("utf-8"))
        return process


def _pipes(count: int) -> list[int]:
    """C{count} pipes' ends (read, write, read, ...), all or none.

    @raise SpawnError: out of descriptors (EMFILE): the job is not_executed,
        and nothing leaks.
    """
    ends: list[int] = []
    try:
        for _ in range(count):
            ends.extend(os.pipe2(os.O_CLOEXEC))
    except OSError as e:
        for fd in ends:
            os.close(fd)
        raise SpawnError(f"cannot make the job's pipes: {e.strerror}") from None
    return ends
