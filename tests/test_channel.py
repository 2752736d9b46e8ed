"""What a connection may cost before cmdd admits its request (in memory, fake clock).

A slow request is cut at the receive deadline, bodies in memory are capped
across connections, connections are capped, and each refusal is a JSON
answer followed by a short linger, never a silent close.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web.resource import Resource

from cmdd.channel import LINGER_SECONDS, RECEIVE_TIMEOUT
from cmdd.web import make_site


class Hello(Resource):
    """Answers every request with C{hello} and the body length it read."""

    isLeaf = True

    def render(self, request: Any) -> bytes:
        return b"hello %d" % len(request.content.read())


class Connection:
    """One client connection to the site, driven by hand."""

    def __init__(self, site: Any) -> None:
        self.channel = site.buildProtocol(None)
        self.transport = StringTransport()
        self.channel.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        self.channel.dataReceived(data)

    def answer(self) -> tuple[int, dict[str, str], bytes]:
        head, _, body = self.transport.value().partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.lower()] = value.strip()
        return int(status_line.split(" ")[1]), headers, body

    def error_code(self) -> str:
        _status, headers, body = self.answer()
        assert headers["content-type"] == "application/json; charset=utf-8"
        code: str = json.loads(body)["error"]["code"]
        return code

    def close(self) -> None:
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure

        self.channel.connectionLost(Failure(ConnectionDone()))


@pytest.fixture
def clock() -> Clock:
    return Clock()


def site_with(clock: Clock, **kwargs: Any) -> Any:
    site = make_site(Hello(), max_body=kwargs.pop("max_body", 1000), idle_timeout=60, **kwargs)
    site.reactor = clock  # the channels' timers run on the fake clock
    return site


def headers_for_body(length: int) -> bytes:
    return (
        b"POST /x HTTP/1.1\r\nHost: cmdd.test\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % length
    )


def test_a_request_that_trickles_in_is_cut_at_the_deadline(clock: Clock) -> None:
    """A byte every 10 s keeps resetting the idle timeout; the receive deadline
    still ends the request with a JSON 408 after RECEIVE_TIMEOUT seconds."""
    connection = Connection(site_with(clock))
    connection.send(headers_for_body(100))
    for _ in range(int(RECEIVE_TIMEOUT // 10) - 1):
        clock.advance(10)
        connection.send(b"x")
    assert connection.transport.value() == b""
    clock.advance(10)
    assert connection.answer()[0] == 408
    assert connection.error_code() == "REQUEST_TIMEOUT"


def test_the_receive_deadline_is_the_sites_setting(clock: Clock) -> None:
    """A site made with receive_timeout=5 answers 408 after 5 s, not the default."""
    connection = Connection(site_with(clock, receive_timeout=5))
    connection.send(headers_for_body(100))
    clock.advance(4.9)
    assert connection.transport.value() == b""
    clock.advance(0.2)
    assert connection.error_code() == "REQUEST_TIMEOUT"
    assert b"within 5 seconds" in connection.answer()[2]
    connection.close()


def test_a_prompt_request_is_not_cut(clock: Clock) -> None:
    """The deadline covers one request's arrival, not the connection: a
    persistent connection may send requests for longer than that."""
    connection = Connection(site_with(clock))
    for _ in range(3):
        connection.send(b"GET /x HTTP/1.1\r\nHost: cmdd.test\r\n\r\n")
        clock.advance(RECEIVE_TIMEOUT * 0.9)
    assert connection.transport.value().count(b"HTTP/1.1 200 OK") == 3
    assert not connection.transport.disconnecting


def test_bodies_in_memory_are_capped_across_connections(clock: Clock) -> None:
    """When bodies in flight would pass the site's budget, the request that
    would pass it gets a JSON 503 with Retry-After; the budget is given back
    when a connection ends, so the next client gets through."""
    site = site_with(clock, body_budget=1500)
    first, second = Connection(site), Connection(site)
    first.send(headers_for_body(1000) + b"a" * 900)
    second.send(headers_for_body(1000) + b"b" * 700)
    status, headers, _ = second.answer()
    assert (status, headers["retry-after"]) == (503, "1")
    assert second.error_code() == "SERVER_BUSY"
    assert first.transport.value() == b""  # still receiving, within budget
    first.close()
    second.close()
    third = Connection(site)
    third.send(headers_for_body(1000) + b"c" * 1000)
    assert third.answer()[0] == 200 and third.answer()[2] == b"hello 1000"
    assert site.requestFactory.budget.used == 0


def test_connections_are_capped(clock: Clock) -> None:
    """Beyond max_connections a connection gets a JSON 503 with Retry-After at
    once; a closed connection frees its place."""
    site = site_with(clock, max_connections=2)
    first, _second = Connection(site), Connection(site)
    third = Connection(site)
    status, headers, _ = third.answer()
    assert (status, headers["retry-after"]) == (503, "1")
    assert third.error_code() == "TOO_MANY_CONNECTIONS"
    third.close()
    first.close()
    fourth = Connection(site)
    fourth.send(b"GET /x HTTP/1.1\r\nHost: cmdd.test\r\n\r\n")
    assert fourth.answer()[0] == 200


def test_a_refused_connection_lingers_then_closes(clock: Clock) -> None:
    """After a refusal the rest of what the client sends is discarded (so it
    reads the answer instead of a reset) and the connection closes after
    LINGER_SECONDS."""
    connection = Connection(site_with(clock))
    connection.send(b"BROKEN\r\n")
    answer = connection.transport.value()
    assert connection.error_code() == "BAD_REQUEST_LINE"
    connection.send(b"GET /x HTTP/1.1\r\nHost: cmdd.test\r\n\r\n" * 10)
    assert connection.transport.value() == answer
    assert not connection.transport.disconnecting
    clock.advance(LINGER_SECONDS)
    assert connection.transport.disconnecting
    connection.close()
    assert clock.getDelayedCalls() == []


def test_a_body_refused_in_its_last_chunk_gets_one_answer(clock: Clock) -> None:
    """When the chunk that passes the budget also completes the body, the 503
    is the only answer: the request is not processed as well."""
    site = site_with(clock, body_budget=500)
    connection = Connection(site)
    connection.send(headers_for_body(600) + b"a" * 600)
    assert connection.error_code() == "SERVER_BUSY"
    assert connection.transport.value().count(b"HTTP/1.1") == 1


def test_a_declared_body_over_the_limit_is_413_before_it_is_read(clock: Clock) -> None:
    """A Content-Length over max_body is answered 413 JSON as soon as the
    headers are in, without waiting for (or reading) the body, and the
    connection closes after the linger; no 100 Continue follows the answer."""
    connection = Connection(site_with(clock, max_body=1000))
    connection.send(
        b"POST /x HTTP/1.1\r\nHost: cmdd.test\r\nContent-Type: application/json\r\n"
        b"Expect: 100-continue\r\nContent-Length: 1000000000\r\n\r\n"
    )
    status, headers, _body = connection.answer()
    assert status == 413 and headers["connection"] == "close"
    assert connection.error_code() == "BODY_TOO_LARGE"
    assert b"100 Continue" not in connection.transport.value()
    connection.send(b"x" * 10_000)  # discarded
    assert connection.transport.value().count(b"HTTP/1.1") == 1
    clock.advance(LINGER_SECONDS)
    assert connection.transport.disconnecting
    connection.close()


def test_a_chunked_body_over_the_limit_is_413_midway(clock: Clock) -> None:
    """A chunked body is refused with 413 JSON as soon as it passes max_body,
    before its last chunk arrives."""
    site = site_with(clock, max_body=1000)
    connection = Connection(site)
    connection.send(
        b"POST /x HTTP/1.1\r\nHost: cmdd.test\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    connection.send(b"258\r\n" + b"a" * 600 + b"\r\n")
    assert connection.transport.value() == b""
    connection.send(b"258\r\n" + b"a" * 600 + b"\r\n")
    assert connection.answer()[0] == 413
    assert connection.error_code() == "BODY_TOO_LARGE"
    connection.close()
    assert site.requestFactory.budget.used == 0
