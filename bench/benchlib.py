"""Helpers shared by bench/lists_bench.py, bench/wait_bench.py and
bench/follow_bench.py: paths, starting and stopping ``twistd cmdd``, the admin
token, /proc readings of the daemon, the git state of the checkout, percentiles.

The scripts are run as ``.venv/bin/python bench/X.py``, so bench/ is on
sys.path and ``from benchlib import ...`` finds this module.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"


# --------------------------------------------------------------------------
# The daemon
# --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_until_listening(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"twistd exited early with status {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                if s.getsockname()[1] != port:  # not a TCP self-connect
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def twistd_path() -> str:
    beside = Path(sys.executable).with_name("twistd")
    if beside.exists():
        return str(beside)
    found = shutil.which("twistd")
    if found is None:
        raise RuntimeError("twistd not found beside this Python nor on PATH")
    return found


def cmdd_argv(data_dir: Path, port: int) -> list[str]:
    """``twistd -n cmdd`` on C{data_dir}, serving tcp:PORT on 127.0.0.1."""
    return [
        twistd_path(), "-n", "--pidfile=", "cmdd",
        "--data-dir", str(data_dir),
        "--listen", f"tcp:{port}:interface=127.0.0.1",
    ]  # fmt: skip


def read_token(data_dir: Path) -> str:
    """The admin token the daemon writes to DATA_DIR/admin.token."""
    return (data_dir / "admin.token").read_text().strip()


def stop_process(proc: subprocess.Popen[bytes], grace: float = 20.0) -> int | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode


def exit_on_sigterm(signum: int, frame: Any) -> None:
    # Turn SIGTERM into SystemExit so the finally blocks stop what we started.
    raise SystemExit(128 + signum)


def arg_parser(doc: str, quick_help: str) -> argparse.ArgumentParser:
    """Install exit_on_sigterm for SIGTERM; a parser described by C{doc}'s
    first paragraph, with its first option, --quick, helped by C{quick_help}."""
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=quick_help)
    return parser


# --------------------------------------------------------------------------
# /proc
# --------------------------------------------------------------------------


def proc_status(pid: int, key: str) -> int:
    """A field of /proc/PID/status: kB fields (VmHWM, VmRSS) in bytes, others as is."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                parts = line.split()
                return int(parts[1]) * (1024 if parts[-1] == "kB" else 1)
    return 0


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of the process itself (its threads, not its children)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------


def git_meta() -> dict[str, Any]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=ROOT, capture_output=True, text=True, check=False
            ).stdout
        except OSError:
            return ""

    changed = git("status", "--porcelain", "--", "cmdd", "twisted")
    return {
        "git_commit": git("rev-parse", "--short", "HEAD").strip() or "unknown",
        "git_dirty_files": [line[3:] for line in changed.splitlines() if line.strip()],
    }


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[index]
