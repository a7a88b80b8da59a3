"""Kernel-interface layer: links, addresses, routes and neighbours over rtnetlink.

The one place in kubelvs that reads and changes them (the node agent, the nftables
backend's tunnels and neighbours, the lab all call it); before it, each of them ran
``ip -j`` and parsed its JSON its own way. It uses pyroute2's ``IPRoute``: every call
opens a socket inside the network namespace it is given (``netns``: a name from
``ip netns``, ``None`` for the caller's own), does its requests and closes it. Results
are frozen dataclasses in the terms ``ip(8)`` prints (``ether``, ``global``,
``REACHABLE``), so they can be compared with ``ip``'s output.

Every failure is a ``KernelError`` saying what was asked, where, and the kernel's
reason; ``LinkKindUnsupported`` when the kernel lacks a link type (no ``dummy`` or
``ipip`` module). How the sockets are opened, and why from a worker thread when an
asyncio loop runs in the caller's, is ``kernel.rtnl``.

One cohesive thing (over 500 lines): one thin function per rtnetlink request, all with
the same error and namespace handling.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import time
from dataclasses import dataclass
from typing import Any

from ..errors import KernelError
from . import netns as _netns
from . import rtnl

__all__ = [
    "USABLE_STATES",
    "Address",
    "IpipParams",
    "Link",
    "LinkKindUnsupported",
    "NeighbourEntry",
    "OnLink",
    "Route",
    "add_address",
    "add_bridge",
    "add_dummy",
    "add_ip6tnl",
    "add_ipip",
    "add_veth",
    "addresses",
    "default_route_device",
    "delete_address",
    "delete_link",
    "link",
    "links",
    "neighbours",
    "probe_neighbour",
    "resolve_on_link",
    "route_get",
    "set_link_down",
    "set_link_up",
    "set_master",
]

_IFF_UP = 0x1
_NTF_USE = 0x01  # NTF_USE: "resolve it as if a packet were waiting"
# Link types (ARPHRD_*) by the name ip(8) prints after "link/".
_LINK_TYPES = {
    1: "ether",
    768: "ipip",
    769: "tunnel6",
    772: "loopback",
    776: "sit",
    778: "gre",
    823: "ip6gre",
    65534: "none",
}
_SCOPES = {0: "global", 200: "site", 253: "link", 254: "host", 255: "nowhere"}
_ROUTE_TYPES = {
    0: "unspec",
    1: "unicast",
    2: "local",
    3: "broadcast",
    4: "anycast",
    5: "multicast",
    6: "blackhole",
    7: "unreachable",
    8: "prohibit",
    9: "throw",
    10: "nat",
    11: "xresolve",
}
_NUD = {
    0x01: "INCOMPLETE",
    0x02: "REACHABLE",
    0x04: "STALE",
    0x08: "DELAY",
    0x10: "PROBE",
    0x20: "FAILED",
    0x40: "NOARP",
    0x80: "PERMANENT",
}
USABLE_STATES = frozenset({"REACHABLE", "STALE", "DELAY", "PROBE", "PERMANENT", "NOARP"})
"""Neighbour states whose link-layer address the kernel itself would send to."""


class LinkKindUnsupported(KernelError):
    """The kernel has no such link type (e.g. no ``ipip`` or ``dummy`` module)."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


# ---------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class IpipParams:
    """An ipip (or ip6tnl) device's tunnel ends; ``underlay``: ifindex it is bound to (0: none)."""

    remote: str  # "0.0.0.0" ("::"): any (the fallback devices tunl0, ip6tnl0)
    local: str
    underlay: int


@dataclass(frozen=True, slots=True)
class Link:
    """A network device as ``ip -d link show`` describes it."""

    index: int
    name: str
    kind: str  # veth, bridge, ipip, dummy, ...; "" for a device without one (lo)
    link_type: str  # ether, loopback, ipip, none, ... (the number when unknown)
    mac: str  # link-layer address, colon hex (an IPv4 tunnel's: its local address); "" when none
    up: bool  # administratively up (IFF_UP)
    mtu: int
    master: int  # ifindex of the bridge (or bond) it is a port of; 0: none
    ipip: IpipParams | None = None


@dataclass(frozen=True, slots=True)
class Address:
    """An address on a device (``ip addr``: ``local``, ``prefixlen``, ``scope``)."""

    device: str
    index: int
    address: str
    prefixlen: int
    scope: str  # global, site, link, host, nowhere

    @property
    def cidr(self) -> str:
        return f"{self.address}/{self.prefixlen}"

    @property
    def version(self) -> int:
        return ipaddress.ip_address(self.address).version


@dataclass(frozen=True, slots=True)
class Route:
    """A route (a table entry, or the answer of ``ip route get``)."""

    destination: str  # "default", "10.0.0.0/24", or the address asked for
    type: str  # unicast, local, broadcast, unreachable, ...
    device: str  # "" when none (blackhole, unreachable)
    index: int  # the device's ifindex; 0 when none
    gateway: str | None
    prefsrc: str | None  # the source address the kernel would use
    table: int


@dataclass(frozen=True, slots=True)
class NeighbourEntry:
    """An ARP / NDP entry (``ip neigh``)."""

    address: str
    device: str
    index: int
    mac: str | None  # None while unresolved (INCOMPLETE, FAILED)
    states: frozenset[str]  # REACHABLE, STALE, ...; empty for NONE

    @property
    def usable(self) -> bool:
        return self.mac is not None and bool(self.states & USABLE_STATES)


# ---------------------------------------------------------------------- links


def _hardware_address(text: str, ifi_type: int) -> str:
    """As ip(8) prints it. pyroute2 decodes IFLA_ADDRESS as 6 bytes whatever its length:
    an IPv4 tunnel's (its local address, 4 bytes) is the first 4 of them; an IPv6
    tunnel's (16 bytes) cannot be recovered from them, so it is left out."""
    kind = _LINK_TYPES.get(ifi_type)
    if kind in ("ipip", "sit", "gre"):
        octets = text.split(":")[:4]
        return ".".join(str(int(octet, 16)) for octet in octets) if len(octets) == 4 else ""
    if kind in ("tunnel6", "ip6gre"):
        return ""
    return text


def _link(msg: Any) -> Link:
    info = msg.get_attr("IFLA_LINKINFO")
    kind = str(info.get_attr("IFLA_INFO_KIND") or "") if info is not None else ""
    ipip = None
    if kind in ("ipip", "ip6tnl"):
        data = info.get_attr("IFLA_INFO_DATA")
        # pyroute2 names the kernel's IFLA_IPTUN_* attributes IFLA_IPIP_* (IFLA_IP6TNL_*).
        attr, any_address = ("IFLA_IPIP", "0.0.0.0") if kind == "ipip" else ("IFLA_IP6TNL", "::")
        if data is not None:
            ipip = IpipParams(
                remote=str(data.get_attr(f"{attr}_REMOTE") or any_address),
                local=str(data.get_attr(f"{attr}_LOCAL") or any_address),
                underlay=int(data.get_attr(f"{attr}_LINK") or 0),
            )
    ifi_type = int(msg["ifi_type"])
    return Link(
        index=int(msg["index"]),
        name=str(msg.get_attr("IFLA_IFNAME")),
        kind=kind,
        link_type=_LINK_TYPES.get(ifi_type, str(ifi_type)),
        mac=_hardware_address(str(msg.get_attr("IFLA_ADDRESS") or ""), ifi_type),
        up=bool(int(msg["flags"]) & _IFF_UP),
        mtu=int(msg.get_attr("IFLA_MTU") or 0),
        master=int(msg.get_attr("IFLA_MASTER") or 0),
        ipip=ipip,
    )


def links(netns: str | None) -> list[Link]:
    """Every device of the namespace, by ifindex."""

    def run(ipr: Any) -> list[Link]:
        return sorted((_link(m) for m in ipr.link("dump")), key=lambda x: x.index)

    return rtnl.call(netns, "list links", run)


def link(netns: str | None, name: str) -> Link | None:
    """Device ``name``; None when there is none of that name."""

    def get(ipr: Any) -> Link | None:
        try:
            (msg,) = ipr.link("get", ifname=name)
        except rtnl.netlink_error() as exc:
            if rtnl.code_of(exc) == errno.ENODEV:
                return None
            raise
        return _link(msg)

    return rtnl.call(netns, f"read link {name}", get)


def _add_link(
    netns: str | None,
    what: str,
    kind: str,
    name: str,
    *,
    module: str = "",
    underlay: tuple[str, str] | None = None,
    **spec: Any,
) -> None:
    """``underlay``: (attribute, device) - the device's ifindex into that attribute, looked
    up on the same connection. ``module``: the kernel module of ``kind`` (default: its name)."""

    def add(ipr: Any) -> None:
        if underlay is not None:
            spec[underlay[0]] = rtnl.index_of(ipr, netns, underlay[1])
        try:
            ipr.link("add", ifname=name, kind=kind, **spec)
        except rtnl.netlink_error() as exc:
            if rtnl.code_of(exc) == errno.EOPNOTSUPP:
                raise LinkKindUnsupported(
                    f"{what}{rtnl.where(netns)}: this kernel has no {kind} link type "
                    f"(no {module or kind} module)",
                    kind,
                ) from exc
            raise

    rtnl.call(netns, what, add)


def add_dummy(netns: str | None, name: str) -> None:
    """``ip link add NAME type dummy`` (down, as the kernel makes it)."""
    _add_link(netns, f"add link {name} type dummy", "dummy", name)


def add_bridge(netns: str | None, name: str) -> None:
    """``ip link add NAME type bridge``."""
    _add_link(netns, f"add link {name} type bridge", "bridge", name)


def add_ipip(netns: str | None, name: str, *, remote: str, local: str, underlay: str) -> None:
    """``ip link add NAME type ipip remote R local L dev UNDERLAY`` (left down)."""
    what = f"add link {name} type ipip remote {remote} local {local} dev {underlay}"
    _add_link(
        netns, what, "ipip", name, underlay=("ipip_link", underlay), ipip_remote=remote, ipip_local=local
    )


def add_ip6tnl(netns: str | None, name: str, *, remote: str, local: str, underlay: str) -> None:
    """``ip link add NAME type ip6tnl mode ip6ip6 remote R local L dev UNDERLAY`` (left down)."""
    what = f"add link {name} type ip6tnl mode ip6ip6 remote {remote} local {local} dev {underlay}"
    _add_link(
        netns,
        what,
        "ip6tnl",
        name,
        module="ip6_tunnel",
        underlay=("ip6tnl_link", underlay),
        ip6tnl_remote=remote,
        ip6tnl_local=local,
        ip6tnl_proto=socket.IPPROTO_IPV6,  # ip6ip6
    )


def add_veth(netns: str | None, name: str, peer: str, *, peer_netns: str | None = None) -> None:
    """A veth pair: ``name`` in ``netns``, ``peer`` in ``peer_netns`` (default: the same)."""
    what = f"add link {name} type veth peer {peer}" + (f" in {peer_netns}" if peer_netns else "")
    if peer_netns is None:
        _add_link(netns, what, "veth", name, peer={"ifname": peer})
        return
    try:
        target = os.open(_netns.path_of(peer_netns), os.O_RDONLY)
    except FileNotFoundError:
        raise KernelError(f"{what}: network namespace {peer_netns!r} does not exist") from None
    try:
        _add_link(netns, what, "veth", name, peer={"ifname": peer, "net_ns_fd": target})
    finally:
        os.close(target)


def delete_link(netns: str | None, name: str) -> None:
    """``ip link del NAME``."""

    def run(ipr: Any) -> None:
        ipr.link("del", index=rtnl.index_of(ipr, netns, name))

    rtnl.call(netns, f"delete link {name}", run)


def _set(netns: str | None, name: str, what: str, **spec: Any) -> None:
    def run(ipr: Any) -> None:
        ipr.link("set", index=rtnl.index_of(ipr, netns, name), **spec)

    rtnl.call(netns, what, run)


def set_link_up(netns: str | None, name: str) -> None:
    _set(netns, name, f"set link {name} up", state="up")


def set_link_down(netns: str | None, name: str) -> None:
    _set(netns, name, f"set link {name} down", state="down")


def set_master(netns: str | None, name: str, master: str) -> None:
    """``ip link set NAME master MASTER`` (a bridge port)."""

    def run(ipr: Any) -> None:
        ipr.link("set", index=rtnl.index_of(ipr, netns, name), master=rtnl.index_of(ipr, netns, master))

    rtnl.call(netns, f"set link {name} master {master}", run)


# ---------------------------------------------------------------------- addresses


def addresses(netns: str | None, device: str | None = None) -> list[Address]:
    """Every IPv4 and IPv6 address of the namespace, or of ``device`` only."""

    def read(ipr: Any) -> list[Address]:
        only = rtnl.index_of(ipr, netns, device) if device is not None else None
        names = rtnl.names(ipr)
        out = []
        for m in ipr.addr("dump"):
            index = int(m["index"])
            if only is not None and index != only:
                continue
            local = m.get_attr("IFA_LOCAL") or m.get_attr("IFA_ADDRESS")
            if local is None or int(m["family"]) not in (socket.AF_INET, socket.AF_INET6):
                continue
            scope = int(m["scope"])
            out.append(
                Address(
                    names.get(index, ""),
                    index,
                    str(local),
                    int(m["prefixlen"]),
                    _SCOPES.get(scope, str(scope)),
                )
            )
        return out

    return rtnl.call(netns, "list addresses" + (f" of {device}" if device else ""), read)


def _interface(cidr: str) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    try:
        return ipaddress.ip_interface(cidr)
    except ValueError:
        raise KernelError(f"{cidr!r} is not an address with a prefix length (10.0.0.1/24)") from None


def add_address(netns: str | None, device: str, cidr: str) -> None:
    """``ip addr add CIDR dev DEVICE``."""
    iface = _interface(cidr)

    def run(ipr: Any) -> None:
        index = rtnl.index_of(ipr, netns, device)
        ipr.addr("add", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen)

    rtnl.call(netns, f"add address {cidr} to {device}", run)


def delete_address(netns: str | None, device: str, cidr: str) -> None:
    """``ip addr del CIDR dev DEVICE``."""
    iface = _interface(cidr)

    def run(ipr: Any) -> None:
        index = rtnl.index_of(ipr, netns, device)
        ipr.addr("del", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen)

    rtnl.call(netns, f"delete address {cidr} from {device}", run)


# ---------------------------------------------------------------------- routes


def _route(msg: Any, names: dict[int, str], asked: str | None = None) -> Route:
    dst = msg.get_attr("RTA_DST")
    destination = asked or (f"{dst}/{msg['dst_len']}" if dst is not None else "default")
    oif = int(msg.get_attr("RTA_OIF") or 0)
    gateway = msg.get_attr("RTA_GATEWAY")
    multipath = msg.get_attr("RTA_MULTIPATH")
    if not oif and multipath:  # ECMP: the first next hop (as ip route get reports one)
        oif = int(multipath[0]["oif"])
        gateway = gateway or multipath[0].get_attr("RTA_GATEWAY")
    prefsrc = msg.get_attr("RTA_PREFSRC")
    return Route(
        destination=destination,
        type=_ROUTE_TYPES.get(int(msg["type"]), str(msg["type"])),
        device=names.get(oif, "") if oif else "",
        index=oif,
        gateway=str(gateway) if gateway else None,
        prefsrc=str(prefsrc) if prefsrc else None,
        table=int(msg.get_attr("RTA_TABLE") or msg["table"]),
    )


def route_get(netns: str | None, destination: str) -> Route:
    """The route the kernel would take to ``destination`` (``ip route get``)."""
    try:
        address = ipaddress.ip_address(destination)
    except ValueError:
        raise KernelError(f"{destination!r} is not an IPv4 or IPv6 address") from None

    def run(ipr: Any) -> Route:
        (msg,) = ipr.route("get", dst=str(address))
        return _route(msg, rtnl.names(ipr), str(address))

    return rtnl.call(netns, f"route get {address}", run)


def default_route_device(netns: str | None) -> str | None:
    """The device of the IPv4 default route in the main table (None: no default route)."""

    def run(ipr: Any) -> str | None:
        names = rtnl.names(ipr)
        for msg in ipr.route("dump", family=socket.AF_INET):
            if int(msg["dst_len"]) == 0 and int(msg.get_attr("RTA_TABLE") or msg["table"]) == 254:
                route = _route(msg, names)
                if route.device:
                    return route.device
        return None

    return rtnl.call(netns, "read the default route", run)


# ---------------------------------------------------------------------- neighbours


def neighbours(
    netns: str | None, *, device: str | None = None, address: str | None = None
) -> list[NeighbourEntry]:
    """ARP and NDP entries (``ip neigh show [ADDRESS] [dev DEVICE]``)."""
    wanted = str(ipaddress.ip_address(address)) if address is not None else None

    def run(ipr: Any) -> list[NeighbourEntry]:
        only = rtnl.index_of(ipr, netns, device) if device is not None else None
        names = rtnl.names(ipr)
        out = []
        for m in ipr.neigh("dump"):
            if int(m["family"]) not in (socket.AF_INET, socket.AF_INET6):
                continue
            index, dst = int(m["ifindex"]), m.get_attr("NDA_DST")
            if dst is None or (only is not None and index != only):
                continue
            if wanted is not None and str(dst) != wanted:
                continue
            state, mac = int(m["state"]), m.get_attr("NDA_LLADDR")
            out.append(
                NeighbourEntry(
                    address=str(dst),
                    device=names.get(index, ""),
                    index=index,
                    mac=str(mac).lower() if mac else None,
                    states=_states(state),
                )
            )
        return out

    return rtnl.call(netns, "list neighbours", run)


def probe_neighbour(netns: str | None, address: str, device: str) -> None:
    """Ask the kernel to resolve ``address`` on ``device`` now (ARP / NDP solicitation),
    as a packet to it would: a neighbour request with NTF_USE. Returns at once; read
    the answer with ``neighbours``."""
    dst = str(ipaddress.ip_address(address))

    def run(ipr: Any) -> None:
        _probe(ipr, dst, socket.AF_INET6 if ":" in dst else socket.AF_INET, rtnl.index_of(ipr, netns, device))

    rtnl.call(netns, f"probe neighbour {dst} on {device}", run)


def _probe(ipr: Any, dst: str, family: int, index: int) -> None:
    # replace = NLM_F_CREATE | NLM_F_REPLACE: works with or without an entry already there.
    ipr.neigh("replace", dst=dst, ifindex=index, family=family, flags=_NTF_USE, state=0)


# ---------------------------------------------------------------------- resolving a neighbour


@dataclass(frozen=True, slots=True)
class OnLink:
    """Where a host directly on one of our links is: the device, our MAC there, its MAC."""

    address: str
    device: str
    index: int
    own_mac: str
    mac: str
    source: str | None  # the address the kernel would send from


def resolve_on_link(netns: str | None, address: str, *, timeout: float = 1.5) -> OnLink:
    """``address`` as a neighbour on an Ethernet link of ours: when the kernel has no
    usable entry it is asked to resolve it (ARP, as a packet to it would cause) and
    the table is polled until the answer comes or ``timeout`` passes. KernelError when
    it is behind a gateway, on no Ethernet link, or does not answer. One socket asks
    for the route, the device and the entry (a socket each cost a new DR real server
    ~6 ms, most of a one-real-server change)."""
    try:
        dst = str(ipaddress.ip_address(address))
    except ValueError:
        raise KernelError(f"{address!r} is not an IPv4 or IPv6 address") from None
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET

    def run(ipr: Any) -> OnLink:
        try:
            (msg,) = ipr.route("get", dst=dst)
        except rtnl.netlink_error() as exc:
            raise KernelError(
                f"no route to {address} (route get {dst}{rtnl.where(netns)}: {rtnl.reason(exc)})"
            ) from exc
        route = _route(msg, {}, dst)
        if route.gateway:
            raise KernelError(f"{address} is reached via gateway {route.gateway}, not on a link of ours")
        if not route.index:
            raise KernelError(f"no route to {address} (route type {route.type})")
        try:
            (link_msg,) = ipr.link("get", index=route.index)
        except rtnl.netlink_error() as exc:
            if rtnl.code_of(exc) == errno.ENODEV:
                raise KernelError(
                    f"{address} is reached through device {route.index}, which is gone"
                ) from exc
            raise
        device = _link(link_msg)
        if device.link_type != "ether":
            raise KernelError(f"{address} is reached through {device.name}, which is not an Ethernet device")
        mac = _usable_mac(ipr, dst, family, device.index)
        deadline = time.monotonic() + timeout
        while mac is None:
            # Asked again every round: after a FAILED entry the kernel starts over.
            _probe(ipr, dst, family, device.index)
            time.sleep(0.05)
            mac = _usable_mac(ipr, dst, family, device.index)
            if mac is None and time.monotonic() > deadline:
                raise KernelError(f"{address} does not answer ARP on {device.name} (is the real server up?)")
        return OnLink(address, device.name, device.index, device.mac.lower(), mac, route.prefsrc)

    return rtnl.call(netns, f"resolve {dst} on a link", run)


def _usable_mac(ipr: Any, dst: str, family: int, index: int) -> str | None:
    """The MAC of ``dst``'s usable entry on device ``index`` (``ip neigh get``: one
    entry asked for, which Linux answers since 4.20), None while there is none."""
    try:
        (msg,) = ipr.neigh("get", dst=dst, ifindex=index, family=family)
    except rtnl.netlink_error() as exc:
        if rtnl.code_of(exc) == errno.ENOENT:
            return None
        raise
    mac = msg.get_attr("NDA_LLADDR")
    return str(mac).lower() if mac and _states(int(msg["state"])) & USABLE_STATES else None


def _states(state: int) -> frozenset[str]:
    """The names of an entry's NUD state bits (``ip neigh``'s REACHABLE, STALE, ...)."""
    return frozenset(name for bit, name in _NUD.items() if state & bit)
