"""The systemd units in etc/ keep the hardening README promises."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ETC = Path(__file__).resolve().parent.parent / "etc"
needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="needs systemd-analyze"
)


def exposure(unit: Path) -> float:
    out = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(unit)],
        capture_output=True, text=True, check=False,
    ).stdout  # fmt: skip
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", out)
    assert match, out
    return float(match.group(1))


def with_drop_in(unit: str, drop_in: str) -> str:
    """The unit as systemd sees it with the drop-in's [Service] settings."""
    settings = [
        line for line in drop_in.split("[Service]", 1)[1].splitlines()
        if line and not line.startswith("#")
    ]  # fmt: skip
    names = {line.split("=", 1)[0] for line in settings}
    kept = [
        line for line in unit.splitlines()
        if line.startswith("#") or "=" not in line or line.split("=", 1)[0] not in names
    ]  # fmt: skip
    return "\n".join(kept).replace("[Service]", "[Service]\n" + "\n".join(settings), 1) + "\n"


@needs_analyze
def test_daemon_only_unit_is_rated_at_most_4_5() -> None:
    assert exposure(ETC / "cmdd.service") <= 4.5


@needs_analyze
def test_root_drop_in_keeps_the_unit_safe(tmp_path: Path) -> None:
    merged = tmp_path / "cmdd.service"
    merged.write_text(
        with_drop_in((ETC / "cmdd.service").read_text(), (ETC / "cmdd-root.conf").read_text())
    )
    assert "User=root" in merged.read_text()
    assert exposure(merged) <= 4.5


def test_units_stop_after_the_drain() -> None:
    """TimeoutStopSec must exceed stop_grace + kill_grace (30 + 5 by default),
    or systemd's SIGKILL ends the drain and running jobs are recorded lost."""
    unit = (ETC / "cmdd.service").read_text()
    timeout = re.search(r"^TimeoutStopSec=(\d+)$", unit, re.M)
    assert timeout and int(timeout.group(1)) > 35
    assert re.search(r"^KillMode=mixed$", unit, re.M)
