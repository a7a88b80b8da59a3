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

Writes are nft *text* in one ``nft -f -`` transaction. nft 1.0.6's JSON input
crashes on ``dnat`` from a named concatenated map (SIGSEGV), silently drops a
``ct timeout`` policy and asserts on ``delete ct timeout``; text has none of these
bugs. Reads use ``nft -j list table``.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
from collections.abc import Iterable, Iterator, Mapping, Sequence
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
    if method not in (Forward.NAT, Forward.DR):
        raise ValueError(f"service {svc.key}: forwarding method {method} is not supported by the nftables backend")
    return method


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
    # str(IPv4Address) is slow; each real server's address is formatted once.
    rips = {rs: str(rs.address) for rs in svc.realservers}
    by_name = {f"{rip}:{rs.port}": rs for rs, rip in rips.items()}
    weights = {name: rs.weight for name, rs in by_name.items()}

    table: Sequence[str | None]
    if svc.scheduler in ("rr", "wrr"):
        table = wrr_table(weights, weighted=svc.scheduler == "wrr")
    else:
        table = maglev_table(weights, MAGLEV_SIZE)
        if not any(table):
            table = []
    chain = scheduler_chain(kind, svc.scheduler, svc.flags, len(table))

    own: list[Element] = [Element(family, f"{kind}_svc", (vip, proto, port), f"goto {chain}")]
    values: dict[str, Value] = {
        name: ((rips[rs], rs.port) if kind == "nat" else int(rs.address)) for name, rs in by_name.items()
    }
    slots = f"{kind}_slots"
    own += [Element(family, slots, (vip, proto, port, slot), values[name]) for slot, name in enumerate(table) if name]
    # A real server is known from its slots; only what the slots cannot say is stored:
    # a weight other than 1, no slot at all (weight 0), a DR port other than the VIP's.
    in_table = set(table)
    dr_addresses: set[str] = set()
    for name, rs in by_name.items():
        if kind == "nat":
            if rs.weight != 1 or name not in in_table:
                own.append(Element(family, "nat_rs", (vip, proto, port, rips[rs], rs.port), rs.weight))
        else:
            dr_addresses.add(rips[rs])
            if rs.weight != 1 or name not in in_table or rs.port != port:
                own.append(Element(family, "dr_rs", (vip, proto, port, int(rs.address)), (rs.port, rs.weight)))
    return ServiceElements(frozenset(own), frozenset(dr_addresses))


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
    if set_name == "dr_dev":
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


def elements_text(verb: str, elements: Iterable[Element]) -> Iterator[str]:
    """``add element``/``delete element`` lines, grouped per set, ``_CHUNK`` per line."""
    groups: dict[tuple[str, str], list[Element]] = {}
    for e in elements:
        groups.setdefault((e.family, e.set), []).append(e)
    with_value = verb == "add"
    for (family, name), items in sorted(groups.items()):
        for start in range(0, len(items), _CHUNK):
            body = ", ".join([_fmt_element(e, with_value) for e in items[start : start + _CHUNK]])
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
    by_set: dict[str, list[Element]] = {}
    for e in out.elements:
        by_set.setdefault(e.set, []).append(e)
    services: dict[ServiceKey, VirtualService] = {}
    realservers: dict[ServiceKey, dict[tuple[str, int], RealServer]] = {}
    for e in by_set.get("nat_svc", []) + by_set.get("dr_svc", []):
        if isinstance(e.value, str) and e.value.startswith("goto "):
            parsed = parse_scheduler_chain(e.value[5:])
            if parsed is None:
                continue
            sk = service_key(e.key)
            services[sk] = VirtualService(key=sk, scheduler=parsed[0], flags=parsed[1])
            realservers[sk] = {}
    # Real servers with a slot and the defaults (weight 1, DR port = VIP port) ...
    seen: set[tuple[tuple[str | int, ...], Value]] = set()
    for e in by_set.get("nat_slots", []):
        svc_key = e.key[:3]
        if (svc_key, e.value) in seen:
            continue
        seen.add((svc_key, e.value))
        sk = service_key(svc_key)
        assert isinstance(e.value, tuple)
        rip, rport = str(e.value[0]), int(e.value[1])
        if sk in realservers:
            realservers[sk][(rip, rport)] = RealServer(_address(rip), rport, 1, Forward.NAT)
    for e in by_set.get("dr_slots", []):
        svc_key = e.key[:3]
        if (svc_key, e.value) in seen:
            continue
        seen.add((svc_key, e.value))
        sk = service_key(svc_key)
        rip = _mark_address(int(e.value))  # type: ignore[arg-type]
        if sk in realservers:
            realservers[sk][(rip, -1)] = RealServer(_address(rip), sk.port, 1, Forward.DR)
    # ... and what the slots cannot say: weights other than 1, slot-less real servers, DR ports.
    for e in by_set.get("nat_rs", []):
        sk = service_key(e.key[:3])
        if sk in realservers:
            assert isinstance(e.value, int)
            nat_ip, nat_port = str(e.key[3]), int(e.key[4])
            realservers[sk][(nat_ip, nat_port)] = RealServer(_address(nat_ip), nat_port, e.value, Forward.NAT)
    for e in by_set.get("dr_rs", []):
        sk = service_key(e.key[:3])
        if sk in realservers:
            assert isinstance(e.value, tuple)
            dr_port, weight = e.value
            dr_ip = _mark_address(int(e.key[3]))
            realservers[sk][(dr_ip, -1)] = RealServer(_address(dr_ip), int(dr_port), int(weight), Forward.DR)
    for sk, svc in services.items():
        rss = tuple(sorted(realservers[sk].values(), key=lambda r: (r.address.version, int(r.address), r.port)))
        full = dataclasses.replace(svc, realservers=rss)  # with_realservers' order, without its key objects
        out.services[sk] = full
        vip, proto = str(sk.address), str(sk.protocol)
        for rs in full.realservers:
            rip = str(rs.address)
            if rs.forward is Forward.NAT:
                pin, bin_ = counters.get(("nat_in", (vip, proto, rip, rs.port)), (0, 0))
                pout, bout = counters.get(("nat_out", (vip, proto, rip, rs.port)), (0, 0))
            else:
                pin, bin_ = counters.get(("dr_in", (vip, proto, sk.port, int(rs.address))), (0, 0))
                pout = bout = 0  # replies go from the real server straight to the client
            out.stats[(sk, rs.key)] = RealServerStats(in_packets=pin, in_bytes=bin_, out_packets=pout, out_bytes=bout)


@functools.lru_cache(maxsize=1 << 16)
def _mark_address(mark: int) -> str:
    return str(ipaddress.IPv4Address(mark))


@functools.lru_cache(maxsize=1 << 16)
def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


@functools.lru_cache(maxsize=1 << 16)
def service_key(key: tuple[str | int, ...]) -> ServiceKey:
    """The ServiceKey of an element key's ``VIP . proto . port`` (cached: a read meets each
    service once per slot)."""
    vip, proto, port = key
    return ServiceKey(4, Protocol(str(proto)), _address(str(vip)), int(port))
