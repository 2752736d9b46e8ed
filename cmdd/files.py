"""Small durable-file helpers shared by the journal, users, tokens and TLS."""

from __future__ import annotations

import os


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


def write_private_file(path: str, data: bytes) -> None:
    """Replace C{path} with C{data} atomically: mode 0600, fsync, rename, fsync dir.

    A crash leaves either the old file or the new one, never half of either.
    """
    temporary = f"{path}.{os.getpid()}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)
    fsync_directory(os.path.dirname(path))
