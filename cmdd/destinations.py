"""Which addresses webhook callbacks may go to (pure).

An operator's allow and deny lists of networks (CIDR), checked against the
address a destination's name resolved to, the one connected to. Deny wins;
an empty allow list allows every address not denied.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from attrs import frozen

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(values: Iterable[str]) -> tuple[Network, ...]:
    """Networks from CIDR strings (a bare address is a /32 or /128).

    @raise ValueError: a value is not a network.
    """
    return tuple(ipaddress.ip_network(value.strip(), strict=False) for value in values)


@frozen
class DestinationRules:
    """The operator's allow and deny lists."""

    allow: tuple[Network, ...] = ()
    deny: tuple[Network, ...] = ()

    def allows(self, address: str) -> bool:
        """Whether a callback may connect to C{address} (an IP address)."""
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        mapped = getattr(ip, "ipv4_mapped", None)
        if mapped is not None:  # ::ffff:127.0.0.1 is 127.0.0.1
            ip = mapped
        if any(ip.version == net.version and ip in net for net in self.deny):
            return False
        return not self.allow or any(ip.version == net.version and ip in net for net in self.allow)
