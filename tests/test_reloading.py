"""SIGHUP's limits reload, without a daemon: what changes live, what waits."""

from __future__ import annotations

import pytest
from conftest import LoggedErrors

from cmdd.config import ConfigError, Settings, build_settings
from cmdd.reloading import reload_settings


def test_live_limits_apply_and_the_rest_waits_for_a_restart() -> None:
    """Changed limits are applied at once; a changed listener is not (a
    restart is needed) and stays as it was."""
    current = build_settings({"data_dir": "/d"}, {})
    new = build_settings(
        {"data_dir": "/d", "max_running": 9, "max_connections": 7, "listen": "ssl:1:interface=::1"},
        {},
    )
    applied: list[Settings] = []
    now = reload_settings(current, lambda: new, applied.append)
    assert applied == [now]
    assert (now.max_running, now.max_connections) == (9, 7)
    assert now.listen == current.listen


@pytest.mark.logs_errors("keeping the previous settings")
def test_a_broken_config_file_changes_nothing(logged_errors: LoggedErrors) -> None:
    """A config file that no longer parses keeps every setting (and says so)."""
    current = build_settings({"data_dir": "/d"}, {})

    def broken() -> Settings:
        raise ConfigError("config file x is not valid TOML")

    applied: list[Settings] = []
    assert reload_settings(current, broken, applied.append) is current
    assert applied == []
    assert logged_errors.events  # the error is logged before the marker takes it
