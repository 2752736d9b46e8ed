"""Accounts in the running daemon: users (reloaded on change) and tokens.

Users live in C{DATA_DIR/users}, edited by C{cmdd user ...}; the daemon
re-reads the file when it changes (checked every few seconds) and on
SIGHUP. Tokens live in C{DATA_DIR/tokens.json} (hashes only), rewritten
atomically on the I/O thread whenever one is issued or revoked, and when a
reload finds users gone or re-created: their tokens are dropped with them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from cmdd.errors import ClientError
from cmdd.files import write_private_file
from cmdd.tokens import TOKENS_NAME, Token, TokenBook, issue
from cmdd.users import (
    USERS_NAME,
    User,
    UserError,
    generate_password,
    hash_password,
    new_user,
    read_users,
    write_users,
)

log = Logger()

ADMIN_TOKEN_NAME = "admin.token"  # noqa: S105 (a file name, not a secret)
DEFAULT_TOKEN_LIFETIME = 30 * 86400.0
MAX_TOKEN_LIFETIME = 365 * 86400.0
Blocking = Callable[..., Deferred[Any]]


class Accounts:
    """Users and tokens, as the daemon sees them now."""

    def __init__(
        self,
        data_dir: str,
        clock: IReactorTime,
        run_io: Blocking,
        *,
        max_token_lifetime: float = MAX_TOKEN_LIFETIME,
    ) -> None:
        self.users_path = os.path.join(data_dir, USERS_NAME)
        self.tokens_path = os.path.join(data_dir, TOKENS_NAME)
        self.admin_token_path = os.path.join(data_dir, ADMIN_TOKEN_NAME)
        self._clock = clock
        self._run_io = run_io
        self.max_token_lifetime = max_token_lifetime
        self._users: dict[str, User] = {}
        self._users_signature: tuple[int, int, int] | None = None
        self.book = TokenBook()

    # --- users -------------------------------------------------------------

    def users(self) -> dict[str, User]:
        """The current users."""
        return self._users

    def load(self) -> None:
        """Read users and tokens at start-up; create the first admin if none.

        Tokens of users that are gone (or were re-created) while the daemon
        was down are dropped, and the tokens file is rewritten without them.
        Synchronous: it runs before the reactor does.
        """
        if not os.path.exists(self.users_path):
            self._bootstrap()
        try:
            with open(self.tokens_path, "rb") as tokens_file:
                self.book = TokenBook.loads(tokens_file.read())
        except FileNotFoundError:
            self.book = TokenBook()
        except ValueError as e:
            raise UserError(f"{self.tokens_path} is damaged: {e}") from None
        self.book.drop_expired(self._clock.seconds())
        if self._read_users() and self._drop_dead_tokens():
            write_private_file(self.tokens_path, self.book.dumps())

    def _bootstrap(self) -> None:
        # A newcomer can use the API at once: the admin token is in a 0600
        # file; the password is random and unknown (set one with
        # `cmdd user passwd admin`). Neither is ever logged.
        admin = new_user("admin", "admin", hash_password(generate_password()))
        write_users(self.users_path, {"admin": admin})
        token, secret = issue(
            "admin",
            self._clock.seconds(),
            self.max_token_lifetime,
            "first start",
            generation=admin.generation,
        )
        book = TokenBook([token])
        write_private_file(self.tokens_path, book.dumps())
        write_private_file(self.admin_token_path, (secret + "\n").encode("ascii"))
        log.info(
            "first start: created user admin; an admin bearer token is in {path}",
            path=self.admin_token_path,
        )

    def _drop_dead_tokens(self) -> int:
        """Forget the tokens of users that are gone or were re-created."""
        dropped = self.book.drop_unowned({u.name: u.generation for u in self._users.values()})
        if dropped:
            log.info("dropped {count} tokens of removed users", count=dropped)
        return dropped

    def _signature(self) -> tuple[int, int, int] | None:
        try:
            stat = os.stat(self.users_path)
        except FileNotFoundError:
            return None
        return (stat.st_ino, stat.st_size, stat.st_mtime_ns)

    def reload_users(self) -> bool:
        """Re-read the users file; keep the old users if it is broken.

        Tokens of users that are gone (or re-created) are forgotten at once
        and the tokens file is rewritten (on the I/O thread).
        """
        if not self._read_users():
            return False
        if self._drop_dead_tokens():
            self._save().addErrback(
                lambda failure: log.failure("cannot rewrite {path}", failure, path=self.tokens_path)
            )
        return True

    def _read_users(self) -> bool:
        signature = self._signature()
        try:
            users = read_users(self.users_path)
        except (UserError, OSError) as e:
            log.error("keeping the previous users: {why}", why=str(e))
            return False
        self._users, self._users_signature = users, signature
        return True

    def reload_users_if_changed(self) -> None:
        """Re-read the users file if it changed since the last read."""
        if self._signature() != self._users_signature and self.reload_users():
            log.info("users reloaded: {count} users", count=len(self._users))

    # --- tokens ------------------------------------------------------------

    def book_view(self) -> TokenBook:
        """The current token book (replaced wholesale at load)."""
        return self.book

    async def issue_token(
        self,
        owner: str,
        expires_in: float | None,
        description: str,
        *,
        parent: str | None = None,
    ) -> tuple[Token, str]:
        """A new token for C{owner}, on disk before it is handed out.

        @param parent: the id of the token the request came with, if any; the
            new token then expires no later than it and is revoked with it.
        @raise ClientError: 400 for a bad lifetime; 401 if the owner or the
            parent token is gone by now.
        """
        lifetime = DEFAULT_TOKEN_LIFETIME if expires_in is None else expires_in
        if not 0 < lifetime <= self.max_token_lifetime:
            raise ClientError(
                "INVALID_EXPIRES_IN",
                f"expires_in must be more than 0 and at most {self.max_token_lifetime:.0f} seconds",
                field="expires_in",
            )
        now = self._clock.seconds()
        self.book.drop_expired(now)
        user = self._users.get(owner)
        parent_token = None if parent is None else self.book.get(parent)
        if user is None or (parent is not None and parent_token is None):
            raise ClientError(
                "UNAUTHENTICATED",
                "your credentials were revoked meanwhile",
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="cmdd"'},
            )
        token, secret = issue(
            owner, now, lifetime, description, generation=user.generation, parent=parent_token
        )
        self.book.add(token)
        try:
            await self._save()
        except OSError as e:
            # Not on disk: a token that would vanish at the next restart is
            # not handed out.
            self.book.revoke(token.id)
            raise _not_saved("the token could not be stored", e) from None
        return token, secret

    async def revoke_token(self, token_id: str) -> None:
        """Revoke at once (the next request with it, or with a token minted
        from it, fails), then save.

        If the save fails (a full disk), the token stays revoked in this
        daemon and the answer is a 503: the next token change that is saved
        stores the revocation too; a restart before that brings it back.
        """
        self.book.revoke(token_id)
        try:
            await self._save()
        except OSError as e:
            raise _not_saved(
                "the token is revoked, but not on disk yet: a restart now would bring it back", e
            ) from None

    def _save(self) -> Deferred[None]:
        return self._run_io(write_private_file, self.tokens_path, self.book.dumps())


def _not_saved(message: str, error: OSError) -> ClientError:
    """A 503 for a token change the disk refused (full, failing)."""
    log.error("{message}: {why}", message=message, why=str(error))
    return ClientError("STORAGE_UNAVAILABLE", message, status=503, headers={"Retry-After": "5"})
