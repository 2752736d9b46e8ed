"""The body of C{POST /api/tokens}: validated into a L{TokenRequest}.

Pure: no I/O.
"""

from __future__ import annotations

from attrs import frozen

from cmdd.errors import ClientError

_FIELDS = frozenset({"expires_in", "description", "user"})


@frozen
class TokenRequest:
    """What a client asked of a new token (C{None}: the defaults)."""

    expires_in: float | None = None
    description: str = ""
    #: Whose token it is (an admin may name another user); C{None}: the caller's.
    user: str | None = None


def parse_token_request(body: object) -> TokenRequest:
    """Validate a decoded JSON body of C{POST /api/tokens}.

    @raise ClientError: 400 naming the bad field.
    """
    if not isinstance(body, dict) or set(body) - _FIELDS:
        raise ClientError(
            "INVALID_TOKEN_REQUEST",
            'the body may hold only "expires_in" (seconds), "description" and "user"',
        )
    expires_in = body.get("expires_in")
    if expires_in is not None and (
        isinstance(expires_in, bool) or not isinstance(expires_in, int | float)
    ):
        raise ClientError(
            "INVALID_EXPIRES_IN", "expires_in must be a number of seconds", field="expires_in"
        )
    description = body.get("description") or ""
    if not isinstance(description, str) or len(description) > 200:
        raise ClientError(
            "INVALID_DESCRIPTION",
            "description must be a string of at most 200 characters",
            field="description",
        )
    user = body.get("user")
    if user is not None and (not isinstance(user, str) or not 0 < len(user) <= 64):
        raise ClientError("INVALID_USER", "user must be a user name", field="user")
    return TokenRequest(None if expires_in is None else float(expires_in), description, user)
