"""File operations that fail on purpose: the Nth write, fsync or create.

L{FaultyOps} stands in for L{cmdd.files.FileOps} the way SQLite's test VFS
stands in for the OS: a test first runs a scripted history with no fault
and counts the operations a fault could hit, then runs it again once per N,
failing the Nth, and checks what the writers left on disk.
"""

from __future__ import annotations

import errno
import os
import threading

from cmdd.files import FileOps

#: How an operation fails:
#: - torn: a write puts part of its bytes in the file, then fails (ENOSPC);
#: - short: a write writes one byte and says so (not an error);
#: - enospc: a write, a create or a rename fails before changing anything;
#: - eio: a write fails with EIO;
#: - fsync: an fsync or fdatasync fails with EIO (its data may or may not be on disk).
KINDS = ("torn", "short", "enospc", "eio", "fsync")


class FaultyOps(FileOps):
    """Fails operation number C{fail_at} (1-based) of C{kind}'s sort.

    With C{sticky}, every later one of that sort fails too (a disk that
    stays broken); C{also_truncate} makes C{ftruncate} fail as well.
    C{count} says how many operations of that sort were seen.
    """

    def __init__(
        self, kind: str, fail_at: int = 0, *, sticky: bool = False, also_truncate: bool = False
    ) -> None:
        assert kind in KINDS
        self.kind = kind
        self.fail_at = fail_at
        self.sticky = sticky
        self.also_truncate = also_truncate
        self.count = 0
        self.failed = 0
        self._lock = threading.Lock()

    def _hit(self) -> bool:
        with self._lock:
            self.count += 1
            hit = self.fail_at > 0 and (
                self.count == self.fail_at or (self.sticky and self.count > self.fail_at)
            )
            self.failed += hit
            return hit

    def open(self, path: str, flags: int, mode: int = 0o600) -> int:
        if self.kind == "enospc" and flags & os.O_CREAT and not os.path.exists(path):
            if self._hit():
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        return super().open(path, flags, mode)

    def write(self, fd: int, data: bytes | memoryview) -> int:
        if self.kind in ("torn", "short", "enospc", "eio") and self._hit():
            if self.kind == "torn":
                os.write(fd, bytes(data[: max(1, len(data) // 2)]))
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            if self.kind == "short":
                return os.write(fd, bytes(data[:1]))
            code = errno.ENOSPC if self.kind == "enospc" else errno.EIO
            raise OSError(code, os.strerror(code))
        return super().write(fd, data)

    def fsync(self, fd: int) -> None:
        if self.kind == "fsync" and self._hit():
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        super().fsync(fd)

    def fdatasync(self, fd: int) -> None:
        if self.kind == "fsync" and self._hit():
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        super().fdatasync(fd)

    def ftruncate(self, fd: int, length: int) -> None:
        if self.also_truncate and self.failed:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        super().ftruncate(fd, length)

    def replace(self, source: str, target: str) -> None:
        if self.kind == "enospc" and self._hit():
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        super().replace(source, target)
