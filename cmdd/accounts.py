"""Accounts in the running daemon: users (reloaded on change) and tokens.

Users live in C{DATA_DIR/users}, edited by C{cmdd user ...}; the daemon
re-reads the file when it changes (checked every few seconds) and on
SIGHUP. Tokens live in C{DATA_DIR/tokens.json} (hashes only), rewritten
atomically on the I/O thread whenever one is issued or revoked.
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

        Synchronous: it runs before the reactor does.
        """
        if not os.path.exists(self.users_path):
            self._bootstrap()
        self.reload_users()
        try:
            with open(self.tokens_path, "rb") as tokens_file:
                self.book = TokenBook.loads(tokens_file.read())
        except FileNotFoundError:
            self.book = TokenBook()
        except ValueError as e:
            raise UserError(f"{self.tokens_path} is damaged: {e}") from None
        self.book.drop_expired(self._clock.seconds())

    def _bootstrap(self) -> None:
        # A newcomer can use the API at once: the admin token is in a 0600
        # file; the password is random and unknown (set one with
        # `cmdd user passwd admin`). Neither is ever logged.
        write_users(
            self.users_path, {"admin": User("admin", "admin", hash_password(generate_password()))}
        )
        token, secret = issue(
            "admin", self._clock.seconds(), self.max_token_lifetime, "first start"
        )
        book = TokenBook([token])
        write_private_file(self.tokens_path, book.dumps())
        write_private_file(self.admin_token_path, (secret + "\n").encode("ascii"))
        log.info(
            "first start: created user admin; an admin bearer token is in {path}",
            path=self.admin_token_path,
        )

    def _signature(self) -> tuple[int, int, int] | None:
        try:
            stat = os.stat(self.users_path)
        except FileNotFoundError:
            return None
        return (stat.st_ino, stat.st_size, stat.st_mtime_ns)

    def reload_users(self) -> bool:
        """Re-read the users file; keep the old users if it is broken."""
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
        self, owner: str, expires_in: float | None, description: str
    ) -> tuple[Token, str]:
        """A new token for C{owner}, on disk before it is handed out."""
        lifetime = DEFAULT_TOKEN_LIFETIME if expires_in is None else expires_in
        if not 0 < lifetime <= self.max_token_lifetime:
            raise ClientError(
                "INVALID_EXPIRES_IN",
                f"expires_in must be more than 0 and at most {self.max_token_lifetime:.0f} seconds",
                field="expires_in",
            )
        now = self._clock.seconds()
        self.book.drop_expired(now)
        token, secret = issue(owner, now, lifetime, description)
        self.book.add(token)
        await self._save()
        return token, secret

    async def revoke_token(self, token_id: str) -> None:
        """Revoke at once (the next request with it fails), then save."""
        self.book.revoke(token_id)
        await self._save()

    def _save(self) -> Deferred[None]:
        return self._run_io(write_private_file, self.tokens_path, self.book.dumps())
