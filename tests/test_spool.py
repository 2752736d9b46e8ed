"""Output spooling: the cap, truncation flags, ordering and backpressure."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from fakes import InlineIO
from twisted.internet.defer import Deferred

from cmdd.spool import HIGH_WATER, OutputSpool, output_path, read_output, remove_outputs


class ManualIO:
    """File work that completes only when the test says so (a slow disk)."""

    def __init__(self) -> None:
        self.calls: list[tuple[Callable[..., Any], tuple[Any, ...], Deferred[Any]]] = []

    def run(self, fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.calls.append((fn, args, d))
        return d

    def complete_one(self) -> None:
        fn, args, d = self.calls.pop(0)
        d.callback(fn(*args))


def test_cap_keeps_first_bytes_and_counts_all(tmp_path: Path) -> None:
    """Beyond the cap output is counted and dropped; the file holds the first bytes."""
    path = str(tmp_path / "1.stdout")
    spool = OutputSpool(InlineIO(), path, cap=10)  # type: ignore[arg-type]
    for chunk in (b"0123", b"456789ab", b"cdef"):
        spool.write(chunk)
    closed: list[object] = []
    spool.close().addCallback(closed.append)
    assert closed == [None]
    assert read_output(path) == b"0123456789"
    assert (spool.total, spool.kept, spool.truncated) == (16, 10, True)


def test_silent_job_creates_no_file(tmp_path: Path) -> None:
    """A job with no output costs no file; reading it gives empty bytes."""
    path = str(tmp_path / "1.stdout")
    spool = OutputSpool(InlineIO(), path, cap=10)  # type: ignore[arg-type]
    spool.close()
    assert not Path(path).exists()
    assert read_output(path) == b""
    assert not spool.truncated


def test_slow_disk_pauses_the_child_and_keeps_order(tmp_path: Path) -> None:
    """When writes fall behind, reading pauses; order is kept; close waits for all."""
    io = ManualIO()
    path = str(tmp_path / "1.stdout")
    spool = OutputSpool(io, path, cap=10 * HIGH_WATER)  # type: ignore[arg-type]
    flow: list[str] = []
    spool.set_flow(lambda: flow.append("pause"), lambda: flow.append("resume"))
    spool.write(b"a" * 10)
    assert len(io.calls) == 1, "the first chunk is written at once"
    spool.write(b"b" * HIGH_WATER)
    spool.write(b"c" * 10)
    assert flow == ["pause"] and len(io.calls) == 1
    closed: list[object] = []
    spool.close().addCallback(closed.append)
    io.complete_one()
    assert flow == ["pause", "resume"], "the backlog went to the disk in one write"
    assert closed == []
    io.complete_one()
    assert closed == [None]
    assert read_output(path) == b"a" * 10 + b"b" * HIGH_WATER + b"c" * 10


def test_remove_outputs(tmp_path: Path) -> None:
    """Removing a job's output deletes both streams and tolerates missing ones."""
    out = output_path(str(tmp_path), 7, "stdout")
    Path(out).write_bytes(b"x")
    remove_outputs(str(tmp_path), 7)
    assert not Path(out).exists()
    remove_outputs(str(tmp_path), 7)
