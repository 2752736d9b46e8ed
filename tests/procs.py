"""Looking at real processes through /proc, for the integration tests."""

from __future__ import annotations

import os
from pathlib import Path

_GONE = ("Z", "X", "x")


def proc_stat(pid: int) -> tuple[str, int, int, int] | None:
    """(state, ppid, pgrp, session) of a process from C{/proc}, or C{None}."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat_file:
            data = stat_file.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = data[data.rindex(b")") + 2 :].split()
    return fields[0].decode(), int(fields[1]), int(fields[2]), int(fields[3])


def is_alive(pid: int) -> bool:
    """Whether C{pid} is a process that has not exited (zombies count as gone)."""
    stat = proc_stat(pid)
    return stat is not None and stat[0] not in _GONE


def _processes_where(index: int, value: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = proc_stat(int(entry))
            if stat is not None and stat[index] == value and stat[0] not in _GONE:
                found.append(int(entry))
    return found


def living_in_group(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is C{pgid}."""
    return _processes_where(2, pgid)


def children_of(pid: int) -> list[int]:
    """Live processes whose parent is C{pid}."""
    return _processes_where(1, pid)


def read_pid_file(path: Path) -> int | None:
    """The pid a job wrote to C{path}, once it is completely written."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    return int(text) if text.endswith("\n") else None
