"""The local job host: who jobs run as, their sandbox, the spawner.

Gathers the facts L{cmdd.isolation} decides on (the daemon's uid, Unix
accounts, whether bubblewrap works here), checks them once at start-up, and
builds the L{cmdd.runner.LocalExecutor} with its L{SpawnerLink}.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
from collections.abc import Iterable
from typing import Any

from twisted.logger import Logger

from cmdd import spawner
from cmdd.config import Settings
from cmdd.isolation import (
    Sandbox,
    hidden_files,
    spawner_command,
    without_isolation_warning,
)
from cmdd.leftovers import instance_of
from cmdd.runner import Identity, LocalExecutor, SpawnError
from cmdd.spawnerlink import SpawnerLink

log = Logger()

#: The spawner's environment: nothing of the daemon's own.
SPAWNER_ENVIRONMENT = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


class StartupError(Exception):
    """The job host cannot be set up as configured (one line says why)."""


def identity_of(account: pwd.struct_passwd) -> Identity:
    """A Unix account as a job identity (uid, gid, supplementary groups)."""
    groups = os.getgrouplist(account.pw_name, account.pw_gid)
    return Identity(
        name=account.pw_name,
        uid=account.pw_uid,
        gid=account.pw_gid,
        groups=tuple(groups),
        home=account.pw_dir or "/",
    )


def own_identity() -> Identity:
    """The daemon's own identity (jobs of an unprivileged daemon): no switch."""
    try:
        account = pwd.getpwuid(os.geteuid())
        name, home = account.pw_name, account.pw_dir or "/"
    except KeyError:
        name, home = str(os.geteuid()), "/"
    return Identity(name=name, uid=None, gid=None, groups=(), home=home)


class Identities:
    """Looks up the Unix user a job spec names (allow-listed by the API)."""

    def __init__(self, allow_root: bool) -> None:
        self._allow_root = allow_root

    def __call__(self, name: str) -> Identity:
        try:
            account = pwd.getpwnam(name)
        except KeyError:
            raise SpawnError(f"no Unix user {name!r}") from None
        if account.pw_uid == 0 and not self._allow_root:
            raise SpawnError(f"Unix user {name!r} is root; jobs may not run as root")
        return identity_of(account)


def job_identity(settings: Settings, as_root: bool) -> Identity:
    """Who jobs run as by default; checked at start."""
    if not as_root:
        return own_identity()
    try:
        account = pwd.getpwnam(settings.job_user)
    except KeyError:
        raise StartupError(
            f"job_user {settings.job_user!r} is not a Unix user; create it "
            "(useradd --system --no-create-home cmdd-job) or set job_user"
        ) from None
    if account.pw_uid == 0 and not settings.allow_root_jobs:
        raise StartupError(
            f"job_user {settings.job_user!r} is root: set allow_root_jobs = true if you mean it"
        )
    return identity_of(account)


def secret_paths(settings: Settings, extra: Iterable[str]) -> tuple[str, ...]:
    """Files jobs must not read that may live outside the data directory."""
    return hidden_files((os.path.realpath(p) for p in extra), [settings.data_dir])


def choose_sandbox(settings: Settings, secrets: tuple[str, ...], as_root: bool) -> Sandbox | None:
    """The sandbox to use, after proving it starts the spawner here."""
    if settings.job_sandbox == "off":
        return None
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        if settings.job_sandbox == "bubblewrap":
            raise StartupError("job_sandbox is bubblewrap but bwrap is not installed")
        return None
    writable = ("/var/tmp", *settings.job_writable_paths)  # noqa: S108 (mount points)
    if not settings.job_private_tmp:
        writable = ("/tmp", *writable)  # noqa: S108 (a mount point)
    sandbox = Sandbox(
        bwrap,
        hidden_directories=(os.path.realpath(settings.data_dir),),
        hidden_files=secrets,
        private_tmp=settings.job_private_tmp,
        network=settings.job_network,
        # Jobs of an unprivileged daemon share its uid: all it owns (home,
        # configuration, installation) must be read-only to them.
        read_only=not as_root,
        writable=tuple(os.path.realpath(p) for p in writable if os.path.isdir(p)),
        # Shown again if a private /tmp would hide them (an install under /tmp).
        needed_files=(spawner_python(), spawner_path()),
    )
    why = _check(sandbox, as_root, settings.allow_root_jobs)
    if why is None:
        return sandbox
    if settings.job_sandbox == "bubblewrap":
        raise StartupError(f"bubblewrap cannot start the job spawner: {why}")
    log.warn("bubblewrap is installed but does not work here ({why}); jobs run without it", why=why)
    return None


def _check(sandbox: Sandbox | None, as_root: bool, allow_root: bool) -> str | None:
    """Start the spawner once in check mode (synchronous: before the reactor runs)."""
    command = _command(sandbox, as_root, allow_root, check=True)
    try:
        done = subprocess.run(
            command,
            env=SPAWNER_ENVIRONMENT,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=20,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return str(e)
    if done.returncode != 0:
        text = done.stderr.decode("utf-8", "replace").strip().splitlines()
        return text[-1] if text else f"exit status {done.returncode}"
    return None


def spawner_python() -> str:
    """A Python the daemon's user may run: the spawner needs only its stdlib.

    A virtualenv's interpreter may link into a directory only its creator can
    enter (say, pyenv under /root), even though twistd started.
    """
    base = getattr(sys, "_base_executable", None)
    # The real file first: a venv's link may sit where the sandbox hides it.
    candidates = (os.path.realpath(sys.executable), sys.executable, base, shutil.which("python3"))
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return sys.executable


def spawner_path() -> str:
    """The spawner program's file."""
    return os.path.realpath(spawner.__file__)


def _command(sandbox: Sandbox | None, as_root: bool, allow_root: bool, check: bool) -> list[str]:
    return spawner_command(
        spawner_python(),
        spawner_path(),
        sandbox,
        as_root=as_root,
        allow_root_jobs=allow_root,
        check=check,
    )


def make_executor(
    reactor: Any, settings: Settings, key_files: Iterable[str]
) -> tuple[LocalExecutor, SpawnerLink, str]:
    """The executor and its spawner link; also a line that says how jobs run.

    @raise StartupError: the configured isolation is not possible here.
    """
    as_root = os.geteuid() == 0
    identity = job_identity(settings, as_root)
    sandbox = choose_sandbox(settings, secret_paths(settings, key_files), as_root)
    if sandbox is None:
        why = _check(None, as_root, settings.allow_root_jobs)
        if why is not None:
            raise StartupError(f"the job spawner cannot start: {why}")
        warning = without_isolation_warning(as_root)
        if warning is not None:
            log.critical(warning)
    link = SpawnerLink(
        reactor,
        _command(sandbox, as_root, settings.allow_root_jobs, check=False),
        SPAWNER_ENVIRONMENT,
    )
    executor = LocalExecutor(
        reactor,
        link,
        identity,
        Identities(settings.allow_root_jobs),
        instance=instance_of(settings.data_dir),
    )
    summary = (
        f"jobs run as {identity.name}"
        + (" (the daemon's own user)" if identity.uid is None else "")
        + (", sandboxed by bubblewrap" if sandbox is not None else ", without a sandbox")
    )
    return executor, link, summary
