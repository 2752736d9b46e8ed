"""Raw HTTP/1.1 over a socket, for tests that must send what no client library
would (bad request lines, NUL in headers, 20 KiB lines) and see exactly what
comes back, or that nothing does."""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import attrs


@attrs.frozen
class Answer:
    """A parsed response (or its absence: status 0)."""

    status: int
    headers: dict[str, str]
    body: bytes
    seconds: float

    def header(self, name: str) -> str | None:
        """One header's value, by case-insensitive name."""
        return self.headers.get(name.lower())

    def json(self) -> Any:
        """The body as JSON."""
        return json.loads(self.body)

    def is_json_error(self) -> bool:
        """Whether this is cmdd's error model: JSON with a code and a message."""
        if not (self.header("content-type") or "").startswith("application/json"):
            return False
        try:
            error = self.json()["error"]
        except (ValueError, KeyError, TypeError):
            return False
        return isinstance(error.get("code"), str) and isinstance(error.get("message"), str)


def request_bytes(
    method: str,
    target: str,
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
    host: str | None = "cmdd.test",
) -> bytes:
    """A request (with C{Connection: close}); names and values are sent as Latin-1."""
    lines = [f"{method} {target} HTTP/1.1"]
    if host is not None:
        lines.append(f"Host: {host}")
    lines += [f"{name}: {value}" for name, value in headers or []]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def exchange(port: int, data: bytes, timeout: float = 10.0) -> Answer:
    """Send C{data}, read one response (up to its length, or to the close)."""
    started = time.monotonic()
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
        except OSError:
            pass  # the server may answer and close before reading it all
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
                parsed = _parse(received, started, final=False, no_body=data.startswith(b"HEAD "))
                if parsed is not None:
                    return parsed
        except (TimeoutError, ConnectionResetError):
            pass
    parsed = _parse(received, started, final=True, no_body=data.startswith(b"HEAD "))
    return parsed or Answer(0, {}, received, _since(started))


def _since(started: float) -> float:
    return time.monotonic() - started


def _parse(data: bytes, started: float, final: bool, no_body: bool = False) -> Answer | None:
    head, sep, rest = data.partition(b"\r\n\r\n")
    if not sep:
        return None
    if head.startswith(b"HTTP/1.1 100 "):
        return _parse(rest, started, final, no_body)  # "Expect: 100-continue" answered first
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        return Answer(0, {}, data, _since(started))
    headers: dict[str, str] = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if no_body:
        return Answer(int(parts[1]), headers, b"", _since(started))  # HEAD: no body
    length = headers.get("content-length")
    if length is not None and length.isdigit():
        if len(rest) < int(length):
            return None
        return Answer(int(parts[1]), headers, rest[: int(length)], _since(started))
    if not final:
        return None
    if headers.get("transfer-encoding", "").lower() == "chunked":
        rest = _unchunk(rest)
    return Answer(int(parts[1]), headers, rest, _since(started))


def _unchunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, sep, data = data.partition(b"\r\n")
        try:
            size = int(size_line.split(b";")[0], 16)
        except ValueError:
            break
        if not sep or size == 0:
            break
        out += data[:size]
        data = data[size + 2 :]
    return out
