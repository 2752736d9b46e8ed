"""SIGHUP: the limits an operator may change without a restart.

The config file is read again (the command line still wins) and the limits
below take effect at once; any other setting that changed is named in the
log as needing a restart. A config file that no longer parses changes
nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from twisted.logger import Logger

from cmdd.config import ConfigError, Settings
from cmdd.limits import Limits
from cmdd.web import set_site_limits

log = Logger()

#: Settings applied at once on SIGHUP.
LIVE = frozenset(
    {
        "max_running",
        "max_queued",
        "max_output_bytes",
        "default_timeout",
        "kill_grace",
        "stop_grace",
        "max_body_bytes",
        "body_budget_bytes",
        "max_connections",
        "receive_timeout",
        "idle_timeout",
    }
)


def changed(old: Settings, new: Settings) -> tuple[list[str], list[str]]:
    """The names of settings that differ: (applied live, needing a restart)."""
    names = [f.name for f in attrs.fields(Settings) if getattr(old, f.name) != getattr(new, f.name)]
    return [n for n in names if n in LIVE], [n for n in names if n not in LIVE]


def reload_settings(
    current: Settings, reread: Callable[[], Settings], apply: Callable[[Settings], Any]
) -> Settings:
    """Read the settings again and C{apply} the live ones; the settings now in force.

    @param reread: builds the settings from the config file and command line
        (raises L{ConfigError} for a bad file).
    @param apply: puts the new limits into the running services.
    """
    try:
        new = reread()
    except ConfigError as e:
        log.error("SIGHUP: keeping the previous settings: {why}", why=str(e))
        return current
    live, later = changed(current, new)
    if later:
        log.warn(
            "SIGHUP: {names} changed; that takes a restart", names=", ".join(sorted(later))
        )
    kept = attrs.evolve(current, **{name: getattr(new, name) for name in live})
    if live:
        apply(kept)
        log.info(
            "SIGHUP: now {values}",
            values=", ".join(f"{name}={getattr(kept, name)}" for name in sorted(live)),
        )
    return kept


def limits_of(settings: Settings) -> Limits:
    """The job manager's limits in C{settings}."""
    return Limits(
        max_running=settings.max_running,
        max_queued=settings.max_queued,
        max_scheduled=settings.max_scheduled,
        max_output_bytes=settings.max_output_bytes,
        default_timeout=settings.default_timeout,
        kill_grace=settings.kill_grace,
        stop_grace=settings.stop_grace,
    )


def apply_site_limits(site: Any, settings: Settings) -> None:
    """The HTTP site's limits in C{settings} (see L{cmdd.web.set_site_limits})."""
    set_site_limits(
        site,
        settings.max_body_bytes,
        settings.idle_timeout,
        settings.body_budget_bytes,
        settings.max_connections,
        settings.receive_timeout,
    )
