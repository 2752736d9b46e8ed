"""Fixtures shared by the test modules."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def job_files() -> Iterator[Path]:
    """A directory real jobs can write to (mode 1777, like /tmp).

    Started as root, the daemon runs jobs as an unprivileged user, who cannot
    enter pytest's tmp_path (0700): files a job writes or waits for go here.
    """
    directory = Path(tempfile.mkdtemp(prefix="cmdd-job-files-"))
    directory.chmod(0o1777)
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the hostile-input suite's request counts at the end of every run."""
    import sys

    fuzz = sys.modules.get("test_fuzz_http")
    tally = getattr(fuzz, "TALLY", None)
    if tally:
        counts = ", ".join(f"{key} {value}" for key, value in sorted(tally.items()))
        terminalreporter.write_line(f"hostile-input suite: {counts}")
