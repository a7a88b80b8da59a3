"""keepalived's configuration for the VIPs of a director (pure): VRRP only.

One ``vrrp_instance`` per virtual router: the config's ``vrrp.groups`` each get theirs,
every other VIP goes to the top-level ``virtual_router_id``. Every director starts as
BACKUP and the highest priority becomes master (``nopreempt``: the first master stays);
VRRP version 3, whose adverts may be sub-second. keepalived tells kubelvs its role
through ``notify_fifo`` (app/vrrp.py reads it). No ``virtual_server``: the load-balancing
table stays kubelvs's, on the backups too, so a backup forwards at once when it takes over.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..sources.vrrp import VrrpSpec

__all__ = ["ADVERTISED_VIPS", "Instance", "instance_name", "instances", "render"]

#: VIPs carried in the adverts: keepalived warns beyond 20 (the advert's address list);
#: the rest are held the same way, as ``virtual_ipaddress_excluded``.
ADVERTISED_VIPS = 20


@dataclass(frozen=True, slots=True)
class Instance:
    virtual_router_id: int
    priority: int
    vips: tuple[str, ...]  # IPv4 then IPv6, each in numeric order


def _host(vip: str) -> str:
    return f"{vip}/128" if ":" in vip else f"{vip}/32"


def instance_name(virtual_router_id: int) -> str:
    return f"kubelvs_{virtual_router_id}"


def instances(spec: VrrpSpec, vips: Iterable[str], *, priority: int | None = None) -> list[Instance]:
    """The virtual routers that hold at least one of ``vips``. ``priority`` (the command
    line's ``--vrrp-priority``) replaces the top-level one: the same config on every
    director, one number apart. An instance of IPv6 VIPs only is left out when the
    unicast peers are IPv4 (keepalived would refuse it: its adverts are of its VIPs'
    family; docs/ha.md)."""
    wanted = {ipaddress.ip_address(v) for v in vips}
    default = priority if priority is not None else spec.priority
    out = []
    grouped: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
    for group in spec.groups:
        members = {ipaddress.ip_address(v) for v in group.vips}
        grouped |= members
        held = sorted(wanted & members, key=_numeric)
        if held and _runs(spec, held):
            out.append(
                Instance(
                    group.virtual_router_id,
                    group.priority if group.priority is not None else default,
                    tuple(str(v) for v in held),
                )
            )
    rest = sorted(wanted - grouped, key=_numeric)
    if rest and _runs(spec, rest):
        out.append(Instance(spec.virtual_router_id, default, tuple(str(v) for v in rest)))
    return sorted(out, key=lambda i: i.virtual_router_id)


def _numeric(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> tuple[int, int]:
    return address.version, int(address)


def _runs(spec: VrrpSpec, vips: list[ipaddress.IPv4Address | ipaddress.IPv6Address]) -> bool:
    """An instance of these VIPs can run: it has an IPv4 one, or its adverts may be IPv6
    (no IPv4 unicast source)."""
    unicast4 = spec.unicast_src_ip is not None and ipaddress.ip_address(spec.unicast_src_ip).version == 4
    return any(v.version == 4 for v in vips) or not unicast4


def render(spec: VrrpSpec, held: list[Instance], *, fifo: Path, router_id: str) -> str:
    """keepalived.conf for ``held`` (from ``instances``; never empty: keepalived refuses an
    instance without a VIP, so the caller runs no keepalived when nothing is held)."""
    lines = [
        "# Written by kubelvs director: VRRP only; kubelvs owns the load-balancing table.",
        "global_defs {",
        f"  router_id {router_id}",
        f"  notify_fifo {fifo}",
        "}",
    ]
    for inst in held:
        lines += [
            "",
            f"vrrp_instance {instance_name(inst.virtual_router_id)} {{",
            "  state BACKUP",
            f"  interface {spec.interface}",
            f"  virtual_router_id {inst.virtual_router_id}",
            f"  priority {inst.priority}",
            f"  advert_int {spec.advert_interval:g}",
            "  version 3",
        ]
        if spec.nopreempt:
            lines.append("  nopreempt")
        elif spec.preempt_delay:
            lines.append(f"  preempt_delay {spec.preempt_delay:g}")
        if spec.unicast_src_ip:
            lines.append(f"  unicast_src_ip {spec.unicast_src_ip}")
        if spec.unicast_peers:
            lines += ["  unicast_peer {", *(f"    {peer}" for peer in spec.unicast_peers), "  }"]
        # The adverts carry addresses of one family: the IPv4 VIPs when there are any, the
        # IPv6 ones (held beside them, excluded from the adverts) otherwise. keepalived
        # adds an IPv6 /128 deprecated (preferred_lft 0), so that the director never takes
        # it as a source address (docs/ipv6.md).
        family4 = [v for v in inst.vips if ":" not in v]
        family6 = [v for v in inst.vips if ":" in v]
        advertised = family4 or family6
        shown = advertised[:ADVERTISED_VIPS]
        excluded = advertised[ADVERTISED_VIPS:] + (family6 if family4 else [])
        for block, addresses in (("virtual_ipaddress", shown), ("virtual_ipaddress_excluded", excluded)):
            if addresses:
                lines += [
                    f"  {block} {{",
                    *(f"    {_host(v)} dev {spec.interface}" for v in addresses),
                    "  }",
                ]
        lines.append("}")
    return "\n".join(lines) + "\n"
