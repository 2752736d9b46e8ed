"""The daemon's end of the job spawner: start it, talk to it, outlive it.

The spawner (L{cmdd.spawner}) is one child process for the daemon's life.
This module starts it with a Unix socket on its fd 3, sends it spawn and
signal requests (the job's pipe ends attached with C{SCM_RIGHTS}), and
routes its answers to each job's L{cmdd.runner.JobProcess}. If it dies, the
jobs it ran end C{failed} (their outcome is unknown) and a new one is
started, so the daemon keeps running jobs.

Its answers are treated as untrusted input: jobs may share its uid (an
unprivileged daemon), so they are parsed defensively and bounded.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Factory, ProcessProtocol
from twisted.logger import Logger
from twisted.protocols.basic import Int32StringReceiver
from twisted.python.failure import Failure

from cmdd.runner import JobProcess, ProcessExit

log = Logger()

#: Seconds before a spawner that died at once is started again.
RESTART_SECONDS = 1.0
#: Seconds a spawner whose socket closed has to end its jobs and exit.
STOP_SECONDS = 10.0
#: Longest spawner stderr line logged (the rest is cut).
_LOG_LINE_BYTES = 2000


class _Control(Int32StringReceiver):
    """Frames from and to the spawner (4-byte length, JSON)."""

    MAX_LENGTH = 64 * 1024

    def __init__(self, link: SpawnerLink) -> None:
        self._link = link

    def stringReceived(self, frame: bytes) -> None:
        try:
            message = json.loads(frame)
            self._link.answer(message)
        except (ValueError, KeyError, TypeError) as e:
            log.error("bad message from the job spawner: {why}", why=str(e))
            assert self.transport is not None
            self.transport.loseConnection()

    def lengthLimitExceeded(self, length: int) -> None:
        log.error("oversized message from the job spawner ({length} bytes)", length=length)
        assert self.transport is not None
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        self._link.control_lost()


class _SpawnerProcess(ProcessProtocol):
    """Logs the spawner's stderr and notices when it ends."""

    def __init__(self, link: SpawnerLink) -> None:
        self._link = link
        self._partial = b""

    def errReceived(self, data: bytes) -> None:
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()[-_LOG_LINE_BYTES:]
        for line in lines:
            text = line[:_LOG_LINE_BYTES].decode("utf-8", "replace")
            log.warn("job spawner: {line}", line=text)

    def processEnded(self, reason: Failure) -> None:
        self._link.process_ended(self, reason)


class SpawnerLink:
    """Starts the spawner and carries requests to it and answers back.

    @param reactor: provides C{spawnProcess}, C{adoptStreamConnection} and
        C{callLater}.
    @param command: the spawner's command line (from
        L{cmdd.isolation.spawner_command}).
    @param environment: the spawner's own (small) environment.
    """

    def __init__(self, reactor: Any, command: Sequence[str], environment: dict[str, str]) -> None:
        self._reactor = reactor
        self._command = list(command)
        self._environment = dict(environment)
        self._control: _Control | None = None
        self._process: Any = None
        self._watch: _SpawnerProcess | None = None
        self._started_at = float("-inf")
        self._jobs: dict[int, JobProcess] = {}
        #: The job's ends of its pipes, kept open until the spawner has them.
        self._in_flight: dict[int, tuple[int, ...]] = {}
        #: Spawn requests made while no spawner runs (between two).
        self._waiting: list[tuple[dict[str, Any], tuple[int, int, int], JobProcess]] = []
        self._waiting_signals: dict[int, list[int]] = {}
        self._kill_timers: dict[_SpawnerProcess, IDelayedCall] = {}
        self._stopping = False
        self._ended: list[Deferred[None]] = []
        self.starts = 0

    # --- life -----------------------------------------------------------------

    def start(self) -> None:
        """Start the spawner (requests sent before it runs wait in the socket)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            control = _Control(self)
            self._reactor.adoptStreamConnection(
                ours.fileno(), socket.AF_UNIX, Factory.forProtocol(lambda: control)
            )
            self._control = control
            self._watch = _SpawnerProcess(self)
            self._started_at = self._clock_seconds()
            self._process = self._reactor.spawnProcess(
                self._watch,
                self._command[0],
                self._command,
                env=self._environment,
                childFDs={0: "w", 1: "r", 2: "r", 3: theirs.fileno()},
            )
        finally:
            ours.close()
            theirs.close()
        self.starts += 1
        waiting, self._waiting = self._waiting, []
        signals, self._waiting_signals = self._waiting_signals, {}
        for request, fds, job in waiting:
            self.spawn(request, fds, job)
            for signum in signals.get(job.job_id, []):
                self.signal(job.job_id, signum)

    def stop(self) -> Deferred[None]:
        """Close the socket; the spawner kills what is left and exits."""
        self._stopping = True
        waiting, self._waiting = self._waiting, []
        for _, fds, job in waiting:
            for fd in fds:
                os.close(fd)
            job.exited(ProcessExit(None, None, not_executed="the daemon is stopping"))
        waiter: Deferred[None] = Deferred()
        if self._watch is None:
            waiter.callback(None)
            return waiter
        self._ended.append(waiter)
        if self._control is not None and self._control.transport is not None:
            self._control.transport.loseConnection()
        self._kill_later()
        return waiter

    @property
    def running(self) -> bool:
        """Whether a spawner is connected now (requests made meanwhile wait)."""
        return self._control is not None

    # --- requests -------------------------------------------------------------

    def spawn(self, request: dict[str, Any], fds: tuple[int, int, int], job: JobProcess) -> None:
        """Ask the spawner to start C{job}; C{fds} are the job's pipe ends."""
        job_id = int(request["job"])
        control = self._control
        if control is None or control.transport is None:
            if self._stopping:
                for fd in fds:
                    os.close(fd)
                job.exited(ProcessExit(None, None, not_executed="the daemon is stopping"))
            else:
                # A new spawner is on its way; at most max_running jobs wait.
                self._waiting.append((request, fds, job))
            return
        self._jobs[job_id] = job
        self._in_flight[job_id] = fds
        # An adopted AF_UNIX connection provides IUNIXTransport.
        transport: Any = control.transport
        for fd in fds:
            transport.sendFileDescriptor(fd)
        control.sendString(json.dumps(request, ensure_ascii=False).encode("utf-8"))

    def signal(self, job_id: int, signum: int) -> None:
        """Ask the spawner to signal the job's process group.

        Sent in order after the job's spawn request, so a signal asked for
        before the spawner answered still reaches the job.
        """
        control = self._control
        if control is not None and job_id in self._jobs:
            control.sendString(
                json.dumps({"op": "signal", "job": job_id, "signal": signum}).encode()
            )
        elif any(job.job_id == job_id for _, _, job in self._waiting):
            self._waiting_signals.setdefault(job_id, []).append(signum)

    # --- answers --------------------------------------------------------------

    def answer(self, message: dict[str, Any]) -> None:
        """Route one answer of the spawner to its job."""
        op = message["op"]
        job_id = int(message["job"])
        job = self._jobs.get(job_id)
        if job is None:
            return
        if op == "started":
            self._release(job_id)
            job.started(int(message["pid"]))
        elif op == "refused":
            self._release(job_id)
            del self._jobs[job_id]
            job.exited(ProcessExit(None, None, not_executed=str(message["error"])[:1000]))
        elif op == "exited":
            del self._jobs[job_id]
            job.exited(ProcessExit(_int_or_none(message["code"]), _int_or_none(message["signal"])))

    def _release(self, job_id: int) -> None:
        for fd in self._in_flight.pop(job_id, ()):
            os.close(fd)

    def control_lost(self) -> None:
        """The socket closed: every job the spawner had has an unknown end."""
        self._control = None
        for job_id in list(self._in_flight):
            self._release(job_id)
        jobs, self._jobs = self._jobs, {}
        for job in jobs.values():
            # Sent to the spawner: it may have run even if its start was not
            # reported yet, so its end is unknown, never "not executed".
            job.exited(ProcessExit(None, None, failure="the job spawner stopped while it ran"))
        if self._stopping:
            return
        log.error("the job spawner went away; starting a new one")
        if self._process is not None:
            # With its socket closed it kills its jobs and exits by itself;
            # a KILL now would leave their children behind. Only if it hangs:
            self._kill_later()
            self._watch = self._process = None
        if self._clock_seconds() - self._started_at < RESTART_SECONDS:
            # It dies at once: do not spin.
            self._reactor.callLater(RESTART_SECONDS, self._restart)
        else:
            self._restart()

    def _kill_later(self) -> None:
        """SIGKILL the current spawner if it has not exited in STOP_SECONDS."""
        if self._watch is not None and self._watch not in self._kill_timers:
            self._kill_timers[self._watch] = self._reactor.callLater(
                STOP_SECONDS, _kill_if_running, self._process
            )

    def process_ended(self, watch: _SpawnerProcess, reason: Failure) -> None:
        """A spawner exited (the current one, or one already replaced)."""
        timer = self._kill_timers.pop(watch, None)
        if timer is not None and timer.active():
            timer.cancel()
        if watch is not self._watch:
            return
        self._watch = self._process = None
        if self._control is not None and self._control.transport is not None:
            self._control.transport.loseConnection()
        if self._stopping:
            ended, self._ended = self._ended, []
            for waiter in ended:
                waiter.callback(None)

    def _restart(self) -> None:
        if not self._stopping and self._control is None:
            self.start()

    def _clock_seconds(self) -> float:
        seconds: float = self._reactor.seconds()
        return seconds


def _kill_if_running(process: Any) -> None:
    with contextlib.suppress(ProcessExitedAlready):
        process.signalProcess("KILL")


def _int_or_none(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("expected an integer")
    return value
