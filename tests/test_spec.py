"""Job spec validation: what clients may send, and the codes they get back."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cmdd.errors import SpecError
from cmdd.spec import JobSpec, parse_spec


def code_of(body: Any) -> str:
    with pytest.raises(SpecError) as info:
        parse_spec(body)
    return info.value.code


def test_shell_command_runs_through_sh() -> None:
    """A C{command} string is run by C{/bin/sh -c}."""
    spec = parse_spec({"command": "echo привет"})
    assert spec.argv() == ("/bin/sh", "-c", "echo привет")
    assert spec.to_json() == {"command": "echo привет"}


def test_command_line_runs_without_shell() -> None:
    """A C{command_line} list is the argument vector, with no shell."""
    spec = parse_spec({"command_line": ["ls", "-l", "/tmp dir"]})
    assert spec.argv() == ("ls", "-l", "/tmp dir")


def test_all_fields() -> None:
    """Every supported field is kept and echoed back as given."""
    body = {
        "command_line": ["env"],
        "environment": {"A": "1", "_B2": "x y"},
        "working_directory": "/tmp",
        "stdin": "data\n",
        "umask": "027",
        "timeout": 2.5,
        "labels": {"team": "ops", "ci/pipeline": "42"},
    }
    spec = parse_spec(body)
    assert spec.umask == "0027"
    assert spec.umask_value() == 0o027
    assert spec.to_json() == {**body, "umask": "0027"}


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({}, "COMMAND_MISSING"),
        ({"command": None}, "COMMAND_MISSING"),
        ({"environment": {}}, "COMMAND_MISSING"),
        ({"command": "a", "command_line": ["a"]}, "COMMAND_CONFLICT"),
        ([], "BODY_NOT_OBJECT"),
        ("echo", "BODY_NOT_OBJECT"),
        (None, "BODY_NOT_OBJECT"),
        ({"command": "x", "cmd": "y"}, "UNKNOWN_FIELD"),
        ({"command": "x", "user": "Not A User"}, "INVALID_USER"),
        ({"command": "x", "user": 0}, "INVALID_USER"),
        ({"command": "x", "run_at": "2030-01-01T00:00:00"}, "INVALID_RUN_AT"),
        ({"command": "x", "run_at": "2030-01-01 00:00:00Z"}, "INVALID_RUN_AT"),
        ({"command": "x", "run_at": "2030-02-30T00:00:00Z"}, "INVALID_RUN_AT"),
        ({"command": "x", "run_at": "2030-W01-1T00:00:00Z"}, "INVALID_RUN_AT"),
        ({"command": "x", "run_at": 1893456000}, "INVALID_RUN_AT"),
        ({"command": "x", "run_at": "tomorrow"}, "INVALID_RUN_AT"),
        ({"command": "x", "webhooks": []}, "INVALID_WEBHOOKS"),
        ({"command": "x", "webhooks": {"finished": "http://h/"}}, "UNKNOWN_WEBHOOK_TYPE"),
        ({"command": "x", "webhooks": {"ended": 5}}, "INVALID_WEBHOOK_URL"),
        ({"command": "x", "webhooks": {"ended": "ftp://h/x"}}, "INVALID_WEBHOOK_URL"),
        ({"command": "x", "webhooks": {"ended": "file:///etc/passwd"}}, "INVALID_WEBHOOK_URL"),
        ({"command": "x", "webhooks": {"ended": "/relative"}}, "INVALID_WEBHOOK_URL"),
        ({"command": "x", "webhooks": {"ended": "http://h/a b"}}, "INVALID_WEBHOOK_URL"),
        ({"command": "x", "webhooks": {"ended": "http://h:99999/"}}, "INVALID_WEBHOOK_URL"),
        ({"command": "x", "webhooks": {"ended": "http://u:p@h/"}}, "INVALID_WEBHOOK_URL"),
        ({"command": "x", "webhooks": {"ended": "http://h/" + "a" * 2048}}, "INVALID_WEBHOOK_URL"),
        ({"command": 5}, "INVALID_COMMAND"),
        ({"command": ["ls"]}, "INVALID_COMMAND"),
        ({"command": "   "}, "INVALID_COMMAND"),
        ({"command": "echo\x00hi"}, "INVALID_COMMAND"),
        ({"command": "echo \ud800"}, "INVALID_COMMAND"),
        ({"command": "x" * (128 * 1024 + 1)}, "INVALID_COMMAND"),
        ({"command_line": []}, "INVALID_COMMAND_LINE"),
        ({"command_line": "ls"}, "INVALID_COMMAND_LINE"),
        ({"command_line": ["ls", 1]}, "INVALID_COMMAND_LINE"),
        ({"command_line": [""]}, "INVALID_COMMAND_LINE"),
        ({"command_line": ["a\x00b"]}, "INVALID_COMMAND_LINE"),
        ({"command_line": ["x"] * 4097}, "INVALID_COMMAND_LINE"),
        ({"command": "x", "environment": []}, "INVALID_ENVIRONMENT"),
        ({"command": "x", "environment": {"A": 1}}, "INVALID_ENVIRONMENT"),
        ({"command": "x", "environment": {"A=B": "1"}}, "INVALID_ENVIRONMENT"),
        ({"command": "x", "environment": {"1A": "1"}}, "INVALID_ENVIRONMENT"),
        ({"command": "x", "environment": {"": "1"}}, "INVALID_ENVIRONMENT"),
        ({"command": "x", "environment": {"A": "a\x00"}}, "INVALID_ENVIRONMENT"),
        ({"command": "x", "working_directory": "tmp"}, "INVALID_WORKING_DIRECTORY"),
        ({"command": "x", "working_directory": 3}, "INVALID_WORKING_DIRECTORY"),
        ({"command": "x", "stdin": 3}, "INVALID_STDIN"),
        ({"command": "x", "umask": 22}, "INVALID_UMASK"),
        ({"command": "x", "umask": "0999"}, "INVALID_UMASK"),
        ({"command": "x", "umask": "00022"}, "INVALID_UMASK"),
        ({"command": "x", "timeout": "10"}, "INVALID_TIMEOUT"),
        ({"command": "x", "timeout": True}, "INVALID_TIMEOUT"),
        ({"command": "x", "timeout": 0}, "INVALID_TIMEOUT"),
        ({"command": "x", "timeout": -1}, "INVALID_TIMEOUT"),
        ({"command": "x", "timeout": float("inf")}, "INVALID_TIMEOUT"),
        ({"command": "x", "timeout": float("nan")}, "INVALID_TIMEOUT"),
        ({"command": "x", "timeout": 10**9}, "INVALID_TIMEOUT"),
        ({"command": "x", "labels": {"": "v"}}, "INVALID_LABELS"),
        ({"command": "x", "labels": {"k": 1}}, "INVALID_LABELS"),
        ({"command": "x", "labels": {"k": "v" * 257}}, "INVALID_LABELS"),
        ({"command": "x", "labels": {f"k{i}": "v" for i in range(65)}}, "INVALID_LABELS"),
    ],
)
def test_rejections_have_one_code_per_cause(body: Any, code: str) -> None:
    """Each kind of bad spec is rejected with its own stable code."""
    assert code_of(body) == code


def test_rejection_names_the_field() -> None:
    """The error says which field was wrong, so clients can point at it."""
    with pytest.raises(SpecError) as info:
        parse_spec({"command": "x", "timeout": "soon"})
    assert info.value.field == "timeout"
    assert info.value.to_json()["error"] == {
        "code": "INVALID_TIMEOUT",
        "message": "timeout must be a number of seconds",
        "field": "timeout",
    }


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=10,
)


FIELDS = ["command", "command_line", "environment", "working_directory", "stdin", "umask",
          "timeout", "labels", "other"]


# No deadline: the CI machine is shared and a slow example is not a failure.
@settings(deadline=None)
@given(st.dictionaries(st.sampled_from(FIELDS), json_values))
def test_any_json_is_accepted_or_rejected_cleanly(body: dict[str, Any]) -> None:
    """Whatever JSON a client sends, validation returns a spec or a SpecError."""
    try:
        spec = parse_spec(body)
    except SpecError as e:
        assert e.code and e.message
    else:
        assert isinstance(spec, JobSpec)
        assert (spec.command is None) != (spec.command_line is None)


def test_a_timeout_beyond_a_double_is_invalid_not_a_crash() -> None:
    """An integer too large for a float is out of range (it was an OverflowError)."""
    with pytest.raises(SpecError) as caught:
        parse_spec({"command": "true", "timeout": 10**400})
    assert caught.value.code == "INVALID_TIMEOUT"


def test_run_at_is_rfc3339_with_an_offset_and_echoed_in_utc() -> None:
    """A run_at with an offset is kept as the moment it names and shown in UTC."""
    spec = parse_spec({"command": "x", "run_at": "2030-01-01T01:30:00+01:30"})
    assert spec.run_at == 1893456000.0
    assert spec.to_json()["run_at"] == "2030-01-01T00:00:00.000Z"


def test_run_at_far_ahead_is_refused() -> None:
    """A run_at years ahead (a typo in the year) is a 400, not a job kept forever."""
    now = 1893456000.0
    parse_spec({"command": "x", "run_at": "2034-01-01T00:00:00Z"}, now=now)
    with pytest.raises(SpecError) as info:
        parse_spec({"command": "x", "run_at": "2040-01-01T00:00:00Z"}, now=now)
    assert info.value.code == "INVALID_RUN_AT"
