"""Cron fire times in a time zone (cronsim), exact across DST changes."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from cmdd.cronspec import latest_due, next_fire, parse_cron, parse_timezone
from cmdd.errors import SpecError


def ts(zone: str, *parts: int) -> float:
    """Unix time of a local wall-clock time (the first one if repeated)."""
    return datetime(*parts, tzinfo=ZoneInfo(zone)).timestamp()  # type: ignore[misc]


def utc(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, ZoneInfo("UTC")).strftime("%Y-%m-%dT%H:%M")


@pytest.mark.parametrize(
    ("zone", "day", "expected_utc"),
    [
        # 02:30 does not exist on spring-forward day: it fires once, at 03:00 local.
        ("Europe/Berlin", (2026, 3, 29), "2026-03-29T01:00"),
        ("America/New_York", (2026, 3, 8), "2026-03-08T07:00"),
    ],
)
def test_a_skipped_local_time_fires_once_right_after_the_gap(
    zone: str, day: tuple[int, int, int], expected_utc: str
) -> None:
    """`30 2 * * *` on spring-forward day fires once, at the first minute after the gap."""
    start = ts(zone, *day, 0, 0)
    first = next_fire("30 2 * * *", zone, start)
    assert utc(first) == expected_utc
    second = next_fire("30 2 * * *", zone, first)
    assert datetime.fromtimestamp(second, ZoneInfo(zone)).strftime("%d %H:%M") == (
        f"{day[2] + 1:02d} 02:30"
    )


@pytest.mark.parametrize(
    ("zone", "day", "expected_utc"),
    [
        # 01:30 happens twice on fall-back day: it fires once, at the first.
        ("Europe/Berlin", (2026, 10, 25), "2026-10-24T23:30"),
        ("America/New_York", (2026, 11, 1), "2026-11-01T05:30"),
    ],
)
def test_a_repeated_local_time_fires_once(
    zone: str, day: tuple[int, int, int], expected_utc: str
) -> None:
    """`30 1 * * *` on fall-back day fires once (the first 01:30), not twice."""
    start = ts(zone, *day, 0, 0)
    first = next_fire("30 1 * * *", zone, start)
    assert utc(first) == expected_utc
    second = next_fire("30 1 * * *", zone, first)
    assert second - first == 25 * 3600  # the next day's 01:30, a 25-hour day later


def test_hourly_fires_keep_counting_real_hours_across_fall_back() -> None:
    """`0 * * * *` fires every real hour through the repeated hour (24+1 fires that day)."""
    zone = "Europe/Berlin"
    start, end = ts(zone, 2026, 10, 25, 0, 0) - 1, ts(zone, 2026, 10, 26, 0, 0) - 1
    _, count = latest_due("0 * * * *", zone, start, end, 1000)
    assert count == 25


def test_missed_fires_collapse_into_the_latest() -> None:
    """A day of missed minute fires gives the latest slot and the count, bounded."""
    latest, count = latest_due("* * * * *", "UTC", 0.0, 86400.0 + 30, 100_000)
    assert (latest, count) == (86400.0, 1440)
    latest, count = latest_due("* * * * *", "UTC", 0.0, 86400.0 + 30, 10)
    assert (latest, count) == (86400.0, 10)


@pytest.mark.parametrize(
    "text", ["* * * *", "* * * * * *", "61 * * * *", "* 25 * * *", "", "@reboot", 5, None]
)
def test_bad_cron_is_refused(text: object) -> None:
    """Anything but five valid fields is INVALID_CRON."""
    with pytest.raises(SpecError) as info:
        parse_cron(text)
    assert info.value.code == "INVALID_CRON"


@pytest.mark.parametrize("zone", ["Mars/Olympus", "../../etc/passwd", "", "UTC ", 3, "/UTC"])
def test_bad_timezone_is_refused(zone: object) -> None:
    """Only IANA names known to the tz database are accepted."""
    with pytest.raises(SpecError) as info:
        parse_timezone(zone)
    assert info.value.code == "INVALID_TIMEZONE"
    assert parse_timezone("Europe/Berlin") == "Europe/Berlin"


def test_a_cron_that_rarely_fires_has_its_far_next_run() -> None:
    """The fifth Monday of February (leap years starting on a Monday) is found."""
    after = ts("UTC", 2030, 1, 1, 0, 0)
    assert utc(next_fire("0 0 * 2 1#5", "UTC", after) or 0) == "2044-02-29T00:00"
