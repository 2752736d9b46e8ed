"""GET /readyz: 200 when ready, 503 + Retry-After while starting or draining."""

from __future__ import annotations

from pathlib import Path

from test_api import Client

from cmdd.lifecycle import Readiness


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
