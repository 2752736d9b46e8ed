"""Start-up failures, readiness and the stop signals of the daemon.

What an operator and a service manager see of the daemon's life: a failed
start is one line on stderr and a non-zero exit within seconds (never a
half-started daemon), C{/readyz} says whether new work is welcome, and
SIGTERM/SIGINT start a drain that ends with exit status 0.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import IO, Any, NoReturn

from twisted.internet.error import CannotListenError
from twisted.logger import Logger

log = Logger()

#: Seconds after a failed start before the process is ended the hard way if
#: something (a worker thread) still keeps the interpreter alive.
EXIT_BACKSTOP_SECONDS = 5.0

STARTING, READY, DRAINING = "starting", "ready", "draining"


def startup_error_text(error: BaseException) -> str:
    """One line that says why the start failed, without a traceback."""
    if isinstance(error, CannotListenError):
        why = error.socketError
        reason = getattr(why, "strerror", None) or str(why)
        where = f"{error.interface or '*'}:{error.port}"
        return f"cannot listen on {where}: {reason}"
    if isinstance(error, SystemExit):
        text = str(error.code) if error.code is not None else "exit"
        return text.removeprefix("cmdd: ")
    if isinstance(error, OSError) and error.strerror:
        where = f" {error.filename}" if error.filename else ""
        return f"{error.strerror}:{where}".rstrip(":")
    text = str(error) or type(error).__name__
    return text.splitlines()[0] if text.strip() else type(error).__name__


def fail_start(error: BaseException, stderr: IO[str] | None = None) -> NoReturn:
    """Report a failed start on stderr and in the log, then exit with status 1.

    twistd sends C{sys.stderr} into its log (with C{-n}, to stdout), so the
    line goes to the process's real stderr (C{sys.__stderr__}) as well. If a
    worker thread keeps the interpreter from exiting, a daemon thread ends
    the process after L{EXIT_BACKSTOP_SECONDS}.
    """
    why = startup_error_text(error)
    log.critical("cannot start: {why}", why=why)
    out = stderr if stderr is not None else sys.__stderr__
    if out is not None:
        try:
            out.write(f"cmdd: cannot start: {why}\n")
            out.flush()
        except (OSError, ValueError):
            pass
    backstop = threading.Timer(EXIT_BACKSTOP_SECONDS, os._exit, (1,))
    backstop.daemon = True
    backstop.start()
    raise SystemExit(1)


class Readiness:
    """Whether the daemon takes new work: starting, ready or draining.

    While ready, C{checks} may still say no: each returns why the daemon
    cannot take work now (e.g. the journal refuses appends), or C{None}.
    """

    def __init__(self) -> None:
        self.state = STARTING
        self.checks: list[Callable[[], str | None]] = []

    def problem(self) -> str | None:
        """The first check's reason to refuse new work, if any."""
        for check in self.checks:
            why = check()
            if why is not None:
                return why
        return None

    def ready(self) -> None:
        """The reactor runs and every service is up."""
        if self.state == STARTING:
            self.state = READY

    def draining(self) -> None:
        """A stop began: no new work from now on."""
        self.state = DRAINING

    @property
    def is_ready(self) -> bool:
        """True only between start-up and the beginning of a stop."""
        return self.state == READY


class JournalCheck:
    """Readiness check: not ready while the journal refuses appends.

    A load balancer that takes the daemon out of rotation sends no more
    submissions, so nothing would show that the disk has room again: while
    the journal refuses, each check (at most one at a time) appends
    C{probe()} (a harmless record), and the next check after it was
    written says ready again.

    @param journal: has C{refusing} (a reason or C{None}) and C{append}.
    @param probe: makes the record to try.
    """

    def __init__(self, journal: Any, probe: Callable[[], Any]) -> None:
        self._journal = journal
        self._probe = probe
        self._probing = False

    def __call__(self) -> str | None:
        why: str | None = self._journal.refusing
        if why is not None and not self._probing:
            self._probing = True
            trying = self._journal.append(self._probe())
            trying.addErrback(lambda _failure: None)  # the refusal is already logged
            trying.addBoth(self._probed)
        return None if why is None else f"the journal refuses new records: {why}"

    def _probed(self, _: object) -> None:
        self._probing = False


def install_stop_signals(
    reactor: Any, first: Callable[[str], None], again: Callable[[str], None]
) -> None:
    """Handle SIGTERM and SIGINT in place of the reactor's own handlers.

    The first signal calls C{first(name)} (which starts the drain and stops
    the reactor); a later one calls C{again(name)}. Unlike Twisted's
    handlers these do not make twistd re-raise the signal at exit, so a
    clean stop exits with status 0. Call once the reactor runs (its own
    handlers are installed during start-up).
    """
    seen: list[int] = []

    def handler(signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        # Signal handlers run between bytecodes; act in the reactor.
        reactor.callFromThread(again if seen else first, name)
        seen.append(signum)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
