"""RFC 3339 timestamps: the strict parser shared by queries and job specs.

Pure: no I/O. Only RFC 3339 section 5.6 date-times with a zone (C{Z} or an
offset) are accepted, nothing else ISO 8601 allows (week or ordinal dates,
no separators, no zone, hour 24, a comma before fractions).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})"
    r"(?:\.([0-9]{1,9}))?(?:([Zz])|([+-])([0-9]{2}):([0-9]{2}))\Z"
)


class NotRFC3339(ValueError):  # noqa: N818 (reads better at the raise site)
    """Text that is not an RFC 3339 date-time with a zone (C{syntax_ok}:
    it has the syntax but names no real moment, e.g. February 30)."""

    def __init__(self, message: str, *, syntax_ok: bool = False) -> None:
        super().__init__(message)
        self.syntax_ok = syntax_ok


def parse_rfc3339(text: str) -> float:
    """An RFC 3339 timestamp (with a zone) as Unix seconds.

    @raise NotRFC3339: not the syntax, or not a real date and time.
    """
    match = _RFC3339.match(text)
    if match is None:
        raise NotRFC3339("not an RFC 3339 time with a zone")
    year, month, day, hour, minute, second, fraction, utc, sign, zh, zm = match.groups()
    try:
        zone = UTC
        if not utc:
            if int(zh) > 23 or int(zm) > 59:
                raise ValueError("offset out of range")
            offset = timedelta(hours=int(zh), minutes=int(zm))
            zone = timezone(-offset if sign == "-" else offset)
        moment = datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second),
            int((fraction or "0").ljust(6, "0")[:6]), tzinfo=zone,
        )  # fmt: skip
        moment.astimezone(UTC)  # year 1 at +14:00 is year 0 in UTC: unrepresentable
    except (ValueError, OverflowError):
        raise NotRFC3339("not a real date and time", syntax_ok=True) from None
    return moment.timestamp()


def format_rfc3339(timestamp: float, timespec: str = "milliseconds") -> str:
    """UTC timestamp, e.g. C{2026-11-22T11:01:24.123Z}."""
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.isoformat(timespec=timespec).replace("+00:00", "Z")
