"""The journal's line format: events to checksummed JSON lines and back.

Pure: no I/O. One line is one JSON object ending in a CRC32 of everything
before it, so a torn or corrupted line is detected instead of replayed::

    {"v":1,"seq":7,"at":1795000000.5,"type":"created","job":3,"spec":{...},"crc":"1a2b3c4d"}

See docs/journal.md for every event type.
"""

from __future__ import annotations

import json
import zlib
from typing import Any

import orjson
from attrs import frozen

from cmdd.jobs import (
    CallbackDone,
    Created,
    Deleted,
    Ended,
    Event,
    Idempotency,
    Modified,
    Outcome,
    Released,
    Started,
    State,
    Submitted,
)
from cmdd.jobs import job_events as job_events  # re-exported: compaction writes these
from cmdd.schedule import Schedule, ScheduleDeleted, ScheduleRecord, ScheduleSaved
from cmdd.spec import JobSpec

FORMAT_VERSION = 1
_CRC_SUFFIX_LEN = len(',"crc":"00000000"}')


class CorruptLine(ValueError):  # noqa: N818 (reads better at the raise site)
    """A journal line that fails its checksum or does not decode."""


@frozen
class Meta:
    """First line of a compacted journal: the next id to issue."""

    at: float
    next_id: int


@frozen
class Record:
    """One decoded journal line: an event (or meta) and its sequence number."""

    seq: int
    item: Item


#: Everything a journal line holds: job events, meta, schedule records.
Item = Event | Meta | ScheduleRecord


def _schedule_fields(item: ScheduleRecord) -> dict[str, Any]:
    if isinstance(item, ScheduleDeleted):
        return {"type": "schedule_deleted", "schedule": item.schedule_id, "by": item.by}
    schedule = item.schedule
    return {
        "type": "schedule",
        "schedule": schedule.id,
        "owner": schedule.owner,
        "cron": schedule.cron,
        "timezone": schedule.timezone,
        "job": spec_fields(schedule.job),
        "created": schedule.created,
        "concurrency_policy": schedule.concurrency_policy,
        "starting_deadline": schedule.starting_deadline,
        "paused": schedule.paused,
        "since": schedule.since,
        "last_run": schedule.last_run,
        "fired": schedule.fired,
        "skipped": schedule.skipped,
        "owner_generation": schedule.owner_generation,
    }


def _number_or_none(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {value!r}")
    return float(value)


def _schedule(at: float, fields: dict[str, Any]) -> ScheduleRecord:
    """A stored schedule record, decoded by its shape (see L{_spec})."""
    schedule_id = int(fields["schedule"])
    if fields["type"] == "schedule_deleted":
        return ScheduleDeleted(at, schedule_id, _text_or_none(fields.get("by")))
    text = {name: fields[name] for name in ("owner", "cron", "timezone", "concurrency_policy")}
    if not all(isinstance(value, str) for value in text.values()):
        raise TypeError("a schedule's owner, cron, timezone and policy are strings")
    return ScheduleSaved(
        at,
        Schedule(
            id=schedule_id,
            job=decode_spec(fields["job"]),
            created=float(fields["created"]),
            starting_deadline=_number_or_none(fields.get("starting_deadline")),
            paused=bool(fields["paused"]),
            since=float(fields["since"]),
            last_run=_number_or_none(fields.get("last_run")),
            fired=int(fields["fired"]),
            skipped=int(fields["skipped"]),
            owner_generation=_text_or_none(fields.get("owner_generation")),
            **text,
        ),
    )


def spec_fields(spec: JobSpec) -> dict[str, Any]:
    """A spec as the journal stores it (see L{decode_spec})."""
    fields = spec.to_json()
    if spec.run_at is not None:
        fields["run_at"] = spec.run_at  # the exact float, not the text
    return fields


def _event_fields(event: Event) -> dict[str, Any]:
    if isinstance(event, Created):
        created: dict[str, Any] = {
            "type": "created",
            "job": event.job_id,
            "owner": event.owner,
            "spec": spec_fields(event.spec),
        }
        if event.idempotency is not None:
            created["idempotency_key"] = event.idempotency.key
            created["fingerprint"] = event.idempotency.fingerprint
        if event.schedule_id is not None:
            created["schedule"] = event.schedule_id
        return created
    if isinstance(event, Released):
        return {"type": "released", "job": event.job_id}
    if isinstance(event, Modified):
        return {"type": "modified", "job": event.job_id, "spec": spec_fields(event.spec)}
    if isinstance(event, Started):
        if event.host is None:
            return {"type": "started", "job": event.job_id}
        return {"type": "started", "job": event.job_id, "host": event.host}
    if isinstance(event, Submitted):
        return {"type": "submitted", "job": event.job_id, "slurm_job_id": event.slurm_job_id}
    if isinstance(event, CallbackDone):
        return {
            "type": "callback",
            "job": event.job_id,
            "sequence": event.sequence,
            "delivered": event.delivered,
            "attempts": event.attempts,
            "status_code": event.status_code,
            "error": event.error,
        }
    if isinstance(event, Ended):
        outcome = event.outcome
        fields: dict[str, Any] = {
            "type": "ended",
            "job": event.job_id,
            "state": outcome.state.value,
            "exit_code": outcome.exit_code,
            "signal": outcome.signal,
            "reason": outcome.reason,
            "stdout_bytes": outcome.stdout_bytes,
            "stderr_bytes": outcome.stderr_bytes,
            "stdout_truncated": outcome.stdout_truncated,
            "stderr_truncated": outcome.stderr_truncated,
            "cancelled_by": outcome.cancelled_by,
        }
        if outcome.output_error is not None:
            fields["output_error"] = outcome.output_error
        return fields
    return {"type": "deleted", "job": event.job_id, "by": event.by}


def encode(seq: int, item: Item) -> bytes:
    """One journal line (with its newline) for an event or meta record."""
    fields: dict[str, Any] = {"v": FORMAT_VERSION, "seq": seq, "at": item.at}
    if isinstance(item, Meta):
        fields.update(type="meta", next_id=item.next_id)
    elif isinstance(item, ScheduleSaved | ScheduleDeleted):
        fields.update(_schedule_fields(item))
    else:
        fields.update(_event_fields(item))
    body = json.dumps(fields, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    head = body[:-1]
    crc = zlib.crc32(head)
    return head + b',"crc":"%08x"}\n' % crc


def decode(line: bytes) -> Record:
    """The record a line holds (without its newline).

    @raise CorruptLine: bad checksum, bad JSON, or an unknown shape.
    """
    if len(line) <= _CRC_SUFFIX_LEN or not line.endswith(b'"}'):
        raise CorruptLine("line is truncated")
    head, suffix = line[:-_CRC_SUFFIX_LEN], line[-_CRC_SUFFIX_LEN:]
    if not suffix.startswith(b',"crc":"'):
        raise CorruptLine("line has no checksum")
    try:
        expected = int(suffix[8:16], 16)
    except ValueError:
        raise CorruptLine("checksum is not hexadecimal") from None
    if zlib.crc32(head) != expected:
        raise CorruptLine("checksum mismatch")
    try:
        # The whole line is JSON (the crc is its last field): no copy needed.
        # orjson parses a line in about half the time of json.loads (replay
        # decodes millions of them); the stdlib takes the rare line orjson
        # refuses but Python wrote (an integer beyond 64 bits, say).
        try:
            fields = orjson.loads(line)
        except orjson.JSONDecodeError:
            fields = json.loads(line)
        return _record(fields)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise CorruptLine(f"undecodable record: {e}") from None


def _text_or_none(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}")
    return value


def _strings(value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise TypeError("expected an object of strings")
    return value


def decode_spec(fields: Any) -> JobSpec:
    """A stored spec, decoded by its shape only (format version 1).

    Not through L{cmdd.spec.parse_spec}: the API's rules for new jobs may
    get stricter (a shorter limit, a field retired), and a journal written
    under the old rules must still replay exactly. A change to the stored
    shape gets a new format version and its own decoder here.
    """
    if not isinstance(fields, dict):
        raise TypeError("spec is not an object")
    line = fields.get("command_line")
    if line is not None and not (isinstance(line, list) and all(isinstance(a, str) for a in line)):
        raise TypeError("command_line is not a list of strings")
    timeout = fields.get("timeout")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int | float)):
        raise TypeError("timeout is not a number")
    run_at = fields.get("run_at")
    if run_at is not None and (isinstance(run_at, bool) or not isinstance(run_at, int | float)):
        raise TypeError("run_at is not a number")
    limit = fields.get("concurrency_limit", 1)
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise TypeError("concurrency_limit is not an integer")
    spec = JobSpec(
        run_at=None if run_at is None else float(run_at),
        command=_text_or_none(fields.get("command")),
        command_line=None if line is None else tuple(line),
        working_directory=_text_or_none(fields.get("working_directory")),
        stdin=_text_or_none(fields.get("stdin")),
        umask=_text_or_none(fields.get("umask")),
        timeout=None if timeout is None else float(timeout),
        user=_text_or_none(fields.get("user")),
        concurrency_key=_text_or_none(fields.get("concurrency_key")),
        concurrency_limit=limit,
        **{
            name: _strings(fields[name])
            for name in ("environment", "labels", "webhooks")
            if fields.get(name)
        },
    )
    if (spec.command is None) == (spec.command_line is None):
        raise ValueError("a stored spec has exactly one of command and command_line")
    return spec


def _idempotency(fields: dict[str, Any]) -> Idempotency | None:
    """The optional key and fingerprint of a created record (absent in
    lines written before idempotency keys)."""
    key = _text_or_none(fields.get("idempotency_key"))
    if key is None:
        return None
    fingerprint = _text_or_none(fields.get("fingerprint"))
    return Idempotency(key, fingerprint or "")


def _record(fields: dict[str, Any]) -> Record:
    if fields["v"] != FORMAT_VERSION:
        raise ValueError(f"unknown format version {fields['v']!r}")
    seq, at, kind = int(fields["seq"]), float(fields["at"]), fields["type"]
    if kind == "meta":
        return Record(seq, Meta(at, int(fields["next_id"])))
    if kind in ("schedule", "schedule_deleted"):
        return Record(seq, _schedule(at, fields))
    job_id = int(fields["job"])
    item: Event
    if kind == "created":
        schedule = fields.get("schedule")
        item = Created(
            job_id,
            at,
            decode_spec(fields["spec"]),
            fields.get("owner", "admin"),
            _idempotency(fields),
            None if schedule is None else int(schedule),
        )
    elif kind == "released":
        item = Released(job_id, at)
    elif kind == "modified":
        item = Modified(job_id, at, decode_spec(fields["spec"]))
    elif kind == "started":
        item = Started(job_id, at, _text_or_none(fields.get("host")))
    elif kind == "submitted":
        slurm_job_id = fields["slurm_job_id"]
        if not isinstance(slurm_job_id, str):
            raise TypeError("slurm_job_id is not a string")
        item = Submitted(job_id, at, slurm_job_id)
    elif kind == "callback":
        status = fields.get("status_code")
        item = CallbackDone(
            job_id,
            at,
            int(fields["sequence"]),
            bool(fields["delivered"]),
            int(fields["attempts"]),
            None if status is None else int(status),
            _text_or_none(fields.get("error")),
        )
    elif kind == "ended":
        item = Ended(
            job_id,
            at,
            Outcome(
                state=State(fields["state"]),
                exit_code=fields["exit_code"],
                signal=fields["signal"],
                reason=fields["reason"],
                stdout_bytes=int(fields["stdout_bytes"]),
                stderr_bytes=int(fields["stderr_bytes"]),
                stdout_truncated=bool(fields["stdout_truncated"]),
                stderr_truncated=bool(fields["stderr_truncated"]),
                cancelled_by=fields.get("cancelled_by"),
                output_error=fields.get("output_error"),
            ),
        )
    elif kind == "deleted":
        item = Deleted(job_id, at, fields.get("by"))
    else:
        raise ValueError(f"unknown record type {kind!r}")
    return Record(seq, item)
