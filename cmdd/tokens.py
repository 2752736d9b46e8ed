"""Bearer tokens: issued with 256 random bits, stored only as SHA-256 hashes.

A token reads C{cmdd_<id>_<secret>}: the id finds the record, the secret is
checked against its hash with a constant-time compare. A fast hash is right
here: the secret has 256 bits of entropy, so there is nothing to brute-force,
unlike a password.

A token is bound to its owner's I{generation} (see L{cmdd.users}): once the
owner is removed, or removed and added again, the token is dead. A token
minted with another token records that I{parent}: it never expires later
than the parent and is revoked with it (and so are its own children).
Records written before these fields existed load with neither.

Pure apart from the file format helpers; the daemon saves on a thread.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

TOKENS_NAME = "tokens.json"
_TOKEN = re.compile(r"cmdd_([0-9a-f]{16})_([A-Za-z0-9_-]{43})\Z")


@attrs.frozen
class Token:
    """A token's record (never the secret itself)."""

    id: str
    owner: str
    secret_hash: str
    created: float
    expires: float
    description: str = ""
    #: The owner's generation when the token was issued (C{None}: older records).
    generation: str | None = None
    #: The id of the token this one was minted with (C{None}: with a password).
    parent: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The record as stored in the tokens file."""
        return attrs.asdict(self)

    def public_json(self) -> dict[str, Any]:
        """What the API shows: everything but the hash."""
        return {
            "id": self.id,
            "owner": self.owner,
            "created": self.created,
            "expires": self.expires,
            "description": self.description,
            "parent": self.parent,
        }


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def issue(
    owner: str,
    now: float,
    lifetime: float,
    description: str = "",
    *,
    generation: str | None = None,
    parent: Token | None = None,
) -> tuple[Token, str]:
    """A new token for C{owner}: its record and the string to hand out once.

    @param generation: the owner's current generation (the token dies with it).
    @param parent: the token this one is minted with; the new token expires
        no later than it and records its id.
    """
    token_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)  # 256 bits
    expires = now + lifetime
    if parent is not None:
        expires = min(expires, parent.expires)
    token = Token(
        token_id,
        owner,
        _digest(secret),
        now,
        expires,
        description,
        generation,
        None if parent is None else parent.id,
    )
    return token, f"cmdd_{token_id}_{secret}"


class TokenBook:
    """Every live token, by id."""

    def __init__(self, tokens: Iterable[Token] = ()) -> None:
        self._tokens = {token.id: token for token in tokens}

    def __len__(self) -> int:
        return len(self._tokens)

    def add(self, token: Token) -> None:
        """Remember a newly issued token."""
        self._tokens[token.id] = token

    def get(self, token_id: str) -> Token | None:
        """The token with this id."""
        return self._tokens.get(token_id)

    def revoke(self, token_id: str) -> Token | None:
        """Forget a token and every token minted from it (transitively) at
        once; returns the token if it existed."""
        token = self._tokens.get(token_id)
        if token is not None:
            self._drop({token_id})
        return token

    def drop_unowned(self, generations: Mapping[str, str | None]) -> int:
        """Forget the tokens whose owner is gone or is another generation now.

        @param generations: each current user's name and generation.
        @return: how many tokens were dropped (with their children).
        """
        dead = {
            t.id
            for t in self._tokens.values()
            if t.owner not in generations or generations[t.owner] != t.generation
        }
        return self._drop(dead) if dead else 0

    def _drop(self, roots: set[str]) -> int:
        children: dict[str, list[str]] = {}
        for token in self._tokens.values():
            if token.parent is not None:
                children.setdefault(token.parent, []).append(token.id)
        doomed, pending = set(), list(roots)
        while pending:
            token_id = pending.pop()
            if token_id not in doomed:
                doomed.add(token_id)
                pending.extend(children.get(token_id, ()))
        for token_id in doomed:
            self._tokens.pop(token_id, None)
        return len(doomed)

    def owned_by(self, owner: str) -> list[Token]:
        """An owner's tokens, oldest first."""
        return sorted(
            (t for t in self._tokens.values() if t.owner == owner), key=lambda t: t.created
        )

    def check(self, presented: str, now: float) -> Token | None:
        """The live token C{presented} proves, or C{None}.

        The secret is compared as fixed-length SHA-256 digests with
        C{hmac.compare_digest}, so timing tells nothing about how much of it
        matched.
        """
        match = _TOKEN.match(presented)
        if match is None:
            return None
        token_id, secret = match.groups()
        token = self._tokens.get(token_id)
        # Compare even for an unknown id, so a miss costs the same time.
        expected = token.secret_hash if token is not None else "0" * 64
        if not hmac.compare_digest(_digest(secret), expected) or token is None:
            return None
        if token.expires <= now:
            return None
        return token

    def drop_expired(self, now: float) -> int:
        """Forget expired tokens; returns how many."""
        expired = [t.id for t in self._tokens.values() if t.expires <= now]
        for token_id in expired:
            del self._tokens[token_id]
        return len(expired)

    def dumps(self) -> bytes:
        """The tokens file's content."""
        records = [t.to_json() for t in sorted(self._tokens.values(), key=lambda t: t.created)]
        return (json.dumps({"version": 1, "tokens": records}, indent=1) + "\n").encode("utf-8")

    @classmethod
    def loads(cls, data: bytes) -> TokenBook:
        """Tokens from the file's content.

        @raise ValueError: the content is not a tokens file.
        """
        document = json.loads(data)
        if not isinstance(document, dict) or document.get("version") != 1:
            raise ValueError("not a version 1 cmdd tokens file")
        try:
            return cls(Token(**record) for record in document["tokens"])
        except (KeyError, TypeError) as e:
            raise ValueError(f"a token record is malformed: {e}") from None
