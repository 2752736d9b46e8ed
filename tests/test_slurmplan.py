"""The Slurm executor's pure part: sbatch's argv, squeue's answer, states."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cmdd.jobs import State
from cmdd.slurm import exit_of
from cmdd.slurmplan import (
    WRAPPER,
    SlurmJob,
    SlurmOptions,
    cmdd_state,
    export_file,
    failure_reason,
    job_paths,
    parse_exit_code,
    parse_sbatch,
    parse_squeue,
    parse_status,
    sbatch_argv,
    squeue_argv,
    time_limit_minutes,
)


def _argv(**changes: object) -> tuple[str, ...]:
    arguments: dict[str, object] = {
        "options": SlurmOptions(),
        "wrapper": "/shared/cmdd-wrapper",
        "paths": job_paths("/shared", 7),
        "name": "cmdd-abc-7",
        "argv": ("/bin/sh", "-c", "echo hi"),
        "cwd": "/work",
        "umask": 0o022,
        "timeout": None,
        "labels": {},
        "uid": None,
        "gid": None,
        "has_stdin": False,
    }
    arguments.update(changes)
    return sbatch_argv(**arguments)  # type: ignore[arg-type]  # test helper


def test_sbatch_argv_runs_the_wrapper_with_the_jobs_argv_last() -> None:
    """The job's argv follows the wrapper, its status file and umask,
    untouched: no shell ever re-splits it."""
    argv = _argv(argv=("printf", "%s\n", "a b", "é;rm -rf /"))
    assert argv[0] == "sbatch" and "--parsable" in argv
    assert argv[-7:] == (
        "/shared/cmdd-wrapper", "/shared/job-7/status", "22",
        "printf", "%s\n", "a b", "é;rm -rf /",
    )  # fmt: skip
    assert "--chdir=/work" in argv and "--job-name=cmdd-abc-7" in argv
    assert "--output=/shared/job-7/stdout" in argv and "--error=/shared/job-7/stderr" in argv


def test_sbatch_argv_environment_goes_through_an_export_file_only() -> None:
    """The job's variables reach the job through --export-file on fd 3, never
    sbatch's own environment (SBATCH_* would change its options)."""
    argv = _argv()
    assert "--export-file=3" in argv
    data = export_file({"A": "x,y=z", "B": "line1\nline2", "C": "é"})
    assert data.split(b"\0") == [b"A=x,y=z", b"B=line1\nline2", "C=é".encode(), b""]


def test_sbatch_argv_stdin_uid_time_labels_and_operator_options() -> None:
    """stdin is the job's input file (else /dev/null); run-as gives --uid/--gid;
    a timeout gives Slurm a backstop a minute later; labels become the comment;
    the operator's options come before cmdd's."""
    argv = _argv(
        options=SlurmOptions(partition="p1", account="acct", sbatch_options=("--qos=fast",)),
        has_stdin=True, uid=1001, gid=1002, timeout=90.0, labels={"team": "ops"},
    )  # fmt: skip
    assert "--input=/shared/job-7/stdin" in argv
    assert {"--uid=1001", "--gid=1002", "--time=3", "--partition=p1", "--account=acct"} <= set(
        argv
    )
    assert argv.index("--qos=fast") < argv.index("--job-name=cmdd-abc-7")
    assert '--comment={"team":"ops"}' in argv
    plain = _argv()
    assert "--input=/dev/null" in plain
    assert not any(a.startswith(("--uid", "--gid", "--time", "--comment")) for a in plain)


def test_output_paths_escape_slurm_filename_patterns() -> None:
    """A % in the shared directory is not a Slurm pattern (%j, %u...)."""
    argv = _argv(paths=job_paths("/data/100%x", 7))
    assert "--output=/data/100%%x/job-7/stdout" in argv


def test_time_limit_is_a_whole_minute_backstop() -> None:
    """--time is in minutes and always after cmdd's own timeout."""
    assert time_limit_minutes(0.5) == 2
    assert time_limit_minutes(60) == 2
    assert time_limit_minutes(61) == 3


def test_parse_sbatch() -> None:
    """--parsable answers "id" or "id;cluster"; anything else is refused."""
    assert parse_sbatch(b"1234\n") == "1234"
    assert parse_sbatch(b"77;cmdd\n") == "77"
    with pytest.raises(ValueError, match="not a job id"):
        parse_sbatch(b"")
    with pytest.raises(ValueError):
        parse_sbatch(b"sbatch: error: oops\n")


SQUEUE = """\
9|FAILED|768|cmdd-x-1|NonZeroExitCode
10|FAILED|9|cmdd-x-2|JobLaunchFailure
11|PENDING|0|cmdd-x-3|Priority
12|COMPLETED|0|cmdd-x-4|None
13|TIMEOUT|15|n|reason | with a bar
"""


def test_squeue_argv_asks_once_for_every_job() -> None:
    """One squeue call lists every live job (ids, or names after a crash)."""
    argv = squeue_argv("/usr/bin/squeue", ids=["1", "2", "3"])
    assert argv[0] == "/usr/bin/squeue" and "--states=all" in argv and "--noheader" in argv
    assert "--jobs=1,2,3" in argv and not any(a.startswith("--name") for a in argv)
    assert "--name=cmdd-a-1" in squeue_argv("squeue", names=["cmdd-a-1"])


def test_parse_squeue_reads_every_job_of_one_answer() -> None:
    """One squeue answer gives each job's state, reason, exit code or signal
    (Slurm's exit_code is a wait status)."""
    jobs = parse_squeue(SQUEUE.encode())
    assert set(jobs) == {"9", "10", "11", "12", "13"}
    assert jobs["9"] == SlurmJob("9", "cmdd-x-1", "FAILED", "NonZeroExitCode", 3, None)
    assert (jobs["10"].exit_code, jobs["10"].signal) == (None, 9)
    assert jobs["11"].state == "PENDING" and jobs["11"].reason == "Priority"
    assert jobs["12"].reason is None and jobs["12"].exit_code == 0
    assert jobs["13"].state == "TIMEOUT" and jobs["13"].signal == 15
    assert jobs["13"].reason == "reason | with a bar"
    assert parse_squeue(b"") == {}
    with pytest.raises(ValueError):
        parse_squeue(b"slurm_load_jobs error: Unable to contact slurm controller\n")


@pytest.mark.parametrize(
    ("slurm", "cmdd"),
    [
        ("PENDING", State.QUEUED),
        ("RUNNING", State.RUNNING),
        ("COMPLETED", State.SUCCEEDED),
        ("FAILED", State.FAILED),
        ("TIMEOUT", State.FAILED),
        ("NODE_FAIL", State.FAILED),
        ("OUT_OF_MEMORY", State.FAILED),
        ("PREEMPTED", State.FAILED),
        ("CANCELLED", State.CANCELLED),
        ("CANCELLED+", State.CANCELLED),
        ("COMPLETING", State.RUNNING),
        ("SOMETHING_NEW", None),
    ],
)
def test_state_mapping(slurm: str, cmdd: State | None) -> None:
    """Slurm's states map exactly onto cmdd's."""
    assert cmdd_state(slurm) is cmdd


def test_failure_reason_names_what_slurm_did() -> None:
    """A job Slurm ended (timeout, node failure, memory) says so; one that
    failed by its own exit code has no reason."""
    job = SlurmJob("1", "n", "TIMEOUT", "TimeLimit", None, 15)
    assert failure_reason(job) == "Slurm: TIMEOUT (TimeLimit)"
    assert failure_reason(SlurmJob("1", "n", "FAILED", "NonZeroExitCode", 3, None)) is None
    assert failure_reason(SlurmJob("1", "n", "COMPLETED", None, 0, None)) is None
    assert failure_reason(SlurmJob("1", "n", "CANCELLED", None, None, 15)) == "cancelled in Slurm"


def test_exit_code_a_colon_b() -> None:
    """scontrol's ExitCode=a:b is exit code a, or signal b."""
    assert parse_exit_code("3:0") == (3, None)
    assert parse_exit_code("0:9") == (None, 9)
    assert parse_exit_code("0:0") == (0, None)


def test_exit_of_prefers_the_wrappers_status() -> None:
    """The wrapper's status file is exact; Slurm's record is the fallback;
    an exec failure is not_executed."""
    slurm = SlurmJob("1", "n", "FAILED", "NonZeroExitCode", 143, None)
    assert exit_of(slurm, {"exit_code": None, "signal": 15}).signal == 15
    assert exit_of(slurm, None).exit_code == 143
    missing = exit_of(slurm, {"not_executed": "nope: executable not found"})
    assert missing.not_executed == "nope: executable not found"
    assert exit_of(None, None).failure is not None
    done = exit_of(SlurmJob("1", "n", "COMPLETED", None, 0, None), None)
    assert (done.exit_code, done.failure) == (0, None)
    assert parse_status(b"{torn") is None


def _run_wrapper(tmp_path: Path, *argv: str) -> dict[str, object]:
    wrapper = tmp_path / "wrapper"
    wrapper.write_text(WRAPPER)
    status = tmp_path / "status"
    subprocess.run(
        [sys.executable, str(wrapper), str(status), "077", *argv],
        check=False, timeout=20, capture_output=True,
    )  # fmt: skip
    fields = json.loads(status.read_text())
    assert isinstance(fields, dict)
    return fields


def test_wrapper_records_exit_code_signal_and_exec_failure(tmp_path: Path) -> None:
    """The batch wrapper tells exit 143 from SIGTERM, and a missing program
    from a program that failed; it applies the job's umask."""
    assert _run_wrapper(tmp_path, "sh", "-c", "exit 143") == {"exit_code": 143, "signal": None}
    assert _run_wrapper(tmp_path, "sh", "-c", "kill -TERM $$") == {
        "exit_code": None,
        "signal": signal.SIGTERM,
    }
    missing = _run_wrapper(tmp_path, "no-such-program-x")
    assert missing == {"not_executed": "no-such-program-x: executable not found"}
    assert _run_wrapper(tmp_path, "sh", "-c", "test $(umask) = 0077") == {
        "exit_code": 0,
        "signal": None,
    }
    assert os.path.exists(tmp_path / "status")
