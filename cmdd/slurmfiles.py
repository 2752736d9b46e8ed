"""The files of a Slurm job in the shared directory (blocking: the I/O thread).

A job's directory belongs to the job's user, who may swap any file in it
for a symbolic or hard link: everything here is opened relative to the
directory's descriptor, without following links, and only regular files
the job's user owns with a single link are read. So the daemon (root)
never reads on a job's behalf what the job itself could not.
"""

from __future__ import annotations

import os
import shutil
import stat

from cmdd.slurmplan import JobPaths

_OPEN = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def prepare(paths: JobPaths, uid: int | None, gid: int | None, stdin: bytes | None) -> None:
    """Make the job's directory (and its stdin file), then give it to the
    job's user. A leftover directory of the same name is removed first."""
    shutil.rmtree(paths.directory, ignore_errors=True)
    os.mkdir(paths.directory, 0o700)
    if stdin is not None:
        fd = os.open(paths.stdin, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, stdin)
            if uid is not None:
                os.fchown(fd, uid, -1 if gid is None else gid)
        finally:
            os.close(fd)
    if uid is not None:
        os.chown(paths.directory, uid, -1 if gid is None else gid)


def remove(paths: JobPaths) -> None:
    """Remove the job's directory (rmtree never follows a link out of it)."""
    shutil.rmtree(paths.directory, ignore_errors=True)


def _owner_ok(info: os.stat_result, uid: int | None) -> bool:
    return uid is None or info.st_uid == uid


def read_file(directory: str, name: str, uid: int | None, offset: int, limit: int) -> bytes:
    """Up to C{limit} bytes of the job's file C{name} from C{offset}; empty
    when it does not exist (yet) or is not a file the job's user wrote."""
    try:
        dir_fd = os.open(directory, _DIR)
    except OSError:
        return b""
    try:
        if not _owner_ok(os.fstat(dir_fd), uid):
            return b""
        try:
            fd = os.open(name, _OPEN, dir_fd=dir_fd)
        except OSError:
            return b""
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1 or not _owner_ok(info, uid):
                return b""
            return os.pread(fd, limit, offset)
        finally:
            os.close(fd)
    finally:
        os.close(dir_fd)


def read_new(
    paths: JobPaths, uid: int | None, offsets: tuple[int, int], limit: int
) -> tuple[bytes, bytes]:
    """What the job wrote to stdout and stderr since C{offsets}."""
    return (
        read_file(paths.directory, "stdout", uid, offsets[0], limit),
        read_file(paths.directory, "stderr", uid, offsets[1], limit),
    )


def read_status(paths: JobPaths, uid: int | None) -> bytes:
    """The wrapper's status file (empty if none)."""
    return read_file(paths.directory, "status", uid, 0, 4096)
