"""Idempotency keys for C{POST /api/jobs} (IETF httpapi idempotency-key draft).

Pure: no I/O, no reactor. The header is a structured-field string
(RFC 8941 sf-string, e.g. C{Idempotency-Key: "8e03978e-40d5"}); a retry with
the same key from the same owner within L{WINDOW_SECONDS} of the original
gets the original job, a retry with the same key and another body is a 422.
The body is compared by L{fingerprint}: the SHA-256 of the canonical JSON of
the parsed spec, so key order, white space and explicit nulls do not matter.

L{KeyIndex} maps (owner, key) to the job. It listens to the store, so it is
rebuilt from the journal on replay (the key and fingerprint are journaled
with the job's creation, see L{cmdd.jobs.Idempotency}); entries expire by
age, oldest first, and a deleted job frees its key.
"""

from __future__ import annotations

import collections
import hashlib
import json
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from cmdd.errors import ClientError
from cmdd.jobs import Created, Deleted, Event, Idempotency, Job

#: How long a key keeps its job (the draft suggests at least 24 hours).
WINDOW_SECONDS = 24 * 3600.0
#: A reservation whose request never finished (the client went away while
#: its creation was being written) stops blocking its key after this long.
IN_FLIGHT_SECONDS = 60.0
MAX_KEY_CHARS = 255


def _bad(message: str) -> ClientError:
    return ClientError("INVALID_IDEMPOTENCY_KEY", message, status=400, field="Idempotency-Key")


def parse_key_header(values: Sequence[bytes] | None) -> str | None:
    """The key in an C{Idempotency-Key} header, C{None} if there is none.

    @raise ClientError: 400 C{INVALID_IDEMPOTENCY_KEY} unless it is one
        sf-string of 1-255 printable ASCII characters.
    """
    if not values:
        return None
    if len(values) > 1:
        raise _bad("give one Idempotency-Key header")
    raw = values[0].strip(b" \t")
    if len(raw) > 2 * MAX_KEY_CHARS + 2:
        raise _bad(f"the key is longer than {MAX_KEY_CHARS} characters")
    if len(raw) < 2 or raw[:1] != b'"' or raw[-1:] != b'"':
        raise _bad('the key is a quoted string: Idempotency-Key: "8e03978e-40d5"')
    key = []
    escaped = False
    for byte in raw[1:-1]:
        if not 0x20 <= byte <= 0x7E:
            raise _bad("the key is printable ASCII")
        char = chr(byte)
        if escaped:
            if char not in '"\\':
                raise _bad('only \\" and \\\\ may be escaped in the key')
            escaped = False
        elif char == "\\":
            escaped = True
            continue
        elif char == '"':
            raise _bad('a " inside the key must be escaped')
        key.append(char)
    if escaped:
        raise _bad("the key ends in a lone backslash")
    if not key:
        raise _bad("the key is empty")
    if len(key) > MAX_KEY_CHARS:
        raise _bad(f"the key is longer than {MAX_KEY_CHARS} characters")
    return "".join(key)


def fingerprint(spec_json: dict[str, Any]) -> str:
    """The SHA-256 (hex) of a spec's canonical JSON (sorted keys, no spaces)."""
    canonical = json.dumps(spec_json, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@attrs.define(eq=False)
class Entry:
    """What a key of an owner is bound to: a job, or a request in flight."""

    fingerprint: str
    at: float
    #: C{None} while the creation is not durable yet.
    job_id: int | None = None


class KeyIndex:
    """(owner, key) → the job created with that key, for L{WINDOW_SECONDS}.

    Memory is bounded by the keyed jobs created within the window: entries
    are dropped oldest first as they expire.
    """

    def __init__(self, window: float = WINDOW_SECONDS) -> None:
        self.window = window
        self._entries: dict[tuple[str, str], Entry] = {}
        self._by_job: dict[int, tuple[str, str]] = {}
        self._order: collections.deque[tuple[float, tuple[str, str], Entry]] = (
            collections.deque()
        )

    def __len__(self) -> int:
        return len(self._entries)

    def job_changed(self, event: Event, job: Job | None) -> None:
        """Store listener: bind keys of durable creations (also on replay);
        a deleted job frees its key."""
        if isinstance(event, Created) and event.idempotency is not None:
            name = (event.owner, event.idempotency.key)
            entry = self._entries.get(name)
            if entry is None or entry.job_id is not None:
                entry = self._add(name, event.idempotency.fingerprint, event.at)
            entry.job_id = event.job_id
            entry.fingerprint = event.idempotency.fingerprint
            self._by_job[event.job_id] = name
            self.prune(event.at)
        elif isinstance(event, Deleted):
            name_of_job = self._by_job.pop(event.job_id, None)
            if name_of_job is not None:
                self._entries.pop(name_of_job, None)

    def claim(
        self,
        owner: str,
        tag: Idempotency,
        now: float,
        exists: Callable[[int], bool],
    ) -> int | None:
        """The job to answer with for a request with this key, or C{None}
        after reserving the key for a new job (then call L{release} if the
        job is not created).

        @param exists: whether a job id is still in the store (retention may
            have dropped it).
        @raise ClientError: 422 for another body, 409 while the first
            request with the key is still being written.
        """
        self.prune(now)
        name = (owner, tag.key)
        entry = self._entries.get(name)
        if entry is not None and entry.job_id is not None and not exists(entry.job_id):
            self._forget(name)
            entry = None
        if entry is not None and entry.job_id is None and entry.at + IN_FLIGHT_SECONDS < now:
            self._forget(name)
            entry = None
        if entry is None:
            self._add(name, tag.fingerprint, now)
            return None
        if entry.fingerprint != tag.fingerprint:
            raise ClientError(
                "IDEMPOTENCY_KEY_REUSED",
                "this Idempotency-Key was used for a different request",
                status=422,
                field="Idempotency-Key",
            )
        if entry.job_id is None:
            raise ClientError(
                "IDEMPOTENCY_KEY_IN_FLIGHT",
                "a request with this Idempotency-Key is still being processed",
                status=409,
                headers={"Retry-After": "1"},
                field="Idempotency-Key",
            )
        return entry.job_id

    def release(self, owner: str, key: str) -> None:
        """Free a reservation whose job was not created (refused)."""
        entry = self._entries.get((owner, key))
        if entry is not None and entry.job_id is None:
            del self._entries[(owner, key)]

    def prune(self, now: float) -> None:
        """Drop entries older than the window (oldest first)."""
        horizon = now - self.window
        while self._order and self._order[0][0] <= horizon:
            _, name, entry = self._order.popleft()
            if self._entries.get(name) is entry:
                self._forget(name)

    def _add(self, name: tuple[str, str], fingerprint: str, at: float) -> Entry:
        entry = Entry(fingerprint, at)
        self._entries[name] = entry
        self._order.append((at, name, entry))
        if len(self._order) > 2 * len(self._entries) + 1024:
            # Released and deleted entries: keep the age order as small as the index.
            self._order = collections.deque(
                item for item in self._order if self._entries.get(item[1]) is item[2]
            )
        return entry

    def _forget(self, name: tuple[str, str]) -> None:
        entry = self._entries.pop(name)
        if entry.job_id is not None:
            self._by_job.pop(entry.job_id, None)
