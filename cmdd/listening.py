"""The addresses the daemon really listens on, in a file of its data directory.

With C{--listen tcp:0:...} the kernel picks the port; operators and the
integration tests read it back from C{<data_dir>/listening.json} instead of
guessing a free port first (a bind-close-reuse race). The file names the
daemon's pid, so a file a previous daemon left behind is never mistaken for
this one's; it is written once every listener is bound and removed at a
clean stop.
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.logger import Logger
from zope.interface import implementer

from cmdd.files import remove_quietly, write_private_file

log = Logger()

LISTENING_FILE = "listening.json"


def describe_address(kind: str, address: object) -> dict[str, Any]:
    """One bound address as JSON: C{{"type": "ssl", "host": ..., "port": ...}}."""
    if isinstance(address, IPv4Address | IPv6Address):
        return {"type": kind, "host": address.host, "port": address.port}
    if isinstance(address, UNIXAddress):
        name = address.name
        path = name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)
        return {"type": kind, "path": path}
    return {"type": kind, "address": str(address)}


def listening_document(pid: int, addresses: list[dict[str, Any]]) -> bytes:
    """What L{LISTENING_FILE} holds."""
    return json.dumps({"pid": pid, "listening": addresses}, indent=1).encode() + b"\n"


@implementer(IStreamServerEndpoint)
class RecordingEndpoint:
    """An endpoint that remembers the port it bound, for L{ListeningFile}."""

    def __init__(self, endpoint: IStreamServerEndpoint, kind: str) -> None:
        self._endpoint = endpoint
        self.kind = kind
        self.port: IListeningPort | None = None

    def listen(self, protocolFactory: Any) -> Deferred[IListeningPort]:
        def bound(port: IListeningPort) -> IListeningPort:
            self.port = port
            return port

        listening: Deferred[IListeningPort] = self._endpoint.listen(protocolFactory)
        return listening.addCallback(bound)


def hold_accepting(endpoints: list[RecordingEndpoint], until: Deferred[Any]) -> None:
    """Accept no connection on C{endpoints} until C{until} fires.

    At start-up, jobs the previous daemon left running are recorded C{lost}
    and shown so once that is durable: until then a client would see them
    C{running}. Connections wait in the listen queue meanwhile.
    """
    ports = [endpoint.port for endpoint in endpoints if endpoint.port is not None]
    for port in ports:
        port.stopReading()  # type: ignore[attr-defined]  # a tcp/unix Port (IReadDescriptor)

    def resume(result: object) -> object:
        for port in ports:
            port.startReading()  # type: ignore[attr-defined]  # as above
        return result

    until.addBoth(resume)


class ListeningFile:
    """Writes and removes C{<data_dir>/listening.json}."""

    def __init__(self, data_dir: str) -> None:
        self.path = os.path.join(data_dir, LISTENING_FILE)

    def write(self, endpoints: list[RecordingEndpoint]) -> None:
        """Record the bound addresses; a failure is logged, never fatal."""
        addresses = [
            describe_address(endpoint.kind, endpoint.port.getHost())
            for endpoint in endpoints
            if endpoint.port is not None
        ]
        try:
            write_private_file(self.path, listening_document(os.getpid(), addresses))
        except OSError as e:
            log.warn("cannot write {path}: {why}", path=self.path, why=e.strerror or str(e))

    def remove(self) -> None:
        """A stopped daemon listens nowhere."""
        remove_quietly(self.path)
