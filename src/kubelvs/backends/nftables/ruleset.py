"""The nftables ruleset of kubelvs as pure data: model -> elements -> nft text, and back.

Everything lives in two tables named ``kubelvs`` (one per nftables family; nftables
ties a table to a family): ``ip kubelvs`` for NAT and timeouts, ``netdev kubelvs``
for DR (only the netdev family can rewrite MACs and ``fwd`` a frame). Other tables
are never named in anything this module emits.

The *skeleton* (maps, scheduler chains, hooks) is fixed; a service is nothing but
map elements, so any change is a small element transaction (a per-service chain
costs ~10x more at 10,000 services, see /work/shared/notes/kernel-and-lab.md):

``nat_svc``/``dr_svc``  ``VIP . proto . port -> goto <scheduler chain>``, comment =
                        scheduler and flags (what ``read`` needs to rebuild the model)
``nat_keys``            ``VIP . proto . port`` of NAT services (timeout rules)
``nat_slots``           ``VIP . proto . port . slot -> RIP . RPORT`` (dnat target)
``dr_slots``            ``VIP . proto . port . slot -> mark`` where mark = the RIP as u32
``nat_rs``              ``VIP . proto . port . RIP . RPORT -> weight`` (model only)
``dr_rs``               ``VIP . proto . port . RIP -> RPORT . weight`` with a counter
``nat_in``/``nat_out``  ``VIP . proto . RIP . RPORT`` with counters (forward hook)
``dr_mac``/``dr_smac``/``dr_dev``  ``RIP -> real server MAC / own MAC / out device``

A scheduler chain turns the packet into a slot: ``numgen inc mod N`` (NAT rr/wrr:
per new connection, conntrack keeps the rest), ``jhash`` of the flow ``mod N`` (DR
rr/wrr: stateless, so every packet of a flow must hash to the same slot), ``jhash``
of the source ``mod 251`` (sh/mh, Maglev table from maglev.py).

Writes are nft *text* in one ``nft -f -`` transaction. nft 1.0.6's JSON input
crashes on ``dnat`` from a named concatenated map (SIGSEGV), silently drops a
``ct timeout`` policy and asserts on ``delete ct timeout``; text has none of these
bugs. Reads use ``nft -j list table``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

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
    "neighbour_elements",
    "skeleton_text",
    "device_chain_name",
    "device_chain_text",
    "delete_device_chain_text",
    "timeouts_text",
    "elements_text",
    "parse_tables",
    "service_forward",
    "service_key",
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

_CHUNK = 20000  # elements per ``add element`` line: the size the notes measured
_PORT_FLAGS = frozenset({"sh-port", "mh-port"})

Value: TypeAlias = tuple[str | int, ...] | str | int | None


@dataclass(frozen=True, slots=True)
class Element:
    """One set/map element. ``value`` is None for a set, a verdict text (``goto x``,
    ``drop``) for a verdict map; ``comment`` only on service elements."""

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
    """Elements of one service: ``own`` belong to it alone, ``shared`` may be shared with
    other services of the same VIP (NAT counters keyed without the service port)."""

    own: frozenset[Element]
    shared: frozenset[Element]
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
    if method not in (Forward.NAT, Forward.DR):
        raise ValueError(f"service {svc.key}: forwarding method {method} is not supported by the nftables backend")
    return method


def _rs_name(rs: RealServer) -> str:
    return str(rs.key)


def _mark(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> int:
    return int(address)


def service_elements(svc: VirtualService) -> ServiceElements:
    """Every element that represents ``svc`` (pure; the input of the diff in the backend)."""
    key = svc.key
    if key.fwmark or key.address is None or key.family != 4:
        raise ValueError(f"service {key}: only IPv4 address services are supported by the nftables backend")
    if svc.scheduler not in SUPPORTED_SCHEDULERS:
        raise ValueError(f"service {key}: scheduler {svc.scheduler!r} is not supported by the nftables backend")
    forward = service_forward(svc)
    kind = "dr" if forward is Forward.DR else "nat"
    family = "netdev" if kind == "dr" else "ip"
    vip, proto, port = str(key.address), str(key.protocol), key.port
    by_name = {_rs_name(rs): rs for rs in svc.realservers}
    weights = {name: rs.weight for name, rs in by_name.items()}

    table: Sequence[str | None]
    if svc.scheduler in ("rr", "wrr"):
        table = wrr_table(weights, weighted=svc.scheduler == "wrr")
        chain = f"{kind}_rr_{len(table)}" if table else f"{kind}_none"
    else:
        table = maglev_table(weights, MAGLEV_SIZE)
        chain = (f"{kind}_mhp" if svc.flags & _PORT_FLAGS else f"{kind}_mh") if any(table) else f"{kind}_none"
        if not any(table):
            table = []

    own: set[Element] = set()
    shared: set[Element] = set()
    own.add(Element(family, f"{kind}_svc", (vip, proto, port), f"goto {chain}", _service_comment(svc)))
    if kind == "nat":
        own.add(Element(family, "nat_keys", (vip, proto, port)))
    for slot, name in enumerate(table):
        assert name is not None
        rs = by_name[name]
        value: Value = (str(rs.address), rs.port) if kind == "nat" else _mark(rs.address)
        own.add(Element(family, f"{kind}_slots", (vip, proto, port, slot), value))
    dr_addresses: set[str] = set()
    for rs in svc.realservers:
        rip = str(rs.address)
        if kind == "nat":
            own.add(Element(family, "nat_rs", (vip, proto, port, rip, rs.port), rs.weight))
            shared.add(Element(family, "nat_in", (vip, proto, rip, rs.port)))
            shared.add(Element(family, "nat_out", (vip, proto, rip, rs.port)))
        else:
            own.add(Element(family, "dr_rs", (vip, proto, port, _mark(rs.address)), (rs.port, rs.weight)))
            dr_addresses.add(rip)
    return ServiceElements(frozenset(own), frozenset(shared), frozenset(dr_addresses))


def neighbour_elements(rip: str, nb: Neighbour) -> frozenset[Element]:
    mark = int(ipaddress.IPv4Address(rip))
    return frozenset(
        {
            Element("netdev", "dr_mac", (mark,), nb.mac),
            Element("netdev", "dr_smac", (mark,), nb.own_mac),
            Element("netdev", "dr_dev", (mark,), nb.device),
        }
    )


def _service_comment(svc: VirtualService) -> str:
    text = f"sched={svc.scheduler}"
    if svc.flags:
        text += ";flags=" + ",".join(sorted(svc.flags))
    return text


def _parse_comment(comment: str) -> tuple[str, frozenset[str]]:
    fields = dict(part.split("=", 1) for part in comment.split(";") if "=" in part)
    flags = frozenset(f for f in fields.get("flags", "").split(",") if f)
    return fields.get("sched", "rr"), flags


# ---------------------------------------------------------------------- text


def skeleton_text() -> str:
    """Both tables with every map and chain, no elements: the fixed part of the ruleset."""
    key = "ip daddr . meta l4proto . th dport"
    lines = [
        f"table ip {TABLE} {{",
        f'  comment "{_TABLE_COMMENT}"',
        f"  chain {SKELETON_VERSION} {{ }}",
        f"  map nat_svc {{ typeof {key} : verdict; }}",
        # The same keys as a plain set: the raw-priority timeout rules cannot look up
        # nat_svc (the kernel refuses a lookup whose verdicts lead to dnat chains there).
        f"  set nat_keys {{ typeof {key}; }}",
        f"  map nat_slots {{ typeof {key} . numgen inc mod 2 : ip daddr . th dport; }}",
        f"  map nat_rs {{ typeof {key} . ip daddr . th dport : meta mark; }}",
        "  set nat_in { typeof ip daddr . meta l4proto . ip daddr . th dport; counter; }",
        "  set nat_out { typeof ip daddr . meta l4proto . ip daddr . th dport; counter; }",
        # New connections to a VIP, from outside (prerouting) and from the director itself.
        f"  chain nat_pre {{ type nat hook prerouting priority dstnat; policy accept; {key} vmap @nat_svc; }}",
        f"  chain nat_local {{ type nat hook output priority -100; policy accept; {key} vmap @nat_svc; }}",
        "  chain nat_none { drop; }",
        f"  chain nat_mh {{ dnat ip to {key} . jhash ip saddr mod {MAGLEV_SIZE} seed {HASH_SEED:#x} map @nat_slots; }}",
        f"  chain nat_mhp {{ dnat ip to {key} . jhash ip saddr . th sport mod {MAGLEV_SIZE} seed {HASH_SEED:#x} map @nat_slots; }}",
    ]
    for n in range(1, MAX_WRR_SLOTS + 1):
        lines.append(f"  chain nat_rr_{n} {{ dnat ip to {key} . numgen inc mod {n} map @nat_slots; }}")
    lines += [
        # Timeouts are attached before conntrack creates the entry (priority raw).
        "  chain ct_pre { type filter hook prerouting priority raw; policy accept; }",
        "  chain ct_local { type filter hook output priority raw; policy accept; }",
        # Per real server counters: after DNAT the packet carries the RIP, conntrack the VIP.
        "  chain count { type filter hook forward priority filter; policy accept;",
        "    ct direction original ct original ip daddr . meta l4proto . ip daddr . th dport @nat_in",
        "    ct direction reply ct original ip daddr . meta l4proto . ip saddr . th sport @nat_out",
        "  }",
        "}",
        f"table netdev {TABLE} {{",
        f'  comment "{_TABLE_COMMENT}"',
        f"  chain {SKELETON_VERSION} {{ }}",
        f"  map dr_svc {{ typeof {key} : verdict; }}",
        f"  map dr_slots {{ typeof {key} . numgen inc mod 2 : meta mark; }}",
        f"  map dr_rs {{ typeof {key} . meta mark : th dport . meta mark; counter; }}",
        "  map dr_mac { typeof meta mark : ether daddr; }",
        "  map dr_smac { typeof meta mark : ether saddr; }",
        "  map dr_dev { typeof meta mark : meta oif; }",
        "  chain dr_none { drop; }",
        # The real server gets the frame unchanged but for the MACs: dst = its MAC, src =
        # ours (else the bridge learns the client's MAC on our port and the real server's
        # replies come back to us instead of going to the client).
        "  chain dr_out {",
        f"    {key} . meta mark @dr_rs ether saddr set meta mark map @dr_smac"
        " ether daddr set meta mark map @dr_mac fwd to meta mark map @dr_dev",
        "  }",
        f"  chain dr_mh {{ meta mark set {key} . jhash ip saddr mod {MAGLEV_SIZE} seed {HASH_SEED:#x} map @dr_slots goto dr_out; }}",
        f"  chain dr_mhp {{ meta mark set {key} . jhash ip saddr . th sport mod {MAGLEV_SIZE} seed {HASH_SEED:#x} map @dr_slots goto dr_out; }}",
    ]
    for n in range(1, MAX_WRR_SLOTS + 1):
        # No connection state in netdev: rr/wrr hash the flow so all its packets agree.
        lines.append(
            f"  chain dr_rr_{n} {{ meta mark set {key} . jhash ip saddr . th sport mod {n} seed {HASH_SEED:#x}"
            " map @dr_slots goto dr_out; }"
        )
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


def timeouts_text(timeouts: Timeouts, *, replace: bool) -> str:
    """ct timeout objects for NAT connections to a VIP, and the rules attaching them.

    IPVS ``tcp`` is conntrack's established timeout, ``udp`` both UDP timeouts, and
    ``tcpfin`` the states of a closing connection (fin_wait and time_wait): after the
    seed's ``ipvsadm --set 900 30 300`` a closed connection leaves the table after 30 s.
    """
    out: list[str] = []
    if replace:
        out += [
            f"flush chain ip {TABLE} ct_pre",
            f"flush chain ip {TABLE} ct_local",
            f"delete ct timeout ip {TABLE} kl_tcp",
            f"delete ct timeout ip {TABLE} kl_udp",
        ]
    t = timeouts
    out += [
        f"add ct timeout ip {TABLE} kl_tcp {{ protocol tcp; l3proto ip; policy = {{ established: {t.tcp},"
        f" fin_wait: {t.tcpfin}, time_wait: {t.tcpfin} }}; }}",
        f"add ct timeout ip {TABLE} kl_udp {{ protocol udp; l3proto ip; policy = {{ unreplied: {t.udp}, replied: {t.udp} }}; }}",
    ]
    for chain in ("ct_pre", "ct_local"):
        for proto in ("tcp", "udp"):
            out.append(
                f"add rule ip {TABLE} {chain} ip daddr . meta l4proto . th dport @nat_keys"
                f' meta l4proto {proto} ct timeout set "kl_{proto}"'
            )
    return "\n".join(out) + "\n"


def _fmt(value: str | int) -> str:
    if isinstance(value, int):
        return str(value)
    if value in ("tcp", "udp", "sctp") or ":" in value or value[:1].isdigit():
        return value  # protocol names, MACs, addresses
    return f'"{value}"'  # interface names


def _fmt_key(key: tuple[str | int, ...]) -> str:
    return " . ".join(_fmt(v) for v in key)


def _fmt_element(e: Element, with_value: bool) -> str:
    text = _fmt_key(e.key)
    if e.comment:
        text += f' comment "{e.comment}"'
    if with_value and e.value is not None:
        if isinstance(e.value, tuple):
            text += " : " + _fmt_key(e.value)
        elif isinstance(e.value, str) and (e.value.startswith("goto ") or e.value in ("drop", "accept")):
            text += " : " + e.value
        else:
            text += " : " + _fmt(e.value)
    return text


def elements_text(verb: str, elements: Iterable[Element]) -> Iterator[str]:
    """``add element``/``delete element`` lines, grouped per set, ``_CHUNK`` per line."""
    groups: dict[tuple[str, str], list[Element]] = {}
    for e in elements:
        groups.setdefault((e.family, e.set), []).append(e)
    for (family, name), items in sorted(groups.items()):
        items.sort(key=lambda e: tuple(str(k) for k in e.key))
        for start in range(0, len(items), _CHUNK):
            chunk = items[start : start + _CHUNK]
            body = ", ".join(_fmt_element(e, verb == "add") for e in chunk)
            yield f"{verb} element {family} {TABLE} {name} {{ {body} }}\n"


# ---------------------------------------------------------------------- read back


@dataclass
class ParsedTables:
    """What ``nft -j list table`` of both tables says, in model terms."""

    services: dict[ServiceKey, VirtualService] = field(default_factory=dict)
    stats: dict[tuple[ServiceKey, RealServerKey], RealServerStats] = field(default_factory=dict)
    timeouts: Timeouts | None = None
    elements: set[Element] = field(default_factory=set)  # every element, as service_elements builds them
    device_chains: dict[int, str] = field(default_factory=dict)  # ifindex -> device (dr_in_* chains)
    tables: dict[str, str] = field(default_factory=dict)  # family -> skeleton version ("" if unknown)


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
    """Rebuild the model from the JSON listings of ``ip kubelvs`` and ``netdev kubelvs``."""
    out = ParsedTables()
    counters: dict[tuple[str, tuple[str | int, ...]], tuple[int, int]] = {}
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
                    out.elements.add(Element(s["family"], s["name"], key, parsed, comment))
    _rebuild(out, counters)
    if "kl_tcp" in ct_policies and "kl_udp" in ct_policies:
        tcp, udp = ct_policies["kl_tcp"], ct_policies["kl_udp"]
        out.timeouts = Timeouts(
            tcp=tcp.get("established", CT_DEFAULTS["established"]),
            tcpfin=tcp.get("fin_wait", CT_DEFAULTS["fin_wait"]),
            udp=udp.get("replied", CT_DEFAULTS["replied"]),
        )
    return out


def _rebuild(out: ParsedTables, counters: Mapping[tuple[str, tuple[str | int, ...]], tuple[int, int]]) -> None:
    services: dict[ServiceKey, VirtualService] = {}
    realservers: dict[ServiceKey, list[RealServer]] = {}
    for e in out.elements:
        if e.set in ("nat_svc", "dr_svc"):
            sk = service_key(e.key)
            sched, flags = _parse_comment(e.comment)
            services[sk] = VirtualService(key=sk, scheduler=sched, flags=flags)
    for e in out.elements:
        if e.set == "nat_rs":
            vip, proto, port, rip, rport = e.key
            sk = service_key((vip, proto, port))
            assert isinstance(e.value, int)
            rs = RealServer(ipaddress.ip_address(rip), int(rport), e.value, Forward.NAT)
            realservers.setdefault(sk, []).append(rs)
            pin, bin_ = counters.get(("nat_in", (vip, proto, rip, rport)), (0, 0))
            pout, bout = counters.get(("nat_out", (vip, proto, rip, rport)), (0, 0))
            out.stats[(sk, rs.key)] = RealServerStats(in_packets=pin, in_bytes=bin_, out_packets=pout, out_bytes=bout)
        elif e.set == "dr_rs":
            vip, proto, port, mark = e.key
            sk = service_key((vip, proto, port))
            assert isinstance(e.value, tuple)
            rport, weight = e.value
            rs = RealServer(ipaddress.IPv4Address(int(mark)), int(rport), int(weight), Forward.DR)
            realservers.setdefault(sk, []).append(rs)
            pin, bin_ = counters.get(("dr_rs", e.key), (0, 0))
            out.stats[(sk, rs.key)] = RealServerStats(in_packets=pin, in_bytes=bin_)
    for sk, svc in services.items():
        out.services[sk] = svc.with_realservers(realservers.get(sk, ()))


def service_key(key: tuple[str | int, ...]) -> ServiceKey:
    vip, proto, port = key
    return ServiceKey(4, Protocol(str(proto)), ipaddress.ip_address(vip), int(port))
