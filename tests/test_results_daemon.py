"""Integration: a real daemon serves a 16 MiB result with bounded memory.

16 MiB of NUL bytes is a 96 MiB JSON body (each NUL is C{\\u0000}); the
daemon streams it from the output file, so its peak RSS barely moves.
"""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path

import pytest
from test_integration_daemon import CURL, _serving, launch

pytestmark = pytest.mark.integration

MIB = 1024 * 1024
#: Allowed growth of the daemon's peak RSS while serving; the whole body in
#: memory (the old way) took about 320 MiB for one request.
BUDGET_MIB = 48


def _status_kib(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {key} in /proc/{pid}/status")


def test_a_16_mib_result_is_served_with_bounded_memory(tmp_path: Path) -> None:
    """Two concurrent GET /api/results/{id} of a job that printed 16 MiB of
    NULs raise the daemon's peak RSS by less than 48 MiB, and the body is the
    whole output as valid JSON."""
    daemon = launch(tmp_path, _serving(tmp_path / "data", job_sandbox="off"))
    try:
        job_id = daemon.submit({"command": f"head -c {16 * MIB} /dev/zero"}).json()["id"]
        daemon.wait_final(job_id, timeout=60)
        pid = daemon.process.pid
        with open(f"/proc/{pid}/clear_refs", "w") as refs:
            refs.write("5")  # VmHWM := VmRSS
        before = _status_kib(pid, "VmRSS")
        token = (daemon.data_dir / "admin.token").read_text().strip()
        bodies = [tmp_path / f"body{i}.json" for i in range(2)]
        codes: list[bytes] = []

        def fetch(body: Path) -> None:
            done = subprocess.run(
                [CURL, "-sk", "--max-time", "120", "-o", str(body), "-w", "%{http_code}",
                 "-H", f"Authorization: Bearer {token}", daemon.url(f"/api/results/{job_id}")],
                capture_output=True, timeout=150, check=False,
            )  # fmt: skip
            codes.append(done.stdout)

        fetchers = [threading.Thread(target=fetch, args=(body,)) for body in bodies]
        for fetcher in fetchers:
            fetcher.start()
        for fetcher in fetchers:
            fetcher.join(160)
        grown_mib = (_status_kib(pid, "VmHWM") - before) / 1024
    finally:
        daemon.stop()
    assert codes == [b"200", b"200"]
    assert grown_mib < BUDGET_MIB, f"peak RSS grew by {grown_mib:.1f} MiB"
    result = json.loads(bodies[0].read_bytes())
    assert result["stdout"] == "\x00" * (16 * MIB)
    assert result["stdout_bytes"] == 16 * MIB and result["state"] == "succeeded"
    assert bodies[1].read_bytes() == bodies[0].read_bytes()
