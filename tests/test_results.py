"""Results streamed from the output files: same JSON, bounded memory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_api import Client

from cmdd import results
from cmdd.results import _Escaper


@pytest.fixture
def client(tmp_path: Path) -> Client:
    return Client(tmp_path, max_running=2, max_queued=2)


def _escaped(path: Path) -> str:
    escaper = _Escaper(str(path))
    pieces = []
    while not escaper.done:
        pieces.append(escaper.next_piece())
    text: str = json.loads(b'"' + b"".join(pieces) + b'"')
    return text


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=64), chunk=st.integers(min_value=1, max_value=9))
def test_chunked_escaping_equals_decoding_the_whole(
    tmp_path_factory: pytest.TempPathFactory, data: bytes, chunk: int
) -> None:
    """Reading, decoding and escaping in chunks gives exactly the text of
    decoding the whole output at once (UTF-8 split across chunks, invalid
    bytes as U+FFFD, NULs and quotes escaped)."""
    path = tmp_path_factory.mktemp("out") / "1.stdout"
    path.write_bytes(data)
    path.chmod(0o600)
    original = results.CHUNK
    results.CHUNK = chunk
    try:
        assert _escaped(path) == data.decode("utf-8", "replace")
    finally:
        results.CHUNK = original


def test_a_big_result_is_the_same_json_streamed(client: Client) -> None:
    """A result larger than many chunks, with multi-byte text, NULs, quotes
    and undecodable bytes, comes back as one valid JSON object whose texts
    equal the decoded output; the metadata is all there too."""
    stdout = ("привет \"мир\"\n".encode() + b"\x00\xff") * 40_000
    stderr = b"warning\n"
    client.json("POST", "/api/jobs", {"command": "big"})
    client.clock.advance(0)
    client.executor.by_job(1).finish(0, stdout=stdout, stderr=stderr)
    response, content = client.request("GET", "/api/results/1")
    assert response.code == 200
    assert response.headers.getRawHeaders("content-type") == ["application/json; charset=utf-8"]
    assert content.endswith(b"}\n")
    result = json.loads(content)
    assert result["stdout"] == stdout.decode("utf-8", "replace")
    assert result["stderr"] == "warning\n"
    assert result["stdout_bytes"] == len(stdout) and result["state"] == "succeeded"
    assert result["links"]["stdout"] == "/api/jobs/1/output/stdout"


def test_a_result_has_an_etag_and_answers_304(client: Client) -> None:
    """The result carries an ETag; sending it back gets 304 and no body."""
    client.json("POST", "/api/jobs", {"command": "echo"})
    client.clock.advance(0)
    client.executor.by_job(1).finish(0, stdout=b"hello\n")
    response, _ = client.request("GET", "/api/results/1")
    (tag,) = response.headers.getRawHeaders("etag")
    again, content = client.request("GET", "/api/results/1", headers={"If-None-Match": tag})
    assert again.code == 304 and content == b""


def test_an_empty_output_is_an_empty_string(client: Client) -> None:
    """A job that printed nothing has "" for both streams."""
    client.json("POST", "/api/jobs", {"command": "true"})
    client.clock.advance(0)
    client.executor.by_job(1).finish(0)
    _, content = client.request("GET", "/api/results/1")
    result = json.loads(content)
    assert (result["stdout"], result["stderr"]) == ("", "")


def test_head_of_a_result_is_headers_only(client: Client) -> None:
    """HEAD answers 200 with the ETag and no body (the output is not read)."""
    client.json("POST", "/api/jobs", {"command": "echo"})
    client.clock.advance(0)
    client.executor.by_job(1).finish(0, stdout=b"hello\n")
    response, content = client.request("HEAD", "/api/results/1")
    assert response.code == 200 and content == b""
    assert response.headers.getRawHeaders("etag")


def test_raw_output_is_streamed_in_chunks(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    """GET /api/jobs/{id}/output/stdout without Range sends the whole output
    with its length, read CHUNK bytes at a time (never the whole file at
    once: a 16 MiB output costs one chunk of memory)."""
    stdout = bytes(range(256)) * 1000  # 256,000 bytes: several chunks
    client.json("POST", "/api/jobs", {"command": "big"})
    client.clock.advance(0)
    client.executor.by_job(1).finish(0, stdout=stdout)
    reads: list[int | None] = []
    real = results.read_output

    def counted(path: str, offset: int = 0, limit: int | None = None) -> bytes:
        reads.append(limit)
        return real(path, offset, limit)

    monkeypatch.setattr(results, "read_output", counted)
    monkeypatch.setattr("cmdd.api.read_output", counted)
    response, content = client.request("GET", "/api/jobs/1/output/stdout")
    assert response.code == 200
    assert content == stdout
    assert response.length == len(stdout)  # its Content-Length
    assert len(reads) >= len(stdout) // results.CHUNK
    assert all(limit is not None and limit <= results.CHUNK for limit in reads), reads
