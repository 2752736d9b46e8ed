"""Per-user webhook secrets and Standard Webhooks v1 signatures.

Each cmdd user has a secret C{whsec_<base64 of 32 random bytes>}, made on
first use, kept in C{webhook-secrets.json} (mode 0600, in the 0700 data
directory, written atomically off the reactor) and never logged. A
rotation keeps the previous secret signing too for L{ROTATION_OVERLAP}
seconds, so receivers can switch over: both signatures go in the header,
space-separated, as the Standard Webhooks spec allows.

Signatures are made by the C{standardwebhooks} package itself (pure
Python, no dependencies), not by code of ours.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import attrs
from standardwebhooks.webhooks import Webhook
from twisted.internet.defer import Deferred, DeferredLock
from twisted.internet.interfaces import IReactorTime

from cmdd.files import write_private_file
from cmdd.users import UserError

SECRETS_NAME = "webhook-secrets.json"
#: Seconds a rotated-out secret keeps signing beside the new one.
ROTATION_OVERLAP = 24 * 3600.0
SECRET_BYTES = 32

Blocking = Callable[..., Deferred[Any]]


def new_secret() -> str:
    """A fresh secret in the C{whsec_} form."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


@attrs.frozen(repr=False)
class UserSecret:
    """A user's current secret and, during a rotation, the previous one."""

    secret: str
    created: float
    previous: str | None = None
    previous_until: float | None = None

    def __repr__(self) -> str:  # never a secret in a log line or traceback
        return f"UserSecret(created={self.created!r}, rotating={self.previous is not None})"

    def signing(self, now: float) -> list[str]:
        """The secrets that sign now: the current one, then the previous one."""
        keys = [self.secret]
        if self.previous is not None and (self.previous_until or 0) > now:
            keys.append(self.previous)
        return keys


def sign(keys: list[str], msg_id: str, timestamp: int, body: str) -> str:
    """The C{webhook-signature} header: one C{v1,<sig>} per key, space-separated."""
    moment = datetime.fromtimestamp(timestamp, UTC)
    return " ".join(Webhook(key).sign(msg_id, moment, body) for key in keys)


def _load(path: str) -> tuple[str, dict[str, UserSecret]] | None:
    try:
        with open(path, "rb") as secrets_file:
            data = json.loads(secrets_file.read())
    except FileNotFoundError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("instance"), str):
        raise ValueError("not a webhook secrets object")
    users = data.get("users", {})
    return data["instance"], {str(name): UserSecret(**fields) for name, fields in users.items()}


def _dumps(instance: str, table: dict[str, UserSecret]) -> bytes:
    users = {name: attrs.asdict(s) for name, s in table.items()}
    return json.dumps({"instance": instance, "users": users}, indent=1).encode()


class WebhookSecrets:
    """Every user's webhook secret; changes are saved before they are used."""

    def __init__(self, data_dir: str, clock: IReactorTime, run_io: Blocking) -> None:
        self.path = os.path.join(data_dir, SECRETS_NAME)
        self._clock = clock
        self._run_io = run_io
        self._table: dict[str, UserSecret] = {}
        self._lock = DeferredLock()
        #: Random, made with the file: C{webhook-id}s of a new data directory
        #: (job ids starting from 1 again) never repeat an old one's.
        self.instance = ""

    def load(self) -> None:
        """Read the secrets file, or make it (at start-up, before the reactor runs).

        @raise UserError: the file is damaged.
        """
        try:
            loaded = _load(self.path)
        except (TypeError, ValueError, AttributeError) as e:
            raise UserError(f"{self.path} is damaged: {e}") from None
        if loaded is None:
            self.instance, self._table = secrets.token_hex(8), {}
            write_private_file(self.path, _dumps(self.instance, self._table))
        else:
            self.instance, self._table = loaded

    def now(self) -> float:
        """The clock's time."""
        return self._clock.seconds()

    async def get(self, owner: str) -> UserSecret:
        """C{owner}'s secret, made (and saved) on first use."""
        current = self._table.get(owner)
        if current is not None:
            return current
        return await self._change(owner, rotate=False)

    async def rotate(self, owner: str) -> UserSecret:
        """Give C{owner} a new secret; the old one signs too for a while."""
        return await self._change(owner, rotate=True)

    async def signing_keys(self, owner: str) -> list[str]:
        """The secrets to sign C{owner}'s callbacks with now."""
        return (await self.get(owner)).signing(self._clock.seconds())

    async def _change(self, owner: str, rotate: bool) -> UserSecret:
        await self._lock.acquire()
        try:
            old = self._table.get(owner)
            if old is not None and not rotate:
                return old  # made by a concurrent first use
            now = self._clock.seconds()
            made = UserSecret(new_secret(), now)
            if old is not None:
                until = now + ROTATION_OVERLAP
                made = attrs.evolve(made, previous=old.secret, previous_until=until)
            table = {**self._table, owner: made}
            # Saved before use: a signature made with an unsaved secret could
            # never be checked after a restart.
            await self._run_io(write_private_file, self.path, _dumps(self.instance, table))
            self._table = table
            return made
        finally:
            self._lock.release()
