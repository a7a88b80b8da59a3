"""Reading the kubelvs tables back into the model (nftables backend, pure).

Two inputs: the kernel's own binary set elements (dumped by netlink.py, decoded here
by ``parse_raw``: what the backend reads), and nft's JSON listing (``parse_tables``:
what ``kubelvs doctor`` finds in a captured ``nft.json``). Both give ``ParsedTables``:
every element as ``elements.service_elements`` would build it, the services and real
servers those elements describe, their counters, and the timeouts.

A service is recognised by its ``nat_svc``/``dr_svc`` element (``goto`` a scheduler
chain, whose name is the scheduler and flags); its real servers come from its slots
(NAT ``nat_slots``: weight 1; NAT on a shared table, the table its chain names: its
slots' owners and its ``nat_weights``, port from ``nat_rport``; DR the shared table its
``dr_tab`` names: its slots' owners and its ``dr_weights``, port = VIP port) and its
``*_rs`` elements (everything else).
"""

from __future__ import annotations

import functools
import ipaddress
import operator
import socket
import struct
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from ...model import Forward, RealServer, RealServerKey, RealServerStats, ServiceKey, Timeouts, VirtualService
from .elements import PROTO_TEXT, ip_of, ip_text, mark_address, mark_of, service_key
from .schema import (
    CT_DEFAULTS,
    MARKERS,
    NAT_FAMILIES,
    TABLE,
    TABLE_COMMENTS,
    VERSIONS,
    Element,
    Value,
    address_size,
    nat_entry_table,
    parse_device_chain,
    parse_nat_table_map,
    parse_scheduler_chain,
)
from .slottables import tables_of

__all__ = [
    "CTA_TCP_ESTABLISHED",
    "CTA_TCP_FIN_WAIT",
    "CTA_UDP_REPLIED",
    "Counters",
    "ParsedTables",
    "decode_counters",
    "parse_raw",
    "parse_tables",
    "stats_of",
]


@dataclass
class ParsedTables:
    """Both tables in model terms: read from the kernel (``parse_raw``) or from what
    ``nft -j list table`` prints (``parse_tables``)."""

    services: dict[ServiceKey, VirtualService] = field(default_factory=dict)
    stats: dict[tuple[ServiceKey, RealServerKey], RealServerStats] = field(default_factory=dict)
    timeouts: Timeouts | None = None
    by_set: dict[str, list[Element]] = field(
        default_factory=dict
    )  # every element, as service_elements builds them
    device_chains: dict[int, str] = field(default_factory=dict)  # ifindex -> device (dr_in_* chains)
    tables: dict[str, str] = field(default_factory=dict)  # family -> skeleton version ("" if unknown)

    @property
    def elements(self) -> set[Element]:
        return {e for items in self.by_set.values() for e in items}


#: (set, element key) -> (packets, bytes) of the counter elements.
Counters: TypeAlias = dict[tuple[str, tuple[str | int, ...]], tuple[int, int]]
_DR_COUNTERS = {4: "dr_in", 6: "dr6_in"}  # a DR service's counter set, per IP version
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
    counters: Counters = {}
    ct_policies: dict[tuple[str, str], dict[str, int]] = {}
    for doc in documents:
        for item in doc.get("nftables", []):
            if "table" in item:
                out.tables.setdefault(item["table"]["family"], "")
            elif "chain" in item:
                chain = item["chain"]
                if chain["name"] in MARKERS:
                    out.tables[chain["family"]] = chain["name"]
                ifindex = parse_device_chain(chain["name"])
                if ifindex is not None and "dev" in chain:
                    out.device_chains[ifindex] = chain["dev"]
            elif "ct timeout" in item:
                ct = item["ct timeout"]
                ct_policies[(ct["family"], ct["name"])] = dict(ct.get("policy") or {})
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
    if (found := _timeout_policies(ct_policies)) is not None:
        tcp, udp = found
        out.timeouts = Timeouts(
            tcp=tcp.get("established", CT_DEFAULTS["established"]),
            tcpfin=tcp.get("fin_wait", CT_DEFAULTS["fin_wait"]),
            udp=udp.get("replied", CT_DEFAULTS["replied"]),
        )
    return out


# --- the kernel's own encoding (netlink.py), the layouts schema.declarations declares

#: CTA_TIMEOUT_* attribute numbers of the policy values the model uses.
CTA_TCP_ESTABLISHED, CTA_TCP_FIN_WAIT, CTA_UDP_REPLIED = 3, 4, 2
_PROTO_NAMES = {6: "tcp", 17: "udp", 132: "sctp"}
# A concatenation stores every component in its own 4-byte registers: VIP (4 bytes,
# 16 in the ip6 table), protocol (1 byte), port (2 bytes, network order). ``numgen``,
# ``meta mark``, ``meta oif`` are host-order 32-bit integers.
_PREFIX = {4: struct.Struct("!4sB3xH2x"), 16: struct.Struct("!16sB3xH2x")}
_U32 = struct.Struct("=I")
_BE16 = struct.Struct("!H")
_NAT_TARGET = {4: struct.Struct("!4sH2x"), 16: struct.Struct("!16sH2x")}  # RIP . RPORT
_DR_TARGET = struct.Struct("!H2x")  # RPORT (. weight: a host-order u32 after it)
_VERDICTS = {0: "drop", 1: "accept", -1: "continue", -2: "break", -5: "return"}


class _RawDecoder:
    """Binary keys/values -> the tuples ``service_elements`` builds. Each distinct
    VIP . proto . port prefix and real server value is decoded once per read."""

    def __init__(self, ifnames: Mapping[int, str]) -> None:
        self.ifnames = ifnames
        self._prefixes: dict[bytes, tuple[str, str, int]] = {}
        self._targets: dict[bytes, tuple[str, int]] = {}

    def prefix(self, key: bytes, size: int = 4) -> tuple[str, str, int]:
        head = key[: size + 8]
        found = self._prefixes.get(head)
        if found is None:
            vip, proto, port = _PREFIX[size].unpack(head)
            found = self._prefixes[head] = (_ntoa(vip), _PROTO_NAMES.get(proto, str(proto)), port)
        return found

    def nat_target(self, value: bytes) -> tuple[str, int]:
        found = self._targets.get(value)
        if found is None:
            rip, rport = _NAT_TARGET[len(value) - 4].unpack(value)
            found = self._targets[value] = (_ntoa(rip), rport)
        return found

    def decode(self, family: str, name: str, raws: Iterable[Any]) -> tuple[list[Element], Counters]:
        key_of: Callable[[bytes], tuple[str | int, ...]]
        value_of: Callable[[Any], Value]
        if parse_nat_table_map(name) is not None:  # a shared NAT table: slot -> RIP
            key_of, value_of = _U32.unpack_from, functools.partial(_nat_owner, 16 if family == "ip6" else 4)
        else:
            key_of, value_of = self._codec(name, address_size(family, name))
        make = Element._make
        out: list[Element] = []
        counters: Counters = {}
        try:
            for raw in raws:
                key = key_of(raw.key)
                out.append(make((family, name, key, value_of(raw), raw.comment)))
                if raw.counter is not None:
                    counters[(name, key)] = raw.counter
        except (struct.error, TypeError, KeyError) as exc:
            raise ValueError(
                f"{family} {TABLE} {name}: an element does not have the layout this version writes ({exc})"
            ) from exc
        return out, counters

    def _codec(
        self, name: str, size: int
    ) -> tuple[Callable[[bytes], tuple[str | int, ...]], Callable[[Any], Value]]:
        """Key and value decoders of set ``name`` whose addresses are ``size`` bytes."""
        u32, be16, ntoa, end = _U32.unpack_from, _BE16.unpack_from, _ntoa, size + 8
        prefix = self.prefix if size == 4 else functools.partial(self.prefix, size=size)
        if name in ("nat_svc", "dr_svc", "dr6_svc"):
            return prefix, lambda raw: _verdict_text(raw.verdict)
        if name in ("dr_tab", "dr6_tab"):
            return prefix, lambda raw: u32(raw.data, 0)[0]
        if name in ("tun_svc", "tun6_svc"):
            return prefix, lambda raw: None
        if name == "nat_rport":
            return prefix, lambda raw: be16(raw.data, 0)[0]
        if name == "nat_weights":  # table . RIP -> weight
            return lambda k: (*u32(k, 0), ntoa(k[4 : 4 + size])), lambda raw: u32(raw.data, 0)[0]

        def slot_key(k: bytes) -> tuple[str | int, ...]:  # VIP . proto . port . slot/mark
            return (*prefix(k), *u32(k, end))

        def realserver_key(k: bytes) -> tuple[str | int, ...]:  # VIP . proto . port . RIP . RPORT
            return (*prefix(k), ntoa(k[end : end + size]), *be16(k, end + size))

        def counter_key(k: bytes) -> tuple[str | int, ...]:  # VIP . proto . RIP . RPORT
            proto = _PROTO_NAMES.get(k[size], str(k[size]))
            return (ntoa(k[:size]), proto, ntoa(k[size + 4 : 2 * size + 4]), *be16(k, 2 * size + 4))

        def mark_key(k: bytes) -> tuple[str | int, ...]:
            return u32(k, 0)

        def table_key(k: bytes) -> tuple[str | int, ...]:  # table . slot
            return u32(k, 0) + u32(k, 4)

        keyed: Callable[[bytes], tuple[str | int, ...]]
        if name == "dr_slots" or name == "dr_weights":
            keyed = table_key
        elif name in ("nat_slots", "dr_in", "dr_rs", "dr6_in", "dr6_rs"):
            keyed = slot_key
        elif name == "nat_rs":
            keyed = realserver_key
        elif name in ("nat_in", "nat_out"):
            keyed = counter_key
        else:  # dr_mac, dr_smac, dr_dev, tun_dev, their IPv6 twins, dr6_addr: keyed by the mark
            keyed = mark_key

        def mac(raw: Any) -> Value:
            return ":".join(f"{b:02x}" for b in raw.data)

        def device(raw: Any) -> Value:
            return self.ifnames.get(u32(raw.data, 0)[0], str(u32(raw.data, 0)[0]))

        values: dict[str, Callable[[Any], Value]] = {
            "nat_slots": lambda raw: self.nat_target(raw.data),
            "dr_slots": lambda raw: u32(raw.data, 0)[0],
            "dr_weights": lambda raw: u32(raw.data, 0)[0],
            "nat_rs": lambda raw: u32(raw.data, 0)[0],
            "dr_rs": lambda raw: be16(raw.data, 0) + u32(raw.data, 4),
            "dr6_rs": lambda raw: be16(raw.data, 0) + u32(raw.data, 4),
            "dr_mac": mac,
            "dr_smac": mac,
            "dr6_mac": mac,
            "dr6_smac": mac,
            "dr_dev": device,
            "dr6_dev": device,
            "tun_dev": device,
            "tun6_dev": device,
            "dr6_addr": lambda raw: ntoa(raw.data),
            "tun6_addr": lambda raw: ntoa(raw.data),
        }
        return keyed, values.get(name, lambda raw: None)


def _nat_owner(size: int, raw: Any) -> Value:
    """The owner of a shared NAT table's slot: its address (``size`` bytes)."""
    return _ntoa(raw.data[:size])


def _ntoa(packed: bytes) -> str:
    """An address as nft (and ``elements.ip_text``) writes it."""
    return socket.inet_ntoa(packed) if len(packed) == 4 else ip_text(ipaddress.IPv6Address(packed))


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
    policies: Mapping[tuple[str, str], Mapping[int, int]],
    ifnames: Mapping[int, str],
    comments: Mapping[str, str] | None = None,
) -> ParsedTables:
    """Rebuild the model from what the kernel holds (netlink.py reads it).

    ``chains``: family -> (name, hook device) of each existing ``kubelvs`` table's chains;
    ``sets``: (family, set) -> its ``RawElement``s; ``policies``: (family, ct timeout name) -> CTA
    attribute -> seconds; ``ifnames``: ifindex -> interface name in the namespace;
    ``comments``: family -> the table's comment. A table is ours when it has the marker
    chain or our comment (a marker chain deleted by hand is then made again).
    """
    out = ParsedTables()
    for family, members in chains.items():
        ours = (comments or {}).get(family) == TABLE_COMMENTS.get(family)
        out.tables[family] = VERSIONS[family] if ours else ""
        for name, device in members:
            if name in MARKERS:
                out.tables[family] = name
            elif (ifindex := parse_device_chain(name)) is not None and device is not None:
                out.device_chains[ifindex] = device
    decoder = _RawDecoder(ifnames)
    counters: Counters = {}
    for (family, name), raws in sets.items():
        items, found = decoder.decode(family, name, raws)
        out.by_set.setdefault(name, []).extend(items)  # ip and ip6 have the same sets
        counters.update(found)
    _rebuild(out, counters)
    if (policy := _timeout_policies(policies)) is not None:
        tcp, udp = policy
        out.timeouts = Timeouts(
            tcp=tcp.get(CTA_TCP_ESTABLISHED, CT_DEFAULTS["established"]),
            tcpfin=tcp.get(CTA_TCP_FIN_WAIT, CT_DEFAULTS["fin_wait"]),
            udp=udp.get(CTA_UDP_REPLIED, CT_DEFAULTS["replied"]),
        )
    return out


_P = typing.TypeVar("_P")


def _timeout_policies(policies: Mapping[tuple[str, str], _P]) -> tuple[_P, _P] | None:
    """The tcp and udp policies of the ct timeout objects: the ip table's, else the ip6
    table's (both are written with the same values)."""
    for family in NAT_FAMILIES:
        tcp, udp = policies.get((family, "kl_tcp")), policies.get((family, "kl_udp"))
        if tcp is not None and udp is not None:
            return tcp, udp
    return None


def decode_counters(sets: Mapping[tuple[str, str], Iterable[Any]]) -> tuple[list[Element], Counters]:
    """The counter elements of ``nat_in``/``nat_out``/``dr_in`` (RawElements per (family,
    set)) and their (packets, bytes)."""
    decoder = _RawDecoder({})
    elements: list[Element] = []
    counters: Counters = {}
    for (family, name), raws in sets.items():
        items, found = decoder.decode(family, name, raws)
        elements += items
        counters.update(found)
    return elements, counters


def stats_of(
    services: Mapping[ServiceKey, VirtualService],
    counters: Mapping[tuple[str, tuple[str | int, ...]], tuple[int, int]],
) -> dict[tuple[ServiceKey, RealServerKey], RealServerStats]:
    """Per-real-server counters of ``services`` (``_rebuild`` does the same while it
    builds the services from a full read)."""
    if not counters:
        return {(key, rs.key): _ZERO_STATS for key, svc in services.items() for rs in svc.realservers}
    stats: dict[tuple[ServiceKey, RealServerKey], RealServerStats] = {}
    for key, svc in services.items():
        if key.address is None:
            continue
        vip, proto = ip_text(key.address), PROTO_TEXT[key.protocol]
        for rs in svc.realservers:
            if rs.forward is Forward.NAT:
                rip = ip_text(rs.address)
                pin, bin_ = counters.get(("nat_in", (vip, proto, rip, rs.port)), (0, 0))
                pout, bout = counters.get(("nat_out", (vip, proto, rip, rs.port)), (0, 0))
                found = RealServerStats(in_packets=pin, in_bytes=bin_, out_packets=pout, out_bytes=bout)
            else:
                counter = _DR_COUNTERS[key.family]
                pin, bin_ = counters.get((counter, (vip, proto, key.port, mark_of(rs.address))), (0, 0))
                found = RealServerStats(in_packets=pin, in_bytes=bin_)
            stats[(key, rs.key)] = found
    return stats


def _rebuild(
    out: ParsedTables, counters: Mapping[tuple[str, tuple[str | int, ...]], tuple[int, int]]
) -> None:
    """Services, real servers and stats from the elements in ``out.by_set``."""
    by_set = out.by_set
    heads: dict[tuple[str | int, ...], tuple[ServiceKey, str, frozenset[str]]] = {}
    for e in [*by_set.get("nat_svc", ()), *by_set.get("dr_svc", ()), *by_set.get("dr6_svc", ())]:
        if isinstance(e.value, str) and e.value.startswith("goto "):
            parsed = parse_scheduler_chain(e.value[5:])
            if parsed is not None:
                heads[e.key] = (service_key(e.key), parsed[0], parsed[1])
    # Per service: (RIP, RPORT) -> (real server, RIP text, sort key); DR real servers as
    # (RIP, -1) (one per address). Real servers recur across services (nodes): one object each.
    members: dict[tuple[str | int, ...], dict[tuple[str, int], tuple[RealServer, str, int]]] = {
        k: {} for k in heads
    }
    made: dict[tuple[str, int, int, bool], tuple[RealServer, str, int]] = {}
    addresses: dict[str, ipaddress.IPv4Address | ipaddress.IPv6Address] = {}

    def real(rip: str, port: int, weight: int, dr: bool) -> tuple[RealServer, str, int]:
        found = made.get((rip, port, weight, dr))
        if found is None:
            address = addresses.get(rip)
            if address is None:
                address = addresses[rip] = ip_of(rip)
            rs = RealServer(address, port, weight, Forward.DR if dr else Forward.NAT)
            # with_realservers' order (version, address, port) as one int: sorted in C below
            found = made[(rip, port, weight, dr)] = (
                rs,
                rip,
                (address.version << 160) | (int(address) << 16) | port,
            )
        return found

    # Real servers with a slot and the defaults (weight 1, DR port = VIP port) ...
    for e in by_set.get("nat_slots", ()):
        m = members.get(e.key[:3])
        if m is not None and e.value not in m:
            assert isinstance(e.value, tuple)
            rip, rport = str(e.value[0]), int(e.value[1])
            m[(rip, rport)] = real(rip, rport, 1, False)
    # DR: the owners of the service's shared table (``dr_tab``, slottables.py). A capture
    # of an older director (``kubelvs doctor``) has per-service slots: VIP . proto . port . slot.
    slots = by_set.get("dr_slots", ())
    owners: dict[int, dict[int, int]] = {  # table -> mark -> weight: its slots' owners, then its weights
        tid: dict.fromkeys(table.values(), 1)
        for tid, table in tables_of(e for e in slots if len(e.key) == 2).items()
    }
    for tid, weights in tables_of(by_set.get("dr_weights", ())).items():
        if tid in owners:
            owners[tid].update(weights)
    # An IPv6 real server's mark is its id: ``dr6_addr`` (TUN: ``tun6_addr``) says which address it stands for
    # (an id it does not name stands for no real server: the service is rewritten).
    addresses6 = {
        int(e.key[0]): str(e.value) for e in [*by_set.get("dr6_addr", ()), *by_set.get("tun6_addr", ())]
    }

    def rip_of(mark: int, dr6: bool) -> str | None:
        return addresses6.get(mark) if dr6 else mark_address(mark)

    for e in [*by_set.get("dr_tab", ()), *by_set.get("dr6_tab", ())]:
        m = members.get(e.key)
        if m is not None:
            for mark, weight in owners.get(int(e.value), {}).items():
                if (owner := rip_of(mark, e.set == "dr6_tab")) is not None:
                    m[(owner, -1)] = real(owner, int(e.key[2]), weight, True)
    for e in slots:
        m = members.get(e.key[:3]) if len(e.key) == 4 else None
        if m is not None:
            rip = mark_address(int(e.value))  # type: ignore[arg-type]
            if (rip, -1) not in m:
                m[(rip, -1)] = real(rip, int(e.key[2]), 1, True)
    # NAT services on a shared table: its owners (``nat_tab_<table>``) and its weights
    # (``nat_weights``), at the service's port (``nat_rport``; without it, none).
    rports = {e.key: int(e.value) for e in by_set.get("nat_rport", ())}  # type: ignore[arg-type]
    nat_tables: dict[tuple[str, int], dict[str, int]] = {}  # (family, table) -> RIP -> weight
    for name, items in by_set.items():
        if (table_id := parse_nat_table_map(name)) is not None:
            for e in items:  # ip and ip6 number their tables each
                nat_tables.setdefault((e.family, table_id), {})[str(e.value)] = 1
    for e in by_set.get("nat_weights", ()):
        if (nat_table := nat_tables.get((e.family, int(e.key[0])))) is not None:
            nat_table[str(e.key[1])] = int(e.value)  # type: ignore[arg-type]
    for e in by_set.get("nat_svc", ()):
        m = members.get(e.key)
        chain = nat_entry_table(e.value)
        if m is not None and chain is not None and (service_port := rports.get(e.key)) is not None:
            for rip, weight in nat_tables.get((e.family, chain[1]), {}).items():
                m[(rip, service_port)] = real(rip, service_port, weight, False)
    # ... and what the slots cannot say: weights other than 1, slot-less real servers, DR ports.
    for e in by_set.get("nat_rs", ()):
        m = members.get(e.key[:3])
        if m is not None:
            assert isinstance(e.value, int)
            rip, rport = str(e.key[3]), int(e.key[4])
            m[(rip, rport)] = real(rip, rport, e.value, False)
    for e in [*by_set.get("dr_rs", ()), *by_set.get("dr6_rs", ())]:
        m = members.get(e.key[:3])
        if m is not None:
            assert isinstance(e.value, tuple)
            dr_port, weight = e.value
            if (owner := rip_of(int(e.key[3]), e.set == "dr6_rs")) is not None:
                m[(owner, -1)] = real(owner, int(dr_port), int(weight), True)
    by_order = operator.itemgetter(2)
    stats = out.stats
    # TUN services are DR services marked in tun_svc (the packet path forks in dr_out;
    # IPv6: tun6_svc, dr6_out).
    dr_heads = {e.key for e in [*by_set.get("dr_svc", ()), *by_set.get("dr6_svc", ())]}
    tun = {e.key for e in [*by_set.get("tun_svc", ()), *by_set.get("tun6_svc", ())]} & dr_heads
    for head, (sk, scheduler, flags) in heads.items():
        triples = sorted(members[head].values(), key=by_order)
        if head in tun:
            triples = [
                (RealServer(rs.address, rs.port, rs.weight, Forward.TUN), rip, o) for rs, rip, o in triples
            ]
        out.services[sk] = VirtualService(
            key=sk, scheduler=scheduler, flags=flags, realservers=tuple([t[0] for t in triples])
        )
        if not counters:
            for rs, _, _ in triples:
                stats[(sk, rs.key)] = _ZERO_STATS
            continue
        vip, proto = str(head[0]), str(head[1])
        for rs, rip, _ in triples:
            if rs.forward is Forward.NAT:
                pin, bin_ = counters.get(("nat_in", (vip, proto, rip, rs.port)), (0, 0))
                pout, bout = counters.get(("nat_out", (vip, proto, rip, rs.port)), (0, 0))
                stats[(sk, rs.key)] = RealServerStats(
                    in_packets=pin, in_bytes=bin_, out_packets=pout, out_bytes=bout
                )
            else:
                # replies go from the real server straight to the client: no out counters
                counter = _DR_COUNTERS[sk.family]
                pin, bin_ = counters.get((counter, (vip, proto, sk.port, mark_of(rs.address))), (0, 0))
                stats[(sk, rs.key)] = RealServerStats(in_packets=pin, in_bytes=bin_)
