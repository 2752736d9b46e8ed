"""One timer for a whole timetable: armed for its earliest entry only.

However many jobs or schedules wait, the reactor holds one delayed call for
them: re-armed when the earliest time changes, fired when it is due.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime


class Alarm:
    """A single delayed call that C{arm} moves to a new time."""

    def __init__(self, clock: IReactorTime, ring: Callable[[], None]) -> None:
        self._clock = clock
        self._ring = ring
        self._call: IDelayedCall | None = None
        self._at: float | None = None

    @property
    def armed_for(self) -> float | None:
        """The time it rings next, or C{None}."""
        return self._at if self._call is not None and self._call.active() else None

    def arm(self, when: float | None) -> None:
        """Ring at C{when} (now if it passed); C{None} disarms."""
        if when is not None and when == self.armed_for:
            return
        self.disarm()
        if when is None:
            return
        self._at = when
        self._call = self._clock.callLater(max(0.0, when - self._clock.seconds()), self._rang)

    def disarm(self) -> None:
        """Cancel the pending ring, if any."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self._at = None

    def _rang(self) -> None:
        self._call = None
        self._at = None
        self._ring()
