"""The webhook routes in memory: spec validation, the deliveries view
(owned like the job), the own secret and its rotation."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from standardwebhooks import Webhook
from test_api import Client, finish
from test_deliveries import FakeSender

from cmdd.deliveries import Deliverer
from cmdd.signing import WebhookSecrets
from cmdd.webhookapi import WebhookRoutes

HOOKS = {"begun": "http://recv.test/begun", "ended": "http://recv.test/ended"}


def with_webhooks(tmp_path: Path) -> tuple[Client, FakeSender]:
    client = Client(tmp_path, max_running=2, max_queued=10)
    sender = FakeSender()
    io_run: Any = client.api._run_blocking
    secrets = WebhookSecrets(str(tmp_path), client.clock, io_run)
    deliverer = Deliverer(
        client.manager.history, secrets, client.clock, sender, io_run, str(tmp_path), "t"
    )
    deliverer.start()
    client.api._webhooks = WebhookRoutes(deliverer, secrets)
    return client, sender


def test_bad_webhooks_are_400_with_a_code(tmp_path: Path) -> None:
    """Unknown types, non-strings and non-http URLs are refused, never stored."""
    client, _ = with_webhooks(tmp_path)
    for hooks, code in [
        ({"done": "http://x/"}, "UNKNOWN_WEBHOOK_TYPE"),
        ({"ended": ["http://x/"]}, "INVALID_WEBHOOK_URL"),
        ({"ended": "gopher://x/"}, "INVALID_WEBHOOK_URL"),
        ("http://x/", "INVALID_WEBHOOKS"),
    ]:
        status, body, _ = client.json("POST", "/api/jobs", {"command": "true", "webhooks": hooks})
        assert (status, body["error"]["code"]) == (400, code)
    assert len(client.manager.store) == 0


def test_the_job_shows_its_webhooks_and_host(tmp_path: Path) -> None:
    """A submitted job shows its URLs; the host appears once it starts."""
    client, _ = with_webhooks(tmp_path)
    client.manager.host = "exec-7"
    status, job, _ = client.json("POST", "/api/jobs", {"command": "true", "webhooks": HOOKS})
    assert status == 202 and job["webhooks"] == HOOKS and job["host"] is None
    client.clock.advance(0)
    _, job, _ = client.json("GET", f"/api/jobs/{job['id']}")
    assert job["host"] == "exec-7"


def test_deliveries_view_shows_each_callback_and_attempt(tmp_path: Path) -> None:
    """Pending with its failed attempt and next retry, then delivered."""
    client, sender = with_webhooks(tmp_path)
    _, job, _ = client.json("POST", "/api/jobs", {"command": "true", "webhooks": HOOKS})
    finish(client, job["id"], 0, stdout=b"out")
    sender.answer(0, 502)
    status, view, _ = client.json("GET", f"/api/jobs/{job['id']}/deliveries")
    assert status == 200
    (begun,) = view["deliveries"][:1]
    assert [d["callback_type"] for d in view["deliveries"]] == ["begun", "ended"]
    assert begun["state"] == "pending" and begun["attempts"][0]["status_code"] == 502
    assert begun["next_retry"] is not None and begun["attempts_total"] == 1
    client.clock.advance(1.0)
    sender.answer(1, 200)
    sender.answer(2, 200)
    _, view, _ = client.json("GET", f"/api/jobs/{job['id']}/deliveries")
    assert [d["state"] for d in view["deliveries"]] == ["delivered", "delivered"]
    assert view["deliveries"][1]["webhook_id"] == sender.requests[2][1]["webhook-id"]


def test_other_users_get_404_for_deliveries(tmp_path: Path) -> None:
    """Deliveries are owned like the job: another user sees no such job."""
    client, _ = with_webhooks(tmp_path)
    _, job, _ = client.json("POST", "/api/jobs", {"command": "true", "webhooks": HOOKS})
    client.token = client.add_user("mallory")
    status, body, _ = client.json("GET", f"/api/jobs/{job['id']}/deliveries")
    assert (status, body["error"]["code"]) == (404, "JOB_NOT_FOUND")


def test_each_user_has_an_own_secret_that_signs_and_rotates(tmp_path: Path) -> None:
    """GET shows the own secret (stored 0600); POST rotates it, and for a
    day both the old and the new one sign."""
    client, _ = with_webhooks(tmp_path)
    status, mine, headers = client.json("GET", "/api/webhook-secret")
    assert status == 200 and mine["secret"].startswith("whsec_")
    assert headers.getRawHeaders("cache-control") == ["no-store"]
    assert (tmp_path / "webhook-secrets.json").stat().st_mode & 0o777 == 0o600
    client.token = client.add_user("alice")
    _, hers, _ = client.json("GET", "/api/webhook-secret")
    assert hers["secret"] != mine["secret"]
    status, rotated, _ = client.json("POST", "/api/webhook-secret")
    assert status == 200 and rotated["secret"] != hers["secret"]
    assert rotated["previous_signs_until"] is not None
    _, again, _ = client.json("GET", "/api/webhook-secret")
    assert again["secret"] == rotated["secret"]


def test_callbacks_during_a_rotation_verify_with_either_secret(tmp_path: Path) -> None:
    """A receiver still holding the old secret keeps accepting callbacks
    for the overlap; one with the new secret accepts them too."""
    client, sender = with_webhooks(tmp_path)
    client.clock.advance(time.time())  # the verifier checks the timestamp
    client.token = client.add_user("alice")
    _, old, _ = client.json("GET", "/api/webhook-secret")
    _, new, _ = client.json("POST", "/api/webhook-secret")
    _, job, _ = client.json("POST", "/api/jobs", {"command": "true", "webhooks": HOOKS})
    client.clock.advance(0)
    (request,) = sender.open()
    url, headers, _ = request
    assert url == HOOKS["begun"] and len(headers["webhook-signature"].split(" ")) == 2
    body = sender.bodies[0]
    for secret in (old["secret"], new["secret"]):
        assert Webhook(secret).verify(body, headers)["job_id"] == job["id"]


def test_webhook_ids_never_repeat_across_data_directories(tmp_path: Path) -> None:
    """A data directory made again (job ids from 1) gets a new id prefix, so
    receivers deduplicating by webhook-id never drop a new callback; a
    restart on the same directory keeps it."""
    from twisted.internet.task import Clock

    first, again, fresh = (tmp_path / "a", tmp_path / "a", tmp_path / "b")
    first.mkdir()
    fresh.mkdir()
    prefixes = []
    for directory in (first, again, fresh):
        secrets = WebhookSecrets(str(directory), Clock(), lambda fn, *a: fn(*a))
        secrets.load()
        prefixes.append(secrets.instance)
    assert prefixes[0] == prefixes[1] != prefixes[2]
    assert (first / "webhook-secrets.json").stat().st_mode & 0o777 == 0o600
