"""Cron expressions in a time zone: validation and fire times, via cronsim.

Pure (no reactor; zoneinfo reads the system's tz database). cronsim
evaluates in the zone's local time with Debian cron's DST rules: a time
skipped by spring-forward fires once at the first minute after the gap, a
time repeated by fall-back fires once (at its first occurrence).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from cronsim import CronSim, CronSimError

from cmdd.errors import SpecError

MAX_CRON_CHARS = 200
_ZONE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_+\-]*(?:/[A-Za-z0-9_+\-]+){0,3}\Z")


def parse_cron(value: object) -> str:
    """A 5-field cron expression (minute hour day-of-month month day-of-week).

    @raise SpecError: C{INVALID_CRON}.
    """
    if not isinstance(value, str) or len(value) > MAX_CRON_CHARS:
        raise SpecError("INVALID_CRON", "cron must be a string of five fields", "cron")
    fields = value.split()
    if len(fields) != 5:
        raise SpecError(
            "INVALID_CRON",
            "cron must have five fields: minute hour day-of-month month day-of-week",
            "cron",
        )
    text = " ".join(fields)
    try:
        CronSim(text, datetime(2026, 1, 1, tzinfo=UTC))
    except CronSimError as e:
        raise SpecError("INVALID_CRON", f"cron is invalid: {e}", "cron") from None
    return text


def parse_timezone(value: object) -> str:
    """An IANA time zone name known to this host's tz database.

    @raise SpecError: C{INVALID_TIMEZONE}.
    """
    if not isinstance(value, str) or len(value) > 64 or not _ZONE_NAME.match(value):
        raise SpecError("INVALID_TIMEZONE", "timezone must be an IANA name", "timezone")
    try:
        ZoneInfo(value)
    except Exception:  # ZoneInfoNotFoundError, ValueError, OSError: all "unknown"
        raise SpecError("INVALID_TIMEZONE", f"unknown time zone {value!r}", "timezone") from None
    return value


def next_fire(cron: str, zone: str, after: float) -> float | None:
    """The first fire time strictly after C{after} (Unix seconds); C{None}
    if it never fires again (cronsim gives up after 50 years without one)."""
    start = datetime.fromtimestamp(after, ZoneInfo(zone))
    try:
        return next(iter(CronSim(cron, start))).timestamp()
    except (StopIteration, OverflowError, ValueError):
        return None


def latest_due(
    cron: str, zone: str, after: float, now: float, cap: int
) -> tuple[float | None, int]:
    """The last fire time in (C{after}, C{now}] and how many there were
    (counting stops at C{cap}: a minute cron down for a year is not walked)."""
    start = datetime.fromtimestamp(after, ZoneInfo(zone))
    latest: float | None = None
    count = 0
    for moment in CronSim(cron, start):
        when = moment.timestamp()
        if when > now:
            break
        latest, count = when, count + 1
        if count >= cap:
            return _latest_before(cron, zone, max(after, now - 400 * 86400), now), count
    return latest, count


def _latest_before(cron: str, zone: str, after: float, now: float) -> float | None:
    """The last fire time in (C{after}, C{now}], searching back from C{now}."""
    for window in (3600.0, 86400.0, 32 * 86400.0, 400 * 86400.0):
        start = max(after, now - window)
        latest: float | None = None
        for moment in CronSim(cron, datetime.fromtimestamp(start, ZoneInfo(zone))):
            when = moment.timestamp()
            if when > now:
                break
            latest = when
        if latest is not None:
            return latest
    return None
