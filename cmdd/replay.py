"""Reading the journal back: replay at start, recovery, the data directory lock.

See docs/journal.md. Appends and compaction are in L{cmdd.journal}.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable

import attrs
from twisted.logger import Logger

from cmdd.codec import CorruptLine, Meta, Record, decode

log = Logger()

JOURNAL_NAME = "journal.jsonl"
QUARANTINE_NAME = "journal.quarantine"


class JournalCorrupt(Exception):  # noqa: N818 (reads better at the raise site)
    """A damaged line in the middle of the journal; start-up must not guess."""

    def __init__(self, path: str, line_number: int, why: str) -> None:
        super().__init__(
            f"{path} line {line_number}: {why}. The journal is damaged before its last "
            "line. Start with --journal-recover to move bad lines to "
            f"{QUARANTINE_NAME} and go on, or restore the file from a backup."
        )
        self.path = path
        self.line_number = line_number


@attrs.define
class ReplayReport:
    """What replaying a journal found."""

    records: int = 0
    last_seq: int = 0
    next_id: int = 1
    torn_bytes: int = 0
    torn_line: int | None = None
    quarantined: list[int] = attrs.Factory(list)
    bytes: int = 0
    #: The journal's first bytes that a snapshot stood for (not replayed).
    snapshot_bytes: int = 0


Damage = Callable[[int, bytes, str], None]


def replay(
    path: str,
    apply: Callable[[Record], None],
    *,
    recover: bool = False,
    repair: bool = True,
    on_damage: Damage | None = None,
    offset: int = 0,
    lines_before: int = 0,
) -> ReplayReport:
    """Feed every record of the journal at C{path} to C{apply}, in order.

    A damaged last line (a write torn by a crash) is cut off the file (when
    C{repair}). A damaged line before the end raises L{JournalCorrupt},
    unless C{recover} (it is then copied to the quarantine file and skipped)
    or C{on_damage} is given (it is told and the line skipped). C{apply} may
    raise C{ValueError} (an impossible event): such a line is damaged too.

    With C{offset}, replay starts that many bytes (C{lines_before} lines)
    into the file: the part before it was loaded from a snapshot.
    """
    report = ReplayReport()
    try:
        journal = open(path, "rb")
    except FileNotFoundError:
        return report
    good_end = position = offset
    bad: list[tuple[int, bytes, str]] = []
    with journal:
        journal.seek(offset)
        line_number = lines_before
        for line in journal:
            line_number += 1
            # Counted, not tell()'d: tell() per line costs more than the sum.
            position += len(line)
            try:
                if not line.endswith(b"\n"):
                    raise CorruptLine("line is truncated")
                record = decode(line[:-1])
                apply(record)
            except (CorruptLine, ValueError) as e:
                bad.append((line_number, line, str(e)))
                continue
            if bad:
                # A good line after a bad one: the bad one was not a torn tail.
                number, _, why = bad[0]
                if on_damage is not None:
                    for damaged in bad:
                        on_damage(*damaged)
                elif recover:
                    _quarantine(path, bad)
                else:
                    raise JournalCorrupt(path, number, why)
                report.quarantined.extend(n for n, _, _ in bad)
                bad = []
            report.records += 1
            report.last_seq = max(report.last_seq, record.seq)
            if isinstance(record.item, Meta):
                report.next_id = max(report.next_id, record.item.next_id)
            good_end = position
        total = position
    if bad:
        # Only damaged lines at the end: a torn final write. Cut it.
        report.torn_bytes = total - good_end
        report.torn_line = bad[0][0]
        log.warn(
            "journal {path}: cut {count} damaged byte(s) at its end "
            "(line {line}: {why}; a write torn by a crash)",
            path=path,
            count=report.torn_bytes,
            line=bad[0][0],
            why=bad[0][2],
        )
        if repair:
            with open(path, "r+b") as journal_file:
                journal_file.truncate(good_end)
                os.fsync(journal_file.fileno())
    report.bytes = good_end
    return report


def _quarantine(journal_path: str, bad: list[tuple[int, bytes, str]]) -> None:
    path = os.path.join(os.path.dirname(journal_path), QUARANTINE_NAME)
    with open(path, "ab") as out:
        for number, line, why in bad:
            log.error(
                "journal {path} line {number}: {why}; moved to {quarantine}",
                path=journal_path,
                number=number,
                why=why,
                quarantine=path,
            )
            out.write(line if line.endswith(b"\n") else line + b"\n")
        out.flush()
        os.fsync(out.fileno())


class DataDirLocked(Exception):  # noqa: N818 (reads better at the raise site)
    """Another cmdd process is using this data directory."""


def lock_data_dir(data_dir: str) -> int:
    """Take the data directory's exclusive lock; returns the fd that holds it.

    Two daemons (or a daemon and an offline compaction) on one journal would
    corrupt it; the lock makes the second one fail at once.
    """
    fd = os.open(os.path.join(data_dir, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DataDirLocked(
            f"another cmdd process is using {data_dir} (it holds {data_dir}/lock)"
        ) from None
    return fd
