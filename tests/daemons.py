"""Starting real twistd daemons on ports the kernel picks.

Every integration test's daemon listens on port 0 and the test reads the
bound port back from C{<data_dir>/listening.json} (see README, "Where it
listens"): no free port is guessed, closed and hoped to be free again.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

LISTENING_FILE = "listening.json"


def read_listening(data_dir: Path, pid: int) -> list[dict[str, Any]] | None:
    """The addresses daemon C{pid} listens on, or C{None} before it wrote them."""
    try:
        document = json.loads((data_dir / LISTENING_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return None
    if document.get("pid") != pid:
        return None  # a previous daemon's file, left by kill -9
    addresses: list[dict[str, Any]] = document["listening"]
    return addresses


def wait_listening(
    process: subprocess.Popen[bytes], data_dir: Path, log: Path | None = None, timeout: float = 30
) -> list[int]:
    """The TCP ports C{process} (a twistd cmdd) bound, once it bound them all.

    Fails the test, with the daemon's log, if it exits or takes too long.
    """
    deadline = time.monotonic() + timeout
    while True:
        addresses = read_listening(data_dir, process.pid)
        if addresses is not None:
            return [address["port"] for address in addresses if "port" in address]
        if process.poll() is not None or time.monotonic() > deadline:
            text = log.read_text(errors="replace") if log is not None and log.exists() else ""
            what = "exited" if process.poll() is not None else f"did not listen within {timeout}s"
            raise AssertionError(f"the daemon {what}:\n{text}")
        time.sleep(0.05)
