"""Who jobs run as and what they can reach: the spawner's command line.

Pure: the facts (effective uid, where bwrap is, which paths are secret)
come in as arguments; L{cmdd.tap} gathers them and runs the check.

 - A daemon started as root runs the spawner as root with only the
   capabilities it needs to switch users and signal jobs, and every job as
   an unprivileged job user (or an allow-listed one; root only when
   explicitly allowed). Jobs cannot read the data directory (0700) or the
   daemon's C{/proc} entries, and cannot signal it.
 - With bubblewrap (the default when it works), the spawner and its jobs
   also live in a sandbox: the data directory and any key files elsewhere
   are covered, a new PID namespace hides the daemon, and the sandbox dies
   with the daemon. An unprivileged daemon relies on this alone, since its
   jobs share its uid.
"""

from __future__ import annotations

from collections.abc import Iterable

from attrs import frozen

#: What a root spawner keeps: switch users and groups, and signal jobs of
#: any user. Jobs lose both when they switch to a non-root uid.
SPAWNER_CAPABILITIES = ("CAP_SETUID", "CAP_SETGID", "CAP_KILL")


@frozen
class Sandbox:
    """A bubblewrap sandbox for the spawner and every job it forks.

    @ivar bwrap: the bwrap program.
    @ivar hidden_directories: covered by an empty read-only tmpfs (the data
        directory). Each of their ancestors becomes a mount point of its own,
        so that no job can rename or replace one and make the daemon's next
        open by path land in a directory the job made.
    @ivar hidden_files: covered by an empty file (key files elsewhere); their
        ancestors become mount points too, so no job can plant a key and
        certificate the daemon would load on SIGHUP.
    @ivar private_tmp: give jobs their own empty C{/tmp}.
    @ivar network: whether jobs keep the host's network.
    @ivar read_only: the host's file system is read-only to jobs, except
        C{writable} (for an unprivileged daemon, whose jobs share its uid
        and could otherwise change its home, configuration and installation).
    @ivar writable: paths that stay writable when C{read_only}.
    @ivar needed_files: files the spawner itself runs from (its interpreter
        and program), bound read-only where C{private_tmp} would hide them.
    """

    bwrap: str
    hidden_directories: tuple[str, ...]
    hidden_files: tuple[str, ...] = ()
    private_tmp: bool = False
    network: bool = True
    read_only: bool = False
    writable: tuple[str, ...] = ()
    needed_files: tuple[str, ...] = ()

    def arguments(self, as_root: bool) -> list[str]:
        """bwrap's command line up to (and including) the C{--}."""
        argv = [
            self.bwrap,
            "--die-with-parent",
            "--unshare-pid",
            # The spawner itself is PID 1: no bwrap reaper a job could
            # ptrace, and the kernel keeps every signal a job sends it away.
            "--as-pid-1",
            "--ro-bind" if self.read_only else "--bind", "/", "/",
        ]  # fmt: skip
        if self.read_only:
            for path in self.writable:
                argv += ["--bind", path, path]
        # An unprivileged daemon's jobs get a fresh minimal /dev (its own
        # /dev/shm); a root daemon's jobs, other users, keep the host's.
        argv += ["--dev", "/dev"] if self.read_only else ["--dev-bind", "/dev", "/dev"]
        argv += ["--proc", "/proc"]
        if self.private_tmp:
            # Sticky and world-writable, like a real /tmp (bwrap's default is 0755).
            argv += ["--perms", "1777", "--tmpfs", "/tmp"]  # noqa: S108 (a mount point)
            for path in self.needed_files:
                if _within(path, "/tmp"):  # noqa: S108 (a mount point)
                    argv += ["--ro-bind", path, path]
        for ancestor in ancestors((*self.hidden_directories, *self.hidden_files)):
            if self.private_tmp and _within(ancestor, "/tmp"):  # noqa: S108 (a mount point)
                continue  # on the jobs' own /tmp: the daemon never sees it
            writable = not self.read_only or any(_within(ancestor, w) for w in self.writable)
            argv += ["--bind" if writable else "--ro-bind", ancestor, ancestor]
        for directory in self.hidden_directories:
            # Empty and read-only: nothing can be read there, nor left there.
            argv += ["--tmpfs", directory, "--remount-ro", directory]
        for path in self.hidden_files:
            argv += ["--ro-bind", "/dev/null", path]
        if not self.network:
            argv.append("--unshare-net")
        if as_root:
            argv += ["--cap-drop", "ALL"]
            for capability in SPAWNER_CAPABILITIES:
                argv += ["--cap-add", capability]
        argv.append("--")
        return argv


def ancestors(paths: Iterable[str]) -> list[str]:
    """Every proper ancestor of these absolute paths but C{/}, parents first."""
    found: list[str] = []
    for path in paths:
        parts = path.strip("/").split("/")[:-1]
        for depth in range(1, len(parts) + 1):
            ancestor = "/" + "/".join(parts[:depth])
            if ancestor not in found:
                found.append(ancestor)
    return found


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def spawner_command(
    python: str,
    spawner_path: str,
    sandbox: Sandbox | None,
    *,
    as_root: bool,
    allow_root_jobs: bool,
    check: bool = False,
) -> list[str]:
    """The command line that starts the spawner (or, with C{check}, only
    proves it would start)."""
    argv = sandbox.arguments(as_root) if sandbox is not None else []
    argv += [python, "-I", "-S", spawner_path]
    if allow_root_jobs:
        argv.append("--allow-root")
    if check:
        argv.append("--check")
    return argv


def hidden_files(paths: Iterable[str], hidden_directories: Iterable[str]) -> tuple[str, ...]:
    """The secret files that are not already inside a hidden directory."""
    directories = tuple(d.rstrip("/") + "/" for d in hidden_directories)
    return tuple(sorted({p for p in paths if not p.startswith(directories)}))


def without_isolation_warning(as_root: bool) -> str | None:
    """What the operator must be told when jobs run without a sandbox."""
    if as_root:
        return None
    return (
        "JOBS ARE NOT ISOLATED: the daemon is not root and bubblewrap is not in use, "
        "so every job runs as the daemon's own user and can read its data directory "
        "(tokens, users, TLS key, journal), read other jobs' output and signal the "
        "daemon. Install bubblewrap or run cmdd as root (see README, Isolation)."
    )
