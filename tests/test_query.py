"""List queries: filters, sorts, keyset cursors and fields (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from cmdd.errors import ClientError
from cmdd.jobs import Created, Ended, Outcome, Started, State
from cmdd.query import parse_query, run_query, trim
from cmdd.spec import parse_spec
from cmdd.store import JobStore

FIELDS = frozenset({"id", "state"})


def build() -> JobStore:
    """Six jobs: odd ones by alice, labelled; some finished with exit codes."""
    store = JobStore()
    commands = ["echo привет", "ls /tmp", "make test", "echo hello", "deploy prod", "ls -l"]
    for i, command in enumerate(commands, 1):
        owner = "alice" if i % 2 else "bob"
        labels = {"team": "ops" if i <= 3 else "dev", "n": str(i)}
        spec = parse_spec({"command": command, "labels": labels})
        store.record(Created(i, 1000.0 + i, spec, owner))
        if i <= 4:
            store.record(Started(i, 1000.0 + i))
            # durations: 1:5 s, 2:1 s, 3:3 s, 4:2 s
            end = 1000.0 + i + {1: 5, 2: 1, 3: 3, 4: 2}[i]
            store.record(Ended(i, end, Outcome(State.FAILED if i == 3 else State.SUCCEEDED,
                                               exit_code=2 if i == 3 else 0)))
    return store


def ids(store: JobStore, params: dict[str, list[str]], **kw: Any) -> list[int]:
    query = parse_query(params, FIELDS, **kw)
    jobs, _ = run_query(query, store)
    return [job.id for job in jobs]


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, [6, 5, 4, 3, 2, 1]),
        ({"state": ["queued"]}, [6, 5]),
        ({"state": ["failed", "queued"]}, [6, 5, 3]),
        ({"label": ["team:ops"]}, [3, 2, 1]),
        ({"label": ["team:ops", "n:2"]}, [2]),
        ({"owner": ["alice"]}, [5, 3, 1]),
        ({"q": ["ПРИВЕТ"]}, [1]),
        ({"q": ["ls"]}, [6, 2]),
        ({"created_after": ["1970-01-01T00:16:43Z"]}, [6, 5, 4]),
        ({"created_before": ["1970-01-01T00:16:43+00:00"]}, [2, 1]),
        ({"completed_after": ["1970-01-01T00:16:45Z"]}, [4, 3, 1]),
        ({"exit_code": ["2"]}, [3]),
        ({"sort": ["created"]}, [1, 2, 3, 4, 5, 6]),
        ({"sort": ["duration"]}, [2, 4, 3, 1, 5, 6]),
        ({"sort": ["-duration"], "state": ["succeeded", "failed"]}, [1, 3, 4, 2]),
        ({"sort": ["completed"], "state": ["succeeded", "failed"]}, [2, 1, 3, 4]),
    ],
)
def test_filters_and_sorts(params: dict[str, list[str]], expected: list[int]) -> None:
    """Every filter narrows the list as documented; sorts order it."""
    assert ids(build(), params) == expected


def test_results_only_lists_final_jobs() -> None:
    """The results list holds finished jobs only."""
    assert ids(build(), {}, final_only=True) == [4, 3, 2, 1]


@pytest.mark.parametrize("sort", ["-created", "created", "duration", "-completed"])
def test_cursor_pages_have_no_gaps_or_duplicates(sort: str) -> None:
    """Following the cursor visits every matching job once, in order, also while
    new jobs arrive between pages."""
    store = build()
    expected = ids(store, {"sort": [sort], "limit": ["1000"]})
    seen: list[int] = []
    cursor: str | None = None
    while True:
        params = {"sort": [sort], "limit": ["2"]}
        if cursor:
            params["cursor"] = [cursor]
        jobs, cursor = run_query(parse_query(params, FIELDS), store)
        seen.extend(job.id for job in jobs)
        if sort == "-created" and len(seen) == 2:
            store.record(Created(7, 2000.0, parse_spec({"command": "new"}), "bob"))
        if cursor is None:
            break
    assert seen == expected


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"state": ["running", "sleeping"]}, "state"),
        ({"label": ["nocolon"]}, "label"),
        ({"q": [""]}, "q"),
        ({"created_after": ["yesterday"]}, "created_after"),
        ({"created_after": ["2026-11-22T10:00:00"]}, "created_after"),
        ({"exit_code": ["zero"]}, "exit_code"),
        ({"sort": ["size"]}, "sort"),
        ({"limit": ["0"]}, "limit"),
        ({"limit": ["1001"]}, "limit"),
        ({"cursor": ["garbage!"]}, "cursor"),
        ({"fields": ["id,colour"]}, "fields"),
        ({"sort": ["a", "b"]}, "sort"),
        ({"colour": ["red"]}, "colour"),
    ],
)
def test_bad_parameters_are_400_naming_them(params: dict[str, list[str]], field: str) -> None:
    """A bad parameter is a 400 that names it, never silently ignored."""
    with pytest.raises(ClientError) as info:
        parse_query(params, FIELDS)
    assert info.value.status == 400 and info.value.field == field


def test_cursor_of_another_sort_is_refused() -> None:
    """A cursor only continues the list it came from."""
    store = build()
    _, cursor = run_query(parse_query({"limit": ["1"]}, FIELDS), store)
    assert cursor is not None
    with pytest.raises(ClientError):
        parse_query({"cursor": [cursor], "sort": ["duration"]}, FIELDS)


def test_fields_trim_representations() -> None:
    """fields keeps only the named members."""
    query = parse_query({"fields": ["id,state"]}, FIELDS)
    assert trim({"id": 1, "state": "queued", "links": {}}, query.fields) == {
        "id": 1, "state": "queued"}
    assert trim({"id": 1}, None) == {"id": 1}


@pytest.mark.parametrize(
    "text",
    ["2026-W01-1T00:00:00Z", "2026-001T00:00:00Z", "20260101T000000Z", "2026-01-01T00:00:00",
     "2026-01-01", "2026-01-01 00:00:00Z", "2026-01-01T00:00:00,5Z", "2026-01-01T24:00:00Z",
     "2026-02-30T00:00:00Z", "2026-01-01T00:00:00+24:00", "\u0662026-01-01T00:00:00Z"],
)  # fmt: skip
def test_times_are_rfc3339_and_nothing_else(text: str) -> None:
    """ISO 8601 forms RFC 3339 leaves out are rejected, not read."""
    from cmdd.errors import ClientError
    from cmdd.query import parse_time

    with pytest.raises(ClientError):
        parse_time("created_after", text)


def test_rfc3339_times_are_read_exactly() -> None:
    """Offsets, lower-case separators and long fractions are RFC 3339."""
    from cmdd.query import parse_time

    assert parse_time("t", "1970-01-01T01:00:00+01:00") == 0
    assert parse_time("t", "1970-01-01t00:00:01.5z") == 1.5
    assert parse_time("t", "1970-01-01T00:00:00.123456789Z") == pytest.approx(0.123456)


@pytest.mark.parametrize("text", ["nan", "inf", "+1", " 1", "1_0", "\u0661", "1e999", "", "0x1"])
def test_numbers_in_a_query_are_json_numbers(text: str) -> None:
    """What float() accepts but JSON does not is not a number."""
    from cmdd.query import parse_number

    assert parse_number(text) is None


def test_json_numbers_in_a_query_are_read() -> None:
    """JSON's own forms are numbers."""
    from cmdd.query import parse_number

    assert [parse_number(t) for t in ("0", "2.5", "1e-3", "2E1", "-1")] == [0, 2.5, 0.001, 20, -1]


def test_a_point_in_time_view_survives_changes_while_it_is_scanned() -> None:
    """A scan on a thread reads the ids as they were when the request came;
    a job deleted since is skipped, one created since is not seen."""
    from cmdd.jobs import Deleted
    from cmdd.query import PointInTime, scans

    store = JobStore()
    spec = parse_spec({"command": "true"})
    for job_id in (1, 2, 3):
        store.record(Created(job_id, float(job_id), spec))
        store.record(Started(job_id, float(job_id)))
        store.record(Ended(job_id, float(job_id) + 1, Outcome(State.SUCCEEDED, exit_code=0)))
    query = parse_query({"sort": ["duration"]}, frozenset())
    assert scans(query) and not scans(parse_query({}, frozenset()))
    view = PointInTime(store, query)
    store.record(Deleted(2, 9.0))
    store.record(Created(4, 9.0, spec))
    jobs, _ = run_query(query, view)
    assert sorted(job.id for job in jobs) == [1, 3]
