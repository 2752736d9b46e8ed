"""Executors: where a job's process runs. The local one uses spawnProcess.

Spawning stays on Twisted's C{posix_spawnp} fast path (no C{path}, C{uid} or
C{gid} argument), whose cost does not grow with the daemon's heap, unlike
fork. What that path cannot do is done around it:

 - a new session and process group: the child is C{setsid PROGRAM ...}, so
   cancel and timeout can signal the whole group with C{killpg};
 - working directory and umask: set in the daemon just around the spawn (the
   child inherits both at spawn time) and restored at once. The reactor
   thread is the only one that spawns; the I/O thread only uses absolute
   paths and explicit file modes, so the brief change cannot affect it.
"""

from __future__ import annotations

import errno
import os
import pwd
import signal
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from attrs import frozen
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IDelayedCall, IReactorProcess, IReactorTime
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from cmdd.spec import JobSpec
from cmdd.spool import OutputSpool

log = Logger()

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class SpawnError(Exception):
    """The job's process could not be started (the job is C{not_executed})."""


@frozen
class ProcessExit:
    """How a job's process ended, before policy (cancel/timeout) is applied."""

    exit_code: int | None
    signal: int | None


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


class OSOperations(Protocol):
    """The process-wide OS calls the local executor makes (replaceable in tests)."""

    def killpg(self, pgid: int, signum: int, /) -> None: ...
    def kill(self, pid: int, signum: int, /) -> None: ...


def find_program(name: str, search_path: str) -> str | None:
    """The file C{execvp} would run for C{name}, or C{None}.

    Relative names with a slash resolve against the current directory.
    """
    if "/" in name:
        return name if _is_executable_file(name) else None
    for directory in search_path.split(":"):
        candidate = os.path.join(directory or ".", name)
        if _is_executable_file(candidate):
            return candidate
    return None


def _is_executable_file(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


#: What util-linux's setsid and setpriv print when their exec of the job fails.
_EXEC_FAILED = (b"setsid: failed to execute ", b"setpriv: failed to execute ")


def exec_failure(exit_code: int | None, stderr_head: bytes) -> str | None:
    """Why the trampoline could not exec the job, if that is what happened.

    The program was checked before spawning, but the kernel can still refuse
    it (a script whose #! interpreter is missing, a wrong binary format);
    then setsid exits 126 or 127 with its message first on stderr.
    """
    if exit_code not in (126, 127) or not stderr_head.startswith(_EXEC_FAILED):
        return None
    line = stderr_head.split(b"\n", 1)[0]
    return line.decode("utf-8", "replace")


def job_environment(spec: JobSpec, job_id: int, base: Mapping[str, str]) -> dict[str, str]:
    """The child's environment: a small base, then the client's variables.

    The daemon's own environment is never passed on: it may hold secrets.
    """
    env = {"PATH": DEFAULT_PATH, "LANG": "C.UTF-8", **base, "CMDD_JOB_ID": str(job_id)}
    env.update(spec.environment)
    return env


@implementer(IExecution)
class _JobProcess(ProcessProtocol):
    """Feeds stdin, routes output to spools, and reports the end once.

    C{processEnded} waits for every pipe to close, which a grandchild holding
    stdout can delay forever: after C{processExited} a drain timer kills the
    group and closes the pipes.
    """

    def __init__(
        self,
        clock: IReactorTime,
        os_ops: OSOperations,
        stdin: bytes,
        stdout: OutputSpool,
        stderr: OutputSpool,
        drain_seconds: float,
    ) -> None:
        self._clock = clock
        self._os = os_ops
        self._stdin = stdin
        self._stdout = stdout
        self._stderr = stderr
        self._drain_seconds = drain_seconds
        self._drain_timer: IDelayedCall | None = None
        self._exit: ProcessExit | None = None
        self._done = False
        self._waiters: list[Deferred[ProcessExit]] = []
        self.pid = 0

    def connectionMade(self) -> None:
        assert self.transport is not None
        # Read the pid now: a child that exits at once is reaped inside
        # spawnProcess, which then sets the transport's pid to None.
        self.pid = self.transport.pid or 0
        if self._stdin:
            self.transport.write(self._stdin)
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self._stdout.write(data)

    def errReceived(self, data: bytes) -> None:
        self._stderr.write(data)

    def processExited(self, reason: Failure) -> None:
        self._exit = _exit_of(reason)
        self._drain_timer = self._clock.callLater(self._drain_seconds, self._drain_expired)

    def _drain_expired(self) -> None:
        self._drain_timer = None
        log.warn(
            "process {pid} exited but its output pipes stayed open; killing its group",
            pid=self.pid,
        )
        self.signal_group(signal.SIGKILL)
        if self.transport is not None:
            self.transport.loseConnection()

    def processEnded(self, reason: Failure) -> None:
        if self._drain_timer is not None:
            self._drain_timer.cancel()
            self._drain_timer = None
        if self._exit is None:
            self._exit = _exit_of(reason)
        self._done = True
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(self._exit)

    def signal_group(self, signum: int) -> None:
        if self.pid <= 0:
            # killpg(0) would signal the daemon's own process group.
            log.error("refusing to signal process group {pid}", pid=self.pid)
            return
        try:
            self._os.killpg(self.pid, signum)
        except ProcessLookupError:
            # Not yet its own group leader (setsid has not run) or gone.
            try:
                self._os.kill(self.pid, signum)
            except ProcessLookupError:
                pass
        except PermissionError:
            log.warn("not allowed to signal process group {pid}", pid=self.pid)

    def ended(self) -> Deferred[ProcessExit]:
        waiter: Deferred[ProcessExit] = Deferred()
        if self._done:
            assert self._exit is not None
            waiter.callback(self._exit)
        else:
            self._waiters.append(waiter)
        return waiter


def _exit_of(reason: Failure) -> ProcessExit:
    value = reason.value
    if isinstance(value, ProcessDone):
        return ProcessExit(exit_code=0, signal=None)
    if isinstance(value, ProcessTerminated):
        return ProcessExit(exit_code=value.exitCode, signal=value.signal)
    return ProcessExit(exit_code=None, signal=None)


@implementer(IExecutor)
class LocalExecutor:
    """Runs each job as a child of the daemon, in its own session."""

    def __init__(
        self,
        reactor: Any,
        setsid_path: str,
        *,
        os_ops: OSOperations = os,
        base_environment: Mapping[str, str] | None = None,
        default_directory: str = "/",
        drain_seconds: float = 2.0,
        chdir: Callable[[str], None] = os.chdir,
        setpriv_path: str | None = None,
    ) -> None:
        self._reactor: IReactorProcess = reactor
        self._clock: IReactorTime = reactor
        self._setsid = setsid_path
        self._os = os_ops
        self._base_env = dict(base_environment or {})
        self._default_directory = default_directory
        self._drain_seconds = drain_seconds
        self._chdir = chdir
        self._setpriv = setpriv_path

    def _switch_user(self, name: str) -> tuple[list[str], pwd.struct_passwd]:
        """The setpriv prefix that becomes Unix user C{name} in the child.

        Done by a program in the child (not spawnProcess's uid/gid, which
        would leave the posix_spawn fast path for fork).
        """
        if self._setpriv is None:
            raise SpawnError("running as another user needs setpriv (util-linux)")
        try:
            account = pwd.getpwnam(name)
        except KeyError:
            raise SpawnError(f"no Unix user {name!r}") from None
        prefix = [
            self._setpriv,
            f"--reuid={account.pw_uid}",
            f"--regid={account.pw_gid}",
            "--init-groups",
            "--",
        ]
        return prefix, account

    def launch(
        self, job_id: int, spec: JobSpec, stdout: OutputSpool, stderr: OutputSpool
    ) -> IExecution:
        env = job_environment(spec, job_id, self._base_env)
        argv = spec.argv()
        directory = spec.working_directory or self._default_directory
        switch_user: list[str] = []
        if spec.user is not None:
            switch_user, account = self._switch_user(spec.user)
            env.update(HOME=account.pw_dir, USER=account.pw_name, LOGNAME=account.pw_name)
            env.update(spec.environment)
            directory = spec.working_directory or account.pw_dir or "/"
        process = _JobProcess(
            self._clock,
            self._os,
            (spec.stdin or "").encode("utf-8"),
            stdout,
            stderr,
            self._drain_seconds,
        )
        home = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        old_umask = os.umask(spec.umask_value())
        try:
            try:
                self._chdir(directory)
            except OSError as e:
                raise SpawnError(f"working directory {directory}: {e.strerror or e}") from None
            if spec.command_line is not None:
                program = find_program(argv[0], env.get("PATH", DEFAULT_PATH))
                if program is None:
                    raise SpawnError(f"{argv[0]}: executable not found")
            try:
                transport = self._reactor.spawnProcess(
                    process, self._setsid, [self._setsid, "--", *switch_user, *argv], env=env
                )
            except OSError as e:
                raise SpawnError(f"{argv[0]}: {os.strerror(e.errno or errno.EIO)}") from None
        finally:
            os.umask(old_umask)
            os.fchdir(home)
            os.close(home)
        # process.pid was read in connectionMade; setsid (and setpriv) exec
        # the job in place, so it is the job's pid and process group.
        # twisted.internet.process.Process is a producer; the interface does not say so.
        flow: Any = transport
        stdout.set_flow(flow.pauseProducing, flow.resumeProducing)
        stderr.set_flow(flow.pauseProducing, flow.resumeProducing)
        return process
