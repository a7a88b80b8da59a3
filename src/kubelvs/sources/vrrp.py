"""``vrrp:`` in the config file: a pair (or more) of directors that move the VIPs between
them with VRRP, keepalived doing the VRRP (docs/ha.md).

The keys are keepalived.conf(5)'s ``vrrp_instance`` keys, so that a keepalived user
reads them without a manual. kubelvs keeps owning the load-balancing table on every
director; keepalived only holds the VIPs on the master. Which VIPs: every VIP of the
desired state (the file's services, or the Kubernetes Services' external IPs), so the
list follows the source without being written twice.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from ..errors import FieldError
from ..model import ConnectionSync
from . import shape

__all__ = ["VRRP", "VrrpGroupSpec", "VrrpSpec", "VrrpSyncSpec", "vrrp_errors"]


@dataclass(frozen=True, slots=True)
class VrrpGroupSpec:
    """VIPs that move together under their own virtual router (another master may hold them)."""

    virtual_router_id: int
    vips: tuple[str, ...]
    priority: int | None = None  # None: the top-level priority


@dataclass(frozen=True, slots=True)
class VrrpSyncSpec:
    """``sync_daemon:`` (IPVS): the kernel's connection sync between the directors, both
    ways (keepalived's ``lvs_sync_daemon``, which runs one way at a time)."""

    interface: str | None = None  # None: vrrp.interface
    syncid: int | None = None  # None: vrrp.virtual_router_id


@dataclass(frozen=True, slots=True)
class VrrpSpec:
    interface: str
    virtual_router_id: int = 51
    priority: int = 100
    advert_interval: float = 1.0
    nopreempt: bool = False
    preempt_delay: float = 0.0
    unicast_src_ip: str | None = None
    unicast_peers: tuple[str, ...] = ()
    groups: tuple[VrrpGroupSpec, ...] = ()
    sync_daemon: VrrpSyncSpec | None = None

    def connection_sync(self) -> ConnectionSync | None:
        d = self.sync_daemon
        if d is None:
            return None
        return ConnectionSync(
            d.interface or self.interface, self.virtual_router_id if d.syncid is None else d.syncid
        )


_ROUTER_ID = shape.bounded(shape.integer, minimum=1, maximum=255)
#: 255 is the address owner's priority (RFC 5798): a director never owns the VIP.
_PRIORITY = shape.bounded(shape.integer, minimum=1, maximum=254)

VRRP = shape.Record(
    VrrpSpec,
    {
        "interface": shape.string,
        "virtual_router_id": _ROUTER_ID,
        "priority": _PRIORITY,
        # VRRPv3 counts in centiseconds, up to 4095 of them.
        "advert_interval": shape.bounded(shape.number, minimum=0.01, maximum=40.95),
        "nopreempt": shape.boolean,
        "preempt_delay": shape.bounded(shape.number, minimum=0, maximum=1000),
        "unicast_src_ip": shape.optional(shape.string),
        "unicast_peers": shape.list_of(shape.string),
        "groups": shape.list_of(
            shape.Record(
                VrrpGroupSpec,
                {
                    "virtual_router_id": _ROUTER_ID,
                    "vips": shape.list_of(shape.string),
                    "priority": shape.optional(_PRIORITY),
                },
            )
        ),
        "sync_daemon": shape.optional(
            shape.Record(
                VrrpSyncSpec,
                {
                    "interface": shape.optional(shape.string),
                    "syncid": shape.optional(shape.bounded(shape.integer, minimum=0, maximum=255)),
                },
            )
        ),
    },
)


def vrrp_errors(spec: VrrpSpec, path: str = "vrrp") -> list[FieldError]:
    """The rules that span keys: addresses, one virtual router per id, a VIP in one group."""
    errors: list[FieldError] = []
    if not spec.interface or "/" in spec.interface or len(spec.interface) > 15:
        errors.append(FieldError(f"{path}.interface", f"{spec.interface!r} is not an interface name"))
    sync = spec.sync_daemon
    if sync is not None and sync.interface is not None and (not sync.interface or len(sync.interface) > 15):
        errors.append(
            FieldError(f"{path}.sync_daemon.interface", f"{sync.interface!r} is not an interface name")
        )
    if spec.nopreempt and spec.preempt_delay:
        errors.append(FieldError(f"{path}.preempt_delay", "means nothing with nopreempt: true"))
    addresses = [(f"{path}.unicast_src_ip", spec.unicast_src_ip)] if spec.unicast_src_ip else []
    addresses += [(f"{path}.unicast_peers[{i}]", peer) for i, peer in enumerate(spec.unicast_peers)]
    for where, text in addresses:
        if _address(text) is None:
            errors.append(FieldError(where, f"{text!r} is not an IP address"))
    if spec.unicast_src_ip and not spec.unicast_peers:
        errors.append(FieldError(f"{path}.unicast_peers", "required with unicast_src_ip"))
    routers = {spec.virtual_router_id: f"{path}.virtual_router_id"}
    owner: dict[ipaddress.IPv4Address | ipaddress.IPv6Address, str] = {}
    for g, group in enumerate(spec.groups):
        where = f"{path}.groups[{g}]"
        first = routers.setdefault(group.virtual_router_id, f"{where}.virtual_router_id")
        if first != f"{where}.virtual_router_id":
            errors.append(
                FieldError(f"{where}.virtual_router_id", f"{group.virtual_router_id} is already {first}'s")
            )
        if not group.vips:
            errors.append(FieldError(f"{where}.vips", "a group needs at least one VIP"))
        for v, text in enumerate(group.vips):
            address = _address(text)
            if address is None:
                errors.append(FieldError(f"{where}.vips[{v}]", f"{text!r} is not an IP address"))
            elif address in owner:
                errors.append(FieldError(f"{where}.vips[{v}]", f"{text} is already in {owner[address]}"))
            else:
                owner[address] = where
    return errors


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None
