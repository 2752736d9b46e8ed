"""Validation of a job spec's C{webhooks} field (pure).

C{webhooks} maps callback types to the http(s) URL each is sent to with
C{PUT}. Anything else is a 400 with one code per cause.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

from cmdd.errors import SpecError

#: The callback types, in the order a job's life produces them.
CALLBACK_TYPES = ("begun", "ended", "cancelled", "error")
MAX_URL_CHARS = 2048


def parse_webhooks(value: object) -> Mapping[str, str]:
    """The C{webhooks} object of a spec, checked.

    @raise SpecError: C{INVALID_WEBHOOKS} (not an object),
        C{UNKNOWN_WEBHOOK_TYPE} (a name other than L{CALLBACK_TYPES}) or
        C{INVALID_WEBHOOK_URL} (not a string, not an absolute http(s) URL
        with a host, too long, or with spaces or control characters).
    """
    if not isinstance(value, dict):
        raise SpecError(
            "INVALID_WEBHOOKS",
            "webhooks must be an object mapping begun/ended/cancelled/error to URLs",
            "webhooks",
        )
    out: dict[str, str] = {}
    for name, url in value.items():
        if name not in CALLBACK_TYPES:
            raise SpecError(
                "UNKNOWN_WEBHOOK_TYPE",
                f"unknown callback type {name!r}; the types are {', '.join(CALLBACK_TYPES)}",
                "webhooks",
            )
        out[name] = _url(url, f"webhooks[{name!r}]")
    return out


def _url(url: object, field: str) -> str:
    if not isinstance(url, str):
        raise SpecError("INVALID_WEBHOOK_URL", f"{field} must be a URL string", "webhooks")
    if len(url) > MAX_URL_CHARS:
        raise SpecError(
            "INVALID_WEBHOOK_URL",
            f"{field} is longer than {MAX_URL_CHARS} characters",
            "webhooks",
        )
    if not url.isascii() or any(ch <= " " or ch == "\x7f" for ch in url):
        raise SpecError(
            "INVALID_WEBHOOK_URL",
            f"{field} must be an ASCII URL without spaces or control characters",
            "webhooks",
        )
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise SpecError("INVALID_WEBHOOK_URL", f"{field} is not a valid URL", "webhooks") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SpecError(
            "INVALID_WEBHOOK_URL", f"{field} must be an http:// or https:// URL", "webhooks"
        )
    if port == 0 or parts.username is not None or parts.password is not None:
        raise SpecError(
            "INVALID_WEBHOOK_URL",
            f"{field} must have no user info and a port from 1 to 65535",
            "webhooks",
        )
    return url
