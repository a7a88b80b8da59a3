"""Where a DR real server sits on the link: out device, its MAC, our MAC there.

A DR director only rewrites MACs, so it must know each real server's MAC. It comes
from the kernel's neighbour table (read through ``kernel.iproute``); when the entry is
missing, the kernel is asked to resolve it (an ARP request, as a packet to the real
server would cause), and the table is polled until the answer arrives (or ``timeout``
passes).
"""

from __future__ import annotations

from ...errors import KernelError
from ...kernel import iproute
from .ruleset import Neighbour

__all__ = ["NeighbourError", "resolve"]


class NeighbourError(KernelError):
    """The real server cannot be reached on a link from this director."""


def resolve(netns: str | None, address: str, *, timeout: float = 1.5) -> Neighbour:
    """The neighbour record for ``address``; probes (ARP) when the kernel has none.
    Every failure is a NeighbourError naming the address."""
    try:
        found = iproute.resolve_on_link(netns, address, timeout=timeout)
    except KernelError as exc:
        raise NeighbourError(str(exc)) from exc
    return Neighbour(mac=found.mac, own_mac=found.own_mac, device=found.device, ifindex=found.index)
