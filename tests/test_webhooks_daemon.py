"""Webhooks through a real twistd daemon killed with SIGKILL: callbacks owed
when the daemon dies go out after the restart, in order, with the same
webhook-id, signed; delivered ones are not sent again."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks import Webhook
from test_crash import FINAL, Daemon

pytestmark = pytest.mark.integration


class Receiver(ThreadingHTTPServer):
    """Records every PUT; answers 503 until told to accept."""

    def __init__(self) -> None:
        self.accepting = False
        self.got: list[tuple[dict[str, str], bytes, int]] = []
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/cb"

    def accepted(self) -> list[tuple[dict[str, str], bytes, int]]:
        with self.lock:
            return [entry for entry in self.got if entry[2] == 204]


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_PUT(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        code = 204 if self.server.accepting else 503
        with self.server.lock:
            headers = {k.lower(): v for k, v in self.headers.items()}
            self.server.got.append((headers, body, code))
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _until(predicate: Any, what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_sigkill_between_end_and_callback_loses_nothing(
    tmp_path: Path, receiver: Receiver
) -> None:
    """Three jobs end while their receiver fails; the daemon is SIGKILLed;
    after the restart every callback arrives once accepted, per job in
    sequence order, with the webhook-id of the attempts before the crash."""
    daemon = Daemon(tmp_path / "data")
    daemon.start()
    try:
        _, secret = daemon.get("/api/webhook-secret")
        hooks = {"begun": receiver.url, "ended": receiver.url}
        ids = []
        for n in range(3):
            status, job = daemon.request(
                "POST", "/api/jobs", {"command": f"echo job-{n}", "webhooks": hooks}
            )
            assert status == 202
            ids.append(job["id"])
        _until(lambda: all(daemon.get(f"/api/jobs/{i}")[1]["state"] in FINAL for i in ids),
               "the jobs to end")  # fmt: skip
        _until(lambda: len(receiver.got) >= 6, "failed attempts")
        before = {json.loads(body)["job_id"]: h["webhook-id"] for h, body, _ in receiver.got}
        daemon.kill9()
        receiver.accepting = True
        daemon.start()
        _until(lambda: len(receiver.accepted()) >= 6, "the callbacks after the restart")
        accepted = receiver.accepted()
        hook = Webhook(secret["secret"])
        bodies = [hook.verify(body, headers) for headers, body, _ in accepted]
        for job_id in ids:
            mine = [(b["sequence"], b["callback_type"]) for b in bodies if b["job_id"] == job_id]
            assert mine == [(1, "begun"), (2, "ended")]
            begun_id = next(
                h["webhook-id"] for h, body, _ in accepted
                if json.loads(body)["job_id"] == job_id and json.loads(body)["sequence"] == 1
            )  # fmt: skip
            assert begun_id == before[job_id]
        ended = [b for b in bodies if b["callback_type"] == "ended"]
        assert {b["stdout"] for b in ended} == {f"job-{n}\n" for n in range(3)}
        assert all(b["host"] and b["state"] == "succeeded" for b in ended)
        _until(lambda: all(d["state"] == "delivered"
                           for i in ids for d in daemon.get(f"/api/jobs/{i}/deliveries")[1]
                           ["deliveries"]), "deliveries to be recorded")  # fmt: skip
        # Delivered and journaled: another restart sends nothing again.
        daemon.kill9()
        count = len(receiver.got)
        daemon.start()
        _, job = daemon.get(f"/api/jobs/{ids[0]}")
        assert job["host"]
        time.sleep(1.0)  # a resend would come at once after start
        assert len(receiver.got) == count
    finally:
        daemon.stop()
