"""Where a DR real server sits on the link: out device, its MAC, our MAC there.

A DR director only rewrites MACs, so it must know each real server's MAC. It comes
from the kernel's neighbour table; when the entry is missing, one UDP datagram to
the discard port makes the kernel ARP for it, and the table is polled until the
answer arrives (or ``timeout`` passes).
"""

from __future__ import annotations

import json
import socket
import subprocess
import time

from ...kernel.netns import entered
from .ruleset import Neighbour

__all__ = ["NeighbourError", "resolve"]

_USABLE = {"REACHABLE", "STALE", "DELAY", "PROBE", "PERMANENT", "NOARP"}


class NeighbourError(Exception):
    """The real server cannot be reached on a link from this director."""


def _ip_json(netns: str | None, *args: str) -> list[dict[str, object]]:
    cmd = ["ip", "-j"] + (["-n", netns] if netns else []) + list(args)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise NeighbourError(proc.stderr.strip() or f"{' '.join(cmd)} failed")
    out = json.loads(proc.stdout or "[]")
    return out if isinstance(out, list) else []


def _neighbour_mac(netns: str | None, address: str, device: str) -> str | None:
    for entry in _ip_json(netns, "neigh", "show", address, "dev", device):
        states = set(entry.get("state", []) or [])  # type: ignore[call-overload]
        mac = entry.get("lladdr")
        if mac and states & _USABLE:
            return str(mac).lower()
    return None


def resolve(netns: str | None, address: str, *, timeout: float = 1.5) -> Neighbour:
    """The neighbour record for ``address``; probes (ARP) when the kernel has none."""
    routes = _ip_json(netns, "route", "get", address)
    if not routes:
        raise NeighbourError(f"no route to {address}")
    route = routes[0]
    if route.get("gateway"):
        raise NeighbourError(
            f"{address} is reached via gateway {route['gateway']}: a DR real server must be on a link of the director"
        )
    device = str(route["dev"])
    (link,) = _ip_json(netns, "link", "show", "dev", device)
    own_mac = str(link.get("address", "")).lower()
    ifindex = int(link["ifindex"])  # type: ignore[call-overload]
    if link.get("link_type") != "ether":
        raise NeighbourError(f"{address} is reached through {device}, which is not an Ethernet device")
    mac = _neighbour_mac(netns, address, device)
    deadline = time.monotonic() + timeout
    while mac is None:
        with entered(netns):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                try:
                    probe.sendto(b"", (address, 9))  # discard port; the point is the ARP request
                except OSError:
                    pass
        time.sleep(0.05)
        mac = _neighbour_mac(netns, address, device)
        if mac is None and time.monotonic() > deadline:
            raise NeighbourError(f"{address} does not answer ARP on {device} (is the real server up?)")
    return Neighbour(mac=mac, own_mac=own_mac, device=device, ifindex=ifindex)
