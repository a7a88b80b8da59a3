"""``bgp:`` in the config file: active-active directors that each announce the VIPs they
can serve to the routers as /32 routes, for the routers to spread flows over them by
ECMP (docs/ha.md). bird (Debian's ``bird2``) speaks BGP; kubelvs writes its
configuration and runs it.

The key names follow MetalLB's BGP peers (``peer_address``-like ``address``,
``peer_as``, ``hold_time``, ``bfd``) and bird's (``local_as``, ``router_id``).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from ..errors import FieldError
from . import shape

__all__ = ["BGP", "BgpPeerSpec", "BgpSpec", "bgp_errors"]


@dataclass(frozen=True, slots=True)
class BgpPeerSpec:
    address: str
    peer_as: int
    port: int = 179
    password: str | None = None


@dataclass(frozen=True, slots=True)
class BgpSpec:
    local_as: int
    peers: tuple[BgpPeerSpec, ...]
    router_id: str | None = None  # None: bird's choice (the lowest IPv4 address)
    hold_time: int = 3  # seconds; keepalives every third of it
    bfd: bool = True
    bfd_interval: float = 0.1  # seconds between BFD packets, both ways
    bfd_multiplier: int = 3  # packets missed: the peer is down
    withdraw_delay: float = 1.0  # a planned stop: seconds between the withdrawal and the end


_AS = shape.bounded(shape.integer, minimum=1, maximum=4294967295)

BGP = shape.Record(
    BgpSpec,
    {
        "local_as": _AS,
        "peers": shape.list_of(
            shape.Record(
                BgpPeerSpec,
                {
                    "address": shape.string,
                    "peer_as": _AS,
                    "port": shape.bounded(shape.integer, minimum=1, maximum=65535),
                    "password": shape.optional(shape.string),
                },
            )
        ),
        "router_id": shape.optional(shape.string),
        # RFC 4271: 0 or at least 3 seconds; 0 (no keepalives) would never see a dead peer.
        "hold_time": shape.bounded(shape.integer, minimum=3, maximum=65535),
        "bfd": shape.boolean,
        "bfd_interval": shape.bounded(shape.number, minimum=0.01, maximum=10),
        "bfd_multiplier": shape.bounded(shape.integer, minimum=1, maximum=255),
        "withdraw_delay": shape.bounded(shape.number, minimum=0, maximum=60),
    },
)


def bgp_errors(spec: BgpSpec, path: str = "bgp") -> list[FieldError]:
    errors: list[FieldError] = []
    if not spec.peers:
        errors.append(FieldError(f"{path}.peers", "at least one peer (the router) is needed"))
    seen: dict[str, str] = {}
    for i, peer in enumerate(spec.peers):
        where = f"{path}.peers[{i}]"
        try:
            address = str(ipaddress.ip_address(peer.address))
        except ValueError:
            errors.append(FieldError(f"{where}.address", f"{peer.address!r} is not an IP address"))
            continue
        if address in seen:
            errors.append(FieldError(f"{where}.address", f"{address} is already {seen[address]}"))
        seen.setdefault(address, where)
        if peer.password is not None and ('"' in peer.password or "\n" in peer.password):
            errors.append(FieldError(f"{where}.password", "may not contain a double quote or a newline"))
    if spec.router_id is not None:
        try:
            ipaddress.IPv4Address(spec.router_id)
        except ValueError:
            errors.append(FieldError(f"{path}.router_id", f"{spec.router_id!r} is not an IPv4 address"))
    return errors
