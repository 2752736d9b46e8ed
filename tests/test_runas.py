"""Running jobs as another Unix user: real root daemon, real throwaway user."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_crash import Daemon

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root (CI runs as root)"),
]


@pytest.fixture
def unix_user() -> Iterator[str]:
    name = "cmddt" + secrets.token_hex(4)
    subprocess.run(["useradd", "--no-create-home", "--home-dir", "/tmp", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["userdel", name], check=False)


def test_job_runs_as_the_allowed_unix_user(tmp_path: Path, unix_user: str) -> None:
    """With an allow-list entry, "user" runs the job with that uid, gid, groups and
    HOME; a user not on the list gets 403 RUN_AS_FORBIDDEN."""
    daemon = Daemon(tmp_path / "data", extra_args=["--run-as", f"admin={unix_user}"])
    try:
        daemon.start()
        status, job = daemon.request(
            "POST", "/api/jobs",
            {"command": 'id -un; id -u; echo "$HOME"; pwd', "user": unix_user},
        )
        assert status == 202, job
        deadline = time.monotonic() + 20
        while True:
            status, result = daemon.get(f"/api/results/{job['id']}")
            if status == 200:
                break
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert result["state"] == "succeeded", result
        name, uid, home, cwd = result["stdout"].split("\n")[:4]
        assert name == unix_user and int(uid) != 0
        assert home == "/tmp" and cwd == "/tmp"
        status, error = daemon.request("POST", "/api/jobs", {"command": "id", "user": "root"})
        assert status == 403 and error["error"]["code"] == "RUN_AS_FORBIDDEN"
        status, error = daemon.request("POST", "/api/jobs", {"command": "id", "user": "nobody"})
        assert status == 403
    finally:
        daemon.stop()
    assert json.loads((tmp_path / "data" / "tokens.json").read_text())["version"] == 1
