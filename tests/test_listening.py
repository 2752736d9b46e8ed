"""Where the daemon listens: listening.json, port 0, and no accepting early."""

from __future__ import annotations

import http.client
import json
import signal
import socket
from pathlib import Path

import pytest
from test_integration_daemon import launch, wait_until


def test_connections_wait_until_adoption_is_durable() -> None:
    """The listeners accept nothing until the adoption's Deferred fires."""
    from twisted.internet.defer import Deferred

    from cmdd.listening import RecordingEndpoint, hold_accepting

    class Port:
        reading = True

        def stopReading(self) -> None:
            self.reading = False

        def startReading(self) -> None:
            self.reading = True

    endpoint = RecordingEndpoint(None, "tcp")  # type: ignore[arg-type]
    endpoint.port = Port()  # type: ignore[assignment]
    adopted: Deferred[None] = Deferred()
    hold_accepting([endpoint], adopted)
    assert not endpoint.port.reading  # type: ignore[union-attr]
    adopted.callback(None)
    assert endpoint.port.reading  # type: ignore[union-attr]


@pytest.mark.integration
def test_listening_json_names_the_ports_the_kernel_picked(tmp_path: Path) -> None:
    """With port 0 on two endpoints, listening.json names this daemon's pid and
    both real ports (which accept connections); a clean stop removes it."""
    data_dir = tmp_path / "data"
    daemon = launch(
        tmp_path,
        lambda ports: [
            "--data-dir", str(data_dir),
            "--listen", f"ssl:{ports[0]}:interface=127.0.0.1",
            "--listen", f"tcp:{ports[1]}:interface=127.0.0.1",
        ],
        port_count=2,
    )
    try:
        document = json.loads((data_dir / "listening.json").read_text())
        assert document["pid"] == daemon.process.pid
        kinds = [(address["type"], address["host"]) for address in document["listening"]]
        assert kinds == [("ssl", "127.0.0.1"), ("tcp", "127.0.0.1")]
        assert all(port > 0 for port in daemon.ports) and len(set(daemon.ports)) == 2
        for port in daemon.ports:
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        plain = http.client.HTTPConnection("127.0.0.1", daemon.ports[1], timeout=10)
        plain.request("GET", "/healthz")
        assert plain.getresponse().status == 200  # serving, stop handlers installed
        plain.close()
    finally:
        daemon.process.send_signal(signal.SIGTERM)
        assert daemon.process.wait(30) == 0
    wait_until(lambda: not (data_dir / "listening.json").exists(), 5, "the file to go")
