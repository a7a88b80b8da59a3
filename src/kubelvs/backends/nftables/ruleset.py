"""The nftables ruleset of kubelvs as pure data: model -> elements -> nft text, and back.

Everything lives in two tables named ``kubelvs`` (one per nftables family; nftables
ties a table to a family): ``ip kubelvs`` for NAT and timeouts, ``netdev kubelvs``
for DR (only the netdev family can rewrite MACs and ``fwd`` a frame). Other tables
are never named in anything this module emits.

The *skeleton* (maps, scheduler chains, hooks) is fixed; a service is nothing but
map elements, so any change is a small element transaction (a per-service chain
costs ~10x more at 10,000 services, see /work/shared/notes/kernel-and-lab.md):

``nat_svc``/``dr_svc``  ``VIP . proto . port -> goto <scheduler chain>``; the chain's name
                        is the scheduler, flags and slot count (``nat_wrr_4``, ``dr_mh_p``)
``nat_slots``           ``VIP . proto . port . slot -> RIP . RPORT`` (dnat target)
``dr_slots``            ``VIP . proto . port . slot -> mark`` where mark = the RIP as u32
``nat_rs``              ``VIP . proto . port . RIP . RPORT -> weight``, only for real servers
                        the slots do not describe (weight != 1, or no slot: weight 0)
``dr_rs``               ``VIP . proto . port . RIP -> RPORT . weight``, likewise (and port != VIP's)
``dr_in``               ``VIP . proto . port . RIP`` with a counter, added by the packet path
``nat_in``/``nat_out``  ``VIP . proto . RIP . RPORT`` with counters, added by the packet path
                        (forward hook) when a real server first sees traffic
``dr_mac``/``dr_smac``/``dr_dev``  ``RIP -> real server MAC / own MAC / out device``

A scheduler chain turns the packet into a slot: ``numgen inc mod N`` (NAT rr/wrr:
per new connection, conntrack keeps the rest), ``jhash`` of the flow ``mod N`` (DR
rr/wrr: stateless, so every packet of a flow must hash to the same slot), ``jhash``
of the source ``mod 251`` (sh/mh, Maglev table from maglev.py).

Writes are nft *text*, one transaction per apply (nft.py). nft 1.0.6's JSON input
crashes on ``dnat`` from a named concatenated map (SIGSEGV), silently drops a
``ct timeout`` policy and asserts on ``delete ct timeout``; text has none of these
bugs. Reads dump the sets over nfnetlink (netlink.py, decoded by ``parse_raw``);
``parse_tables`` reads nft's JSON listing (``kubelvs doctor`` bundles).
"""

from __future__ import annotations

import functools
import ipaddress
import operator
import socket
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeAlias

from ...model import (
    Forward,
    Protocol,
    RealServer,
    RealServerKey,
    RealServerStats,
    ServiceKey,
    Timeouts,
    VirtualService,
)
from .maglev import MAGLEV_SIZE, MAX_WRR_SLOTS, maglev_table, wrr_table

__all__ = [
    "TABLE",
    "SKELETON_VERSION",
    "SUPPORTED_SCHEDULERS",
    "HASH_SEED",
    "CT_DEFAULTS",
    "Element",
    "Neighbour",
    "ServiceElements",
    "ParsedTables",
    "service_elements",
    "service_text",
    "ip_text",
    "SETS",
    "group_elements",
    "render_groups",
    "parse_raw",
    "decode_counters",
    "stats_of",
    "neighbour_elements",
    "skeleton_text",
    "device_chain_name",
    "device_chain_text",
    "delete_device_chain_text",
    "tun_extension_text",
    "timeouts_text",
    "elements_text",
    "parse_tables",
    "service_forward",
    "service_key",
    "scheduler_chain",
    "parse_scheduler_chain",
]

TABLE = "kubelvs"
#: Written as the table comment (for people) and as an empty chain of this name (for
#: ``read``: nft 1.0.6's JSON leaves table comments out). A table without it was made
#: by another version (or by hand) and is refused rather than silently mixed with.
SKELETON_VERSION = "kubelvs_v1"
_TABLE_COMMENT = "managed by kubelvs (nftables backend v1), do not edit"
SUPPORTED_SCHEDULERS = frozenset({"rr", "wrr", "sh", "mh"})
#: jhash seed of every hash chain: fixed, so every director computes the same slot.
HASH_SEED = 0x6B6C7673
#: nf_conntrack's defaults, which ``nft list`` leaves out of a ct timeout policy.
CT_DEFAULTS = {"established": 432000, "fin_wait": 120, "time_wait": 120, "replied": 120, "unreplied": 30}

#: Capacity of the dynamic NAT counter sets (one element per real server with traffic).
COUNTER_SET_SIZE = 1048576
_CHUNK = 20000  # elements per ``add element`` line: the size the notes measured
#: Every set and map of the skeleton, per family: what a read dumps.
SETS = {
    "ip": ("nat_svc", "nat_slots", "nat_rs", "nat_in", "nat_out"),
    "netdev": ("dr_svc", "dr_slots", "dr_rs", "dr_in", "dr_mac", "dr_smac", "dr_dev", "tun_svc", "tun_dev"),
}

Value: TypeAlias = tuple[str | int, ...] | str | int | None


class Element(NamedTuple):
    """One set/map element (a NamedTuple: hundreds of thousands are built per sync). ``value`` is None for a set, a verdict text (``goto x``,
    ``drop``) for a verdict map; ``comment`` is read back but kubelvs writes none."""

    family: str
    set: str
    key: tuple[str | int, ...]
    value: Value = None
    comment: str = ""


@dataclass(frozen=True, slots=True)
class Neighbour:
    """How the director reaches a DR real server on the link."""

    mac: str  # the real server's MAC (lower case)
    own_mac: str  # the director's MAC on ``device``
    device: str  # interface name
    ifindex: int


@dataclass(frozen=True, slots=True)
class ServiceElements:
    """The elements of one service, and the DR real servers that need neighbour elements."""

    own: frozenset[Element]
    dr_addresses: frozenset[str]  # real servers that need neighbour elements


def service_forward(svc: VirtualService) -> Forward:
    """The service's forwarding method: all its real servers share one (checked by
    ``problems``); a service without real servers is kept in the NAT table."""
    methods = {rs.forward for rs in svc.realservers}
    if not methods:
        return Forward.NAT
    if len(methods) > 1:
        raise ValueError(f"service {svc.key}: real servers mix forwarding methods {sorted(methods)}")
    (method,) = methods
    if method not in (Forward.NAT, Forward.DR, Forward.TUN):
        raise ValueError(f"service {svc.key}: forwarding method {method} is not supported by the nftables backend")
    return method


class _Layout(NamedTuple):
    """What both renderings of a service (Element tuples, nft text) are made of."""

    kind: str  # "nat" or "dr"
    family: str
    vip: str
    proto: str
    port: int
    chain: str
    table: Sequence[str | None]  # slot -> real server name ("RIP:RPORT"), None = empty
    by_name: dict[str, tuple[RealServer, str]]  # name -> (real server, RIP text)


def _layout(svc: VirtualService) -> _Layout:
    key = svc.key
    if key.fwmark or key.address is None or key.family != 4:
        raise ValueError(f"service {key}: only IPv4 address services are supported by the nftables backend")
    if svc.scheduler not in SUPPORTED_SCHEDULERS:
        raise ValueError(f"service {key}: scheduler {svc.scheduler!r} is not supported by the nftables backend")
    # One pass: each real server's address is formatted once (str(IPv4Address) is slow),
    # and the forwarding method checked on the way (service_forward says what is wrong).
    rss = svc.realservers
    forward = rss[0].forward if rss else Forward.NAT
    ntoa, IPv4 = socket.inet_ntoa, ipaddress.IPv4Address
    by_name: dict[str, tuple[RealServer, str]] = {}
    weights: dict[str, int] = {}
    for rs in rss:
        if rs.forward is not forward:
            service_forward(svc)  # raises: the real servers mix forwarding methods
        address = rs.address
        rip = ntoa(int(address).to_bytes(4, "big")) if type(address) is IPv4 else str(address)  # ip_text, inlined
        name = f"{rip}:{rs.port}"
        by_name[name] = (rs, rip)
        weights[name] = rs.weight
    if forward is not Forward.NAT and forward is not Forward.DR and forward is not Forward.TUN:
        service_forward(svc)  # raises: not supported by this backend
    kind = "nat" if forward is Forward.NAT else "dr"  # TUN: the DR path, then tun_out (tun_svc)
    table: Sequence[str | None]
    if svc.scheduler in ("rr", "wrr"):
        table = wrr_table(weights, weighted=svc.scheduler == "wrr")
    else:
        table = maglev_table(weights, MAGLEV_SIZE)
        if not any(table):
            table = []
    return _Layout(
        kind,
        "netdev" if kind == "dr" else "ip",
        ip_text(key.address),
        _PROTO_TEXT[key.protocol],
        key.port,
        scheduler_chain(kind, svc.scheduler, svc.flags, len(table)),
        table,
        by_name,
    )


def _implicit(lay: _Layout, rs: RealServer, name: str, in_table: set[str | None]) -> bool:
    """True when the slots say all there is to know about ``rs``: weight 1, at least one
    slot, and (DR) the VIP's port. Only the others get a ``*_rs`` element."""
    return rs.weight == 1 and name in in_table and (lay.kind == "nat" or rs.port == lay.port)


def service_elements(svc: VirtualService) -> ServiceElements:
    """Every element that represents ``svc`` (pure; the input of the diff in the backend).
    ``service_text`` renders the same elements straight to nft text."""
    lay = _layout(svc)
    kind, family, vip, proto, port = lay.kind, lay.family, lay.vip, lay.proto, lay.port
    own: list[Element] = [Element(family, f"{kind}_svc", (vip, proto, port), f"goto {lay.chain}")]
    values: dict[str, Value] = {
        name: ((rip, rs.port) if kind == "nat" else int(rs.address)) for name, (rs, rip) in lay.by_name.items()
    }
    slots = f"{kind}_slots"
    own += [Element(family, slots, (vip, proto, port, slot), values[name]) for slot, name in enumerate(lay.table) if name]
    in_table = set(lay.table)
    dr_addresses: set[str] = set()
    for name, (rs, rip) in lay.by_name.items():
        if kind == "dr":
            dr_addresses.add(rip)
        if _implicit(lay, rs, name, in_table):
            continue
        if kind == "nat":
            own.append(Element(family, "nat_rs", (vip, proto, port, rip, rs.port), rs.weight))
        else:
            own.append(Element(family, "dr_rs", (vip, proto, port, int(rs.address)), (rs.port, rs.weight)))
    if _is_tun(svc):  # the DR path, marked for tun_out; tunnels instead of neighbours
        own.append(Element(family, "tun_svc", (vip, proto, port)))
        dr_addresses.clear()
    return ServiceElements(frozenset(own), frozenset(dr_addresses))


def _is_tun(svc: VirtualService) -> bool:
    return bool(svc.realservers) and svc.realservers[0].forward is Forward.TUN


def service_text(svc: VirtualService, out: dict[tuple[str, str], list[str]]) -> frozenset[str]:
    """Append the nft text of every element of ``svc`` (what ``elements_text("add",
    service_elements(svc).own)`` would write, element for element) to ``out[(family,
    set)]``; return the DR real servers that need neighbour elements.

    The cold-sync path: no Element tuples, no sets to hash, one f-string per element
    (10,000 services x 10 real servers went from ~0.8 s to ~0.1 s)."""
    lay = _layout(svc)
    kind, family, port = lay.kind, lay.family, lay.port
    prefix = f"{lay.vip} . {lay.proto} . {port}"
    _list(out, family, f"{kind}_svc").append(f"{prefix} : goto {lay.chain}")
    if kind == "nat":
        values = {name: f"{rip} . {rs.port}" for name, (rs, rip) in lay.by_name.items()}
    else:
        values = {name: str(int(rs.address)) for name, (rs, _) in lay.by_name.items()}
    slots = [f"{prefix} . {slot} : {values[name]}" for slot, name in enumerate(lay.table) if name]
    if slots:
        _list(out, family, f"{kind}_slots").extend(slots)
    in_table = set(lay.table)
    for name, (rs, rip) in lay.by_name.items():
        if rs.weight == 1 and name in in_table and (kind == "nat" or rs.port == port):
            continue  # _implicit, inlined: this loop runs for every real server of a cold sync
        if kind == "nat":
            _list(out, family, "nat_rs").append(f"{prefix} . {rip} . {rs.port} : {rs.weight}")
        else:
            _list(out, family, "dr_rs").append(f"{prefix} . {int(rs.address)} : {rs.port} . {rs.weight}")
    if kind == "dr":
        if _is_tun(svc):
            _list(out, family, "tun_svc").append(prefix)
            return frozenset()
        return frozenset(rip for _, rip in lay.by_name.values())
    return frozenset()


def _list(out: dict[tuple[str, str], list[str]], family: str, name: str) -> list[str]:
    found = out.get((family, name))
    if found is None:
        found = out[(family, name)] = []
    return found


#: Protocol -> nft's name for it (a plain str: a StrEnum member hashes differently).
_PROTO_TEXT = {p: str(p.value) for p in Protocol}


def ip_text(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """The address as nft writes it. str(IPv4Address) formats in Python (~1 us), a
    sizeable part of rendering 110,000 elements; inet_ntoa is C."""
    if type(address) is ipaddress.IPv4Address:
        return socket.inet_ntoa(int(address).to_bytes(4, "big"))
    return str(address)


def scheduler_chain(kind: str, scheduler: str, flags: frozenset[str], slots: int) -> str:
    """The chain a service's verdict-map element jumps to. Its name *is* the stored
    scheduler and flags (``read`` parses it back): no per-element comment needed,
    which halves the cost of the service map."""
    if scheduler in ("rr", "wrr"):
        return f"{kind}_{scheduler}_{slots}"
    suffix = ("p" if f"{scheduler}-port" in flags else "") + ("f" if f"{scheduler}-fallback" in flags else "")
    return f"{kind}_{scheduler}" + (f"_{suffix}" if suffix else "") + ("" if slots else "_0")


def parse_scheduler_chain(chain: str) -> tuple[str, frozenset[str]] | None:
    """Inverse of ``scheduler_chain``: (scheduler, flags), None for a foreign name."""
    parts = chain.split("_")
    if len(parts) < 2 or parts[0] not in ("nat", "dr") or parts[1] not in SUPPORTED_SCHEDULERS:
        return None
    scheduler = parts[1]
    flags: set[str] = set()
    if scheduler in ("sh", "mh") and len(parts) > 2 and parts[2] != "0":
        if "p" in parts[2]:
            flags.add(f"{scheduler}-port")
        if "f" in parts[2]:
            flags.add(f"{scheduler}-fallback")
    return scheduler, frozenset(flags)


def neighbour_elements(rip: str, nb: Neighbour) -> frozenset[Element]:
    mark = int(ipaddress.IPv4Address(rip))
    return frozenset(
        {
            Element("netdev", "dr_mac", (mark,), nb.mac),
            Element("netdev", "dr_smac", (mark,), nb.own_mac),
            Element("netdev", "dr_dev", (mark,), nb.device),
        }
    )


# ---------------------------------------------------------------------- text


def _scheduler_chains(kind: str) -> list[tuple[str, str]]:
    """(name, body) of every scheduler chain of ``kind`` ("nat" or "dr")."""
    key = "ip daddr . meta l4proto . th dport"
    seed = f"seed {HASH_SEED:#x}"
    if kind == "nat":
        # New connections only (nat chains see the first packet); conntrack keeps the rest.
        def pick(slot: str) -> str:
            return f"jump nat_timeouts; dnat ip to {key} . {slot} map @nat_slots;"
        rr_slot = "numgen inc mod {n}"
    else:
        # No connection state in netdev: every packet of a flow must hash to the same slot.
        def pick(slot: str) -> str:
            return f"meta mark set {key} . {slot} map @dr_slots goto dr_out;"
        rr_slot = f"jhash ip saddr . th sport mod {{n}} {seed}"
    chains: list[tuple[str, str]] = []
    for scheduler in ("rr", "wrr"):
        chains.append((f"{kind}_{scheduler}_0", "drop;"))
        for n in range(1, MAX_WRR_SLOTS + 1):
            chains.append((f"{kind}_{scheduler}_{n}", pick(rr_slot.format(n=n))))
    for scheduler in ("sh", "mh"):
        for suffix in ("", "_p", "_f", "_pf"):
            source = "ip saddr . th sport" if "p" in suffix else "ip saddr"
            chains.append((f"{kind}_{scheduler}{suffix}", pick(f"jhash {source} mod {MAGLEV_SIZE} {seed}")))
            chains.append((f"{kind}_{scheduler}{suffix}_0", "drop;"))
    return chains


def skeleton_text() -> str:
    """Both tables with every map and chain, no elements: the fixed part of the ruleset."""
    key = "ip daddr . meta l4proto . th dport"
    counter_set = f"size {COUNTER_SET_SIZE}; flags dynamic; counter;"
    lines = [
        f"table ip {TABLE} {{",
        f'  comment "{_TABLE_COMMENT}"',
        f"  chain {SKELETON_VERSION} {{ }}",
        f"  map nat_svc {{ typeof {key} : verdict; }}",
        f"  map nat_slots {{ typeof {key} . numgen inc mod 2 : ip daddr . th dport; }}",
        f"  map nat_rs {{ typeof {key} . ip daddr . th dport : meta mark; }}",
        # Counters appear when traffic flows (``update`` from the packet path): a sync
        # writes none of them, which halves the elements of a cold sync.
        f"  set nat_in {{ typeof ip daddr . meta l4proto . ip daddr . th dport; {counter_set} }}",
        f"  set nat_out {{ typeof ip daddr . meta l4proto . ip daddr . th dport; {counter_set} }}",
        # New connections to a VIP, from outside (prerouting) and from the director itself.
        f"  chain nat_pre {{ type nat hook prerouting priority dstnat; policy accept; {key} vmap @nat_svc; }}",
        f"  chain nat_local {{ type nat hook output priority -100; policy accept; {key} vmap @nat_svc; }}",
        # ct timeout rules (SetTimeouts); runs for new NAT connections, before confirmation.
        "  chain nat_timeouts { }",
    ]
    lines += [f"  chain {name} {{ {body} }}" for name, body in _scheduler_chains("nat")]
    lines += [
        # Per real server counters: after DNAT the packet carries the RIP, conntrack the VIP.
        "  chain count { type filter hook forward priority filter; policy accept;",
        "    ct status dnat ct direction original update @nat_in { ct original ip daddr . meta l4proto . ip daddr . th dport }",
        "    ct status dnat ct direction reply update @nat_out { ct original ip daddr . meta l4proto . ip saddr . th sport }",
        "  }",
        "}",
        f"table netdev {TABLE} {{",
        f'  comment "{_TABLE_COMMENT}"',
        f"  chain {SKELETON_VERSION} {{ }}",
        f"  map dr_svc {{ typeof {key} : verdict; }}",
        f"  map dr_slots {{ typeof {key} . numgen inc mod 2 : meta mark; }}",
        f"  map dr_rs {{ typeof {key} . meta mark : th dport . meta mark; }}",
        f"  set dr_in {{ typeof {key} . meta mark; {counter_set} }}",
        "  map dr_mac { typeof meta mark : ether daddr; }",
        "  map dr_smac { typeof meta mark : ether saddr; }",
        "  map dr_dev { typeof meta mark : meta oif; }",
        # The real server gets the frame unchanged but for the MACs: dst = its MAC, src =
        # ours (else the bridge learns the client's MAC on our port and the real server's
        # replies come back to us instead of going to the client).
        "  chain dr_out {",
        f"    update @dr_in {{ {key} . meta mark }} ether saddr set meta mark map @dr_smac"
        " ether daddr set meta mark map @dr_mac fwd to meta mark map @dr_dev",
        "  }",
    ]
    lines += [f"  chain {name} {{ {body} }}" for name, body in _scheduler_chains("dr")]
    lines.append("}")
    return "\n".join(lines) + "\n"


def device_chain_name(ifindex: int) -> str:
    return f"dr_in_{ifindex}"


def device_chain_text(device: str, ifindex: int) -> str:
    """The ingress hook on one device: frames for a DR VIP go to the service's scheduler."""
    name = device_chain_name(ifindex)
    return (
        f'add chain netdev {TABLE} {name} {{ type filter hook ingress device "{device}" priority filter; policy accept; }}\n'
        f"add rule netdev {TABLE} {name} meta pkttype host ip daddr . meta l4proto . th dport vmap @dr_svc\n"
    )


def delete_device_chain_text(ifindex: int) -> str:
    name = device_chain_name(ifindex)
    return f"flush chain netdev {TABLE} {name}\ndelete chain netdev {TABLE} {name}\n"


def tun_extension_text() -> str:
    """TUN on top of the DR path (added to the netdev table the first time a TUN service
    appears, so tables made before it keep working): a DR-scheduled packet of a service
    in ``tun_svc`` goes to ``tun_out``, which hands it to the real server's IPIP device
    (``tun_dev``, tunnel.py). ``fwd ip to`` and not ``fwd to``: the latter pushes the
    Ethernet header back and the tunnel would encapsulate it (tunnel.py)."""
    key = "ip daddr . meta l4proto . th dport"
    return (
        f"add set netdev {TABLE} tun_svc {{ typeof {key}; }}\n"
        f"add map netdev {TABLE} tun_dev {{ typeof meta mark : meta oif; }}\n"
        f"add chain netdev {TABLE} tun_out\n"
        f"add rule netdev {TABLE} tun_out update @dr_in {{ {key} . meta mark }}"
        " fwd ip to ip daddr device meta mark map @tun_dev\n"
        # no device for the mark (cannot happen unless edited by hand): not to our own stack
        f"add rule netdev {TABLE} tun_out drop\n"
        f"insert rule netdev {TABLE} dr_out {key} @tun_svc goto tun_out\n"
    )


def timeouts_text(timeouts: Timeouts, *, replace: bool) -> str:
    """ct timeout objects for NAT connections to a VIP, and the rules attaching them.

    IPVS ``tcp`` is conntrack's established timeout, ``udp`` both UDP timeouts, and
    ``tcpfin`` the states of a closing connection (fin_wait and time_wait): after the
    seed's ``ipvsadm --set 900 30 300`` a closed connection leaves the table after 30 s.
    The rules live in ``nat_timeouts``, which every NAT scheduler chain jumps to, so
    they apply to new connections to a VIP only.
    """
    out: list[str] = []
    if replace:
        out += [
            f"flush chain ip {TABLE} nat_timeouts",
            f"delete ct timeout ip {TABLE} kl_tcp",
            f"delete ct timeout ip {TABLE} kl_udp",
        ]
    t = timeouts
    out += [
        f"add ct timeout ip {TABLE} kl_tcp {{ protocol tcp; l3proto ip; policy = {{ established: {t.tcp},"
        f" fin_wait: {t.tcpfin}, time_wait: {t.tcpfin} }}; }}",
        f"add ct timeout ip {TABLE} kl_udp {{ protocol udp; l3proto ip; policy = {{ unreplied: {t.udp}, replied: {t.udp} }}; }}",
    ]
    for proto in ("tcp", "udp"):
        out.append(f'add rule ip {TABLE} nat_timeouts meta l4proto {proto} ct timeout set "kl_{proto}"')
    return "\n".join(out) + "\n"


def _fmt_value(set_name: str, value: Value) -> str:
    if isinstance(value, tuple):
        return " . ".join(map(str, value))
    if set_name == "dr_dev" or set_name == "tun_dev":
        return f'"{value}"'  # an interface name
    return str(value)  # verdicts ("goto x", "drop"), MACs, numbers


def _fmt_element(e: Element, with_value: bool) -> str:
    # Every key part is an address, a protocol name or a number: str() is nft syntax.
    text = " . ".join(map(str, e.key))
    if e.comment:
        text += f' comment "{e.comment}"'
    if with_value and e.value is not None:
        text += " : " + _fmt_value(e.set, e.value)
    return text


def group_elements(
    elements: Iterable[Element], *, with_value: bool, into: dict[tuple[str, str], list[str]] | None = None
) -> dict[tuple[str, str], list[str]]:
    """Element texts per (family, set), appended to ``into`` (which ``service_text`` may
    have filled already)."""
    groups: dict[tuple[str, str], list[str]] = {} if into is None else into
    for e in elements:
        _list(groups, e.family, e.set).append(_fmt_element(e, with_value))
    return groups


def render_groups(verb: str, groups: Mapping[tuple[str, str], Sequence[str]]) -> Iterator[str]:
    """``add element``/``delete element`` lines, per set, ``_CHUNK`` elements per line."""
    for (family, name), items in sorted(groups.items()):
        for start in range(0, len(items), _CHUNK):
            yield f"{verb} element {family} {TABLE} {name} {{ {', '.join(items[start : start + _CHUNK])} }}\n"


def elements_text(verb: str, elements: Iterable[Element]) -> Iterator[str]:
    """``add element``/``delete element`` lines, grouped per set, ``_CHUNK`` per line."""
    return render_groups(verb, group_elements(elements, with_value=verb == "add"))


# ---------------------------------------------------------------------- read back


@dataclass
class ParsedTables:
    """Both tables in model terms: read from the kernel (``parse_raw``) or from what
    ``nft -j list table`` prints (``parse_tables``)."""

    services: dict[ServiceKey, VirtualService] = field(default_factory=dict)
    stats: dict[tuple[ServiceKey, RealServerKey], RealServerStats] = field(default_factory=dict)
    timeouts: Timeouts | None = None
    by_set: dict[str, list[Element]] = field(default_factory=dict)  # every element, as service_elements builds them
    device_chains: dict[int, str] = field(default_factory=dict)  # ifindex -> device (dr_in_* chains)
    tables: dict[str, str] = field(default_factory=dict)  # family -> skeleton version ("" if unknown)

    @property
    def elements(self) -> set[Element]:
        return {e for items in self.by_set.values() for e in items}


_Counters: TypeAlias = dict[tuple[str, tuple[str | int, ...]], tuple[int, int]]
_ZERO_STATS = RealServerStats()  # frozen: one object for every real server without traffic


def _scalar(v: Any) -> str | int:
    if isinstance(v, (str, int)):
        return v
    raise ValueError(f"unexpected nft JSON value {v!r}")


def _tuple(v: Any) -> tuple[str | int, ...]:
    if isinstance(v, dict) and "concat" in v:
        return tuple(_scalar(x) for x in v["concat"])
    return (_scalar(v),)


def _verdict(v: Any) -> str:
    if isinstance(v, dict):
        if "goto" in v:
            return f"goto {v['goto']['target']}"
        if "jump" in v:
            return f"jump {v['jump']['target']}"
        (name,) = v
        return str(name)
    return str(v)


def parse_tables(documents: Sequence[Mapping[str, Any]]) -> ParsedTables:
    """Rebuild the model from the JSON listings of ``ip kubelvs`` and ``netdev kubelvs``
    (the backend reads over netlink; ``kubelvs doctor`` reads a captured nft.json)."""
    out = ParsedTables()
    counters: _Counters = {}
    ct_policies: dict[str, dict[str, int]] = {}
    for doc in documents:
        for item in doc.get("nftables", []):
            if "table" in item:
                out.tables.setdefault(item["table"]["family"], "")
            elif "chain" in item:
                chain = item["chain"]
                if chain["name"] == SKELETON_VERSION:
                    out.tables[chain["family"]] = SKELETON_VERSION
                if chain["name"].startswith("dr_in_") and "dev" in chain:
                    out.device_chains[int(chain["name"][6:])] = chain["dev"]
            elif "ct timeout" in item:
                ct = item["ct timeout"]
                ct_policies[ct["name"]] = dict(ct.get("policy") or {})
            elif "map" in item or "set" in item:
                is_map = "map" in item
                s = item["map" if is_map else "set"]
                items = out.by_set.setdefault(s["name"], [])
                for raw in s.get("elem", []):
                    keyobj, value = (raw[0], raw[1]) if is_map else (raw, None)
                    comment = ""
                    if isinstance(keyobj, dict) and "elem" in keyobj:
                        inner = keyobj["elem"]
                        comment = inner.get("comment", "")
                        if "counter" in inner:
                            counters[(s["name"], _tuple(inner["val"]))] = (
                                inner["counter"]["packets"],
                                inner["counter"]["bytes"],
                            )
                        keyobj = inner["val"]
                    key = _tuple(keyobj)
                    parsed: Value
                    if value is None:
                        parsed = None
                    elif s.get("map") == "verdict":
                        parsed = _verdict(value)
                    elif isinstance(value, dict) and "concat" in value:
                        parsed = _tuple(value)
                    else:
                        parsed = _scalar(value)
                    items.append(Element(s["family"], s["name"], key, parsed, comment))
    _rebuild(out, counters)
    if "kl_tcp" in ct_policies and "kl_udp" in ct_policies:
        tcp, udp = ct_policies["kl_tcp"], ct_policies["kl_udp"]
        out.timeouts = Timeouts(
            tcp=tcp.get("established", CT_DEFAULTS["established"]),
            tcpfin=tcp.get("fin_wait", CT_DEFAULTS["fin_wait"]),
            udp=udp.get("replied", CT_DEFAULTS["replied"]),
        )
    return out


# --- the kernel's own encoding (netlink.py), the layouts skeleton_text declares

#: CTA_TIMEOUT_* attribute numbers of the policy values the model uses.
CTA_TCP_ESTABLISHED, CTA_TCP_FIN_WAIT, CTA_UDP_REPLIED = 3, 4, 2
_PROTO_NAMES = {6: "tcp", 17: "udp", 132: "sctp"}
# A concatenation stores every component in its own 4-byte register: VIP, protocol
# (1 byte), port (2 bytes, network order). ``numgen``, ``meta mark``, ``meta oif``
# are host-order 32-bit integers.
_PREFIX = struct.Struct("!4sB3xH2x")
_U32 = struct.Struct("=I")
_BE16 = struct.Struct("!H")
_NAT_TARGET = struct.Struct("!4sH2x")  # RIP . RPORT
_DR_TARGET = struct.Struct("!H2x")  # RPORT (. weight: a host-order u32 after it)
_VERDICTS = {0: "drop", 1: "accept", -1: "continue", -2: "break", -5: "return"}


class _RawDecoder:
    """Binary keys/values -> the tuples ``service_elements`` builds. Each distinct
    VIP . proto . port prefix and real server value is decoded once per read."""

    def __init__(self, ifnames: Mapping[int, str]) -> None:
        self.ifnames = ifnames
        self._prefixes: dict[bytes, tuple[str, str, int]] = {}
        self._targets: dict[bytes, tuple[str, int]] = {}

    def prefix(self, key: bytes) -> tuple[str, str, int]:
        head = key[:12]
        found = self._prefixes.get(head)
        if found is None:
            vip, proto, port = _PREFIX.unpack(head)
            found = self._prefixes[head] = (socket.inet_ntoa(vip), _PROTO_NAMES.get(proto, str(proto)), port)
        return found

    def nat_target(self, value: bytes) -> tuple[str, int]:
        found = self._targets.get(value)
        if found is None:
            rip, rport = _NAT_TARGET.unpack(value)
            found = self._targets[value] = (socket.inet_ntoa(rip), rport)
        return found

    def decode(self, family: str, name: str, raws: Iterable[Any]) -> tuple[list[Element], _Counters]:
        key_of, value_of = self._codec(name)
        make = Element._make
        out: list[Element] = []
        counters: _Counters = {}
        try:
            for raw in raws:
                key = key_of(raw.key)
                out.append(make((family, name, key, value_of(raw), raw.comment)))
                if raw.counter is not None:
                    counters[(name, key)] = raw.counter
        except (struct.error, TypeError, KeyError) as exc:
            raise ValueError(f"{family} {TABLE} {name}: an element does not have the layout this version writes ({exc})") from exc
        return out, counters

    def _codec(self, name: str) -> tuple[Callable[[bytes], tuple[str | int, ...]], Callable[[Any], Value]]:
        prefix, u32, be16 = self.prefix, _U32.unpack_from, _BE16.unpack_from
        ntoa = socket.inet_ntoa
        keyed: Callable[[bytes], tuple[str | int, ...]]
        if name in ("nat_svc", "dr_svc"):
            return prefix, lambda raw: _verdict_text(raw.verdict)
        if name == "tun_svc":
            return prefix, lambda raw: None
        if name in ("nat_slots", "dr_slots", "dr_in", "dr_rs"):
            keyed = lambda k: prefix(k) + u32(k, 12)  # VIP . proto . port . slot/mark
        elif name == "nat_rs":
            keyed = lambda k: prefix(k) + (ntoa(k[12:16]),) + be16(k, 16)
        elif name in ("nat_in", "nat_out"):
            keyed = lambda k: (ntoa(k[0:4]), _PROTO_NAMES.get(k[4], str(k[4])), ntoa(k[8:12])) + be16(k, 12)
        else:  # dr_mac, dr_smac, dr_dev, tun_dev: keyed by the mark
            keyed = lambda k: u32(k, 0)
        values: dict[str, Callable[[Any], Value]] = {
            "nat_slots": lambda raw: self.nat_target(raw.data),
            "dr_slots": lambda raw: u32(raw.data, 0)[0],
            "nat_rs": lambda raw: u32(raw.data, 0)[0],
            "dr_rs": lambda raw: be16(raw.data, 0) + u32(raw.data, 4),
            "dr_mac": lambda raw: ":".join(f"{b:02x}" for b in raw.data),
            "dr_smac": lambda raw: ":".join(f"{b:02x}" for b in raw.data),
            "dr_dev": lambda raw: self.ifnames.get(u32(raw.data, 0)[0], str(u32(raw.data, 0)[0])),
            "tun_dev": lambda raw: self.ifnames.get(u32(raw.data, 0)[0], str(u32(raw.data, 0)[0])),
        }
        return keyed, values.get(name, lambda raw: None)


def _verdict_text(verdict: tuple[int, str] | None) -> str:
    if verdict is None:
        raise TypeError("no verdict")
    code, chain = verdict
    if code == -4:  # NFT_GOTO
        return f"goto {chain}"
    if code == -3:  # NFT_JUMP
        return f"jump {chain}"
    return _VERDICTS.get(code, str(code))


def parse_raw(
    chains: Mapping[str, Sequence[tuple[str, str | None]]],
    sets: Mapping[tuple[str, str], Iterable[Any]],
    policies: Mapping[str, Mapping[int, int]],
    ifnames: Mapping[int, str],
) -> ParsedTables:
    """Rebuild the model from what the kernel holds (netlink.py reads it).

    ``chains``: family -> (name, hook device) of each existing ``kubelvs`` table's chains;
    ``sets``: (family, set) -> its ``RawElement``s; ``policies``: ct timeout name -> CTA
    attribute -> seconds; ``ifnames``: ifindex -> interface name in the namespace.
    """
    out = ParsedTables()
    for family, members in chains.items():
        out.tables[family] = ""
        for name, device in members:
            if name == SKELETON_VERSION:
                out.tables[family] = SKELETON_VERSION
            elif name.startswith("dr_in_") and device is not None and name[6:].isdigit():
                out.device_chains[int(name[6:])] = device
    decoder = _RawDecoder(ifnames)
    counters: _Counters = {}
    for (family, name), raws in sets.items():
        items, found = decoder.decode(family, name, raws)
        out.by_set[name] = items
        counters.update(found)
    _rebuild(out, counters)
    if "kl_tcp" in policies and "kl_udp" in policies:
        tcp, udp = policies["kl_tcp"], policies["kl_udp"]
        out.timeouts = Timeouts(
            tcp=tcp.get(CTA_TCP_ESTABLISHED, CT_DEFAULTS["established"]),
            tcpfin=tcp.get(CTA_TCP_FIN_WAIT, CT_DEFAULTS["fin_wait"]),
            udp=udp.get(CTA_UDP_REPLIED, CT_DEFAULTS["replied"]),
        )
    return out


def decode_counters(sets: Mapping[tuple[str, str], Iterable[Any]]) -> tuple[list[Element], _Counters]:
    """The counter elements of ``nat_in``/``nat_out``/``dr_in`` (RawElements per (family,
    set)) and their (packets, bytes)."""
    decoder = _RawDecoder({})
    elements: list[Element] = []
    counters: _Counters = {}
    for (family, name), raws in sets.items():
        items, found = decoder.decode(family, name, raws)
        elements += items
        counters.update(found)
    return elements, counters


def stats_of(
    services: Mapping[ServiceKey, VirtualService], counters: Mapping[tuple[str, tuple[str | int, ...]], tuple[int, int]]
) -> dict[tuple[ServiceKey, RealServerKey], RealServerStats]:
    """Per-real-server counters of ``services`` (``_rebuild`` does the same while it
    builds the services from a full read)."""
    if not counters:
        return {(key, rs.key): _ZERO_STATS for key, svc in services.items() for rs in svc.realservers}
    stats: dict[tuple[ServiceKey, RealServerKey], RealServerStats] = {}
    for key, svc in services.items():
        if key.address is None:
            continue
        vip, proto = ip_text(key.address), _PROTO_TEXT[key.protocol]
        for rs in svc.realservers:
            if rs.forward is Forward.NAT:
                rip = ip_text(rs.address)
                pin, bin_ = counters.get(("nat_in", (vip, proto, rip, rs.port)), (0, 0))
                pout, bout = counters.get(("nat_out", (vip, proto, rip, rs.port)), (0, 0))
                found = RealServerStats(in_packets=pin, in_bytes=bin_, out_packets=pout, out_bytes=bout)
            else:
                pin, bin_ = counters.get(("dr_in", (vip, proto, key.port, int(rs.address))), (0, 0))
                found = RealServerStats(in_packets=pin, in_bytes=bin_)
            stats[(key, rs.key)] = found
    return stats


def _rebuild(out: ParsedTables, counters: Mapping[tuple[str, tuple[str | int, ...]], tuple[int, int]]) -> None:
    """Services, real servers and stats from the elements in ``out.by_set``."""
    by_set = out.by_set
    heads: dict[tuple[str | int, ...], tuple[ServiceKey, str, frozenset[str]]] = {}
    for e in [*by_set.get("nat_svc", ()), *by_set.get("dr_svc", ())]:
        if isinstance(e.value, str) and e.value.startswith("goto "):
            parsed = parse_scheduler_chain(e.value[5:])
            if parsed is not None:
                heads[e.key] = (service_key(e.key), parsed[0], parsed[1])
    # Per service: (RIP, RPORT) -> (real server, RIP text, sort key); DR real servers as
    # (RIP, -1) (one per address). Real servers recur across services (nodes): one object each.
    members: dict[tuple[str | int, ...], dict[tuple[str, int], tuple[RealServer, str, int]]] = {k: {} for k in heads}
    made: dict[tuple[str, int, int, bool], tuple[RealServer, str, int]] = {}
    addresses: dict[str, ipaddress.IPv4Address | ipaddress.IPv6Address] = {}

    def real(rip: str, port: int, weight: int, dr: bool) -> tuple[RealServer, str, int]:
        found = made.get((rip, port, weight, dr))
        if found is None:
            address = addresses.get(rip)
            if address is None:
                address = addresses[rip] = _address(rip)
            rs = RealServer(address, port, weight, Forward.DR if dr else Forward.NAT)
            # with_realservers' order (version, address, port) as one int: sorted in C below
            found = made[(rip, port, weight, dr)] = (rs, rip, (address.version << 160) | (int(address) << 16) | port)
        return found

    # Real servers with a slot and the defaults (weight 1, DR port = VIP port) ...
    for e in by_set.get("nat_slots", ()):
        m = members.get(e.key[:3])
        if m is not None and e.value not in m:
            assert isinstance(e.value, tuple)
            rip, rport = str(e.value[0]), int(e.value[1])
            m[(rip, rport)] = real(rip, rport, 1, False)
    for e in by_set.get("dr_slots", ()):
        m = members.get(e.key[:3])
        if m is not None:
            rip = _mark_address(int(e.value))  # type: ignore[arg-type]
            if (rip, -1) not in m:
                m[(rip, -1)] = real(rip, int(e.key[2]), 1, True)
    # ... and what the slots cannot say: weights other than 1, slot-less real servers, DR ports.
    for e in by_set.get("nat_rs", ()):
        m = members.get(e.key[:3])
        if m is not None:
            assert isinstance(e.value, int)
            rip, rport = str(e.key[3]), int(e.key[4])
            m[(rip, rport)] = real(rip, rport, e.value, False)
    for e in by_set.get("dr_rs", ()):
        m = members.get(e.key[:3])
        if m is not None:
            assert isinstance(e.value, tuple)
            dr_port, weight = e.value
            rip = _mark_address(int(e.key[3]))
            m[(rip, -1)] = real(rip, int(dr_port), int(weight), True)
    by_order = operator.itemgetter(2)
    stats = out.stats
    # TUN services are DR services marked in tun_svc (the packet path forks in dr_out).
    dr_heads = {e.key for e in by_set.get("dr_svc", ())}
    tun = {e.key for e in by_set.get("tun_svc", ())} & dr_heads
    for head, (sk, scheduler, flags) in heads.items():
        triples = sorted(members[head].values(), key=by_order)
        if head in tun:
            triples = [(RealServer(rs.address, rs.port, rs.weight, Forward.TUN), rip, o) for rs, rip, o in triples]
        out.services[sk] = VirtualService(key=sk, scheduler=scheduler, flags=flags, realservers=tuple([t[0] for t in triples]))
        if not counters:
            for rs, _, _ in triples:
                stats[(sk, rs.key)] = _ZERO_STATS
            continue
        vip, proto = str(head[0]), str(head[1])
        for rs, rip, _ in triples:
            if rs.forward is Forward.NAT:
                pin, bin_ = counters.get(("nat_in", (vip, proto, rip, rs.port)), (0, 0))
                pout, bout = counters.get(("nat_out", (vip, proto, rip, rs.port)), (0, 0))
                stats[(sk, rs.key)] = RealServerStats(in_packets=pin, in_bytes=bin_, out_packets=pout, out_bytes=bout)
            else:
                # replies go from the real server straight to the client: no out counters
                pin, bin_ = counters.get(("dr_in", (vip, proto, sk.port, int(rs.address))), (0, 0))
                stats[(sk, rs.key)] = RealServerStats(in_packets=pin, in_bytes=bin_)


@functools.lru_cache(maxsize=1 << 16)
def _mark_address(mark: int) -> str:
    return str(ipaddress.IPv4Address(mark))


@functools.lru_cache(maxsize=1 << 16)
def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:  # ipaddress parses a string in Python, several times slower than inet_pton (as strict)
        return ipaddress.IPv4Address(socket.inet_pton(socket.AF_INET, text))
    except OSError:
        return ipaddress.ip_address(text)  # raises ValueError naming the text


@functools.lru_cache(maxsize=1 << 16)
def service_key(key: tuple[str | int, ...]) -> ServiceKey:
    """The ServiceKey of an element key's ``VIP . proto . port`` (cached: a read meets each
    service once per slot)."""
    vip, proto, port = key
    return ServiceKey(4, Protocol(str(proto)), _address(str(vip)), int(port))
