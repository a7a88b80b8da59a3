"""The director's own source address toward its real servers (director-ipv6-vip-source).

Linux picks the source of a packet the director itself sends (the outer header of a TUN
packet, a health check) by RFC 6724's rules, and for rule 8 (longest matching prefix) it
counts the common prefix only up to each candidate's own prefix length. An IPv6 VIP held
as ``/128`` on the interface toward the real servers therefore beats the director's
``/64`` address for most destinations of that ``/64``, unless it is deprecated
(``preferred_lft 0``, rule 3). The real servers hold the VIP: what comes from it is
dropped (a tunnel packet from a local address) or answered locally (docs/ipv6.md).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

from ..formats.iproute import Address, Interface
from ..model import Forward, RealServer
from .bundle import Bundle
from .checks_ipvs import ipvsadm_rs
from .findings import Finding, Severity

__all__ = ["check_ipv6_vip_source", "source_for"]

_KIND = {Forward.DR: "Route", Forward.TUN: "Tunnel"}


def _common_prefix(a: ipaddress.IPv6Address, b: ipaddress.IPv6Address) -> int:
    return 128 - (int(a) ^ int(b)).bit_length()


def source_for(iface: Interface, destination: ipaddress.IPv6Address) -> Address | None:
    """The address of ``iface`` Linux chooses as the source toward ``destination`` among its
    global ones: a preferred one before a deprecated one, then the longest common prefix,
    counted up to the candidate's prefix length (ipv6_get_saddr_eval)."""
    candidates = [a for a in iface.addresses if a.ip.version == 6 and a.scope == "global"]
    if not candidates:
        return None

    def score(a: Address) -> tuple[bool, int]:
        assert isinstance(a.ip, ipaddress.IPv6Address)
        return (not a.deprecated, min(_common_prefix(a.ip, destination), a.interface.network.prefixlen))

    return max(candidates, key=score)


def _toward(bundle: Bundle, destination: ipaddress.IPv6Address) -> Interface | None:
    """The interface whose own prefix holds ``destination`` (the connected route)."""
    for iface in bundle.interfaces or []:
        for a in iface.addresses:
            if a.ip.version == 6 and a.scope == "global" and destination in a.interface.network:
                return iface
    return None


def check_ipv6_vip_source(bundle: Bundle) -> Iterator[Finding]:
    """director-ipv6-vip-source: for a DR/TUN real server of an IPv6 service, the source
    Linux picks on the interface toward it is a VIP of this director."""
    services = bundle.services or []
    vips = {svc.key.address for svc in services if svc.key.address is not None}
    hit: dict[tuple[str, str], list[RealServer]] = {}  # (interface, VIP) -> real servers
    chosen: dict[tuple[str, str], tuple[Interface, Address]] = {}
    for svc in services:
        for rs in svc.realservers:
            if rs.address.version != 6 or rs.forward not in (Forward.DR, Forward.TUN):
                continue
            assert isinstance(rs.address, ipaddress.IPv6Address)
            iface = _toward(bundle, rs.address)
            source = source_for(iface, rs.address) if iface is not None else None
            if iface is None or source is None or source.ip not in vips:
                continue
            key = (iface.name, str(source.ip))
            chosen[key] = (iface, source)
            if rs not in hit.setdefault(key, []):
                hit[key].append(rs)
    for (device, vip), realservers in sorted(hit.items()):
        iface, source = chosen[(device, vip)]
        tunnel = any(rs.forward is Forward.TUN for rs in realservers)
        names = ", ".join(ipvsadm_rs(rs) for rs in realservers[:4]) + (" ..." if len(realservers) > 4 else "")
        own = [a for a in iface.addresses if a.ip.version == 6 and a.scope == "global" and a.ip not in vips]
        yield Finding(
            id="director-ipv6-vip-source",
            severity=Severity.ERROR if tunnel else Severity.WARNING,
            summary=f"this director sends to its real server(s) {names} from the VIP {vip}, which it holds "
            f"on {device} as a preferred address",
            explanation=(
                f"Linux chooses the source of the director's own packets on {device} by the longest prefix "
                f"in common with the destination, counted up to each address's prefix length: the VIP's "
                f"/{source.interface.network.prefixlen} beats "
                + (f"{own[0].interface.with_prefixlen}" if own else "the director's own address")
                + ". The real servers hold the VIP, so what comes from it never reaches the director again: "
                + (
                    "a TUN real server drops tunnel packets whose outer source is one of its own "
                    "addresses, and the connections hang in SYN_RECV; "
                    if tunnel
                    else ""
                )
                + "health checks and any connection from this host to a real server get their reply "
                "delivered on the real server itself. A deprecated address is never chosen as a source "
                "while a preferred one exists, and still receives the VIP's traffic."
            ),
            evidence=(
                (f"ip-addr.txt:{source.lineno}: " if source.lineno else "ip-addr.txt: ")
                + f"{device}: {source.line}",
                *(
                    (f"ip-addr.txt:{a.lineno}: " if a.lineno else "ip-addr.txt: ") + f"{device}: {a.line}"
                    for a in own[:1]
                ),
                *(f"{_KIND[rs.forward]} real server {ipvsadm_rs(rs)}" for rs in realservers[:3]),
            ),
            fix=(
                f"ip -6 addr change {source.interface.with_prefixlen} dev {device} preferred_lft 0",
                "# whatever adds the VIP again (a failover, a script) must add it deprecated too: "
                f"ip -6 addr add {source.interface.with_prefixlen} dev {device} nodad preferred_lft 0",
            ),
            subject=vip,
        )
