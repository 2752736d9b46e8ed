"""SIGHUP reloads the users file in a real daemon, not just the periodic poll.

The daemon also polls the users file (inode, size, mtime); this test edits
the file in place with the same size and puts the mtime back, so that only
the SIGHUP can make the daemon see the change. (Certificate reload on SIGHUP
is proven in test_tls.)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from test_integration_daemon import TWISTD, _serving, launch, password_login, wait_until

from cmdd.tap import USERS_POLL_SECONDS

pytestmark = pytest.mark.integration

CMDD = str(Path(TWISTD).parent / "cmdd")


def user_line(side_dir: Path, name: str, password: str) -> str:
    """The users-file line `cmdd user add` writes for C{name} (made elsewhere)."""
    subprocess.run(
        [CMDD, "user", "add", name, "--password-stdin", "--data-dir", str(side_dir)],
        input=password + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    lines = (side_dir / "users").read_text().splitlines()
    return next(line for line in lines if line.startswith(f"{name}:")) + "\n"


def test_sighup_reloads_a_change_the_poll_cannot_see(tmp_path: Path) -> None:
    """After SIGHUP a user swapped into the users file can log in and the one
    swapped out cannot; before it, nothing changed."""
    alice = user_line(tmp_path / "side", "alice", "alice-password")
    bobby = user_line(tmp_path / "side", "bobby", "bobby-password")
    assert len(alice) == len(bobby)
    daemon = launch(tmp_path, _serving(tmp_path / "data"))
    try:
        users = daemon.data_dir / "users"
        with open(users, "a") as users_file:
            users_file.write(alice)
        wait_until(
            lambda: password_login(daemon, "alice", "alice-password").status == 201,
            20,
            "alice to be known",
        )
        before = os.stat(users)
        text = users.read_text()
        with open(users, "r+") as users_file:  # same inode, same size
            users_file.write(text.replace(alice, bobby))
        os.utime(users, ns=(before.st_atime_ns, before.st_mtime_ns))
        assert (os.stat(users).st_ino, os.stat(users).st_size) == (before.st_ino, before.st_size)
        time.sleep(USERS_POLL_SECONDS * 1.5)  # a poll or two: they see no change
        assert password_login(daemon, "bobby", "bobby-password").status == 401
        daemon.process.send_signal(signal.SIGHUP)
        wait_until(
            lambda: password_login(daemon, "bobby", "bobby-password").status == 201,
            20,
            "bobby to be known after SIGHUP",
        )
        assert password_login(daemon, "alice", "alice-password").status == 401
        assert "SIGHUP: reloading users" in daemon.log_text()
    finally:
        daemon.stop()


def test_sighup_applies_new_limits_from_the_config_file(tmp_path: Path) -> None:
    """A limit changed in the config file applies after SIGHUP (a body the old
    max_body_bytes allowed is now 413); a broken file changes nothing."""
    config = tmp_path / "cmdd.toml"
    config.write_text("max_body_bytes = 4096\n")
    daemon = launch(tmp_path, _serving(tmp_path / "data", config=str(config)))
    body = json.dumps({"command": "true", "environment": {"PAD": "x" * 300}})
    try:
        assert daemon.curl("--json", body, daemon.url("/api/jobs")).status == 202
        config.write_text("max_body_bytes = 200\n")
        assert daemon.curl("--json", body, daemon.url("/api/jobs")).status == 202
        daemon.process.send_signal(signal.SIGHUP)
        refused = wait_until(
            lambda: (r := daemon.curl("--json", body, daemon.url("/api/jobs"))).status == 413
            and r,
            20,
            "the new max_body_bytes",
        )
        assert refused.error_code() == "BODY_TOO_LARGE"
        config.write_text("max_body_bytes = [\n")
        daemon.process.send_signal(signal.SIGHUP)
        wait_until(lambda: "keeping the previous settings" in daemon.log_text(), 20, "the log")
        assert daemon.curl("--json", body, daemon.url("/api/jobs")).status == 413
        assert daemon.curl(daemon.url("/healthz")).status == 200
    finally:
        daemon.stop()
