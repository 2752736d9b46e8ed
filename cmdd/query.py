"""List queries: parse filters, sort, cursor and fields; match and page jobs.

Pure: no I/O. A bad parameter is a 400 naming it, never ignored.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import heapq
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import attrs

from cmdd.errors import ClientError
from cmdd.jobs import Job, State
from cmdd.store import JobStore
from cmdd.timefmt import NotRFC3339, parse_rfc3339

DEFAULT_LIMIT = 50
MAX_LIMIT = 1000
SORTS = ("-created", "created", "completed", "-completed", "duration", "-duration")
_REPEATABLE = frozenset({"state", "label", "concurrency_key"})
#: A number as JSON writes one (RFC 8259 section 6), ASCII only: Python's
#: int() and float() also take "+1", " 1", "1_0", other scripts' digits,
#: "nan" and "inf", none of them a number in a query.
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?\Z")
_INTEGER = re.compile(r"-?[0-9]{1,10}\Z")


def parse_number(text: str) -> float | None:
    """C{text} as a finite number in JSON's syntax, or C{None} if it is not one."""
    if len(text) > 40 or not _NUMBER.match(text):
        return None
    value = float(text)
    return value if math.isfinite(value) else None


def _bad(name: str, message: str) -> ClientError:
    return ClientError("INVALID_PARAMETER", f"{name}: {message}", field=name)


def parse_time(name: str, text: str) -> float:
    """An RFC 3339 timestamp (with a zone) as Unix seconds."""
    try:
        return parse_rfc3339(text)
    except NotRFC3339 as e:
        if e.syntax_ok:
            raise _bad(name, "is not a real date and time") from None
        raise _bad(
            name, "must be an RFC 3339 time with a zone, such as 2026-11-22T10:00:00Z"
        ) from None


@attrs.frozen
class JobQuery:
    """What a list request asks for."""

    states: frozenset[State] = frozenset()
    labels: tuple[tuple[str, str], ...] = ()
    owner: str | None = None
    text: str | None = None
    created_after: float | None = None
    created_before: float | None = None
    completed_after: float | None = None
    exit_code: int | None = None
    schedule_id: int | None = None
    sort: str = "-created"
    limit: int = DEFAULT_LIMIT
    after: tuple[float, int] | None = None
    fields: tuple[str, ...] | None = None
    final_only: bool = False
    #: Any of these keys (repeat the parameter for more than one).
    concurrency_keys: frozenset[str] = frozenset()

    def matches(self, job: Job) -> bool:
        """Whether C{job} passes every filter."""
        if self.final_only and not job.state.final:
            return False
        if self.states and job.state not in self.states:
            return False
        if self.owner is not None and job.owner != self.owner:
            return False
        for key, value in self.labels:
            if job.spec.labels.get(key) != value:
                return False
        if self.concurrency_keys and job.spec.concurrency_key not in self.concurrency_keys:
            return False
        if self.created_after is not None and job.created <= self.created_after:
            return False
        if self.created_before is not None and job.created >= self.created_before:
            return False
        if self.completed_after is not None and (
            job.completed is None or job.completed <= self.completed_after
        ):
            return False
        if self.schedule_id is not None and job.schedule_id != self.schedule_id:
            return False
        if self.exit_code is not None and (
            job.outcome is None or job.outcome.exit_code != self.exit_code
        ):
            return False
        return self.text is None or self.text in command_text(job)


def command_text(job: Job) -> str:
    """The text C{q} searches: the command, case-folded."""
    spec = job.spec
    text = spec.command if spec.command is not None else " ".join(spec.command_line or ())
    return text.casefold()


def sort_key(sort: str) -> Callable[[Job], float]:
    """The value a job sorts by (jobs without one sort last)."""
    field = sort.lstrip("-")
    if field == "created":
        return lambda job: float(job.id)
    if field == "completed":
        return lambda job: job.completed if job.completed is not None else float("inf")
    return lambda job: job.duration if job.duration is not None else float("inf")


def encode_cursor(sort: str, value: float, job_id: int) -> str:
    """An opaque cursor: the last row's sort value and id."""
    raw = f"{sort}|{value!r}|{job_id}".encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _decode_cursor(text: str, sort: str) -> tuple[float, int]:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
        cursor_sort, value, job_id = raw.split("|")
        if cursor_sort != sort:
            raise ValueError("cursor from another sort order")
        return float(value), int(job_id)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise _bad("cursor", "not a cursor from this list (use the next link as given)") from None


def parse_query(
    args: Mapping[str, list[str]],
    allowed_fields: frozenset[str],
    *,
    final_only: bool = False,
) -> JobQuery:
    """A L{JobQuery} from decoded query parameters.

    @raise ClientError: 400 naming the first bad or unknown parameter.
    """
    known = {
        "state", "label", "owner", "q", "created_after", "created_before",
        "completed_after", "exit_code", "sort", "limit", "cursor", "fields", "concurrency_key",
        "schedule_id",
    }  # fmt: skip
    values: dict[str, Any] = {}
    for name, given in args.items():
        if name not in known:
            raise ClientError("UNKNOWN_PARAMETER", f"unknown query parameter {name!r}", field=name)
        if len(given) != 1 and name not in _REPEATABLE:
            raise _bad(name, "may be given once")
    one = {name: given[0] for name, given in args.items()}
    if "state" in args:
        try:
            values["states"] = frozenset(State(value) for value in args["state"])
        except ValueError:
            names = ", ".join(state.value for state in State)
            raise _bad("state", f"must be one of {names}") from None
    labels = []
    for item in args.get("label", []):
        key, sep, value = item.partition(":")
        if not sep or not key:
            raise _bad("label", "write label=key:value")
        labels.append((key, value))
    values["labels"] = tuple(labels)
    if "owner" in one:
        values["owner"] = one["owner"]
    if "concurrency_key" in args:
        values["concurrency_keys"] = frozenset(args["concurrency_key"])
    if "q" in one:
        if not one["q"]:
            raise _bad("q", "must not be empty")
        values["text"] = one["q"].casefold()
    for name in ("created_after", "created_before", "completed_after"):
        if name in one:
            values[name] = parse_time(name, one[name])
    if "exit_code" in one:
        if not _INTEGER.match(one["exit_code"]):
            raise _bad("exit_code", "must be a whole number")
        values["exit_code"] = int(one["exit_code"])
    if "schedule_id" in one:
        if not _INTEGER.match(one["schedule_id"]):
            raise _bad("schedule_id", "must be a whole number")
        values["schedule_id"] = int(one["schedule_id"])
    sort = one.get("sort", "-created")
    if sort not in SORTS:
        raise _bad("sort", f"must be one of {', '.join(SORTS)}")
    values["sort"] = sort
    limit_text = one.get("limit", str(DEFAULT_LIMIT))
    if not _INTEGER.match(limit_text) or not 1 <= int(limit_text) <= MAX_LIMIT:
        raise _bad("limit", f"must be a whole number from 1 to {MAX_LIMIT}")
    values["limit"] = int(limit_text)
    if "cursor" in one:
        values["after"] = _decode_cursor(one["cursor"], sort)
    if "fields" in one:
        fields = tuple(name for name in one["fields"].split(",") if name)
        unknown = sorted(set(fields) - allowed_fields)
        if not fields or unknown:
            raise _bad(
                "fields",
                f"unknown field(s) {', '.join(unknown) or '(none given)'}; "
                f"known: {', '.join(sorted(allowed_fields))}",
            )
        values["fields"] = fields
    return JobQuery(final_only=final_only, **values)


class Rows(Protocol):
    """What L{run_query} reads: a L{JobStore}, or a L{PointInTime} of one."""

    def narrowest_index(
        self,
        states: Iterable[State] = (),
        owner: str | None = None,
        labels: Iterable[tuple[str, str]] = (),
    ) -> Sequence[int] | None: ...

    def newest_first(
        self, before: int | None = None, ids: Sequence[int] | None = None
    ) -> Iterator[Job]: ...


def scans(query: JobQuery) -> bool:
    """Whether answering C{query} may walk (and sort) a large part of the
    history: another order than newest first, or a filter no index serves."""
    return (
        query.sort != "-created"
        or query.text is not None
        or query.created_after is not None
        or query.created_before is not None
        or query.completed_after is not None
        or query.exit_code is not None
        or query.schedule_id is not None
        or bool(query.concurrency_keys)
        or len(query.states) > 1
    )


class PointInTime:
    """The jobs a query walks, as of now, readable from another thread.

    Made on the reactor: it copies the narrowest id index (a few ms for a
    million ids). A thread can then scan it while the reactor goes on
    changing the store: jobs are immutable values, and each is read from
    the live dict by one C{get} (atomic under the GIL); one deleted since
    is skipped.
    """

    def __init__(self, store: JobStore, query: JobQuery) -> None:
        self._ids = store.id_list(store.narrowest_index(query.states, query.owner, query.labels))
        self._get = store.get

    def narrowest_index(
        self,
        states: Iterable[State] = (),
        owner: str | None = None,
        labels: Iterable[tuple[str, str]] = (),
    ) -> Sequence[int] | None:
        return None  # already narrowed

    def newest_first(
        self, before: int | None = None, ids: Sequence[int] | None = None
    ) -> Iterator[Job]:
        ids = self._ids
        end = len(ids) if before is None else bisect.bisect_left(ids, before)
        get = self._get
        for index in range(end - 1, -1, -1):
            job = get(ids[index])
            if job is not None:
                yield job


def run_query(query: JobQuery, store: Rows) -> tuple[list[Job], str | None]:
    """One page of matching jobs and the cursor for the next page (or C{None}).

    Only the narrowest index that applies (state, owner or label) is walked.
    The default order (newest first) walks it from the cursor down and stops
    after one page; other orders sort the jobs in it that match.
    """
    descending = query.sort.startswith("-")
    key = sort_key(query.sort)
    rows: Iterable[Job]
    index = store.narrowest_index(query.states, query.owner, query.labels)
    if query.sort == "-created":
        rows = store.newest_first(query.after[1] if query.after else None, index)
    else:
        matching: Iterable[Job] = (
            job for job in store.newest_first(None, index) if query.matches(job)
        )
        if query.after is not None:
            mark = query.after
            matching = (
                job for job in matching
                if ((key(job), job.id) < mark if descending else (key(job), job.id) > mark)
            )  # fmt: skip
        # The page and one more (is there a next page?), not a sort of every
        # match: list.sort of a million holds the GIL for seconds in one C
        # call, even on a worker thread. Keys are unique (the id breaks ties),
        # so this is exactly the head of the sorted list.
        pick = heapq.nlargest if descending else heapq.nsmallest
        rows = pick(query.limit + 1, matching, key=lambda job: (key(job), job.id))
    taken: list[Job] = []
    for job in rows:
        if not query.matches(job):
            continue
        if len(taken) == query.limit:
            last = taken[-1]
            return taken, encode_cursor(query.sort, key(last), last.id)
        taken.append(job)
    return taken, None


def trim(representation: dict[str, Any], fields: tuple[str, ...] | None) -> dict[str, Any]:
    """Keep only the requested fields (all when C{None})."""
    if fields is None:
        return representation
    return {name: representation[name] for name in fields if name in representation}
