"""The run queue's policy: FIFO, per-key limits, no starvation (no reactor)."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from cmdd.slots import SlotQueue


def _drain(queue: SlotQueue) -> list[int]:
    out = []
    while (job_id := queue.next_startable()) is not None:
        out.append(job_id)
    return out


def test_without_keys_jobs_start_in_arrival_order() -> None:
    """Jobs without a concurrency key start first come, first served."""
    queue = SlotQueue()
    for job_id in (3, 1, 2):
        queue.enqueue(job_id)
    assert len(queue) == 3 and 1 in queue
    assert _drain(queue) == [3, 1, 2]
    assert len(queue) == 0 and 1 not in queue


def test_a_key_runs_at_most_its_limit_then_fifo() -> None:
    """With limit 1, the second job of a key waits until the first releases."""
    queue = SlotQueue()
    for job_id in (1, 2, 3):
        queue.enqueue(job_id, ("alice", "db"), 1)
    assert _drain(queue) == [1]
    queue.release(1)
    assert _drain(queue) == [2]
    queue.release(2)
    assert _drain(queue) == [3]
    assert queue.next_startable() is None


def test_a_limit_of_two_lets_two_run() -> None:
    """concurrency_limit 2: two of the key's jobs hold slots at once."""
    queue = SlotQueue()
    for job_id in range(1, 6):
        queue.enqueue(job_id, ("alice", "db"), 2)
    assert _drain(queue) == [1, 2]
    assert queue.running_with(("alice", "db")) == 2
    queue.release(2)
    assert _drain(queue) == [3]


def test_a_blocked_key_does_not_starve_later_jobs_of_other_keys() -> None:
    """Jobs of a full key waiting in front do not stop later jobs of other
    keys, nor jobs without a key."""
    queue = SlotQueue()
    for job_id in range(1, 100):
        queue.enqueue(job_id, ("alice", "db"), 1)
    queue.enqueue(100, ("alice", "web"), 1)
    queue.enqueue(101)
    assert _drain(queue) == [1, 100, 101]


def test_keys_are_per_owner() -> None:
    """alice's key "db" and bob's "db" are different keys (the caller pairs
    key and owner)."""
    queue = SlotQueue()
    queue.enqueue(1, ("alice", "db"), 1)
    queue.enqueue(2, ("alice", "db"), 1)
    queue.enqueue(3, ("bob", "db"), 1)
    assert _drain(queue) == [1, 3]


def test_the_global_limit_is_the_callers_and_order_holds_across_keys() -> None:
    """The caller stops asking at its global limit; the next ask returns the
    oldest startable job across keys."""
    queue = SlotQueue()
    queue.enqueue(1, ("a", "x"), 1)
    queue.enqueue(2, ("a", "y"), 1)
    queue.enqueue(3, ("a", "x"), 1)
    queue.enqueue(4)
    assert queue.next_startable() == 1  # global limit 1: the caller stops
    queue.release(1)
    assert queue.next_startable() == 2
    assert queue.next_startable() == 3
    assert queue.next_startable() == 4


def test_removal_of_a_waiting_job() -> None:
    """A cancelled queued job never starts, and the one behind it moves up."""
    queue = SlotQueue()
    for job_id in (1, 2, 3):
        queue.enqueue(job_id, ("a", "x"), 1)
    assert queue.next_startable() == 1
    assert queue.remove(2) is True
    assert queue.remove(2) is False
    assert 2 not in queue and len(queue) == 1
    queue.release(1)
    assert _drain(queue) == [3]


def test_removing_the_head_offers_the_next_one() -> None:
    """Removing the first waiting job of a free key lets the next start."""
    queue = SlotQueue()
    queue.enqueue(1, ("a", "x"), 1)
    queue.enqueue(2, ("a", "x"), 1)
    queue.remove(1)
    assert _drain(queue) == [2]


def test_a_job_queued_again_in_front_goes_first() -> None:
    """A job whose start was refused goes back before every other job."""
    queue = SlotQueue()
    queue.enqueue(1, ("a", "x"), 1)
    queue.enqueue(2, ("a", "x"), 1)
    queue.enqueue(3)
    assert queue.next_startable() == 1
    queue.release(1)
    queue.enqueue(1, ("a", "x"), 1, front=True)
    assert _drain(queue) == [1, 3]


def test_the_limit_of_the_job_about_to_start_decides() -> None:
    """When jobs of a key disagree on the limit, the head's limit applies."""
    queue = SlotQueue()
    queue.enqueue(1, ("a", "x"), 3)
    queue.enqueue(2, ("a", "x"), 3)
    queue.enqueue(3, ("a", "x"), 1)
    assert _drain(queue) == [1, 2]  # job 3 allows only one running
    queue.release(1)
    queue.release(2)
    assert _drain(queue) == [3]


def test_idle_keys_leave_nothing_behind() -> None:
    """Memory is bounded by waiting and running jobs, not by keys ever seen."""
    queue = SlotQueue()
    for job_id in range(1000):
        queue.enqueue(job_id, ("a", str(job_id)), 1)
        assert queue.next_startable() == job_id
        queue.release(job_id)
    for job_id in range(1000, 2000):
        queue.enqueue(job_id, ("a", str(job_id)), 1)
        queue.remove(job_id)
    assert queue._lines == {} and len(queue._ready) <= 64


def test_many_cancels_in_a_blocked_line_are_compacted() -> None:
    """Cancelling most of a blocked key's line does not keep dead entries."""
    queue = SlotQueue()
    for job_id in range(1000):
        queue.enqueue(job_id, ("a", "x"), 1)
    assert queue.next_startable() == 0
    for job_id in range(1, 999):
        queue.remove(job_id)
    assert len(queue._lines[("a", "x")].waiting) < 100
    queue.release(0)
    assert _drain(queue) == [999]


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=2**32))
def test_random_operations_keep_the_rules(seed: int) -> None:
    """Against a simple model: never over a key's limit, FIFO per key, and
    the oldest startable job is always the one handed out."""
    rng = random.Random(seed)
    queue = SlotQueue()
    model: list[tuple[int, str | None, int]] = []  # waiting, in order
    running: dict[int, str | None] = {}
    next_id = 1
    for _ in range(200):
        op = rng.random()
        if op < 0.45:
            key = rng.choice([None, "x", "y", "z"])
            limit = rng.choice([1, 2])
            queue.enqueue(next_id, None if key is None else ("o", key), limit)
            model.append((next_id, key, limit))
            next_id += 1
        elif op < 0.6 and model:
            victim = rng.choice(model)
            model.remove(victim)
            assert queue.remove(victim[0])
        elif op < 0.8 and running:
            job_id = rng.choice(sorted(running))
            del running[job_id]
            queue.release(job_id)
        else:
            expected = None
            heads: set[str] = set()
            for job_id, key, limit in model:
                if key in heads:
                    continue  # FIFO within a key: only its head may start
                if key is not None:
                    heads.add(key)
                busy = sum(1 for k in running.values() if k == key)
                if key is None or busy < limit:
                    expected = (job_id, key, limit)
                    break
            got = queue.next_startable()
            assert got == (None if expected is None else expected[0])
            if expected is not None:
                model.remove(expected)
                running[expected[0]] = expected[1]
        assert len(queue) == len(model)
