"""Small durable-file helpers shared by the journal, users, tokens and TLS.

Every writer that must survive a full disk (the journal, the output spool,
private files) does its file operations through a L{FileOps} object, so a
test can make the Nth of them fail (a short write, C{ENOSPC}, C{EIO}, a
failed fsync) and check what the writer left behind: the way SQLite tests
itself against I/O errors.
"""

from __future__ import annotations

import os
import stat


class FileOps:
    """The file operations of cmdd's writers: the real ones, from C{os}.

    A test passes a subclass that fails some of them (see
    C{tests/faults.py}). Only what a writer's durability depends on goes
    through here: opening, writing, syncing, truncating, renaming and
    unlinking.
    """

    def open(self, path: str, flags: int, mode: int = 0o600) -> int:
        """C{os.open}."""
        return os.open(path, flags, mode)

    def write(self, fd: int, data: bytes | memoryview) -> int:
        """C{os.write}: may write fewer bytes than given."""
        return os.write(fd, data)

    def fsync(self, fd: int) -> None:
        """C{os.fsync}."""
        os.fsync(fd)

    def fdatasync(self, fd: int) -> None:
        """C{os.fdatasync}."""
        os.fdatasync(fd)

    def ftruncate(self, fd: int, length: int) -> None:
        """C{os.ftruncate}."""
        os.ftruncate(fd, length)

    def replace(self, source: str, target: str) -> None:
        """C{os.replace}."""
        os.replace(source, target)

    def unlink(self, path: str) -> None:
        """C{os.unlink}."""
        os.unlink(path)

    def close(self, fd: int) -> None:
        """C{os.close}."""
        os.close(fd)


#: The operations every writer uses unless a test gives it others.
REAL_OPS = FileOps()


def fsync_directory(path: str, ops: FileOps = REAL_OPS) -> None:
    """Make a rename or a new file in C{path} durable."""
    fd = ops.open(path or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        ops.fsync(fd)
    finally:
        ops.close(fd)


def write_all(fd: int, data: bytes, ops: FileOps = REAL_OPS) -> int:
    """Write every byte of C{data} to C{fd}; returns its length.

    A short write is continued; an error raises, and then part of C{data}
    may be in the file: the caller cuts it (the journal) or removes the
    file (a private file's temporary).
    """
    view = memoryview(data)
    while view:
        view = view[ops.write(fd, view) :]
    return len(data)


def remove_quietly(path: str, ops: FileOps = REAL_OPS) -> None:
    """Unlink C{path} if it exists; an error doing so is not raised (the
    caller is already handling a failure)."""
    try:
        ops.unlink(path)
    except OSError:
        pass


def open_replacement(path: str, temporary: str, ops: FileOps = REAL_OPS) -> int:
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
        ops.unlink(temporary)
    except FileNotFoundError:
        pass
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = ops.open(temporary, flags, 0o600)
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
        ops.close(fd)
        remove_quietly(temporary, ops)
        raise
    return fd


def write_private_file(path: str, data: bytes, ops: FileOps = REAL_OPS) -> None:
    """Replace C{path} with C{data} atomically: mode 0600, fsync, rename, fsync dir.

    A crash leaves either the old file or the new one, never half of either.
    A failure (a full disk) leaves the old file and removes the temporary
    one. A file root rewrites keeps its owner (see L{open_replacement}).
    """
    temporary = f"{path}.{os.getpid()}.tmp"
    fd = open_replacement(path, temporary, ops)
    try:
        try:
            write_all(fd, data, ops)
            ops.fsync(fd)
        finally:
            ops.close(fd)
        ops.replace(temporary, path)
    except BaseException:
        remove_quietly(temporary, ops)
        raise
    fsync_directory(os.path.dirname(path), ops)
