"""Job spec validation: from an untrusted JSON value to a frozen L{JobSpec}.

Pure: no I/O, no reactor. Every rejection is a L{SpecError} with one code per
cause, so clients can act on the code and people can read the message.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from attrs import frozen

from cmdd.errors import SpecError
from cmdd.timefmt import NotRFC3339, format_rfc3339, parse_rfc3339
from cmdd.webhookspec import parse_webhooks

#: Fields the design names but this server does not implement yet: rejected
#: with a clear code instead of being silently ignored.
UNSUPPORTED_FIELDS: frozenset[str] = frozenset()

KNOWN_FIELDS = frozenset(
    {
        "command",
        "command_line",
        "environment",
        "working_directory",
        "stdin",
        "umask",
        "timeout",
        "labels",
        "user",
        "run_at",
        "concurrency_key",
        "concurrency_limit",
        "webhooks",
    }
)

MAX_COMMAND_CHARS = 128 * 1024
MAX_ARGS = 4096
MAX_ENV_ENTRIES = 1024
MAX_STDIN_CHARS = 1024 * 1024
MAX_LABELS = 64
MAX_LABEL_VALUE_CHARS = 256
MAX_TIMEOUT_SECONDS = 30 * 24 * 3600.0
MAX_PATH_CHARS = 4096
#: How far ahead a C{run_at} may be: a typo in the year is refused, not kept.
MAX_RUN_AHEAD_SECONDS = 5 * 366 * 86400.0
MAX_CONCURRENCY_LIMIT = 1000

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_LABEL_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-/]{0,62}\Z")
#: Shared by every spec without environment or labels (most of them): a fresh
#: empty dict per job costs 64 bytes each, 122 MiB at a million jobs.
_EMPTY: Mapping[str, str] = MappingProxyType({})
_UNIX_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}\$?\Z")
_UMASK = re.compile(r"0?[0-7]{3}\Z")
#: A concurrency key: printable ASCII without spaces, like a label key but longer.
_CONCURRENCY_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@=+\-/]{0,127}\Z")


@frozen
class JobSpec:
    """What a client asked to run. Exactly one of C{command}/C{command_line}."""

    command: str | None = None
    command_line: tuple[str, ...] | None = None
    environment: Mapping[str, str] = _EMPTY
    working_directory: str | None = None
    stdin: str | None = None
    umask: str | None = None
    timeout: float | None = None
    labels: Mapping[str, str] = _EMPTY
    user: str | None = None
    #: When the job may start (Unix seconds); until then it is C{scheduled}.
    run_at: float | None = None
    #: Jobs of one owner with the same key run at most C{concurrency_limit}
    #: at once (see L{cmdd.slots}).
    concurrency_key: str | None = None
    concurrency_limit: int = 1
    #: Callback type -> URL (see L{cmdd.webhookspec}).
    webhooks: Mapping[str, str] = _EMPTY

    def argv(self) -> tuple[str, ...]:
        """The argument vector to execute: C{/bin/sh -c command} or the list."""
        if self.command is not None:
            return ("/bin/sh", "-c", self.command)
        assert self.command_line is not None
        return self.command_line

    def umask_value(self, default: int = 0o022) -> int:
        """The umask as an integer."""
        return default if self.umask is None else int(self.umask, 8)

    def to_json(self) -> dict[str, Any]:
        """The fields the client set (and the effective timeout), for responses."""
        out: dict[str, Any] = {}
        if self.command is not None:
            out["command"] = self.command
        if self.command_line is not None:
            out["command_line"] = list(self.command_line)
        if self.environment:
            out["environment"] = dict(self.environment)
        if self.working_directory is not None:
            out["working_directory"] = self.working_directory
        if self.stdin is not None:
            out["stdin"] = self.stdin
        if self.umask is not None:
            out["umask"] = self.umask
        if self.timeout is not None:
            out["timeout"] = self.timeout
        if self.labels:
            out["labels"] = dict(self.labels)
        if self.user is not None:
            out["user"] = self.user
        if self.run_at is not None:
            out["run_at"] = format_rfc3339(self.run_at)
        if self.concurrency_key is not None:
            out["concurrency_key"] = self.concurrency_key
            out["concurrency_limit"] = self.concurrency_limit
        if self.webhooks:
            out["webhooks"] = dict(self.webhooks)
        return out


def _text(value: object, field: str, code: str, max_chars: int) -> str:
    if not isinstance(value, str):
        raise SpecError(code, f"{field} must be a string", field)
    if "\x00" in value:
        raise SpecError(code, f"{field} must not contain NUL characters", field)
    if len(value) > max_chars:
        raise SpecError(code, f"{field} is longer than {max_chars} characters", field)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        # JSON "\ud800" decodes to a lone surrogate, which no OS call accepts.
        raise SpecError(code, f"{field} must be valid Unicode text", field) from None
    return value


def _string_map(
    value: object,
    field: str,
    code: str,
    key_pattern: re.Pattern[str],
    key_rule: str,
    max_entries: int,
    max_value_chars: int,
) -> dict[str, str]:
    if not isinstance(value, dict):
        raise SpecError(code, f"{field} must be an object of strings", field)
    if len(value) > max_entries:
        raise SpecError(code, f"{field} has more than {max_entries} entries", field)
    out: dict[str, str] = {}
    for key, item in value.items():
        if not key_pattern.match(key):
            raise SpecError(code, f"{field} key {key!r} is invalid: {key_rule}", field)
        out[key] = _text(item, f"{field}[{key!r}]", code, max_value_chars)
    return out


def _parse_command(body: Mapping[str, Any]) -> tuple[str | None, tuple[str, ...] | None]:
    has_command = body.get("command") is not None
    has_line = body.get("command_line") is not None
    if has_command and has_line:
        raise SpecError("COMMAND_CONFLICT", "give either command or command_line, not both")
    if not has_command and not has_line:
        raise SpecError(
            "COMMAND_MISSING",
            "a job needs command (a shell string) or command_line (a list of strings)",
        )
    if has_command:
        command = _text(body["command"], "command", "INVALID_COMMAND", MAX_COMMAND_CHARS)
        if not command.strip():
            raise SpecError("INVALID_COMMAND", "command must not be blank", "command")
        return command, None
    line = body["command_line"]
    if not isinstance(line, list) or not line:
        raise SpecError(
            "INVALID_COMMAND_LINE",
            "command_line must be a non-empty list of strings",
            "command_line",
        )
    if len(line) > MAX_ARGS:
        raise SpecError(
            "INVALID_COMMAND_LINE",
            f"command_line has more than {MAX_ARGS} arguments",
            "command_line",
        )
    argv = tuple(
        _text(arg, f"command_line[{i}]", "INVALID_COMMAND_LINE", MAX_COMMAND_CHARS)
        for i, arg in enumerate(line)
    )
    if not argv[0]:
        raise SpecError(
            "INVALID_COMMAND_LINE",
            "command_line[0] (the program) must not be empty",
            "command_line",
        )
    return None, argv


def _parse_timeout(value: object) -> float:
    # bool is an int subclass; "timeout": true is a client bug, not 1 second.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SpecError("INVALID_TIMEOUT", "timeout must be a number of seconds", "timeout")
    try:
        seconds = float(value)
    except OverflowError:  # an integer beyond a double's range
        seconds = math.inf
    if not math.isfinite(seconds) or seconds <= 0 or seconds > MAX_TIMEOUT_SECONDS:
        raise SpecError(
            "INVALID_TIMEOUT",
            f"timeout must be more than 0 and at most {MAX_TIMEOUT_SECONDS:.0f} seconds",
            "timeout",
        )
    return seconds


def parse_run_at(value: object, now: float | None) -> float:
    """A C{run_at}: RFC 3339 with a zone, at most L{MAX_RUN_AHEAD_SECONDS}
    after C{now} (unchecked without C{now})."""
    if not isinstance(value, str):
        raise SpecError("INVALID_RUN_AT", "run_at must be an RFC 3339 string", "run_at")
    try:
        when = parse_rfc3339(value)
    except NotRFC3339 as e:
        message = (
            "run_at is not a real date and time"
            if e.syntax_ok
            else "run_at must be an RFC 3339 time with an offset, such as 2026-11-22T10:00:00Z"
        )
        raise SpecError("INVALID_RUN_AT", message, "run_at") from None
    if now is not None and when > now + MAX_RUN_AHEAD_SECONDS:
        raise SpecError(
            "INVALID_RUN_AT",
            f"run_at is more than {MAX_RUN_AHEAD_SECONDS / 86400:.0f} days ahead",
            "run_at",
        )
    return when


def _parse_concurrency(body: Mapping[str, Any]) -> tuple[str | None, int]:
    key = body.get("concurrency_key")
    limit = body.get("concurrency_limit")
    if key is not None:
        key = _text(key, "concurrency_key", "INVALID_CONCURRENCY_KEY", 128)
        if not _CONCURRENCY_KEY.match(key):
            raise SpecError(
                "INVALID_CONCURRENCY_KEY",
                "concurrency_key is 1-128 characters of letters, digits and _ . : @ = + - /,"
                " starting with a letter or digit",
                "concurrency_key",
            )
    if limit is None:
        return key, 1
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise SpecError(
            "INVALID_CONCURRENCY_LIMIT", "concurrency_limit must be an integer", "concurrency_limit"
        )
    if not 1 <= limit <= MAX_CONCURRENCY_LIMIT:
        raise SpecError(
            "INVALID_CONCURRENCY_LIMIT",
            f"concurrency_limit must be from 1 to {MAX_CONCURRENCY_LIMIT}",
            "concurrency_limit",
        )
    if key is None:
        raise SpecError(
            "INVALID_CONCURRENCY_LIMIT",
            "concurrency_limit needs a concurrency_key",
            "concurrency_limit",
        )
    return key, limit


def parse_spec(body: object, now: float | None = None) -> JobSpec:
    """Validate a decoded JSON body and return the job spec it describes.

    C{now} (Unix seconds) bounds how far ahead C{run_at} may be.

    @raise SpecError: for the first problem found, naming the field.
    """
    if not isinstance(body, dict):
        raise SpecError("BODY_NOT_OBJECT", "the request body must be a JSON object")
    for field in body:
        if field in UNSUPPORTED_FIELDS:
            raise SpecError(
                "UNSUPPORTED_FIELD",
                f"{field} is not supported by this server yet",
                field,
            )
        if field not in KNOWN_FIELDS:
            raise SpecError("UNKNOWN_FIELD", f"unknown field {field!r}", str(field))
    command, command_line = _parse_command(body)
    environment: Mapping[str, str] = _EMPTY
    if body.get("environment") is not None:
        environment = _string_map(
            body["environment"],
            "environment",
            "INVALID_ENVIRONMENT",
            _ENV_NAME,
            "names are letters, digits and _ and do not start with a digit",
            MAX_ENV_ENTRIES,
            MAX_COMMAND_CHARS,
        )
    working_directory = None
    if body.get("working_directory") is not None:
        working_directory = _text(
            body["working_directory"],
            "working_directory",
            "INVALID_WORKING_DIRECTORY",
            MAX_PATH_CHARS,
        )
        if not working_directory.startswith("/"):
            raise SpecError(
                "INVALID_WORKING_DIRECTORY",
                "working_directory must be an absolute path",
                "working_directory",
            )
    stdin = None
    if body.get("stdin") is not None:
        stdin = _text(body["stdin"], "stdin", "INVALID_STDIN", MAX_STDIN_CHARS)
    umask = None
    if body.get("umask") is not None:
        umask_value = body["umask"]
        if not isinstance(umask_value, str) or not _UMASK.match(umask_value):
            raise SpecError(
                "INVALID_UMASK",
                'umask must be an octal string such as "0022"',
                "umask",
            )
        umask = umask_value.zfill(4)
    timeout = None
    if body.get("timeout") is not None:
        timeout = _parse_timeout(body["timeout"])
    labels: Mapping[str, str] = _EMPTY
    if body.get("labels") is not None:
        labels = _string_map(
            body["labels"],
            "labels",
            "INVALID_LABELS",
            _LABEL_KEY,
            "1-63 characters of letters, digits, _ . - /, starting with a letter or digit",
            MAX_LABELS,
            MAX_LABEL_VALUE_CHARS,
        )
    user = None
    if body.get("user") is not None:
        user = _text(body["user"], "user", "INVALID_USER", 32)
        if not _UNIX_USER.match(user):
            raise SpecError("INVALID_USER", "user must be a Unix user name", "user")
    run_at = None
    if body.get("run_at") is not None:
        run_at = parse_run_at(body["run_at"], now)
    concurrency_key, concurrency_limit = _parse_concurrency(body)
    webhooks: Mapping[str, str] = _EMPTY
    if body.get("webhooks") is not None:
        webhooks = parse_webhooks(body["webhooks"]) or _EMPTY
    return JobSpec(
        run_at=run_at,
        concurrency_key=concurrency_key,
        concurrency_limit=concurrency_limit,
        webhooks=webhooks,
        user=user,
        command=command,
        command_line=command_line,
        environment=environment,
        working_directory=working_directory,
        stdin=stdin,
        umask=umask,
        timeout=timeout,
        labels=labels,
    )
