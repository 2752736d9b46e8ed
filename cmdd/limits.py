"""The operator-set limits for running jobs (reloaded on SIGHUP).

Its own module so that the manager and the per-run supervision both read it
without importing each other.
"""

from __future__ import annotations

import attrs


@attrs.define
class Limits:
    """Operator-set limits for running jobs."""

    max_running: int = 8
    max_queued: int = 10_000
    #: Jobs waiting for their C{run_at} (they hold no queue place until then).
    max_scheduled: int = 100_000
    max_output_bytes: int = 16 * 1024 * 1024
    default_timeout: float | None = None
    kill_grace: float = 5.0
    #: Seconds a stop waits for running jobs to finish before ending them.
    stop_grace: float = 30.0
