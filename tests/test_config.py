"""Settings: defaults, config file, command line, and refusing unsafe listeners."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cmdd.config import (
    DEFAULT_LISTEN,
    ConfigError,
    build_settings,
    check_endpoint,
    load_toml,
    needs_generated_certificate,
    split_endpoint,
    with_certificate,
)


def test_defaults_are_safe() -> None:
    """With nothing configured: TLS on loopback, data in ./cmdd-data, 16 MiB cap."""
    settings = build_settings({}, {})
    assert settings.listen == (DEFAULT_LISTEN,)
    assert settings.data_dir == os.path.abspath("cmdd-data")
    assert settings.max_output_bytes == 16 * 1024 * 1024
    assert settings.max_running == max(64, 4 * (os.cpu_count() or 1))
    assert settings.default_timeout is None


def test_command_line_wins_over_file(tmp_path: Path) -> None:
    """A value given on the command line overrides the config file's."""
    config = tmp_path / "cmdd.toml"
    config.write_text(
        "[cmdd]\nmax_running = 3\nmax_queued = 7\n"
        "listen = ['tcp:8080:interface=127.0.0.1']\ndata_dir = '/srv/cmdd'\n"
    )
    settings = build_settings(load_toml(str(config)), {"max_running": "5", "max_queued": None})
    assert settings.max_running == 5
    assert settings.max_queued == 7
    assert settings.listen == ("tcp:8080:interface=127.0.0.1",)
    assert settings.data_dir == "/srv/cmdd"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("max_running = 0", "more than 0"),
        ("max_running = 'lots'", "must be a number"),
        ("max_running = 1.5", "whole number"),
        ("kill_grace = true", "must be a number"),
        ("listen = []", "endpoint"),
        ("allow_plaintext = 'yes'", "true or false"),
        ("colour = 'blue'", "unknown setting"),
        ("max_running = ", "not valid TOML"),
    ],
)
def test_bad_config_is_explained(tmp_path: Path, text: str, message: str) -> None:
    """A bad config file stops start-up with a message naming the problem."""
    config = tmp_path / "cmdd.toml"
    config.write_text(text + "\n")
    with pytest.raises(ConfigError, match=message):
        build_settings(load_toml(str(config)), {})


def test_missing_config_file() -> None:
    """A config file that cannot be read is reported, not ignored."""
    with pytest.raises(ConfigError, match="cannot read"):
        load_toml("/nonexistent/cmdd.toml")


def test_endpoint_strings_split_like_twisted() -> None:
    """Colons and backslashes escape as in Twisted's endpoint syntax."""
    assert split_endpoint(r"ssl:8443:privateKey=/a\:b/key.pem") == (
        "ssl",
        ["8443"],
        {"privateKey": "/a:b/key.pem"},
    )
    assert split_endpoint(r"tcp:8080:interface=\:\:1") == ("tcp", ["8080"], {"interface": "::1"})


@pytest.mark.parametrize(
    "description",
    [
        "ssl:8443",
        "unix:/run/cmdd.sock",
        "tcp:8080:interface=127.0.0.1",
        "tcp:8080:interface=127.0.0.2",
        r"tcp6:8080:interface=\:\:1",
        "tcp:8080:interface=localhost",
    ],
)
def test_safe_endpoints_are_allowed(description: str) -> None:
    """TLS anywhere, Unix sockets and loopback TCP need no extra flag."""
    check_endpoint(description, allow_plaintext=False)


@pytest.mark.parametrize(
    "description", ["tcp:8080", "tcp:8080:interface=0.0.0.0", "tcp:8080:interface=10.0.0.1"]
)
def test_plaintext_beyond_this_host_needs_a_flag(description: str) -> None:
    """Plain TCP reachable from other hosts is refused unless asked for."""
    with pytest.raises(ConfigError, match="--allow-plaintext"):
        check_endpoint(description, allow_plaintext=False)
    check_endpoint(description, allow_plaintext=True)


def test_generated_certificate_is_added_only_where_missing() -> None:
    """An ssl: endpoint without a key gets the generated one; others are untouched."""
    assert needs_generated_certificate(("ssl:8443",))
    assert not needs_generated_certificate(("ssl:8443:privateKey=/k.pem", "tcp:1"))
    added = with_certificate("ssl:8443", "/d:x/cert.pem", "/d/key.pem")
    assert split_endpoint(added)[2] == {"privateKey": "/d/key.pem", "certKey": "/d:x/cert.pem"}
    assert with_certificate("tcp:80", "/c", "/k") == "tcp:80"


@pytest.mark.parametrize(
    ("value", "expected"), [(None, 30.0), ("0", 0.0), (0, 0.0), ("2.5", 2.5), (120, 120.0)]
)
def test_stop_grace_defaults_to_30_and_may_be_0(value: object, expected: float) -> None:
    """stop_grace (seconds a stop lets running jobs finish) is 30 by default;
    0 means end them at once."""
    assert build_settings({"stop_grace": value} if value is not None else {}, {}).stop_grace == (
        expected
    )


@pytest.mark.parametrize("value", [-1, "soon", True, float("nan")])
def test_stop_grace_must_be_seconds(value: object) -> None:
    """A negative, boolean or non-numeric stop_grace is refused at start."""
    with pytest.raises(ConfigError, match="stop_grace"):
        build_settings({"stop_grace": value}, {})


def test_connection_limits_are_settings(tmp_path: Path) -> None:
    """Body, connection and upload limits come from the file and the command line."""
    defaults = build_settings({}, {})
    assert (defaults.body_budget_bytes, defaults.max_connections) == (32 * 1024 * 1024, 1024)
    assert (defaults.receive_timeout, defaults.idle_timeout) == (30.0, 60.0)
    config = tmp_path / "cmdd.toml"
    config.write_text(
        "body_budget_bytes = 4096\nmax_connections = 8\nreceive_timeout = 2.5\nidle_timeout = 9\n"
    )
    from_file = build_settings(load_toml(str(config)), {"max_connections": "3"})
    assert from_file.body_budget_bytes == 4096
    assert from_file.max_connections == 3
    assert (from_file.receive_timeout, from_file.idle_timeout) == (2.5, 9.0)
    with pytest.raises(ConfigError, match="max_connections must be more than 0"):
        build_settings({"max_connections": 0}, {})


def test_twistd_options_reach_the_settings() -> None:
    """C{twistd cmdd --max-connections ...} and friends are options."""
    from cmdd.tap import Options

    options = Options()
    options.parseOptions(
        [
            "--max-connections", "5", "--body-budget-bytes", "2048",
            "--receive-timeout", "4", "--idle-timeout", "7", "--max-body-bytes", "100",
        ]
    )
    settings = options["settings"]
    assert (settings.max_connections, settings.body_budget_bytes) == (5, 2048)
    assert (settings.receive_timeout, settings.idle_timeout) == (4.0, 7.0)
    assert settings.max_body_bytes == 100
def test_schedule_limits_are_settings() -> None:
    """max_scheduled and max_schedules come from the file or the command line."""
    settings = build_settings({"max_schedules": 3}, {"max_scheduled": "5"})
    assert (settings.max_scheduled, settings.max_schedules) == (5, 3)
