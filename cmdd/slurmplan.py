"""Slurm, the pure part: sbatch's argv for a job, squeue's answer, states.

No I/O and no reactor (L{cmdd.slurm} runs the commands): what cmdd asks of
Slurm and what Slurm's answers mean, so that both are tested without a
cluster.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

from attrs import frozen

from cmdd.jobs import State

#: The batch script every job runs: it runs the job's argv (with the job's
#: umask), then writes how it ended (exit code or signal) to the status file,
#: which a shell cannot tell apart (exit 143 or SIGTERM). The wrapper
#: ignores nothing: a handler (not SIG_IGN) is reset by exec, so the job gets
#: TERM as Slurm sends it while the wrapper lives on to write the status.
WRAPPER = """\
#!/usr/bin/python3 -IS
# cmdd's Slurm batch wrapper: argv = status-file umask program [args...]
import json, os, signal, sys
status, mask, argv = sys.argv[1], int(sys.argv[2], 8), sys.argv[3:]
for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCONT):
    signal.signal(signum, lambda *_: None)
os.umask(mask)
def record(fields):
    with open(status + ".new", "w") as out:
        json.dump(fields, out)
    os.rename(status + ".new", status)
try:
    pid = os.posix_spawnp(argv[0], argv, os.environ)
except OSError as e:
    why = "executable not found" if e.errno == 2 else e.strerror
    record({"not_executed": argv[0][:200] + ": " + why})
    sys.exit(127)
while True:
    try:
        _, wait_status = os.waitpid(pid, 0)
        break
    except ChildProcessError:
        wait_status = 0
        break
if os.WIFSIGNALED(wait_status):
    record({"exit_code": None, "signal": os.WTERMSIG(wait_status)})
    sys.exit(128 + os.WTERMSIG(wait_status))
code = os.waitstatus_to_exitcode(wait_status)
record({"exit_code": code, "signal": None})
sys.exit(code)
"""

#: Slurm's job states and what they mean for a cmdd job.
STATES: Mapping[str, State] = {
    "PENDING": State.QUEUED,
    "REQUEUED": State.QUEUED,
    "SUSPENDED": State.RUNNING,
    "CONFIGURING": State.RUNNING,
    "RUNNING": State.RUNNING,
    "COMPLETING": State.RUNNING,
    "COMPLETED": State.SUCCEEDED,
    "FAILED": State.FAILED,
    "TIMEOUT": State.FAILED,
    "NODE_FAIL": State.FAILED,
    "OUT_OF_MEMORY": State.FAILED,
    "PREEMPTED": State.FAILED,
    "BOOT_FAIL": State.FAILED,
    "DEADLINE": State.FAILED,
    "CANCELLED": State.CANCELLED,
}


@frozen
class SlurmOptions:
    """The operator's Slurm settings (C{[executor]} in the config file)."""

    partition: str | None = None
    account: str | None = None
    #: More sbatch options, passed as given before cmdd's own.
    sbatch_options: tuple[str, ...] = ()
    #: Seconds between two polls of every live job (one squeue call).
    poll_interval: float = 1.0


@frozen
class Submission:
    """What cmdd runs to hand one job to Slurm.

    C{argv} is sbatch's command line; C{environment} goes to sbatch through
    C{--export-file} on descriptor 3 (NUL-separated, so any value survives,
    and no client variable can change sbatch's own options).
    """

    argv: tuple[str, ...]
    environment: bytes


@frozen
class JobPaths:
    """A job's files in the shared directory, as the nodes see them."""

    directory: str
    stdout: str
    stderr: str
    stdin: str
    status: str


def job_paths(shared_dir: str, job_id: int) -> JobPaths:
    """Where a job's output, stdin and status files live."""
    directory = f"{shared_dir.rstrip('/')}/job-{job_id}"
    return JobPaths(
        directory,
        f"{directory}/stdout",
        f"{directory}/stderr",
        f"{directory}/stdin",
        f"{directory}/status",
    )


def job_name(instance: str, job_id: int) -> str:
    """The Slurm job name of a cmdd job: finds it again after a crash that
    came before its Slurm id was journaled."""
    return f"cmdd-{instance}-{job_id}"


def time_limit_minutes(timeout: float) -> int:
    """Slurm's C{--time} for a cmdd timeout: a backstop a minute after it
    (cmdd ends the job at its timeout; Slurm does if cmdd is down)."""
    return math.ceil(timeout / 60) + 1


def sbatch_argv(
    *,
    options: SlurmOptions,
    wrapper: str,
    paths: JobPaths,
    name: str,
    argv: Iterable[str],
    cwd: str,
    umask: int,
    timeout: float | None,
    labels: Mapping[str, str],
    uid: int | None,
    gid: int | None,
    has_stdin: bool,
) -> tuple[str, ...]:
    """sbatch's argv for one job (see L{Submission})."""
    command = ["sbatch", "--parsable", *options.sbatch_options]
    if options.partition is not None:
        command.append(f"--partition={options.partition}")
    if options.account is not None:
        command.append(f"--account={options.account}")
    command += [
        f"--job-name={name}",
        # The job's variables only: with --export-file, sbatch exports the
        # file's variables, not its own (minimal) environment. (--export=NIL
        # as well measured about 0.5 s slower to start, for nothing.)
        "--export-file=3",
        f"--chdir={cwd}",
        f"--output={_literal(paths.stdout)}",
        f"--error={_literal(paths.stderr)}",
        f"--input={_literal(paths.stdin) if has_stdin else '/dev/null'}",
        "--open-mode=append",
        "--ntasks=1",
        "--no-requeue",
    ]
    if labels:
        command.append("--comment=" + json.dumps(dict(labels), separators=(",", ":")))
    if timeout is not None:
        command.append(f"--time={time_limit_minutes(timeout)}")
    if uid is not None:
        command.append(f"--uid={uid}")
    if gid is not None:
        command.append(f"--gid={gid}")
    return (*command, wrapper, paths.status, f"{umask:o}", *argv)


def _literal(path: str) -> str:
    """A path with Slurm's filename patterns (C{%j}, ...) escaped."""
    return path.replace("\\", "\\\\").replace("%", "%%")


def export_file(environment: Mapping[str, str]) -> bytes:
    """The job's environment for C{--export-file}: C{NAME=value} records
    separated by NUL bytes."""
    return b"".join(f"{name}={value}".encode() + b"\0" for name, value in environment.items())


def parse_sbatch(output: bytes) -> str:
    """The Slurm job id in C{sbatch --parsable}'s answer (C{id} or C{id;cluster}).

    @raise ValueError: no job id in it.
    """
    line = output.decode("utf-8", "replace").strip().splitlines()
    first = line[-1].split(";")[0].strip() if line else ""
    if not first.isdigit():
        raise ValueError(f"sbatch answered {first[:200]!r}, not a job id")
    return first


@frozen
class SlurmJob:
    """One job as squeue reports it."""

    job_id: str
    name: str
    state: str
    reason: str | None
    exit_code: int | None
    signal: int | None


#: squeue's output format: one job a line, fields split by "|", the reason
#: (free text) last. (squeue --json is 20 times slower and, in Slurm 22.05,
#: ignores --jobs: it always dumps every job the controller knows.)
SQUEUE_FORMAT = "JobID:|,State:|,exit_code:|,Name:|,Reason:"


def squeue_argv(squeue: str, ids: Iterable[str] = (), names: Iterable[str] = ()) -> list[str]:
    """One squeue call for these Slurm job ids (or, after a crash, job names)."""
    argv = [squeue, "--noheader", "--states=all", f"--Format={SQUEUE_FORMAT}"]
    wanted_ids, wanted_names = list(ids), list(names)
    if wanted_ids:
        argv.append("--jobs=" + ",".join(wanted_ids))
    if wanted_names:
        argv.append("--name=" + ",".join(wanted_names))
    return argv


def _wait_status(text: str) -> tuple[int | None, int | None]:
    """squeue's exit_code: a wait status (exit code << 8, or the signal)."""
    try:
        value = int(text)
    except ValueError:
        return None, None
    if value & 0x7F:
        return None, value & 0x7F
    return (value >> 8) & 0xFF, None


def parse_squeue(text: bytes | str) -> dict[str, SlurmJob]:
    """Every job in one answer of L{squeue_argv}'s command, by Slurm job id.

    @raise ValueError: a line that is not in L{SQUEUE_FORMAT}.
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    found: dict[str, SlurmJob] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        fields = line.split("|", 4)
        if len(fields) != 5 or not fields[0].strip().isdigit():
            raise ValueError(f"squeue answered {line[:200]!r}")
        job_id, state, code, name, reason = (field.strip() for field in fields)
        exit_code, signal = _wait_status(code)
        found[job_id] = SlurmJob(
            job_id, name, state.split()[0], None if reason in ("", "None") else reason,
            exit_code, signal,
        )  # fmt: skip
    return found


def parse_exit_code(text: str) -> tuple[int | None, int | None]:
    """C{scontrol show job}'s C{ExitCode=a:b}: exit code a, or signal b."""
    code, _, signal = text.partition(":")
    exit_code, signum = int(code), int(signal or 0)
    return (None, signum) if signum else (exit_code, None)


def cmdd_state(slurm_state: str) -> State | None:
    """The cmdd state a Slurm state means (C{None}: one cmdd does not know)."""
    return STATES.get(slurm_state.split()[0].rstrip("+"))


def failure_reason(job: SlurmJob) -> str | None:
    """Why Slurm ended a job that cmdd did not end, or C{None} if it ended
    by itself (completed, or failed with the job's own exit code)."""
    state = cmdd_state(job.state)
    if state is State.CANCELLED:
        return "cancelled in Slurm" + (f" ({job.reason})" if job.reason else "")
    if state is State.FAILED and job.state != "FAILED":
        return f"Slurm: {job.state}" + (f" ({job.reason})" if job.reason else "")
    return None


def parse_status(text: bytes) -> dict[str, Any] | None:
    """The wrapper's status file (C{None} if torn or not the wrapper's)."""
    try:
        fields = json.loads(text)
    except ValueError:
        return None
    return fields if isinstance(fields, dict) else None
