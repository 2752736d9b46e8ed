"""Pure parts of the C{cmdd} client: job specs from options, exit codes,
tables, and a Server-Sent Events parser. No I/O.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

#: C{cmdd run}'s exit status when cmdd itself failed (as C{docker run}).
CMDD_FAILED = 125
#: The job's program could not be started (as a shell's "command not found").
NOT_EXECUTED = 127


class OptionError(ValueError):
    """A command-line value that cannot become part of a job spec."""


def pairs(values: Iterable[str], what: str) -> dict[str, str]:
    """C{["K=V", …]} → C{{"K": "V"}}."""
    out: dict[str, str] = {}
    for value in values:
        key, sep, item = value.partition("=")
        if not sep or not key:
            raise OptionError(f"{what} {value!r} is not NAME=VALUE")
        out[key] = item
    return out


def job_spec(
    argv: Sequence[str],
    *,
    shell: str | None = None,
    env: Iterable[str] = (),
    labels: Iterable[str] = (),
    cwd: str | None = None,
    timeout: float | None = None,
    user: str | None = None,
) -> dict[str, Any]:
    """The JSON job spec C{cmdd run}/C{submit} sends."""
    if (shell is None) == (not argv):
        raise OptionError("give a command after -- or --shell 'COMMAND', not both")
    spec: dict[str, Any] = {"command": shell} if shell is not None else {"command_line": list(argv)}
    environment, label_map = pairs(env, "--env"), pairs(labels, "--label")
    if environment:
        spec["environment"] = environment
    if label_map:
        spec["labels"] = label_map
    if cwd is not None:
        spec["working_directory"] = cwd
    if timeout is not None:
        spec["timeout"] = timeout
    if user is not None:
        spec["user"] = user
    return spec


def exit_status(end: dict[str, Any]) -> int:
    """The exit status C{cmdd run} passes on for a finished job (its C{end}
    event or result): the job's exit code, 128+N for signal N, 127 if it
    could not start, 130 if cancelled, 125 if cmdd failed (a lost job)."""
    state = end.get("state")
    exit_code, signal = end.get("exit_code"), end.get("signal")
    if state == "not_executed":
        return NOT_EXECUTED
    if isinstance(signal, int):
        return 128 + signal
    if isinstance(exit_code, int) and state in ("succeeded", "failed", "cancelled"):
        return exit_code & 0xFF
    if state == "cancelled":
        return 130
    return CMDD_FAILED


#: An SSE line end: CRLF, or a lone CR or LF.
_LINE_END = re.compile(rb"\r\n|\r|\n")


class EventStream:
    """Incremental Server-Sent Events parser: feed bytes, get (event, data).

    Lines end with CR, LF or CRLF, as the SSE format says (a CRLF split
    across two chunks is one line end). cmdd sends output chunks as JSON
    strings, so a C{\\r} in a job's output is never a line end on the wire.
    """

    def __init__(self, deliver: Callable[[str, str], None]) -> None:
        self._deliver = deliver
        self._buffer = b""
        self._event = "message"
        self._data: list[str] = []
        #: The last chunk ended in CR: an LF starting the next one is its pair.
        self._after_cr = False

    def feed(self, chunk: bytes) -> None:
        if self._after_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        self._after_cr = False
        self._buffer += chunk
        *lines, self._buffer = _LINE_END.split(self._buffer)
        if self._buffer == b"" and lines and chunk.endswith(b"\r"):
            self._after_cr = True
        for raw in lines:
            self._line(raw.decode("utf-8", "replace"))

    def _line(self, line: str) -> None:
        if not line:
            if self._data:
                self._deliver(self._event, "\n".join(self._data))
            self._event, self._data = "message", []
            return
        if line.startswith(":"):
            return
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)


def _ago(created: str | None) -> str:
    return (created or "")[:19].replace("T", " ")


def _seconds_between(start: Any, end: Any, now: float) -> float | None:
    if not isinstance(start, str):
        return None
    began = datetime.fromisoformat(start).timestamp()
    finished = datetime.fromisoformat(end).timestamp() if isinstance(end, str) else now
    return max(0.0, finished - began)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    return f"{minutes // 60}h{minutes % 60:02d}m"


def sf_string(text: str) -> str:
    """C{text} as an RFC 8941 string (the C{Idempotency-Key} header's form)."""
    if not text or any(not " " <= c <= "~" for c in text):
        raise OptionError("an idempotency key is printable ASCII text")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def command_text(job: dict[str, Any]) -> str:
    """A job's command on one line (a shell string, or its argv quoted)."""
    return _command(job).replace("\n", " ")


def _command(job: dict[str, Any]) -> str:
    if job.get("command") is not None:
        return str(job["command"])
    line = job.get("command_line") or []
    return " ".join(json.dumps(a) if (" " in a or not a) else a for a in line)


def job_table(jobs: list[dict[str, Any]], width: int, now: float) -> str:
    """An aligned table of jobs that fits C{width} columns (the command is
    cut); a running job's duration is its time so far (at C{now})."""
    header = ("ID", "STATE", "OWNER", "CREATED", "DURATION", "COMMAND")
    rows = [
        (
            str(job.get("id", "")),
            str(job.get("state", "")),
            str(job.get("owner", "")),
            _ago(job.get("created")),
            _duration(_seconds_between(job.get("started"), job.get("completed"), now)),
            _command(job).replace("\n", " "),
        )
        for job in jobs
    ]
    return table(header, rows, width)


def table(header: Sequence[str], rows: Sequence[Sequence[str]], width: int) -> str:
    """Columns padded to their widest cell; the last one cut to fit C{width}."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    lead = sum(widths) + 2 * len(widths)
    room = max(10, width - lead)
    lines = []
    for row in [header, *rows]:
        cells = [cell.ljust(w) for cell, w in zip(row, widths, strict=False)]
        last = row[-1] if len(row[-1]) <= room else row[-1][: room - 1] + "…"
        lines.append("  ".join([*cells, last]).rstrip())
    return "\n".join(lines)
