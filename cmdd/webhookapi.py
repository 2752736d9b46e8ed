"""The webhook routes' work (the thin route definitions are in L{cmdd.api})
and the deliverer's assembly from settings."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from cmdd.auth import principal_of
from cmdd.config import Settings
from cmdd.deliveries import Deliverer, DeliveryLimits
from cmdd.destinations import DestinationRules, parse_networks
from cmdd.errors import ClientError
from cmdd.history import History
from cmdd.jobs import Job
from cmdd.representations import rfc3339
from cmdd.retrypolicy import RetryPolicy
from cmdd.signing import UserSecret, WebhookSecrets
from cmdd.web import respond_json
from cmdd.webhookhttp import WebhookSender

log = Logger()

Blocking = Callable[..., Deferred[Any]]


def make_deliverer(
    settings: Settings,
    reactor: Any,
    history: History,
    run_io: Blocking,
    run_blocking: Blocking,
) -> tuple[WebhookSecrets, WebhookSender, Deliverer]:
    """The daemon's webhook secrets, sender and deliverer."""
    secrets = WebhookSecrets(settings.data_dir, reactor, run_io)
    rules = DestinationRules(
        parse_networks(settings.webhook_allow), parse_networks(settings.webhook_deny)
    )
    sender = WebhookSender(
        reactor, run_blocking, rules, settings.webhook_timeout, settings.webhook_per_destination
    )
    limits = DeliveryLimits(
        timeout=settings.webhook_timeout,
        max_in_flight=settings.webhook_max_in_flight,
        per_destination=settings.webhook_per_destination,
        retry=RetryPolicy(max_age=settings.webhook_max_age),
    )
    deliverer = Deliverer(
        history,
        secrets,
        reactor,
        sender,
        run_blocking,
        settings.output_dir,
        None,
        limits,
    )
    return secrets, sender, deliverer


def _secret_json(secret: UserSecret, now: float) -> dict[str, Any]:
    rotating = secret.previous is not None and (secret.previous_until or 0) > now
    return {
        "secret": secret.secret,
        "created": rfc3339(secret.created),
        # The previous secret is not shown again; only until when it signs too.
        "previous_signs_until": rfc3339(secret.previous_until) if rotating else None,
    }


async def _saved(change: Coroutine[Any, Any, UserSecret]) -> UserSecret:
    try:
        return await change
    except OSError as e:
        log.error("the webhook secret could not be stored: {why}", why=str(e))
        raise ClientError(
            "STORAGE_UNAVAILABLE",
            "the webhook secret could not be stored",
            status=503,
            headers={"Retry-After": "5"},
        ) from None


class WebhookRoutes:
    """What the webhook routes do, given the daemon's deliverer and secrets."""

    def __init__(self, deliverer: Deliverer | None, secrets: WebhookSecrets | None) -> None:
        self.deliverer = deliverer
        self.secrets = secrets

    def _secrets(self) -> WebhookSecrets:
        if self.secrets is None:
            raise ClientError("WEBHOOKS_UNAVAILABLE", "this server sends no webhooks", status=404)
        return self.secrets

    def deliveries(self, request: IRequest, job: Job) -> bytes:
        """C{GET /api/jobs/{id}/deliveries} for a job the caller may see."""
        items = [] if self.deliverer is None else self.deliverer.deliveries_of(job)
        return respond_json(request, {"job_id": job.id, "deliveries": items})

    async def get_secret(self, request: IRequest) -> bytes:
        """C{GET /api/webhook-secret}: the caller's own secret (made on first use)."""
        secrets = self._secrets()
        secret = await _saved(secrets.get(principal_of(request).name))
        body = _secret_json(secret, secrets.now())
        return respond_json(request, body, 200, {"Cache-Control": "no-store"})

    async def rotate_secret(self, request: IRequest) -> bytes:
        """C{POST /api/webhook-secret}: a new secret; the old one signs for a day more."""
        secrets = self._secrets()
        secret = await _saved(secrets.rotate(principal_of(request).name))
        body = _secret_json(secret, secrets.now())
        return respond_json(request, body, 200, {"Cache-Control": "no-store"})
