"""Where the C{cmdd} client connects and how it proves who it is.

Settings come from the environment (C{CMDD_URL}, C{CMDD_TOKEN} or
C{CMDD_TOKEN_FILE}, C{CMDD_CACERT}, C{CMDD_FINGERPRINT}) and, for what the
environment leaves unset, from the profile C{cmdd login} writes
(C{$CMDD_PROFILE}, by default C{~/.config/cmdd/profile.json}, mode 0600).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Mapping
from urllib.parse import urlsplit

from attrs import frozen

DEFAULT_URL = "https://localhost:8443"
_HEX = re.compile(r"[0-9a-f]{64}\Z")


class ClientConfigError(Exception):
    """A setting the client cannot work with; the message says which."""


@frozen
class ClientSettings:
    """Everything the client needs to reach the daemon."""

    url: str = DEFAULT_URL
    token: str | None = None
    #: A PEM file of the certificate (or its CA) to trust.
    cacert: str | None = None
    #: The SHA-256 of the daemon's certificate, as 64 lower-case hex digits.
    fingerprint: str | None = None


def normalize_fingerprint(text: str) -> str:
    """C{AB:CD:…} (as the daemon logs it), C{sha256:abcd…} or plain hex →
    64 lower-case hex digits.

    @raise ClientConfigError: not a SHA-256 fingerprint.
    """
    digits = text.strip().lower().removeprefix("sha256:").replace(":", "")
    if not _HEX.match(digits):
        raise ClientConfigError(
            "a certificate fingerprint is 64 hex digits (the SHA-256 the daemon logs at start)"
        )
    return digits


def check_url(url: str) -> str:
    """The daemon's base URL without a trailing slash.

    @raise ClientConfigError: not an http(s) URL with a host.
    """
    parts = urlsplit(url.strip())
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ClientConfigError(f"{url!r} is not a URL such as {DEFAULT_URL}")
    return url.strip().rstrip("/")


def profile_path(environ: Mapping[str, str]) -> str:
    """Where C{cmdd login} keeps its profile."""
    if environ.get("CMDD_PROFILE"):
        return environ["CMDD_PROFILE"]
    base = environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "cmdd", "profile.json")


def read_profile(path: str) -> dict[str, str]:
    """The saved profile (empty when there is none)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise ClientConfigError(f"cannot read the profile {path}: {e}") from None
    if not isinstance(data, dict):
        raise ClientConfigError(f"the profile {path} is not a JSON object")
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)}


def write_profile(path: str, profile: Mapping[str, str]) -> None:
    """Save the profile atomically, readable by its owner only (it holds a token)."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, mode=0o700, exist_ok=True)
    # mkstemp creates the file 0600: the token is never readable by others.
    fd, temporary = tempfile.mkstemp(prefix=".profile-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(dict(profile), f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def _token_from_file(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except OSError as e:
        raise ClientConfigError(f"cannot read CMDD_TOKEN_FILE {path}: {e.strerror}") from None


def load_settings(environ: Mapping[str, str]) -> ClientSettings:
    """The settings from C{environ}, then the profile, then the defaults.

    @raise ClientConfigError: a setting is unusable.
    """
    profile = read_profile(profile_path(environ))
    url = check_url(environ.get("CMDD_URL") or profile.get("url") or DEFAULT_URL)
    if environ.get("CMDD_TOKEN"):
        token: str | None = environ["CMDD_TOKEN"].strip()
    elif environ.get("CMDD_TOKEN_FILE"):
        token = _token_from_file(environ["CMDD_TOKEN_FILE"])
    else:
        token = profile.get("token")
    cacert = environ.get("CMDD_CACERT") or profile.get("cacert")
    fingerprint_text = environ.get("CMDD_FINGERPRINT") or profile.get("fingerprint")
    fingerprint = None if not fingerprint_text else normalize_fingerprint(fingerprint_text)
    if cacert:
        cacert = os.path.abspath(cacert)
    return ClientSettings(
        url=url, token=token or None, cacert=cacert or None, fingerprint=fingerprint
    )
