"""Slurm's commands (sbatch, squeue, scancel), run through the reactor.

Each call is a child process started with C{spawnProcess}: the reactor never
waits for the controller. Answers are bounded (a runaway command cannot
fill memory) and every call has a deadline (a controller that does not
answer makes the command fail, not hang).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from attrs import frozen
from twisted.internet import error
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

#: Bytes kept of a command's stdout (squeue's JSON for thousands of jobs
#: fits) and stderr.
MAX_STDOUT = 64 * 1024 * 1024
MAX_STDERR = 64 * 1024

#: What Slurm's commands print when the controller cannot be reached.
UNREACHABLE = (
    "Unable to contact slurm controller",
    "Socket timed out",
    "Connection refused",
    "Zero Bytes were transmitted",
    "timed out",
)


@frozen
class Answer:
    """How a command ended and what it printed."""

    code: int | None
    stdout: bytes
    stderr: bytes

    @property
    def message(self) -> str:
        """The command's last line on stderr, for a reason or a log."""
        lines = self.stderr.decode("utf-8", "replace").strip().splitlines()
        text = lines[-1] if lines else f"exit status {self.code}"
        return text.removeprefix("sbatch: ").removeprefix("error: ")[:500]

    @property
    def unreachable(self) -> bool:
        """Whether it failed because the controller did not answer."""
        text = self.stderr.decode("utf-8", "replace")
        return self.code != 0 and any(mark in text for mark in UNREACHABLE)


class _Collect(ProcessProtocol):
    def __init__(self, done: Deferred[Answer], fd3: bytes | None) -> None:
        self._done = done
        self._fd3 = fd3
        self._out: list[bytes] = []
        self._err: list[bytes] = []
        self._sizes = {1: 0, 2: 0}

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.closeStdin()
        if self._fd3 is not None:
            self.transport.writeToChild(3, self._fd3)
            self.transport.closeChildFD(3)

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        limit, chunks = (MAX_STDOUT, self._out) if childFD == 1 else (MAX_STDERR, self._err)
        room = limit - self._sizes.get(childFD, 0)
        if room > 0:
            chunks.append(data[:room])
            self._sizes[childFD] = self._sizes.get(childFD, 0) + len(data[:room])

    def processEnded(self, reason: Failure) -> None:
        value = reason.value
        code: int | None = 0
        if isinstance(value, error.ProcessTerminated):
            code = value.exitCode if value.exitCode is not None else 128 + (value.signal or 0)
        self._done.callback(Answer(code, b"".join(self._out), b"".join(self._err)))


def run(
    reactor: Any,
    argv: Sequence[str],
    env: Mapping[str, str],
    *,
    timeout: float,
    fd3: bytes | None = None,
) -> Deferred[Answer]:
    """Run C{argv} with C{env}; fires with its L{Answer} (never fails: a
    command that cannot start answers code C{None})."""
    done: Deferred[Answer] = Deferred()
    fds: dict[int, str] = {0: "w", 1: "r", 2: "r"}
    if fd3 is not None:
        fds[3] = "w"
    try:
        process = reactor.spawnProcess(
            _Collect(done, fd3), argv[0], list(argv), env=dict(env), childFDs=fds
        )
    except OSError as e:
        return _answered(Answer(None, b"", f"cannot run {argv[0]}: {e.strerror}".encode()))

    def expired() -> None:
        try:
            process.signalProcess("KILL")
        except error.ProcessExitedAlready:
            pass

    deadline = reactor.callLater(timeout, expired)

    def settle(answer: Answer) -> Answer:
        if deadline.active():
            deadline.cancel()
        return answer

    return done.addCallback(settle)


def _answered(answer: Answer) -> Deferred[Answer]:
    done: Deferred[Answer] = Deferred()
    done.callback(answer)
    return done
