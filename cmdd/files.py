"""Small durable-file helpers shared by the journal, users, tokens and TLS."""

from __future__ import annotations

import os
import stat


def fsync_directory(path: str) -> None:
    """Make a rename or a new file in C{path} durable."""
    fd = os.open(path or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> int:
    """Write every byte of C{data} to C{fd}; returns its length."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    return len(data)


def open_replacement(path: str, temporary: str) -> int:
    """A new empty file at C{temporary}, mode 0600, to be renamed over C{path}.

    Whatever had the temporary name (left by a crash, or a planted symlink)
    is removed first and the file is created exclusively (C{O_EXCL},
    C{O_NOFOLLOW}), so nothing is ever written through a link. When root
    replaces a regular file that another user owns (C{cmdd user add} or
    C{cmdd journal compact} run as root against a daemon running as
    C{cmdd}), the new file keeps the old one's owner and group, so the daemon
    can still read and rewrite it.

    @return: a descriptor open for writing; the caller closes it.
    """
    try:
        os.unlink(temporary)
    except FileNotFoundError:
        pass
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(temporary, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        if os.geteuid() == 0:
            try:
                old = os.lstat(path)
            except FileNotFoundError:
                pass
            else:
                if stat.S_ISREG(old.st_mode):
                    os.fchown(fd, old.st_uid, old.st_gid)
    except BaseException:
        os.close(fd)
        os.unlink(temporary)
        raise
    return fd


def write_private_file(path: str, data: bytes) -> None:
    """Replace C{path} with C{data} atomically: mode 0600, fsync, rename, fsync dir.

    A crash leaves either the old file or the new one, never half of either.
    A file root rewrites keeps its owner (see L{open_replacement}).
    """
    temporary = f"{path}.{os.getpid()}.tmp"
    fd = open_replacement(path, temporary)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)
    fsync_directory(os.path.dirname(path))
