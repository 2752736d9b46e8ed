"""The suite's own guard: a test that logs a Twisted error or leaves delayed
calls on the global reactor fails, unless it says it expects the error."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

INNER = '''
import pytest
from twisted.internet import reactor
from twisted.internet.defer import fail
from twisted.logger import Logger

log = Logger()


def test_logs_an_error():
    log.error("disk on fire")


def test_loses_a_failing_deferred():
    fail(ZeroDivisionError("nobody handled me"))


def test_leaves_a_delayed_call():
    reactor.callLater(60, lambda: None)


@pytest.mark.logs_errors("disk on fire")
def test_expects_its_error():
    log.error("disk on fire")


def test_flushes_its_error(logged_errors):
    try:
        raise KeyError("k")
    except KeyError:
        log.failure("expected failure")
    assert len(logged_errors.flush(KeyError)) == 1


def test_logs_only_info():
    log.info("all is well")
'''


def test_logged_errors_and_pending_calls_fail_the_test(pytester: pytest.Pytester) -> None:
    """An error log, an unhandled failed Deferred (seen at garbage collection)
    and a pending delayed call each fail their test with a message saying
    what happened and how to opt out; expected errors do not."""
    conftest = Path(__file__).with_name("conftest.py").read_text()
    pytester.makeconftest(conftest)
    pytester.makeini(
        "[pytest]\nmarkers =\n    logs_errors: x\n    allow_logged_errors: x\n"
        "    allow_pending_calls: x\n"
    )
    pytester.makepyfile(test_inner=INNER)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=6, errors=3)
    output = result.stdout.str()
    assert "disk on fire" in output and "nobody handled me" in output
    assert "delayed call(s) pending on the global reactor" in output
    assert "@pytest.mark.logs_errors" in output
