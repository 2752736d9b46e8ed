"""The client's pure parts: settings, specs from options, exit codes, the
event-stream parser and tables (no daemon, no reactor)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from cmdd.clientconfig import (
    ClientConfigError,
    load_settings,
    normalize_fingerprint,
    write_profile,
)
from cmdd.clientformat import EventStream, OptionError, exit_status, job_spec, table
from cmdd.errors import ClientError
from cmdd.tokenrequest import TokenRequest, parse_token_request

PIN = ":".join(["B1", "04", "36", "AE"] * 8)


def test_environment_overrides_the_profile(tmp_path: Path) -> None:
    profile = tmp_path / "p.json"
    write_profile(str(profile), {"url": "https://a:1", "token": "from-profile", "fingerprint": PIN})
    assert stat.S_IMODE(profile.stat().st_mode) == 0o600
    settings = load_settings({"CMDD_PROFILE": str(profile)})
    assert (settings.url, settings.token) == ("https://a:1", "from-profile")
    assert settings.fingerprint == PIN.replace(":", "").lower()
    token_file = tmp_path / "t"
    token_file.write_text("from-file\n")
    env = {
        "CMDD_PROFILE": str(profile),
        "CMDD_URL": "https://b:2/",
        "CMDD_TOKEN_FILE": str(token_file),
    }
    settings = load_settings(env)
    assert (settings.url, settings.token) == ("https://b:2", "from-file")
    assert load_settings({**env, "CMDD_TOKEN": "direct"}).token == "direct"


@pytest.mark.parametrize("bad", ["", "ab:cd", "zz" * 32, "sha1:" + "00" * 32])
def test_bad_fingerprints_are_refused(bad: str) -> None:
    with pytest.raises(ClientConfigError):
        normalize_fingerprint(bad)


def test_bad_urls_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ClientConfigError, match="not a URL"):
        load_settings({"CMDD_PROFILE": str(tmp_path / "none"), "CMDD_URL": "localhost:8443"})


def test_job_spec_from_options() -> None:
    assert job_spec(["ls", "-l"], env=["A=1=2"], labels=["team=ci"], cwd="/srv", timeout=5) == {
        "command_line": ["ls", "-l"], "environment": {"A": "1=2"}, "labels": {"team": "ci"},
        "working_directory": "/srv", "timeout": 5,
    }  # fmt: skip
    assert job_spec([], shell="echo hi") == {"command": "echo hi"}
    for argv, shell in (([], None), (["ls"], "ls")):
        with pytest.raises(OptionError):
            job_spec(argv, shell=shell)
    with pytest.raises(OptionError, match="NAME=VALUE"):
        job_spec(["ls"], env=["JUSTNAME"])


@pytest.mark.parametrize(
    ("end", "status"),
    [
        ({"state": "succeeded", "exit_code": 0, "signal": None}, 0),
        ({"state": "failed", "exit_code": 3, "signal": None}, 3),
        ({"state": "failed", "exit_code": None, "signal": 9}, 137),
        ({"state": "cancelled", "exit_code": None, "signal": 15}, 143),
        ({"state": "cancelled", "exit_code": 7, "signal": None}, 7),
        ({"state": "cancelled", "exit_code": None, "signal": None}, 130),
        ({"state": "not_executed", "exit_code": None, "signal": None}, 127),
        ({"state": "lost", "exit_code": None, "signal": None}, 125),
    ],
)
def test_exit_status_follows_docker_run(end: dict[str, object], status: int) -> None:
    assert exit_status(end) == status


def test_event_stream_survives_any_chunking() -> None:
    """The client's SSE parser ends lines at CR, LF and CRLF (also split
    across chunks), as browsers do, whatever the chunking."""
    wire = (
        b"event: stdout\ndata: one\ndata: two\ndata: \n\n: comment\n\n"
        b"event: stderr\r\ndata: \xd0\xbf\xd1\x80\xd0\xb8\rdata: x\r\r"
        b'event: end\ndata: {"state":"succeeded"}\n\n'
    )
    for size in (1, 2, 3, 7, len(wire)):
        events: list[tuple[str, str]] = []
        parser = EventStream(lambda event, data, events=events: events.append((event, data)))
        for start in range(0, len(wire), size):
            parser.feed(wire[start : start + size])
        assert events == [
            ("stdout", "one\ntwo\n"), ("stderr", "при\nx"), ("end", '{"state":"succeeded"}'),
        ]  # fmt: skip
        assert json.loads(events[-1][1]) == {"state": "succeeded"}


def test_table_fits_the_width() -> None:
    rows = [("1", "running", "x" * 200), ("22", "queued", "short")]
    lines = table(("ID", "STATE", "COMMAND"), rows, 40).splitlines()
    assert lines[0] == "ID  STATE    COMMAND"
    assert all(len(line) <= 40 for line in lines)
    assert lines[1].endswith("…") and lines[2].endswith("short")


def test_token_requests() -> None:
    assert parse_token_request({}) == TokenRequest()
    assert parse_token_request({"user": "prom", "expires_in": 60}) == TokenRequest(60.0, "", "prom")
    for bad in ({"user": 3}, {"user": ""}, {"expires_in": True}, {"other": 1}, []):
        with pytest.raises(ClientError):
            parse_token_request(bad)
