"""The Slurm job host: checked and built once at start-up.

Finds Slurm's commands, makes the shared directory and the batch wrapper,
and builds the L{cmdd.slurm.SlurmExecutor}. Synchronous on purpose: it runs
before the reactor does.
"""

from __future__ import annotations

import os
import shutil
import stat
from typing import Any

from cmdd.config import Settings
from cmdd.jobhost import Identities, StartupError, job_identity
from cmdd.leftovers import instance_of
from cmdd.slurm import SlurmExecutor, SlurmSetup, shared_directory
from cmdd.slurmplan import WRAPPER

COMMANDS = ("sbatch", "squeue", "scancel", "scontrol")
#: Slurm's commands' environment: nothing of the daemon's own but where
#: Slurm's configuration is.
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _closed_ancestor(path: str) -> str | None:
    """The first directory above C{path} that others may not search, if any
    (the job's user must reach its own directory inside C{path})."""
    parent = os.path.dirname(path)
    while True:
        if not os.stat(parent).st_mode & stat.S_IXOTH:
            return parent
        if parent == os.path.dirname(parent):
            return None
        parent = os.path.dirname(parent)


def make_slurm_executor(
    reactor: Any, settings: Settings, io_run: Any
) -> tuple[SlurmExecutor, str]:
    """The executor and a line that says how jobs run.

    @raise StartupError: Slurm's commands are missing, or the daemon is not
        root (jobs would run as the daemon's own user, who owns its data).
    """
    if os.geteuid() != 0:
        raise StartupError(
            "the Slurm executor needs the daemon to run as root: jobs run as job_user "
            "(sbatch --uid), never as the user who owns the data directory"
        )
    commands = {}
    for name in COMMANDS:
        found = shutil.which(name, path=PATH)
        if found is None:
            raise StartupError(f"the Slurm executor needs {name}; install slurm-client")
        commands[name] = found
    identity = job_identity(settings, True)
    shared = shared_directory(settings.shared_dir)
    if shared == os.path.realpath(settings.data_dir) or shared.startswith(
        os.path.realpath(settings.data_dir) + os.sep
    ):
        raise StartupError("the Slurm shared_dir must not be inside the data directory")
    closed = _closed_ancestor(shared)
    if closed is not None:
        raise StartupError(
            f"the Slurm shared_dir {shared} is inside {closed}, which job users cannot "
            "enter (it needs o+x); choose another shared_dir"
        )
    wrapper = os.path.join(shared, "cmdd-wrapper")
    with open(wrapper + ".new", "w", encoding="utf-8") as out:
        out.write(WRAPPER)
    os.chmod(wrapper + ".new", 0o755)  # noqa: S103 (a program every job user runs)
    os.replace(wrapper + ".new", wrapper)
    environment = {"PATH": PATH, "LANG": "C.UTF-8"}
    if "SLURM_CONF" in os.environ:
        environment["SLURM_CONF"] = os.environ["SLURM_CONF"]
    setup = SlurmSetup(
        settings.slurm, shared, wrapper, commands, environment, instance_of(settings.data_dir)
    )
    executor = SlurmExecutor(
        reactor, io_run, setup, identity, Identities(settings.allow_root_jobs)
    )
    partition = settings.slurm.partition or "the default partition"
    return executor, f"jobs run on Slurm ({partition}) as {identity.name}; output via {shared}"
