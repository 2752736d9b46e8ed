"""Outgoing webhook HTTP: treq on the reactor, connecting only to checked addresses.

A destination's name is resolved once, the addresses are checked against
the operator's L{DestinationRules}, and the connection goes to the first
allowed address itself (TLS still verifies the name): a name that resolves
to an allowed address when checked and to a denied one when connecting
(DNS rebinding) cannot slip through. Redirects are never followed.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import treq
from treq.client import HTTPClient
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.ssl import optionsForClientTLS
from twisted.web.client import URI, Agent, HTTPConnectionPool
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from cmdd.destinations import DestinationRules

Blocking = Callable[..., Deferred[Any]]


class DestinationRefusedError(Exception):
    """The destination resolves to no address the operator allows."""


def _addresses(host: str, port: int) -> list[str]:
    """Every address C{host} resolves to, in resolver order (blocking)."""
    seen: list[str] = []
    for *_, sockaddr in socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM):
        address = str(sockaddr[0])
        if address not in seen:
            seen.append(address)
    return seen


@implementer(IStreamClientEndpoint)
class _CheckedEndpoint:
    def __init__(self, owner: _CheckedEndpoints, scheme: bytes, host: str, port: int) -> None:
        self._owner = owner
        self._scheme = scheme
        self._host = host
        self._port = port

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        return Deferred.fromCoroutine(self._connect(factory))

    async def _connect(self, factory: IProtocolFactory) -> IProtocol:
        owner = self._owner
        addresses: list[str] = await owner.run_blocking(_addresses, self._host, self._port)
        allowed = [address for address in addresses if owner.rules.allows(address)]
        if not allowed:
            raise DestinationRefusedError(
                f"{self._host} resolves to no allowed address ({', '.join(addresses)})"
            )
        address = allowed[0]
        kind = TCP6ClientEndpoint if ":" in address else TCP4ClientEndpoint
        endpoint: Any = kind(owner.reactor, address, self._port, timeout=owner.connect_timeout)
        if self._scheme == b"https":
            endpoint = wrapClientTLS(optionsForClientTLS(self._host), endpoint)
        protocol: IProtocol = await endpoint.connect(factory)
        return protocol


@implementer(IAgentEndpointFactory)
class _CheckedEndpoints:
    def __init__(
        self, reactor: Any, run_blocking: Blocking, rules: DestinationRules, connect_timeout: float
    ) -> None:
        self.reactor = reactor
        self.run_blocking = run_blocking
        self.rules = rules
        self.connect_timeout = connect_timeout

    def endpointForURI(self, uri: URI) -> _CheckedEndpoint:
        host = uri.host.decode("ascii").strip("[]")
        return _CheckedEndpoint(self, uri.scheme, host, uri.port)


def _discard(_: bytes) -> None:
    """A response body is read and dropped: nothing of it is kept."""


class WebhookSender:
    """Sends one callback request; its own pool of persistent connections.

    @param reactor: the reactor (TCP, TLS, time).
    @param run_blocking: runs name resolution off the reactor.
    @param rules: where callbacks may connect.
    @param connect_timeout: seconds a connection may take.
    @param per_destination: persistent connections kept per host and port.
    """

    def __init__(
        self,
        reactor: Any,
        run_blocking: Blocking,
        rules: DestinationRules,
        connect_timeout: float,
        per_destination: int,
    ) -> None:
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._pool.maxPersistentPerHost = per_destination
        self._pool.retryAutomatically = False  # an attempt is an attempt
        endpoints = _CheckedEndpoints(reactor, run_blocking, rules, connect_timeout)
        self._client = HTTPClient(Agent.usingEndpointFactory(reactor, endpoints, pool=self._pool))

    def send(
        self, url: str, data: bytes, headers: dict[bytes | str, bytes | str]
    ) -> Deferred[tuple[int, str | None]]:
        """PUT C{data}; fires with the status code and the C{Retry-After} header."""
        return Deferred.fromCoroutine(self._send(url, data, headers))

    async def _send(
        self, url: str, data: bytes, headers: dict[bytes | str, bytes | str]
    ) -> tuple[int, str | None]:
        response = await self._client.request(
            "PUT", url, data=data, headers=headers, allow_redirects=False
        )
        await treq.collect(response, _discard)
        retry_after = response.headers.getRawHeaders("retry-after", [None])[0]
        return response.code, retry_after

    def close(self) -> Deferred[None]:
        """Close the kept connections."""
        closed: Deferred[None] = self._pool.closeCachedConnections()
        return closed
