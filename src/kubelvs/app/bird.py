"""bird's configuration for the VIPs a director announces (pure), and its protocol table
as ``birdc show protocols`` prints it.

One static protocol per family holds a ``/32`` (``/128``) unreachable route per VIP the
director serves (the route exists only to be exported; the director's own forwarding is
its load-balancing table); one BGP session per peer exports exactly the routes of the
peer's own family, next hop self, and imports nothing; BFD on every session unless
turned off. A VIP of a family no peer has is not announced (docs/ha.md): routers peer
once per family, and an IPv6 route over an IPv4 session would need an IPv6 next hop
that session does not have.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from ..sources.bgp import BgpSpec

__all__ = [
    "STATIC_PROTOCOL",
    "STATIC_PROTOCOL6",
    "announceable",
    "parse_protocols",
    "peer_protocol",
    "render",
]

STATIC_PROTOCOL = "kubelvs_vips"
STATIC_PROTOCOL6 = "kubelvs_vips6"


def _version(address: str) -> int:
    return ipaddress.ip_address(address).version


def announceable(spec: BgpSpec | None, vips: Iterable[str]) -> frozenset[str]:
    """The VIPs some peer of their family will receive."""
    if spec is None:
        return frozenset()
    families = {_version(p.address) for p in spec.peers}
    return frozenset(v for v in vips if _version(v) in families)


def peer_protocol(address: str) -> str:
    """The BGP protocol's name in bird for a peer: ``peer_10_240_0_254``."""
    return "peer_" + address.replace(".", "_").replace(":", "_")


def render(spec: BgpSpec, vips: Iterable[str]) -> str:
    addresses = sorted({ipaddress.ip_address(v) for v in vips}, key=lambda a: (a.version, int(a)))
    announced = [a for a in addresses if a.version == 4]
    announced6 = [a for a in addresses if a.version == 6]
    six = any(_version(p.address) == 6 for p in spec.peers)
    ms = round(spec.bfd_interval * 1000)
    lines = [
        "# Written by kubelvs director: BGP announcements of the VIPs it serves.",
        "log stderr { info, remote, warning, error, auth, fatal, bug };",
        'timeformat protocol "%s";',  # one word in ``show protocols`` (parse_protocols)
    ]
    if spec.router_id:
        lines.append(f"router id {spec.router_id};")
    lines += [
        "protocol device {}",
        f"protocol static {STATIC_PROTOCOL} {{",
        "  ipv4;",
        *(f"  route {v}/32 unreachable;" for v in announced),
        "}",
    ]
    if six:
        lines += [
            f"protocol static {STATIC_PROTOCOL6} {{",
            "  ipv6;",
            *(f"  route {v}/128 unreachable;" for v in announced6),
            "}",
        ]
    if spec.bfd:
        lines += [
            "protocol bfd {",
            f'  interface "*" {{ min rx interval {ms} ms; min tx interval {ms} ms; '
            f"multiplier {spec.bfd_multiplier}; }};",
            "}",
        ]
    for peer in spec.peers:
        lines += [
            f"protocol bgp {peer_protocol(peer.address)} {{",
            f"  local as {spec.local_as};",
            f"  neighbor {peer.address} port {peer.port} as {peer.peer_as};",
            f"  hold time {spec.hold_time}; keepalive time {max(1, spec.hold_time // 3)};",
            "  connect retry time 1;",
        ]
        if spec.bfd:
            lines.append("  bfd on;")
        if peer.password is not None:
            lines.append(f'  password "{peer.password}";')
        channel, static = (
            ("ipv6", STATIC_PROTOCOL6) if _version(peer.address) == 6 else ("ipv4", STATIC_PROTOCOL)
        )
        lines += [
            f'  {channel} {{ import none; export where proto = "{static}"; next hop self; }};',
            "}",
        ]
    return "\n".join(lines) + "\n"


def parse_protocols(text: str) -> dict[str, str]:
    """``birdc show protocols``: each BGP protocol's state, e.g. ``Established`` or ``Active``.

    ``Name  Proto  Table  State  Since  Info`` rows; the Info column starts with the BGP
    state (``Active        Socket: Connection refused``); without it, the State column."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[1] == "BGP":
            out[parts[0]] = parts[5] if len(parts) >= 6 else parts[3]
    return out
