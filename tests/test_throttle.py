"""The password throttle: per (user, address), backoff, attempts in flight, bounded."""

from __future__ import annotations

from twisted.internet.task import Clock

from cmdd.throttle import FailureThrottle, retry_after, throttle_key

ALICE = throttle_key("alice", "10.0.0.1")


def fail_times(
    throttle: FailureThrottle, key: tuple[str, str], count: int, clock: Clock | None = None
) -> None:
    """C{count} checks of C{key} that each find a wrong password (with a
    C{clock}, waiting out each delay first)."""
    for _ in range(count):
        wait = throttle.begin(key)
        if wait is not None and clock is not None:
            clock.advance(wait)
            wait = throttle.begin(key)
        assert wait is None
        throttle.failed(key)


def test_delay_doubles_from_the_sixth_failure_and_is_capped() -> None:
    """No delay for five failures, then 1, 2, 4 ... seconds, never above the cap."""
    throttle = FailureThrottle(Clock(), max_delay=300)
    assert [throttle.delay(n) for n in range(9)] == [0, 0, 0, 0, 0, 1, 2, 4, 8]
    assert throttle.delay(14) == 300 and throttle.delay(10**6) == 300


def test_wait_counts_from_the_last_failure() -> None:
    """After five failures the key waits one second from the last one."""
    clock = Clock()
    throttle = FailureThrottle(clock)
    fail_times(throttle, ALICE, 5)
    clock.advance(0.25)
    assert throttle.begin(ALICE) == 0.75
    clock.advance(0.75)
    assert throttle.begin(ALICE) is None


def test_attempts_in_flight_count_against_the_free_failures() -> None:
    """At most as many checks run at once as the key has free failures left
    (and at least one); the rest are told to retry in a second."""
    throttle = FailureThrottle(Clock())
    assert [throttle.begin(ALICE) for _ in range(7)] == [None] * 5 + [1.0, 1.0]
    throttle.failed(ALICE)
    throttle.failed(ALICE)
    assert throttle.begin(ALICE) == 1.0, "2 failures + 3 in flight = 5"
    throttle.abandoned(ALICE)
    assert throttle.begin(ALICE) is None, "an abandoned check frees its place"


def test_success_clears_only_its_own_key() -> None:
    """The right password clears the key's failures; other keys keep theirs."""
    clock = Clock()
    throttle = FailureThrottle(clock)
    other = throttle_key("alice", "10.0.0.2")
    fail_times(throttle, ALICE, 4)
    fail_times(throttle, other, 5)
    assert throttle.begin(ALICE) is None
    throttle.succeeded(ALICE)
    assert len(throttle) == 1
    fail_times(throttle, ALICE, 5)
    assert throttle.begin(other) is not None


def test_keys_are_forgotten_after_a_quiet_period() -> None:
    """A key without failures for forget_after seconds starts from nothing."""
    clock = Clock()
    throttle = FailureThrottle(clock, forget_after=900)
    fail_times(throttle, ALICE, 8, clock)
    clock.advance(899)
    assert throttle.begin(ALICE) is None
    throttle.failed(ALICE)
    clock.advance(900)
    fail_times(throttle, throttle_key("bob", "10.0.0.1"), 1)
    assert len(throttle) == 1, "the stale key was swept"
    fail_times(throttle, ALICE, 5)


def test_memory_is_bounded_and_penalties_outlast_a_flood() -> None:
    """At most max_tracked keys are kept; a flood of fresh names (one failure
    each) pushes out other fresh names, not a key that is being penalised."""
    clock = Clock()
    throttle = FailureThrottle(clock, max_tracked=100)
    fail_times(throttle, ALICE, 9, clock)
    for i in range(10_000):
        fail_times(throttle, throttle_key(f"spray-{i}", "10.0.0.1"), 1)
    assert len(throttle) == 100
    assert throttle.begin(ALICE) is not None, "alice's penalty survived"


def test_long_names_are_cut_in_keys() -> None:
    """A huge user name in a Basic header is not kept whole."""
    assert throttle_key("x" * 10_000, "::1") == ("x" * 64, "::1")


def test_retry_after_is_whole_seconds_at_least_one() -> None:
    """Retry-After rounds up and is never 0."""
    assert [retry_after(s) for s in (0.01, 1.0, 1.2, 59.9)] == ["1", "1", "2", "60"]
