"""When a failed callback is tried again, and when it is given up (pure).

Exponential backoff with jitter: the n-th retry waits a random time in
[d/2, d] where d = first * 2**(n-1), capped; a receiver's C{Retry-After}
(seconds or an HTTP date) is honoured up to L{RETRY_AFTER_CAP}. A callback
is given up once an attempt fails and its transition is older than the
maximum age: there is always at least one attempt, even after a long
downtime.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from email.utils import parsedate_to_datetime

from attrs import frozen

#: The longest Retry-After honoured (seconds): a receiver cannot park a
#: job's callbacks for days with one header.
RETRY_AFTER_CAP = 3600.0


@frozen
class RetryPolicy:
    """How often and for how long a callback is retried."""

    first: float = 1.0
    cap: float = 600.0
    max_age: float = 24 * 3600.0

    def delay(
        self,
        failures: int,
        retry_after: float | None = None,
        uniform: Callable[[float, float], float] = random.uniform,
    ) -> float:
        """Seconds to wait after the C{failures}-th failed attempt (from 1)."""
        ceiling = min(self.cap, self.first * 2.0 ** min(failures - 1, 64))
        wait = uniform(ceiling / 2, ceiling)
        if retry_after is not None:
            wait = max(wait, min(retry_after, RETRY_AFTER_CAP))
        return wait

    def gives_up(self, made_at: float, now: float) -> bool:
        """Whether a callback made at C{made_at} that just failed is abandoned."""
        return now - made_at >= self.max_age


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds a C{Retry-After} header asks to wait (C{None}: absent or unreadable)."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(min(int(value), 10**9))
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        return None
    return max(0.0, moment.timestamp() - now)
