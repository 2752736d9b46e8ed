"""Ending what a crashed daemon's jobs left running, by their marker."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator

import pytest
from procs import is_alive

from cmdd.leftovers import MARKER, end_leftovers, instance_of, marker_value


@pytest.fixture
def sleepers() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        process.kill()
        process.wait(10)


def _sleep(sleepers: list[subprocess.Popen[bytes]], marker: str | None) -> int:
    env = {"PATH": "/usr/bin:/bin"}
    if marker is not None:
        env[MARKER] = marker
    process = subprocess.Popen(["sleep", "60"], env=env)
    sleepers.append(process)
    return process.pid


def test_only_marked_processes_of_the_given_jobs_are_killed(
    sleepers: list[subprocess.Popen[bytes]],
) -> None:
    """Processes carrying this daemon's marker for a listed job are killed;
    other jobs', other daemons' and unmarked processes are left alone."""
    instance = instance_of("/var/lib/cmdd-test-leftovers")
    mine = _sleep(sleepers, marker_value(instance, 7))
    other_job = _sleep(sleepers, marker_value(instance, 8))
    other_daemon = _sleep(sleepers, marker_value(instance_of("/elsewhere"), 7))
    unmarked = _sleep(sleepers, None)
    time.sleep(0.2)  # let the execs happen: the marker is in the new image's environ
    assert end_leftovers(instance, [7, 9]) == {7: [mine]}
    sleepers[0].wait(10)
    assert not is_alive(mine)
    assert all(is_alive(pid) for pid in (other_job, other_daemon, unmarked))
    assert end_leftovers(instance, []) == {}
