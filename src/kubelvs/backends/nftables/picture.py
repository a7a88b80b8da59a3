"""The nftables backend's picture of its two tables (nftables backend): what a read
found, what the next apply must rewrite or repair, and the reading itself.

The picture stores the *model* of each service, not its elements: the elements are a
pure function of it (``elements.service_elements``) and are recomputed for the few
services a later plan touches. Only services whose kernel elements differ from their
model (edited by hand, or elements of no service) keep their actual elements, in
``actual``; the next apply rewrites those.

A read also notices damage to what is not the model: a missing table, set, map or
chain, a chain that lost rules (``schema.Found``), DR neighbour elements that are
incomplete or name a device that is gone, ct timeout objects without their rules. The
next apply makes it whole (``transaction.build``), even when its plan is empty.

Reads go straight to the kernel over nfnetlink (netlink.py) and are bracketed by the
ruleset generation: ``nft -j list`` of 10,000 services cost ~6 s of nft and JSON.
"""

from __future__ import annotations

import ipaddress
import socket
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TypeAlias

from ...errors import BackendError
from ...kernel.netns import entered
from ...model import Forward, ObservedState, ServiceKey, VirtualService
from . import tunnel
from .elements import (
    PROTO_TEXT,
    Layout,
    Neighbour,
    ip_of,
    ip_text,
    layout,
    mark_of,
    service_elements,
    service_key,
)
from .netlink import NftNetlink, RawElement
from .readback import ParsedTables, decode_counters, parse_raw, stats_of
from .schema import (
    COUNTER_SETS,
    DEVICE_CHAIN_RULES,
    FAMILIES,
    NAT_FAMILIES,
    NAT_FAMILY,
    NAT_TABLE_RULES,
    NEIGHBOUR_SETS,
    PER_SERVICE_SETS,
    SETS,
    TABLE,
    TABLE_COMMENTS,
    TIMEOUT_OBJECTS,
    VERSIONS,
    Element,
    Found,
    delete_nat_table_text,
    device_chain_name,
    nat_entry_table,
    nat_table_chain,
    nat_table_map,
    nat_table_text,
    needs_rebuild,
    parse_nat_table_chain,
    parse_nat_table_map,
    repair_text,
)
from .slottables import SPACES, Content, NatRead, NatTable, SlotTables, TableSpaces

__all__ = ["Picture", "load", "read_counters", "read_tables", "stale_counters"]

#: What a read takes from the kernel: per family the chains, the table comment and the
#: rule counts; raw elements per set; ct timeout policies.
_Dumped: TypeAlias = tuple[
    dict[str, list[tuple[str, str | None]]],
    dict[str, str],
    dict[str, dict[str, int]],
    dict[tuple[str, str], list[RawElement]],
    dict[tuple[str, str], dict[int, int]],
]


@dataclass
class Picture:
    """What the kubelvs tables hold, as of the last read or successful apply."""

    state: ObservedState
    found: Found  # the fixed part of the tables (and the ingress hooks) as it is
    # Services whose kernel elements are not service_elements(state.services[key], ...) -
    # edited by hand, unbuildable, or elements of no service: their actual elements,
    # rewritten by the next apply. Every other service's elements follow from its model.
    actual: dict[ServiceKey, frozenset[Element]] = field(default_factory=dict)
    # Counter elements (made by the packet path) per (VIP, proto) as of the last read,
    # and those whose real server was already gone then.
    counters: dict[tuple[str | int, str | int], set[Element]] = field(default_factory=dict)
    stale: set[Element] = field(default_factory=set)
    dr_of: dict[ServiceKey, frozenset[str]] = field(default_factory=dict)  # DR services only
    # layout(services[key]) of the services that have one, kept from the read or the apply
    # that wrote them: the next change of a service diffs against it without laying it
    # out again (a node change touches every Service).
    layouts: dict[ServiceKey, Layout] = field(default_factory=dict)
    dr_refs: Counter[str] = field(default_factory=Counter)  # DR real server -> services using it
    neighbours: dict[str, Neighbour] = field(default_factory=dict)  # complete, on a device that exists
    strays: set[Element] = field(default_factory=set)  # other neighbour elements: deleted by the next apply
    device_chains: dict[int, str] = field(default_factory=dict)  # ingress hooks: ifindex -> device
    # NAT tables made again whole by the next apply (schema.needs_rebuild)
    rebuild: frozenset[str] = frozenset()
    tunnels: tunnel.TunnelState = field(default_factory=tunnel.TunnelState)  # TUN: IPIP devices, tun_dev
    tables: TableSpaces = field(default_factory=TableSpaces)  # the shared slot tables
    # The ruleset generation this picture is exact for (None: unknown). Every committed
    # nftables transaction in the namespace, anyone's, increments it; as long as it has
    # not moved, the tables are as pictured and a read only needs the counters.
    genid: int | None = None

    @property
    def services(self) -> Mapping[ServiceKey, VirtualService]:
        return self.state.services

    def damaged(self) -> bool:
        """Something of the fixed part, of the ingress hooks or of the neighbour elements
        is missing or broken (the next apply repairs it)."""
        if self.strays or self.tables.damaged() or repair_text(self.found, tun=self.found.has_tun()):
            return True
        return any(
            self.found.rules.get(("netdev", device_chain_name(i))) != DEVICE_CHAIN_RULES
            for i in self.device_chains
        )


def _dump(nl: NftNetlink) -> _Dumped:
    chains: dict[str, list[tuple[str, str | None]]] = {}
    comments: dict[str, str] = {}
    rules: dict[str, dict[str, int]] = {}
    sets: dict[tuple[str, str], list[RawElement]] = {}
    policies: dict[tuple[str, str], dict[int, int]] = {}
    for family in FAMILIES:
        comment = nl.table_comment(family, TABLE)
        if comment is None:
            continue
        comments[family] = comment
        chains[family] = nl.chains(family, TABLE)
        rules[family] = nl.rule_counts(family, TABLE)
        version = VERSIONS[family]
        if not any(name == version for name, _ in chains[family]) and comment != TABLE_COMMENTS[family]:
            continue  # not ours: refused by ``load``, its elements are not even read
        names = list(SETS[family])
        if family in NAT_FAMILIES:  # and the maps of its shared tables
            names += sorted(n for n in nl.set_names(family, TABLE) if parse_nat_table_map(n) is not None)
        for name in names:
            raws = nl.elements(family, TABLE, name)
            if raws is not None:
                sets[(family, name)] = raws
        if family in NAT_FAMILIES:
            for name in TIMEOUT_OBJECTS:
                policy = nl.ct_timeout(family, TABLE, name)
                if policy is not None:
                    policies[(family, name)] = policy
    return chains, comments, rules, sets, policies


def read_tables(nl: NftNetlink, netns: str | None) -> tuple[ParsedTables, Found, int]:
    """Both tables as the kernel holds them, read consistently (repeated if the ruleset
    changed meanwhile), what was found of their fixed part, and the generation read.
    Raises BackendError for a table of our name that is not ours (never touched)."""
    with entered(netns):
        ifnames = dict(socket.if_nameindex())
    (chains, comments, rules, sets, policies), genid = nl.consistent(lambda: _dump(nl))
    try:
        parsed = parse_raw(chains, sets, policies, ifnames, comments)
    except ValueError as exc:
        raise BackendError(f"reading the {TABLE} tables: {exc}") from exc
    for family, version in parsed.tables.items():
        if version != VERSIONS[family]:
            raise BackendError(
                f"table {family} {TABLE} was not made by this version of kubelvs"
                f" (no {VERSIONS[family]} marker chain"
                f"{'; it has ' + version + ', an earlier version' if version else ''});"
                f" remove it with: nft delete table {family} {TABLE}"
            )
    found = Found(
        tables=frozenset(parsed.tables),
        sets=frozenset(sets),
        rules={
            (family, name): rules[family].get(name, 0)
            for family, members in chains.items()
            for name, _ in members
        },
        objects=frozenset(policies),
    )
    return parsed, found, genid


def load(nl: NftNetlink, netns: str | None) -> Picture:
    """A new picture of both tables from the kernel (``read_tables``)."""
    parsed, found, genid = read_tables(nl, netns)
    with entered(netns):
        ifindex = {name: index for index, name in socket.if_nameindex()}
    return _picture(parsed, found, genid, netns, ifindex)


def _picture(
    parsed: ParsedTables, found: Found, genid: int, netns: str | None, ifindex: Mapping[str, int]
) -> Picture:
    rebuild = needs_rebuild(found)
    for family in rebuild:
        # Pictured as the next apply leaves it before it adds anything: without that NAT
        # table. Its services are still read as they are (a plan does not change them);
        # their elements, timeouts and counters are gone, and are written anew.
        found = found.without(family)
        parsed.by_set = {
            name: [e for e in items if e.family != family] for name, items in parsed.by_set.items()
        }
    # Timeouts count only when their objects and the rules attaching them are all there;
    # otherwise the next SetTimeouts replaces whatever is left.
    timeouts = parsed.timeouts if found.timeouts_whole() else None
    state = ObservedState(services=parsed.services, timeouts=timeouts, stats=parsed.stats)
    pic = Picture(state=state, found=found, genid=genid, rebuild=rebuild)
    pic.device_chains = dict(parsed.device_chains)
    # The kernel's per-service elements against what the services' models imply, as
    # two sets at once (grouping 110,000 elements per service first cost more than
    # all the rest); only the services on either side of a difference are looked at.
    # A DR service (or a NAT one on a shared table) is expected to name the table that
    # holds its slots: which table that is depends on what every service expects
    # (slottables.SlotTables.read), so its ``dr_tab`` element (its ``nat_svc`` element,
    # which goes to the table's chain) is first built naming table 0 (never used) and
    # then corrected.
    expected: set[Element] = set()
    contents: dict[ServiceKey, Content] = {}
    for key, svc in parsed.services.items():
        try:
            lay = layout(svc)
            built = service_elements(svc, _no_table_yet, lay)
        except ValueError:
            pic.actual[key] = frozenset()  # filled below: rewritten (or removed) at the next apply
            continue
        pic.layouts[key] = lay
        expected.update(built.own)
        if lay.content is not None:
            contents[key] = lay.content
        if built.dr_addresses:
            pic.dr_of[key] = built.dr_addresses
            pic.dr_refs.update(built.dr_addresses)
    named: dict[ServiceKey, tuple[str, int]] = {  # service -> (space, table it names)
        service_key(e.key): ("netdev", int(e.value))
        for e in [*parsed.by_set.get("dr_tab", ()), *parsed.by_set.get("dr6_tab", ())]
    }
    for e in parsed.by_set.get("nat_svc", ()):
        if (chain := nat_entry_table(e.value)) is not None:
            named[service_key(e.key)] = (e.family, chain[1])
    wanted: dict[str, dict[int, list[Content]]] = {space: {} for space in SPACES}
    for key, content in contents.items():
        if (space_table := named.get(key)) is not None:
            wanted[space_table[0]].setdefault(space_table[1], []).append(content)
    nat = _nat_tables(parsed, found)
    weights = parsed.by_set.get("nat_weights", ())
    tables = TableSpaces(
        {
            "netdev": SlotTables.read(
                parsed.by_set.get("dr_slots", ()), parsed.by_set.get("dr_weights", ()), wanted["netdev"]
            ),
            **{
                family: SlotTables.read(
                    (),
                    [e for e in weights if e.family == family],
                    wanted[family],
                    nat.get(family, {}),
                    {tid for space, tid in named.values() if space == family},
                )
                for family in NAT_FAMILIES
            },
        }
    )
    for key, content in contents.items():
        head = (ip_text(key.address), PROTO_TEXT[key.protocol], key.port)  # type: ignore[arg-type]
        if content.nat is not None:  # a shared NAT table: the service's entry goes to its chain
            base = content.nat.chain
            family = NAT_FAMILY[key.family]
            expected.discard(Element(family, "nat_svc", head, f"goto {nat_table_chain(base, 0)}"))
            entry = f"goto {nat_table_chain(base, tables.lookup(content))}"
            expected.add(Element(family, "nat_svc", head, entry))
            continue
        tab = "dr_tab" if key.family == 4 else "dr6_tab"
        expected.discard(Element("netdev", tab, head, 0))
        expected.add(Element("netdev", tab, head, tables.lookup(content)))
    for space, tid in named.values():
        tables.spaces[space].use(tid)
    pic.tables = tables
    present = {e for name in PER_SERVICE_SETS for e in parsed.by_set.get(name, ())}
    differ = present.symmetric_difference(expected)
    if differ or pic.actual:
        # e.g. slots edited by hand, or elements of no service: rewritten at the next apply
        dirty = {service_key(e.key[:3]) for e in differ} | set(pic.actual)
        actual: dict[ServiceKey, set[Element]] = {key: set() for key in dirty}
        for e in present:
            found_elements = actual.get(service_key(e.key[:3]))
            if found_elements is not None:
                found_elements.add(e)
        pic.actual = {key: frozenset(elements) for key, elements in actual.items()}
    counters = {e for name in COUNTER_SETS for e in parsed.by_set.get(name, ())}
    for e in counters:
        pic.counters.setdefault((e.key[0], e.key[1]), set()).add(e)
    pic.stale = stale_counters(counters, state.services, state.services.keys()) if counters else set()
    _neighbours(pic, parsed, ifindex)
    pic.tunnels = tunnel.TunnelState.load(netns, parsed.by_set, parsed.services)
    return pic


def _nat_tables(parsed: ParsedTables, found: Found) -> dict[str, dict[int, NatRead]]:
    """The shared NAT tables a read found, per family, whole or not: a chain
    (``nat_mh_t3``) with its rules and its map (``nat_tab_3``)."""
    chains: dict[tuple[str, int], list[str]] = {}
    for family, name in found.rules:
        if family in NAT_FAMILIES and (chain := parse_nat_table_chain(name)) is not None:
            chains.setdefault((family, chain[1]), []).append(name)
    maps = {
        (family, tid)
        for family, name in found.sets
        if family in NAT_FAMILIES and (tid := parse_nat_table_map(name)) is not None
    }
    out: dict[str, dict[int, NatRead]] = {}
    for family, tid in chains.keys() | maps:
        names, has_map = chains.get((family, tid), []), (family, tid) in maps
        delete = "".join(delete_nat_table_text(family, name, tid, has_map=False) for name in names)
        delete += delete_nat_table_text(family, None, tid) if has_map else ""
        if len(names) != 1:
            out.setdefault(family, {})[tid] = NatRead(None, {}, "", delete)  # no chain, or two: deleted
            continue
        base = names[0].rpartition("_t")[0]
        members = [e for e in parsed.by_set.get(nat_table_map(tid), ()) if e.family == family]
        slots = {int(e.key[0]): int(ip_of(str(e.value))) for e in members}
        whole = has_map and found.rules[(family, names[0])] == NAT_TABLE_RULES
        fix = "" if whole else nat_table_text(family, base, tid, fix=(has_map, True))
        out.setdefault(family, {})[tid] = NatRead(NatTable(family, base), slots, fix, delete)
    return out


def _no_table_yet(content: Content) -> int:
    return 0  # table 0 is never used: corrected once the tables are read


def _neighbours(pic: Picture, parsed: ParsedTables, ifindex: Mapping[str, int]) -> None:
    """A DR real server's neighbour is known when all its elements are there (IPv6: and
    its id is that of the address ``dr6_addr`` names) and its device exists; any other
    neighbour element is a stray, deleted (and the real server resolved again) by the
    next apply."""
    for version, names in NEIGHBOUR_SETS.items():
        prefix = "dr_" if version == 4 else "dr6_"
        by_mark: dict[int, dict[str, Element]] = {}
        for name in names:
            for e in parsed.by_set.get(name, ()):
                by_mark.setdefault(int(e.key[0]), {})[e.set] = e
        for mark, members in by_mark.items():
            device = members.get(f"{prefix}dev")
            rip = _neighbour_address(version, mark, members.get("dr6_addr"))
            if (
                set(members) == names
                and rip is not None
                and device is not None
                and str(device.value) in ifindex
            ):
                pic.neighbours[rip] = Neighbour(
                    mac=str(members[f"{prefix}mac"].value),
                    own_mac=str(members[f"{prefix}smac"].value),
                    device=str(device.value),
                    ifindex=ifindex[str(device.value)],
                )
            else:
                pic.strays.update(members.values())


def _neighbour_address(version: int, mark: int, named: Element | None) -> str | None:
    """The real server a neighbour mark stands for (None: no address, or not its id)."""
    if version == 4:
        return str(ipaddress.IPv4Address(mark))
    try:
        address = ipaddress.IPv6Address(str(named.value)) if named is not None else None
    except ValueError:
        return None
    return ip_text(address) if address is not None and mark_of(address) == mark else None


_COUNTER_SETS = tuple((family, name) for family in FAMILIES for name in SETS[family] if name in COUNTER_SETS)


def read_counters(nl: NftNetlink, pic: Picture) -> bool:
    """Update the picture's counters (the only thing that moves while the ruleset
    generation does not); False when the generation moved meanwhile (read it all)."""

    def dump() -> dict[tuple[str, str], list[RawElement]]:
        sets: dict[tuple[str, str], list[RawElement]] = {}
        for family, name in _COUNTER_SETS:
            raws = nl.elements(family, TABLE, name)
            if raws is not None:
                sets[(family, name)] = raws
        return sets

    sets, genid = nl.consistent(dump)
    if genid != pic.genid:
        return False
    elements, counters = decode_counters(sets)
    pic.state = ObservedState(
        services=pic.state.services, timeouts=pic.state.timeouts, stats=stats_of(pic.state.services, counters)
    )
    pic.counters = {}
    for e in elements:
        pic.counters.setdefault((e.key[0], e.key[1]), set()).add(e)
    pic.stale = (
        stale_counters(set(elements), pic.state.services, pic.state.services.keys()) if elements else set()
    )
    return True


def stale_counters(
    counters: set[Element], services: Mapping[ServiceKey, VirtualService], keys: Iterable[ServiceKey]
) -> set[Element]:
    """Counter elements (made by the packet path) of real servers that no longer exist:
    NAT ``VIP . proto . RIP . RPORT``, DR ``VIP . proto . port . RIP``. ``keys``: the
    services that can own them (at least all on the counters' VIPs)."""
    live: set[tuple[str | int, ...]] = set()
    vips = {(c.key[0], c.key[1]) for c in counters}
    for key in keys:
        if key.address is None:
            continue
        vip, proto = ip_text(key.address), str(key.protocol)
        if (vip, proto) in vips:
            for rs in services[key].realservers:
                if rs.forward is Forward.NAT:
                    live.add((vip, proto, ip_text(rs.address), rs.port))
                else:
                    live.add((vip, proto, key.port, mark_of(rs.address)))
    return {c for c in counters if c.key not in live}
