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
