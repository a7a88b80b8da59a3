"""TUN real servers: one IPIP device per real server, owned by kubelvs.

The DR path picks a real server in the ``netdev`` ingress hook; for a TUN service
(``tun_svc``) the chosen packet is handed to ``kvt<RIP in hex>``, an ``ipip`` device
with ``remote RIP local <our address toward it>``, which encapsulates it. Checked on
Debian's 6.1 kernel:

- ``fwd to "kvt..."`` does NOT work: nf_fwd_netdev pushes the Ethernet header back
  before handing the frame to the device, so the tunnel encapsulates the Ethernet
  header too and the real server's ``tunl0`` decapsulates garbage;
- ``fwd ip to ip daddr device "kvt..."`` (nft_fwd_neigh) hands over the packet at its
  IP header through the device's neighbour output, which for a NOARP device is the
  device's own transmit: ``ipip_tunnel_xmit`` encapsulates the IP packet as it is.

Devices are named from the address itself (``kvt0a00000b`` = 10.0.0.11, 11 of the 15
characters a name may have): no collisions, and a read knows which real server a
device is for. Only links of type ipip whose name is ours are ever changed or removed.

TUN over IPv6 is the same with an ``ip6tnl`` device in ``ip6ip6`` mode per real server,
``kv6`` + its id in hex (an IPv6 address does not fit in a name; the id is the one that
marks it, ``elements.mark_of``, and the device's ``remote`` says which address it is
for), handed the packet by ``fwd ip6 to ip6 daddr device ...`` from ``tun6_out``.

Each tunnel is bound to the device its real server is routed through (``dev``), and
the ingress hook goes on that device, as for DR: a one-armed director, clients
arrive on the device that leads to the real servers.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ...errors import KernelError
from ...kernel import iproute
from ...model import Forward, ServiceKey, VirtualService
from .elements import ip_of, ip_text, mark_of
from .ruleset import Element

__all__ = [
    "PREFIX",
    "Tunnel",
    "TunnelChange",
    "TunnelError",
    "TunnelState",
    "address_of",
    "device_name",
    "list_tunnels",
    "resolve",
    "tun_addresses",
]

PREFIX = "kvt"
PREFIX6 = "kv6"
_NAME = re.compile(rf"^{PREFIX}([0-9a-f]{{8}})$")
_NAME6 = re.compile(rf"^{PREFIX6}[0-9a-f]{{8}}$")


class TunnelError(KernelError):
    """A tunnel to a real server cannot be made (no route, no ipip, ...); ``rip`` names it."""

    def __init__(self, message: str, rip: str | None = None) -> None:
        super().__init__(message)
        self.rip = rip


@dataclass(frozen=True, slots=True)
class Tunnel:
    """An IPIP device of ours: to ``remote`` from ``local``, bound to ``underlay``."""

    name: str
    remote: str
    local: str
    underlay: str  # the device toward the real server (where the ingress hook goes)
    ifindex: int  # the underlay's ifindex


def device_name(rip: str) -> str:
    address = ip_of(rip)
    return f"{PREFIX if address.version == 4 else PREFIX6}{mark_of(address):08x}"


def address_of(name: str) -> str | None:
    """The IPv4 real server a device name of ours is for; None for any other name."""
    m = _NAME.match(name)
    return str(ipaddress.IPv4Address(int(m.group(1), 16))) if m else None


def is_ours(name: str) -> bool:
    return bool(_NAME.match(name) or _NAME6.match(name))


def tun_addresses(svc: VirtualService | None) -> frozenset[str]:
    """The TUN real servers of ``svc`` (one forwarding method per service: ``problems``)."""
    if svc is None or not svc.realservers or svc.realservers[0].forward is not Forward.TUN:
        return frozenset()
    return frozenset(ip_text(rs.address) for rs in svc.realservers)


def resolve(netns: str | None, rip: str) -> Tunnel:
    """The tunnel that reaches ``rip``: our source address and device on its route."""
    try:
        route = iproute.route_get(netns, rip)
    except KernelError as exc:
        raise TunnelError(f"no route to {rip} ({exc})") from exc
    if not route.device:
        raise TunnelError(f"no route to {rip} (route type {route.type})")
    if route.type != "unicast" or route.device == "lo":
        raise TunnelError(
            f"{rip} is not a remote unicast address here (route type {route.type}, dev {route.device})"
        )
    if not route.prefsrc:
        raise TunnelError(f"the route to {rip} has no source address for the tunnel")
    return Tunnel(device_name(rip), rip, route.prefsrc, route.device, route.index)


def list_tunnels(netns: str | None) -> dict[str, Tunnel]:
    """Our tunnel devices in the namespace, by real server address (none without ipip).
    An ``ip6tnl`` device of ours whose name is not its remote's is keyed by its name:
    no real server needs it, so it is removed."""
    try:
        links = iproute.links(netns)
    except KernelError as exc:
        raise TunnelError(str(exc)) from exc
    names = {link.index: link.name for link in links}
    out: dict[str, Tunnel] = {}
    for link in links:
        if link.ipip is None:
            continue
        if link.kind == "ipip":
            rip = address_of(link.name)
        elif link.kind == "ip6tnl" and _NAME6.match(link.name):
            remote = ip_text(ipaddress.ip_address(link.ipip.remote))
            rip = remote if device_name(remote) == link.name else link.name
        else:
            continue
        if rip is None:
            continue
        # Down, or bound to a device that is gone: not usable as it is, so recreated.
        underlay = names.get(link.ipip.underlay, "") if link.up and link.ipip.underlay else ""
        ifindex = link.ipip.underlay if underlay else 0
        out[rip] = Tunnel(link.name, link.ipip.remote, link.ipip.local, underlay, ifindex)
    return out


def _address6(e: Element | None) -> str | None:
    """The IPv6 address a ``tun6_addr`` element names, as nft writes it (None: not one)."""
    try:
        return ip_text(ipaddress.IPv6Address(str(e.value))) if e is not None else None
    except ValueError:
        return None


def _create(netns: str | None, t: Tunnel) -> None:
    ipv6 = ":" in t.remote
    add = iproute.add_ip6tnl if ipv6 else iproute.add_ipip
    try:
        add(netns, t.name, remote=t.remote, local=t.local, underlay=t.underlay)
    except iproute.LinkKindUnsupported as exc:
        raise TunnelError(
            "this kernel has no ip6_tunnel support (CONFIG_IPV6_TUNNEL unset, no ip6_tunnel module)"
            if ipv6
            else "this kernel has no ipip support (CONFIG_NET_IPIP unset, no ipip module)"
        ) from exc
    except KernelError as exc:
        raise TunnelError(str(exc)) from exc
    try:
        iproute.set_link_up(netns, t.name)
    except KernelError as exc:
        _delete(netns, t.name)
        raise TunnelError(str(exc)) from exc


def _delete(netns: str | None, name: str) -> None:
    if not is_ours(name):  # never touch a device that is not ours
        raise ValueError(f"{name} is not a kubelvs tunnel device")
    # Already gone (or its namespace is): nothing of ours is left to remove.
    with contextlib.suppress(KernelError):
        iproute.delete_link(netns, name)


def _elements(rip: str, name: str | int) -> set[Element]:
    """``rip``'s device element; for IPv6 keyed by its id, which ``tun6_addr`` maps back."""
    address = ip_of(rip)
    mark = (mark_of(address),)
    if address.version == 4:
        return {Element("netdev", "tun_dev", mark, name)}
    return {Element("netdev", "tun6_dev", mark, name), Element("netdev", "tun6_addr", mark, rip)}


@dataclass
class TunnelState:
    """What the backend's picture knows about TUN: devices, the ``tun_dev`` map, and
    which services use which real servers (refcounts, as for DR neighbours)."""

    devices: dict[str, Tunnel] = field(default_factory=dict)  # in the kernel, ours (RIP -> device)
    # tun_dev in the kernel: RIP -> device (or a stale ifindex)
    elements: dict[str, str | int] = field(default_factory=dict)
    of: dict[ServiceKey, frozenset[str]] = field(default_factory=dict)
    refs: Counter[str] = field(default_factory=Counter)
    extension: bool = False  # the tables have tun_svc, tun_dev and tun_out
    strays: set[Element] = field(default_factory=set)  # IPv6 elements without their twin, or inconsistent

    @classmethod
    def load(
        cls,
        netns: str | None,
        by_set: Mapping[str, Iterable[Element]],
        services: Mapping[ServiceKey, VirtualService],
    ) -> TunnelState:
        state = cls(extension="tun_svc" in by_set and "tun_dev" in by_set)
        if state.extension:  # else no TUN was ever programmed here: no link dump per read
            try:
                state.devices = list_tunnels(netns)
            except TunnelError:
                state.devices = {}
        for e in by_set.get("tun_dev", ()):
            assert isinstance(e.value, (str, int))
            state.elements[str(ipaddress.IPv4Address(int(e.key[0])))] = e.value
        for key, svc in services.items():
            addresses = tun_addresses(svc)
            if addresses:
                state.of[key] = addresses
                state.refs.update(addresses)
        # An IPv6 real server's device element is keyed by its id; tun6_addr says whose.
        named = {int(e.key[0]): e for e in by_set.get("tun6_addr", ())}
        for e in by_set.get("tun6_dev", ()):
            assert isinstance(e.value, (str, int))
            address = named.pop(int(e.key[0]), None)
            rip = _address6(address)
            if address is None or rip is None or mark_of(ip_of(rip)) != int(e.key[0]):
                state.strays.update(x for x in (e, address) if x is not None)
            else:
                state.elements[rip] = e.value
        state.strays.update(named.values())
        return state

    def change(
        self,
        netns: str | None,
        touched: Iterable[ServiceKey],
        services: Mapping[ServiceKey, VirtualService],
        *,
        verify: bool = False,
    ) -> TunnelChange:
        """What the touched services (now ``services``) need; ``verify``: re-resolve every
        needed tunnel (routes or addresses changed). Raises TunnelError(rip) naming the
        real server; nothing is changed until ``TunnelChange.make_devices``."""
        of = dict(self.of)
        refs = Counter(self.refs)
        for key in touched:  # every service of a cold sync: the common case is quick
            new = tun_addresses(services.get(key))
            old = of.get(key)
            if old is None and not new:
                continue
            refs.subtract(old or ())
            refs.update(new)
            if new:
                of[key] = new
            else:
                of.pop(key, None)
        needed = sorted(rip for rip, n in refs.items() if n > 0)
        change = TunnelChange(netns, self, of, +refs)
        # As they are now when verifying, and before the first TUN ever (a read lists no
        # devices then: leftovers of an interrupted apply are found here and reused or removed).
        devices = list_tunnels(netns) if verify or (needed and not self.extension) else self.devices
        for rip in needed:
            have = devices.get(rip)
            want = have
            if have is None or not have.underlay or verify:
                try:
                    want = resolve(netns, rip)
                except TunnelError as exc:
                    raise TunnelError(f"TUN real server {rip}: {exc}", rip) from exc
            assert want is not None
            if have != want:
                change.create.append(want)
                if have is not None:
                    change.replace.append(have)
            change.devices[rip] = want
            if have != want or self.elements.get(rip) != want.name:
                if rip in self.elements:
                    change.deletes |= _elements(rip, self.elements[rip])
                change.adds |= _elements(rip, want.name)
        for rip, value in self.elements.items():
            if rip not in change.devices:
                change.deletes |= _elements(rip, value)
        change.deletes |= self.strays
        change.remove = [t for rip, t in devices.items() if rip not in change.devices]
        change.extension = bool(needed) and not self.extension
        return change


@dataclass
class TunnelChange:
    """One apply's tunnel work: devices to (re)create before the nft transaction, the
    ``tun_dev`` elements it carries, devices to remove once it succeeded."""

    netns: str | None
    old: TunnelState
    of: dict[ServiceKey, frozenset[str]]
    refs: Counter[str]
    devices: dict[str, Tunnel] = field(default_factory=dict)  # needed, RIP -> device
    create: list[Tunnel] = field(default_factory=list)
    replace: list[Tunnel] = field(default_factory=list)  # existing devices that ``create`` replaces
    remove: list[Tunnel] = field(default_factory=list)
    adds: set[Element] = field(default_factory=set)
    deletes: set[Element] = field(default_factory=set)
    extension: bool = False
    _made: list[Tunnel] = field(default_factory=list)

    @property
    def underlays(self) -> dict[int, str]:
        """ifindex -> device of every device that needs the ingress hook."""
        return {t.ifindex: t.underlay for t in self.devices.values()}

    def make_devices(self) -> None:
        """Create the missing (or changed) devices; the nft elements name them, so this
        runs before the transaction. On failure the ones made here are removed again."""
        try:
            for t in self.create:
                if t in self.replace or any(r.name == t.name for r in self.replace):
                    _delete(self.netns, t.name)
                _create(self.netns, t)
                self._made.append(t)
        except TunnelError as exc:
            self.rollback()
            raise TunnelError(f"TUN real server {t.remote}: {exc}", t.remote) from exc

    def rollback(self) -> None:
        """The transaction failed: remove the devices made for it (a replaced device is
        gone; the next sync, which reads the kernel, makes it again)."""
        for t in self._made:
            _delete(self.netns, t.name)
        self._made.clear()

    def commit(self) -> TunnelState:
        """The transaction succeeded: remove the devices no real server needs any more."""
        for t in self.remove:
            _delete(self.netns, t.name)
        return TunnelState(
            devices=dict(self.devices),
            elements={rip: t.name for rip, t in self.devices.items()},
            of=self.of,
            refs=self.refs,
            extension=self.old.extension or self.extension,
        )
