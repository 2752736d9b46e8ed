"""GET /readyz: 200 when ready, 503 + Retry-After while starting, draining or
while the journal refuses appends (a full disk)."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_twisted
from conftest import LoggedErrors
from faults import FaultyOps
from test_api import Client

from cmdd.codec import Meta
from cmdd.journal import JournalFailed, JournalWriter
from cmdd.lifecycle import JournalCheck, Readiness


def test_readyz_needs_no_token_and_says_ready(tmp_path: Path) -> None:
    """A running daemon answers 200 {"status": "ready"} without a token."""
    client = Client(tmp_path)
    client.token = None
    code, body, _ = client.json("GET", "/readyz")
    assert (code, body) == (200, {"status": "ready"})


def test_readyz_is_503_while_starting(tmp_path: Path) -> None:
    """Before the reactor runs the daemon is not ready: 503 with Retry-After."""
    client = Client(tmp_path)
    client.api._readiness = Readiness()  # as the composition root has it before start
    code, body, headers = client.json("GET", "/readyz")
    assert (code, body) == (503, {"status": "starting"})
    assert headers.getRawHeaders("retry-after") == ["5"]


def test_readyz_is_503_while_draining(tmp_path: Path) -> None:
    """Once a stop began (the manager drains), /readyz answers 503 draining
    and new jobs get 503 SHUTTING_DOWN, both with Retry-After."""
    client = Client(tmp_path)
    client.manager.stopService()
    code, body, headers = client.json("GET", "/readyz")
    assert (code, body) == (503, {"status": "draining"})
    assert headers.getRawHeaders("retry-after") == ["5"]
    code, error, headers = client.json("POST", "/api/jobs", {"command": "true"})
    assert (code, error["error"]["code"]) == (503, "SHUTTING_DOWN")
    assert headers.getRawHeaders("retry-after") == ["5"]


def test_readyz_is_503_with_a_reason_while_a_check_fails(tmp_path: Path) -> None:
    """A ready daemon whose journal refuses appends answers 503 with the reason."""
    client = Client(tmp_path)
    client.token = None
    reasons: list[str | None] = ["the journal refuses new records: No space left on device"]
    client.api._readiness.checks.append(lambda: reasons[0])
    code, body, headers = client.json("GET", "/readyz")
    assert code == 503
    assert body == {"status": "unavailable", "reason": reasons[0]}
    assert headers.getRawHeaders("retry-after") == ["5"]
    reasons[0] = None
    assert client.json("GET", "/readyz")[:2] == (200, {"status": "ready"})


@pytest_twisted.ensureDeferred
async def test_a_full_journal_is_not_ready_until_an_append_succeeds(
    tmp_path: Path, logged_errors: LoggedErrors
) -> None:
    """While the disk refuses journal writes the check says why; once the disk
    has room, the check's own probe record is written and it says ready again
    (a load balancer that stopped sending work still sees the recovery)."""
    from twisted.internet import reactor

    ops = FaultyOps("enospc", fail_at=1, sticky=True)
    (tmp_path / "journal.jsonl").touch()  # only writes fail, not the open
    writer = JournalWriter(reactor, str(tmp_path / "journal.jsonl"), ops=ops)
    writer.open()
    check = JournalCheck(writer, lambda: Meta(0.0, 1))
    try:
        assert check() is None
        with pytest.raises(JournalFailed):
            await writer.append(Meta(0.0, 1))
        why = check()
        assert why is not None and "No space left on device" in why
        await writer.when_idle()  # the probe, refused too
        assert check() is not None
        await writer.when_idle()  # another probe, refused too
        ops.fail_at = 0  # space freed
        assert check() is not None  # this check starts a probe that succeeds
        await writer.when_idle()
        assert check() is None
    finally:
        await writer.close()
    assert logged_errors.flush_matching("journal: refused"), "each refusal is logged"
