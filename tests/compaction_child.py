"""A child process for tests/test_compaction.py: appends under load while the
journal compacts, printing each record once it is durable, and SIGKILLs
itself at file operation number N (0: never). Prints the count at the end.

    python tests/compaction_child.py JOURNAL N
"""

from __future__ import annotations

import os
import signal
import sys

from twisted.internet import defer, task

from cmdd.codec import encode
from cmdd.files import FileOps
from cmdd.jobs import Created, Ended, Outcome, Started, State
from cmdd.journal import JournalWriter
from cmdd.spec import parse_spec
from cmdd.store import JobStore

SPEC = parse_spec({"command": "echo compaction"})
BEFORE = 300  # finished jobs in the journal when the compaction starts
DURING = 120  # jobs created while it runs


class KillingOps(FileOps):
    """Real file operations; the process SIGKILLs itself at the Nth one."""

    def __init__(self, kill_at: int) -> None:
        self.kill_at = kill_at
        self.count = 0

    def _step(self) -> None:
        self.count += 1
        if self.count == self.kill_at:
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)

    def open(self, path: str, flags: int, mode: int = 0o600) -> int:
        self._step()
        return super().open(path, flags, mode)

    def write(self, fd: int, data: bytes | memoryview) -> int:
        self._step()
        return super().write(fd, data)

    def fsync(self, fd: int) -> None:
        self._step()
        super().fsync(fd)

    def fdatasync(self, fd: int) -> None:
        self._step()
        super().fdatasync(fd)

    def replace(self, source: str, target: str) -> None:
        self._step()
        super().replace(source, target)


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


async def main(reactor: object, path: str, kill_at: int) -> None:
    store = JobStore()
    lines = []
    for job_id in range(1, BEFORE + 1):
        for event in (
            Created(job_id, 1.0, SPEC),
            Started(job_id, 2.0),
            Ended(job_id, 3.0, Outcome(State.SUCCEEDED, exit_code=0)),
        ):
            store.record(event)
            lines.append(encode(len(lines) + 1, event))
    with open(path, "wb") as journal:
        journal.write(b"".join(lines))
        os.fsync(journal.fileno())
    # Counted from here: the compaction and the appends that race it.
    ops = KillingOps(kill_at)
    writer = JournalWriter(reactor, path, fsync=True, seq=len(lines), ops=ops)
    writer.open()
    say("READY")
    compaction = writer.compact(list(store.oldest_first()), 4.0, BEFORE + 1)
    pending = []
    for job_id in range(BEFORE + 1, BEFORE + DURING + 1):
        durable = writer.append(Created(job_id, 5.0, SPEC))
        durable.addCallback(lambda _, job_id=job_id: say(f"ACK {job_id}"))
        pending.append(durable)
        if job_id % 8 == 0:
            await task.deferLater(reactor, 0.001, lambda: None)
    await defer.gatherResults([compaction, *pending])
    await writer.close()
    say(f"OPS {ops.count}")


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, sys.argv[1], int(sys.argv[2]))))
