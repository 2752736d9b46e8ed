"""The spawner's own answers, driven in this process over a socketpair."""

from __future__ import annotations

import json
import os
import selectors
import socket
import struct
from collections.abc import Iterator
from typing import Any

import pytest

from cmdd import spawner


@pytest.fixture
def wire() -> Iterator[tuple[spawner.Spawner, socket.socket]]:
    """A spawner object talking to this test over a socketpair."""
    ours, theirs = socket.socketpair()
    selector = selectors.DefaultSelector()
    try:
        yield spawner.Spawner(theirs, selector, allow_root=False), ours
    finally:
        selector.close()
        ours.close()
        theirs.close()


def answer(ours: socket.socket) -> dict[str, Any]:
    """The next frame the spawner sent."""
    (length,) = struct.unpack(">I", ours.recv(4))
    message: dict[str, Any] = json.loads(ours.recv(length))
    return message


def request(**fields: Any) -> dict[str, Any]:
    """A spawn request like the daemon's."""
    spec = {"op": "spawn", "job": 7, "argv": ["true"], "env": {"PATH": "/bin"}, "cwd": "/",
            "umask": 0o22, "uid": None, "gid": None, "groups": []}  # fmt: skip
    spec.update(fields)
    return spec


def pipes() -> list[int]:
    """Three descriptors standing in for a job's pipe ends."""
    r, w = os.pipe()
    return [r, w, os.dup(w)]


def test_a_failed_fork_refuses_the_job_and_the_spawner_goes_on(
    wire: tuple[spawner.Spawner, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Out of processes (EAGAIN, e.g. a job exhausted TasksMax): the job is
    refused with the reason; the spawner does not crash."""

    def no_fork() -> int:
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(spawner.os, "fork", no_fork)
    the_spawner, ours = wire
    fds = pipes()
    try:
        the_spawner.spawn(request(), fds)
    finally:
        for fd in fds:
            os.close(fd)
    assert answer(ours) == {
        "op": "refused", "job": 7, "error": "cannot fork: Resource temporarily unavailable",
    }  # fmt: skip
    assert the_spawner.jobs == {}


def test_refusals_echo_client_names_only_briefly() -> None:
    """A refusal quotes the client's program or directory, cut to 200 characters."""
    huge = "x" * 70000
    reason = spawner._refusal("exec:2", request(argv=[huge]))
    assert reason.endswith(": executable not found") and len(reason) < 260
    reason = spawner._refusal("chdir:2", request(cwd="/" + huge))
    assert reason.startswith("working directory /xxx") and len(reason) < 260


def test_a_request_without_its_three_pipes_is_refused(
    wire: tuple[spawner.Spawner, socket.socket],
) -> None:
    """Never start a job with pipes that are not its own."""
    the_spawner, ours = wire
    the_spawner.spawn(request(), [])
    assert answer(ours)["error"] == "the job's pipes were lost"
