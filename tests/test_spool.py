"""Output spooling: the cap, truncation flags, ordering, backpressure, and
only ever the file cmdd wrote."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fakes import InlineIO
from twisted.internet.defer import Deferred
from twisted.logger import LogLevel, capturedLogs

from cmdd.spool import (
    HIGH_WATER,
    OutputSpool,
    output_path,
    output_size,
    read_output,
    remove_outputs,
)


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


def test_writer_never_writes_through_a_planted_link(tmp_path: Path) -> None:
    """A symlink or hard link planted under a job's output name before its
    first byte is replaced by a new file; what it pointed to is untouched."""
    for kind in ("symlink", "hardlink"):
        target = tmp_path / f"target-{kind}"
        target.write_bytes(b"precious\n")
        path = tmp_path / f"1.{kind}"
        if kind == "symlink":
            path.symlink_to(target)
        else:
            os.link(target, path)
        spool = OutputSpool(InlineIO(), str(path), cap=100)  # type: ignore[arg-type]
        spool.write(b"job output\n")
        spool.close()
        assert target.read_bytes() == b"precious\n", kind
        assert not path.is_symlink() and path.stat().st_nlink == 1
        assert path.read_bytes() == b"job output\n"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


# A spool that stops writing says so at error level.
@pytest.mark.logs_errors("cannot write output")
def test_writer_stops_when_its_file_is_swapped_for_a_symlink(tmp_path: Path) -> None:
    """If the output file is replaced by a symlink while the job runs, later
    output is not written through it: the spool stops, still counting."""
    target = tmp_path / "target"
    target.write_bytes(b"precious\n")
    path = tmp_path / "1.stdout"
    spool = OutputSpool(InlineIO(), str(path), cap=100)  # type: ignore[arg-type]
    spool.write(b"first\n")
    path.unlink()
    path.symlink_to(target)
    with capturedLogs() as events:
        spool.write(b"second\n")
    spool.close()
    assert target.read_bytes() == b"precious\n"
    assert spool.failed and spool.total == 13
    assert any(event.get("path") == str(path) for event in events)


# A spool that stops writing says so at error level.
@pytest.mark.logs_errors("cannot write output")
def test_writer_stops_when_its_file_is_replaced(tmp_path: Path) -> None:
    """Another regular file put under the output name is not appended to."""
    path = tmp_path / "1.stdout"
    spool = OutputSpool(InlineIO(), str(path), cap=100)  # type: ignore[arg-type]
    spool.write(b"first\n")
    path.unlink()
    path.write_bytes(b"someone else's\n")
    with capturedLogs():
        spool.write(b"second\n")
    assert spool.failed
    assert path.read_bytes() == b"someone else's\n"


def _plant(tmp_path: Path, kind: str) -> Path:
    """Put something that cmdd did not write under an output file's name."""
    secret = tmp_path / "secret"
    secret.write_bytes(b"TOP SECRET\n")
    path = tmp_path / "4.stderr"
    if kind == "symlink":
        path.symlink_to(secret)
    elif kind == "fifo":
        os.mkfifo(path, 0o600)
    elif kind == "directory":
        path.mkdir()
    else:
        path.write_bytes(b"TOP SECRET\n")
        os.chown(path, 65534, 65534)
    return path


@pytest.mark.parametrize("kind", ["symlink", "fifo", "directory", "foreign"])
def test_readers_refuse_what_cmdd_did_not_write(tmp_path: Path, kind: str) -> None:
    """A symlink, a FIFO (which would block the I/O thread), a directory or a
    file owned by another user reads as empty output, with a warning."""
    path = _plant(tmp_path, kind)
    with capturedLogs() as events:
        assert read_output(str(path)) == b""
        assert read_output(str(path), 2, 5) == b""
        assert output_size(str(path)) == 0
    warnings = [e for e in events if e["log_level"] == LogLevel.warn]
    assert len(warnings) == 3 and all(e["path"] == str(path) for e in warnings)


def test_readers_serve_the_file_cmdd_wrote(tmp_path: Path) -> None:
    """The checks let through a regular file the daemon owns, from any offset."""
    path = tmp_path / "1.stdout"
    spool = OutputSpool(InlineIO(), str(path), cap=100)  # type: ignore[arg-type]
    spool.write(b"0123456789")
    spool.close()
    with capturedLogs() as events:
        assert read_output(str(path), 3, 4) == b"3456"
        assert output_size(str(path)) == 10
    assert list(events) == []
