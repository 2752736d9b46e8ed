"""Fixtures shared by the test modules."""

from __future__ import annotations

import gc
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure

HOW_TO_OPT_OUT = (
    "If the test expects it, say which: @pytest.mark.logs_errors('text of the message', ...), "
    "or take them in the test with the `logged_errors` fixture "
    "(logged_errors.flush(SomeError) / logged_errors.flush_matching('text')); "
    "@pytest.mark.allow_logged_errors allows any (say why in a comment)."
)


class LoggedErrors:
    """Error and critical events Twisted logged during one test, like trial's.

    C{flush} takes the expected ones (as trial's C{flushLoggedErrors}); what is
    left at the end of the test fails it.
    """

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __call__(self, event: dict[str, Any]) -> None:
        level = event.get("log_level")
        if "log_failure" in event or level in (LogLevel.error, LogLevel.critical):
            self.events.append(event)

    def flush(self, *types: type[BaseException]) -> list[dict[str, Any]]:
        """Take (and return) the logged failures of C{types} (all failures if none)."""
        def wanted(event: dict[str, Any]) -> bool:
            failure = event.get("log_failure")
            return isinstance(failure, Failure) and (not types or failure.check(*types) is not None)

        return self._take(wanted)

    def flush_matching(self, text: str) -> list[dict[str, Any]]:
        """Take (and return) the logged errors whose message contains C{text}."""
        return self._take(lambda event: text in describe_event(event))

    def _take(self, wanted: Any) -> list[dict[str, Any]]:
        taken = [event for event in self.events if wanted(event)]
        self.events = [event for event in self.events if not wanted(event)]
        return taken


def describe_event(event: dict[str, Any]) -> str:
    """A logged event as text: its message and, for a failure, the traceback."""
    text = formatEvent(event) or repr(event.get("log_format"))
    failure = event.get("log_failure")
    if isinstance(failure, Failure):
        text += "\n" + failure.getTraceback()
    return text


@pytest.fixture
def logged_errors(_twisted_hygiene: LoggedErrors) -> LoggedErrors:
    """The errors logged so far in this test; flush the ones the test expects."""
    return _twisted_hygiene


def _global_reactor() -> Any:
    """The global reactor if something installed it (never installs one)."""
    return sys.modules.get("twisted.internet.reactor")


@pytest.fixture(autouse=True)
def _twisted_hygiene(request: pytest.FixtureRequest) -> Iterator[LoggedErrors]:
    """Fail a test that logged a Twisted error or left delayed calls pending.

    What trial does for free: an error logged through C{twisted.logger} (or
    C{twisted.python.log.err}), including "Unhandled error in Deferred" that
    shows only when the Deferred is garbage collected (hence the
    C{gc.collect()}), fails the test unless the test expects it: its text is
    named by C{@pytest.mark.logs_errors(...)}, it was flushed with the
    C{logged_errors} fixture, or C{@pytest.mark.allow_logged_errors}; delayed
    calls the test left on the global reactor fail it too (and are cancelled,
    so the next test starts clean) unless marked
    C{@pytest.mark.allow_pending_calls}.
    """
    collected = LoggedErrors()
    reactor = _global_reactor()
    before = set(reactor.getDelayedCalls()) if reactor is not None else set()
    globalLogPublisher.addObserver(collected)
    try:
        yield collected
        gc.collect()
    finally:
        globalLogPublisher.removeObserver(collected)
    for marker in request.node.iter_markers("logs_errors"):
        for text in marker.args:
            collected.flush_matching(text)
    problems = []
    if collected.events and request.node.get_closest_marker("allow_logged_errors") is None:
        logged = "\n---\n".join(describe_event(event) for event in collected.events)
        problems.append(
            f"Twisted logged {len(collected.events)} error(s) during the test:\n{logged}\n"
            + HOW_TO_OPT_OUT
        )
    reactor = _global_reactor()
    if reactor is not None:
        pending = [
            call
            for call in reactor.getDelayedCalls()
            if call not in before and call.active()
        ]
        if pending and request.node.get_closest_marker("allow_pending_calls") is None:
            for call in pending:
                call.cancel()
            listed = "\n".join(f"  {call}" for call in pending)
            problems.append(
                f"the test left {len(pending)} delayed call(s) pending on the global reactor "
                f"(now cancelled):\n{listed}\nCancel them (or wait for them) before the test "
                "ends, or mark it @pytest.mark.allow_pending_calls with a comment saying why."
            )
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


@pytest.fixture
def job_files() -> Iterator[Path]:
    """A directory real jobs can write to (mode 1777, like /tmp).

    Started as root, the daemon runs jobs as an unprivileged user, who cannot
    enter pytest's tmp_path (0700): files a job writes or waits for go here.
    """
    directory = Path(tempfile.mkdtemp(prefix="cmdd-job-files-"))
    directory.chmod(0o1777)
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the hostile-input suite's request counts at the end of every run."""
    import sys

    fuzz = sys.modules.get("test_fuzz_http")
    tally = getattr(fuzz, "TALLY", None)
    if tally:
        counts = ", ".join(f"{key} {value}" for key, value in sorted(tally.items()))
        terminalreporter.write_line(f"hostile-input suite: {counts}")
