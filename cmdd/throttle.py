"""Password guessing slows down per (user, address), with exponential backoff.

Only password checks are throttled. A bearer token has 256 random bits, so
there is nothing to guess, and a valid one is never refused: a misconfigured
client with a stale token cannot lock anyone else out.

For each key (the user name as sent, the client address):

- the first L{FREE_FAILURES} failures cost nothing;
- after that each attempt must wait C{BASE_DELAY * 2 ** (failures - FREE_FAILURES)}
  seconds (capped at L{MAX_DELAY}) after the last failure;
- attempts still being checked count as failures until they end, so a key
  never has more checks in flight than it has free failures left (at least
  one): a burst of parallel guesses cannot outrun the count;
- a correct password clears the key; a key without failures for
  L{FORGET_AFTER} seconds is forgotten.

Memory is bounded: at most C{max_tracked} keys are kept. When full, keys
that are not yet penalised are forgotten first (least recently used), so
flooding the table with fresh names does not wipe out a penalty.

Pure: no reactor; the clock is anything with C{seconds()} (the reactor in the
daemon, C{task.Clock} in tests).
"""

from __future__ import annotations

import collections
import math
from typing import Protocol

#: Failures per key before any delay.
FREE_FAILURES = 5
#: The first delay, in seconds; it doubles with every further failure.
BASE_DELAY = 1.0
#: The longest delay between attempts of one key.
MAX_DELAY = 300.0
#: A key whose last failure is this old starts again from nothing.
FORGET_AFTER = 900.0
#: Keys remembered at most.
MAX_TRACKED = 10_000
#: Retry-After for an attempt refused because others of its key are in flight.
BUSY_RETRY = 1.0
#: User names are cut to this length in keys (real ones have at most 32).
_NAME_LIMIT = 64

Key = tuple[str, str]


class Clock(Protocol):
    """What the throttle needs of a clock."""

    def seconds(self) -> float:
        """The current time, in seconds."""


class _Entry:
    __slots__ = ("failures", "in_flight", "last_failure")

    def __init__(self) -> None:
        self.failures = 0
        self.in_flight = 0
        self.last_failure = 0.0


def throttle_key(name: str, address: str) -> Key:
    """The key of a password attempt for C{name} from C{address}."""
    return (name[:_NAME_LIMIT], address)


class FailureThrottle:
    """Counts password failures per (user, address) and says who must wait.

    Use: C{wait = throttle.begin(key)}; if C{wait} is not C{None}, refuse
    (429, C{Retry-After: wait}); otherwise check the password and end the
    attempt with exactly one of L{succeeded}, L{failed} or L{abandoned}.

    @param clock: gives the time (C{seconds()}).
    @param free_failures: failures per key before any delay.
    @param base_delay: the first delay; it doubles with each further failure.
    @param max_delay: the longest delay.
    @param forget_after: seconds without a failure after which a key is forgotten.
    @param max_tracked: keys remembered at most.
    """

    def __init__(
        self,
        clock: Clock,
        *,
        free_failures: int = FREE_FAILURES,
        base_delay: float = BASE_DELAY,
        max_delay: float = MAX_DELAY,
        forget_after: float = FORGET_AFTER,
        max_tracked: int = MAX_TRACKED,
    ) -> None:
        self._clock = clock
        self.free_failures = free_failures
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.forget_after = max(forget_after, max_delay)
        self.max_tracked = max_tracked
        # Keys below the threshold, and penalised ones; least recently used first.
        self._warm: collections.OrderedDict[Key, _Entry] = collections.OrderedDict()
        self._hot: collections.OrderedDict[Key, _Entry] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._warm) + len(self._hot)

    def delay(self, failures: int) -> float:
        """The wait after the last of C{failures} failures."""
        if failures < self.free_failures:
            return 0.0
        exponent = min(failures - self.free_failures, 64)
        return float(min(self.max_delay, self.base_delay * 2**exponent))

    def begin(self, key: Key) -> float | None:
        """Start a password check for C{key}, or say how long to wait.

        @return: C{None} if the check may run now (it is counted in flight),
            else the seconds to wait (more than 0).
        """
        now = self._clock.seconds()
        self._sweep(now)
        entry = self._touch(key, now)
        if entry is None:
            entry = _Entry()
            self._warm[key] = entry
        wait = entry.last_failure + self.delay(entry.failures) - now
        if entry.failures >= self.free_failures and wait > 0:
            return wait
        if entry.in_flight >= max(1, self.free_failures - entry.failures):
            return BUSY_RETRY
        entry.in_flight += 1
        self._trim()
        return None

    def failed(self, key: Key) -> None:
        """The check begun for C{key} found a wrong password."""
        now = self._clock.seconds()
        entry = self._touch(key, now) or self._new(key)
        entry.in_flight = max(0, entry.in_flight - 1)
        entry.failures += 1
        entry.last_failure = now
        if entry.failures >= self.free_failures and key in self._warm:
            del self._warm[key]
            self._hot[key] = entry
        self._trim()

    def succeeded(self, key: Key) -> None:
        """The check begun for C{key} found the right password: clear the key."""
        entry = self._pop(key)
        if entry is not None and entry.in_flight > 1:
            entry.in_flight -= 1
            entry.failures = 0
            self._warm[key] = entry

    def abandoned(self, key: Key) -> None:
        """The check begun for C{key} ended without a verdict (an error)."""
        entry = self._touch(key, self._clock.seconds())
        if entry is None:
            return
        entry.in_flight = max(0, entry.in_flight - 1)
        if entry.in_flight == 0 and entry.failures == 0:
            self._pop(key)

    # --- bookkeeping ---------------------------------------------------------

    def _new(self, key: Key) -> _Entry:
        entry = self._warm[key] = _Entry()
        return entry

    def _pop(self, key: Key) -> _Entry | None:
        return self._warm.pop(key, None) or self._hot.pop(key, None)

    def _stale(self, entry: _Entry, now: float) -> bool:
        return entry.in_flight == 0 and now - entry.last_failure >= self.forget_after

    def _touch(self, key: Key, now: float) -> _Entry | None:
        """The live entry of C{key}, now the most recently used; forgets a stale one."""
        for table in (self._warm, self._hot):
            entry = table.get(key)
            if entry is not None:
                if self._stale(entry, now):
                    del table[key]
                    return None
                table.move_to_end(key)
                return entry
        return None

    def _sweep(self, now: float) -> None:
        """Forget stale keys at the old end of each table (amortised clean-up)."""
        for table in (self._warm, self._hot):
            while table:
                key, entry = next(iter(table.items()))
                if not self._stale(entry, now):
                    break
                del table[key]

    def _trim(self) -> None:
        while len(self) > self.max_tracked:
            (self._warm or self._hot).popitem(last=False)


def retry_after(seconds: float) -> str:
    """A C{Retry-After} value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))
