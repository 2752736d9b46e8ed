"""Bugs found by the hostile review of issue 10, pinned by tests."""

from __future__ import annotations

from typing import Any

import pytest

import cmdd.cronspec
from cmdd.cronspec import latest_due
from cmdd.schedule import MAX_MISSED_COUNTED


def test_missed_fires_after_a_long_outage_cost_a_bounded_walk(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A minute schedule whose daemon was down 80 days: finding the slot to
    run and counting the missed ones must take a bounded number of cron
    steps (it runs on the reactor, for up to 200 schedules per ring), not
    one per missed minute (115,200 here)."""
    steps = 0
    real = cmdd.cronspec.CronSim

    class Counting(real):  # type: ignore[misc,valid-type]
        def __next__(self) -> Any:
            nonlocal steps
            steps += 1
            return super().__next__()

    monkeypatch.setattr(cmdd.cronspec, "CronSim", Counting)
    now = 1_796_190_120.0
    down_since = now - 80 * 86400
    slot, count = latest_due("* * * * *", "Europe/Berlin", down_since, now, MAX_MISSED_COUNTED)
    assert slot == now, "the latest missed slot is the one that runs"
    assert count == MAX_MISSED_COUNTED
    assert steps <= 1000, f"{steps} cron steps on the reactor for one schedule"


def test_run_at_before_year_1_utc_is_a_400_not_a_500() -> None:
    """run_at 0001-01-01T00:00:00+14:00 passed validation and crashed the
    journal encoder (format_rfc3339: year 0 is out of range) -> 500."""
    from cmdd.timefmt import NotRFC3339, parse_rfc3339

    with pytest.raises(NotRFC3339):
        parse_rfc3339("0001-01-01T00:00:00+14:00")
