"""REVIEW (issue 10): failing tests for bugs found by the hostile review.

Each test fails on the code as merged; see the review report.
"""

from __future__ import annotations

import time

from cmdd.cronspec import latest_due
from cmdd.schedule import MAX_MISSED_COUNTED


def test_review_missed_fires_do_not_block_the_reactor() -> None:
    """A minute schedule whose daemon was down 80 days: plan() walks
    MAX_MISSED_COUNTED cronsim steps on the reactor (~1.4 s per schedule,
    BATCH=200 schedules per ring: minutes of a frozen reactor at start)."""
    now = 1_796_190_120.0
    started = time.perf_counter()
    slot, _ = latest_due("* * * * *", "Europe/Berlin", now - 80 * 86400, now, MAX_MISSED_COUNTED)
    elapsed = time.perf_counter() - started
    assert slot == now
    assert elapsed < 0.05, f"latest_due took {elapsed:.2f} s on the reactor"


def test_review_run_at_before_year_1_utc_is_a_400_not_a_500() -> None:
    """run_at 0001-01-01T00:00:00+14:00 passed validation and crashed the
    journal encoder (format_rfc3339: year 0 is out of range) -> 500."""
    import pytest

    from cmdd.timefmt import NotRFC3339, parse_rfc3339

    with pytest.raises(NotRFC3339):
        parse_rfc3339("0001-01-01T00:00:00+14:00")
