"""The Slurm job id in the journal and the API, and the [executor] settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from cmdd.codec import decode, encode, job_events
from cmdd.config import ConfigError, build_settings, load_toml
from cmdd.jobs import (
    Created,
    Ended,
    InvalidTransitionError,
    Outcome,
    Started,
    State,
    Submitted,
    apply_event,
)
from cmdd.representations import job_json
from cmdd.slots import SlotQueue
from cmdd.spec import parse_spec


def _running_job():  # type: ignore[no-untyped-def]  # test helper
    job = apply_event(None, Created(1, 10.0, parse_spec({"command": "true"})))
    return apply_event(job, Started(1, 11.0, "node"))


def test_submitted_keeps_the_slurm_job_id_through_the_end() -> None:
    """The Slurm id a running job got stays in its record once it ends."""
    job = apply_event(_running_job(), Submitted(1, 11.5, "4242"))
    assert job is not None and job.slurm_job_id == "4242"
    ended = apply_event(job, Ended(1, 12.0, Outcome(State.SUCCEEDED, exit_code=0)))
    assert ended is not None and ended.slurm_job_id == "4242"
    assert job_json(ended)["slurm_job_id"] == "4242"
    with pytest.raises(InvalidTransitionError):
        apply_event(ended, Submitted(1, 13.0, "1"))


def test_submitted_round_trips_and_survives_compaction() -> None:
    """The journal line decodes to the same event, and compaction writes it again."""
    event = Submitted(1, 11.5, "4242")
    line = encode(5, event)
    assert b'"type":"submitted"' in line and b'"slurm_job_id":"4242"' in line
    assert decode(line.rstrip(b"\n")).item == event
    job = apply_event(_running_job(), event)
    assert job is not None
    rebuilt = None
    for item in job_events(job):
        rebuilt = apply_event(rebuilt, item)
    assert rebuilt == job


def test_jobs_without_a_slurm_id_show_none() -> None:
    """Local jobs have no slurm_job_id field."""
    assert "slurm_job_id" not in job_json(_running_job())


def test_executor_table_and_command_line(tmp_path: Path) -> None:
    """[executor] sets the Slurm options (beside [cmdd] or at top level);
    --executor overrides its type; the shared directory defaults beside
    (not inside) the data directory."""
    config = tmp_path / "cmdd.toml"
    config.write_text(
        '[cmdd]\ndata_dir = "/srv/cmdd"\n[executor]\ntype = "slurm"\npartition = "batch"\n'
        'account = "ops"\nsbatch_options = ["--qos=fast"]\npoll_interval = 0.5\n'
    )
    settings = build_settings(load_toml(str(config)), {})
    assert settings.executor == "slurm" and settings.slurm.partition == "batch"
    assert settings.slurm.sbatch_options == ("--qos=fast",) and settings.slurm.poll_interval == 0.5
    assert settings.shared_dir == "/srv/cmdd-slurm"
    assert build_settings(load_toml(str(config)), {"executor_type": "local"}).executor == "local"
    assert build_settings({}, {}).executor == "local"


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"type": "pbs"}, "executor must be one of"),
        ({"queue": "x"}, "unknown setting"),
        ({"sbatch_options": "--qos=x"}, "list of strings"),
        ({"poll_interval": 0}, "more than 0"),
        ({"partition": ""}, "non-empty"),
    ],
)
def test_bad_executor_settings_are_explained(table: dict[str, object], message: str) -> None:
    """A wrong [executor] setting stops the start with a one-line reason."""
    with pytest.raises(ConfigError, match=message):
        build_settings({"executor": table}, {})


def test_slot_queue_hold_counts_a_readopted_job() -> None:
    """A re-adopted job holds its concurrency key's slot until released."""
    queue = SlotQueue()
    queue.hold(1, "k")
    queue.enqueue(2, "k", 1)
    assert queue.next_startable() is None
    queue.release(1)
    assert queue.next_startable() == 2
