"""A service as nftables map elements (nftables backend, pure): the layout of one
service's elements, rendered either as ``Element`` tuples (the input of a diff) or
straight to nft text (the cold-sync path), and element texts grouped into ``add
element``/``delete element`` lines.

A service is nothing but elements of the maps schema.py declares: its entry in
``nat_svc``/``dr_svc`` (``goto`` the scheduler chain), its slots (wrr order or Maglev
table, maglev.py: DR one ``dr_tab`` element naming a shared table of slots and weights,
slottables.py; an sh/mh NAT service whose real servers use one port, a shared table too,
whose chain its ``nat_svc`` element goes to, and its port in ``nat_rport``; any other NAT
service one ``nat_slots`` element per slot), a ``*_rs`` element for each real server those cannot
describe, and for TUN its key in ``tun_svc``. DR real servers also need neighbour
elements (``dr_mac``/``dr_smac``/``dr_dev``), shared by every service that has them.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import socket
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from ...model import Forward, Protocol, RealServer, ServiceKey, VirtualService
from .maglev import MAGLEV_SIZE, maglev_table, wrr_table
from .schema import NAT_FAMILY, SUPPORTED_SCHEDULERS, TABLE, Element, Value, nat_table_chain, scheduler_chain
from .slottables import Content, NatTable

__all__ = [
    "PROTO_TEXT",
    "Layout",
    "Neighbour",
    "ServiceElements",
    "TableFor",
    "dr_changes",
    "elements_text",
    "group_elements",
    "ip_of",
    "ip_text",
    "layout",
    "mark_address",
    "mark_of",
    "neighbour_elements",
    "owner_names",
    "render_groups",
    "service_elements",
    "service_forward",
    "service_key",
    "service_text",
    "shares_nat_table",
    "slot_order",
]

_CHUNK = 20000  # elements per ``add element`` line: the size the notes measured


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
        raise ValueError(
            f"service {svc.key}: forwarding method {method} is not supported by the nftables backend"
        )
    return method


class Layout(NamedTuple):
    """What both renderings of a service (Element tuples, nft text) are made of
    (``layout``)."""

    kind: str  # "nat", "dr" or "dr6" (DR over IPv6)
    family: str
    vip: str
    proto: str
    port: int
    chain: str
    # slot -> owner's name: "RIP", or "RIP:RPORT" for NAT slots of its own; None = empty
    table: Sequence[str | None]
    by_name: Mapping[str, tuple[RealServer, str]]  # owner's name -> (real server, RIP text)
    # The shared table (slots, weights) it names (None: no slots, or NAT slots of its own)
    content: Content | None
    # The real servers the slots cannot describe (NAT: not weight 1 or no slot; DR: on
    # another port than the VIP's, or no table): one ``*_rs`` element each, its key after
    # ``VIP . proto . port`` (NAT: RIP . RPORT, DR: the mark) and its value (NAT: weight,
    # DR: RPORT . weight). A DR table holds the weights its slots do not say.
    explicit: tuple[tuple[tuple[str | int, ...], Value], ...]
    dr_addresses: frozenset[str]  # DR real servers that need neighbour elements (TUN: none)
    tun: bool  # the DR path, marked for tun_out (tun_svc); tunnels instead of neighbours


class _Owners(NamedTuple):
    """The part of a layout that a service's real servers decide, given its scheduler and
    port (``_owners``): the same for every Service of a cluster that has the same nodes."""

    table: Sequence[str | None]
    by_name: Mapping[str, tuple[RealServer, str]]
    content: Content | None
    explicit: tuple[tuple[tuple[str | int, ...], Value], ...]
    dr_addresses: frozenset[str]
    tun: bool


#: Shared tables computed and kept (``_dr_table``, ``_nat_table``): a cluster has few
#: distinct ones. NAT tables of services on several ports carry their ports: never kept.
_ORDER_CACHE = 1024


def slot_order(scheduler: str, weights: Mapping[str, int]) -> Sequence[str | None]:
    """The slot table of a service of ``scheduler`` whose owners have ``weights`` (name ->
    weight): the wrr order (rr, wrr) or the Maglev table (sh, mh); empty when no owner
    takes new flows. The backend and ``explain``'s prediction both use it."""
    if scheduler in ("rr", "wrr"):
        return wrr_table(weights, weighted=scheduler == "wrr")
    table = maglev_table(weights, MAGLEV_SIZE)
    return table if any(table) else []


@functools.lru_cache(maxsize=_ORDER_CACHE)
def _dr_table(
    scheduler: str, weights: tuple[tuple[str, int], ...]
) -> tuple[Sequence[str | None], Content | None]:
    """A DR service's slots by owner (address), and its table: the slots as marks, and the
    weights they do not say (weight 0, or other than 1)."""
    table = slot_order(scheduler, dict(weights))
    if not table:
        return table, None
    marks = {name: mark_of(ip_of(name)) for name, _ in weights}
    slotted = set(table)
    return table, Content(
        (marks[name] for name in table if name),
        ((marks[name], weight) for name, weight in weights if weight != 1 or name not in slotted),
    )


@functools.lru_cache(maxsize=_ORDER_CACHE)
def _nat_table(
    scheduler: str, flags: frozenset[str], family: int, weights: tuple[tuple[str, int], ...]
) -> tuple[Sequence[str | None], Content | None]:
    """A shared NAT table: its slots by owner (address), and its content (the owners'
    addresses as integers, and where the table lives: the family and the chain that
    DNATs with it)."""
    table = slot_order(scheduler, dict(weights))
    if not table:
        return table, None
    marks = {name: int(ip_of(name)) for name, _ in weights}
    slotted = set(table)
    nat = NatTable(NAT_FAMILY[family], scheduler_chain("nat", scheduler, flags, len(table)))
    return table, Content(
        (marks[name] for name in table if name),
        ((marks[name], weight) for name, weight in weights if weight != 1 or name not in slotted),
        nat,
    )


def shares_nat_table(scheduler: str, rss: Sequence[RealServer]) -> bool:
    """A NAT service's slots are a shared table when it hashes into 509 slots (sh, mh)
    and its real servers use one port. rr and wrr keep their few slots (at most 64) per
    service: a table is a map and a chain of its own, one more of each for every service
    whose real servers no other service has, and 10,000 chains cost nft 9x more than
    elements (bench/results/nft_sync.md)."""
    return scheduler in ("sh", "mh") and bool(rss) and all(rs.port == rss[0].port for rs in rss)


def owner_names(svc: VirtualService) -> dict[str, RealServer]:
    """The real servers of ``svc`` by the names its slot table gives them: their
    addresses, or "RIP:RPORT" for a NAT service that has slots of its own.
    ``explain``'s prediction uses them."""
    rss = svc.realservers
    if rss and rss[0].forward is Forward.NAT and not shares_nat_table(svc.scheduler, rss):
        return {f"{ip_text(rs.address)}:{rs.port}": rs for rs in rss}
    return {ip_text(rs.address): rs for rs in rss}


def layout(svc: VirtualService) -> Layout:
    """What ``service_elements`` and ``service_text`` render ``svc`` from (its slots, its
    table's content): a transaction lays each service out once and passes it to both.
    ValueError when the backend cannot represent ``svc``."""
    global _last_dr
    key = svc.key
    if key.fwmark or key.address is None:
        raise ValueError(f"service {key}: only address services are supported by the nftables backend")
    if svc.scheduler not in SUPPORTED_SCHEDULERS:
        raise ValueError(
            f"service {key}: scheduler {svc.scheduler!r} is not supported by the nftables backend"
        )
    rss = svc.realservers
    forward = rss[0].forward if rss else Forward.NAT
    if forward is Forward.NAT:
        owners = _nat_owners(svc.scheduler, svc.flags, key.family, rss)
    elif forward is Forward.DR or forward is Forward.TUN:
        # Kept: a node change makes every Service's real servers the same new tuple, laid
        # out for one Service after another (the last one by identity: no tuple hashed).
        last = _last_dr
        if last[0] is rss and last[1] == svc.scheduler and last[2] == key.port:
            owners = last[3]
        else:
            owners = _dr_owners(svc.scheduler, key.port, rss, forward)
            _last_dr = (rss, svc.scheduler, key.port, owners)
    else:
        owners = None
    if owners is None:
        service_forward(svc)  # raises: what is wrong with the forwarding methods
        raise AssertionError(f"service {key}: service_forward accepted {forward}")
    kind = "nat" if forward is Forward.NAT else "dr" if key.family == 4 else "dr6"
    return Layout(
        kind,
        NAT_FAMILY[key.family] if kind == "nat" else "netdev",
        ip_text(key.address),
        PROTO_TEXT[key.protocol],
        key.port,
        scheduler_chain(kind, svc.scheduler, svc.flags, len(owners.table)),
        *owners,
    )


def _owners(scheduler: str, port: int, rss: tuple[RealServer, ...], forward: Forward) -> _Owners | None:
    """``rss``'s part of a layout, all forwarded by ``forward`` (None when they are not)."""
    nat = forward is Forward.NAT
    # One pass: each real server's address is formatted once (str(IPv4Address) is slow).
    ntoa, IPv4 = socket.inet_ntoa, ipaddress.IPv4Address
    by_name: dict[str, tuple[RealServer, str]] = {}
    weights: dict[str, int] = {}
    for rs in rss:
        if rs.forward is not forward:
            return None
        address = rs.address
        rip = (
            ntoa(int(address).to_bytes(4, "big")) if type(address) is IPv4 else str(address)
        )  # ip_text, inlined
        # DR owners are addresses (the port is the VIP's), so that services on other
        # ports with the same real servers share a table.
        name = f"{rip}:{rs.port}" if nat else rip
        by_name[name] = (rs, rip)
        weights[name] = rs.weight
    content: Content | None = None
    if nat:
        table = slot_order(scheduler, weights)
    else:
        table, content = _dr_table(scheduler, tuple(sorted(weights.items())))
    in_table = set(table)
    explicit: list[tuple[tuple[str | int, ...], Value]] = []
    for name, (rs, rip) in by_name.items():
        if nat and rs.weight == 1 and name in in_table:
            continue  # the slots say all there is to know about it
        if not nat and content is not None and rs.port == port:
            continue  # the table does: its slots and weights
        explicit.append(
            ((rip, rs.port), rs.weight) if nat else ((mark_of(rs.address),), (rs.port, rs.weight))
        )
    tun = forward is Forward.TUN
    dr_addresses = frozenset() if nat or tun else frozenset(by_name)
    return _Owners(table, by_name, content, tuple(explicit), dr_addresses, tun)


def _nat_owners(
    scheduler: str, flags: frozenset[str], family: int, rss: tuple[RealServer, ...]
) -> _Owners | None:
    """The owners of a NAT service: on a shared table (``shares_nat_table``: named by
    address, the port in ``nat_rport``), else its own slots (``_owners``)."""
    port = rss[0].port if rss else -1
    if not shares_nat_table(scheduler, rss):
        return _owners(scheduler, port, rss, Forward.NAT)
    by_name: dict[str, tuple[RealServer, str]] = {}
    for rs in rss:
        if rs.forward is not Forward.NAT:
            return None
        rip = ip_text(rs.address)
        by_name[rip] = (rs, rip)
    weights = tuple(sorted((name, rs.weight) for name, (rs, _) in by_name.items()))
    table, content = _nat_table(scheduler, flags, family, weights)
    if content is None:  # no slots: every real server in nat_rs (the service's own layout)
        return _owners(scheduler, port, rss, Forward.NAT)
    return _Owners(table, by_name, content, (), frozenset(), False)


#: DR owners, kept: NAT owners carry each Service's NodePorts (all distinct), DR ones the
#: nodes' addresses, so a cluster has few distinct ones (and shares their tuple:
#: model.shared_realservers).
_dr_owners = functools.lru_cache(maxsize=_ORDER_CACHE)(_owners)
_last_dr: tuple[tuple[RealServer, ...], str, int, _Owners | None] = ((), "", -1, None)


#: The table a service's slots are in, given their content (slottables.TableChange.acquire
#: when writing, SlotTables.lookup when comparing a read with the model).
TableFor = Callable[[Content], int]


def service_elements(svc: VirtualService, table_for: TableFor, lay: Layout | None = None) -> ServiceElements:
    """Every element that represents ``svc`` (pure; the input of the diff in the backend),
    its DR slots as the table ``table_for`` gives for them (their elements are the
    table's, not the service's). ``service_text`` renders the same elements straight to
    nft text. ``lay``: ``layout(svc)``, when the caller has it already."""
    lay = lay or layout(svc)
    kind, family = lay.kind, lay.family
    prefix = (lay.vip, lay.proto, lay.port)
    if kind == "nat" and lay.content is not None:
        # A shared NAT table: its chain is the service's entry, its port is in nat_rport.
        chain = nat_table_chain(lay.chain, table_for(lay.content))
        port = next(iter(lay.by_name.values()))[0].port
        entry = Element(family, "nat_svc", prefix, f"goto {chain}")
        return ServiceElements(
            frozenset((entry, Element(family, "nat_rport", prefix, port))), lay.dr_addresses
        )
    own: list[Element] = [Element(family, f"{kind}_svc", prefix, f"goto {lay.chain}")]
    if kind == "nat":
        own += [
            Element(family, "nat_slots", (*prefix, slot), (lay.by_name[name][1], lay.by_name[name][0].port))
            for slot, name in enumerate(lay.table)
            if name
        ]
    elif lay.content is not None:
        own.append(Element(family, f"{kind}_tab", prefix, table_for(lay.content)))
    if lay.explicit:
        rs_set = f"{kind}_rs"
        own += [Element(family, rs_set, (*prefix, *tail), value) for tail, value in lay.explicit]
    if lay.tun:
        own.append(Element(family, _TUN_SET[kind], prefix))
    return ServiceElements(frozenset(own), lay.dr_addresses)


_TUN_SET = {"dr": "tun_svc", "dr6": "tun6_svc"}  # a DR kind's set of the services that tunnel


def dr_changes(
    old: Layout, old_table: int | None, new: Layout, new_table: int | None
) -> tuple[list[Element], list[Element]]:
    """(deletes, adds) that turn the elements of a DR service laid out as ``old``, naming
    table ``old_table``, into those of ``new`` (same service key) naming ``new_table``:
    what the difference of their ``service_elements`` would be, without building either.
    A node change edits every Service: most of them differ in one ``*_rs`` element."""
    kind, family = new.kind, new.family
    prefix = (new.vip, new.proto, new.port)
    deletes: list[Element] = []
    adds: list[Element] = []
    if old.chain != new.chain:
        deletes.append(Element(family, f"{kind}_svc", prefix, f"goto {old.chain}"))
        adds.append(Element(family, f"{kind}_svc", prefix, f"goto {new.chain}"))
    if old_table != new_table:
        if old_table is not None:
            deletes.append(Element(family, f"{kind}_tab", prefix, old_table))
        if new_table is not None:
            adds.append(Element(family, f"{kind}_tab", prefix, new_table))
    if old.explicit is not new.explicit and old.explicit != new.explicit:
        rs_set = f"{kind}_rs"
        before, after = set(old.explicit), set(new.explicit)
        deletes += [Element(family, rs_set, (*prefix, *tail), value) for tail, value in before - after]
        adds += [Element(family, rs_set, (*prefix, *tail), value) for tail, value in after - before]
    if old.tun != new.tun:
        (adds if new.tun else deletes).append(Element(family, _TUN_SET[kind], prefix))
    return deletes, adds


def service_text(
    svc: VirtualService,
    out: dict[tuple[str, str], list[str]],
    table_for: TableFor,
    lay: Layout | None = None,
) -> frozenset[str]:
    """Append the nft text of every element of ``svc`` (what ``elements_text("add",
    service_elements(svc, table_for).own)`` would write, element for element) to
    ``out[(family, set)]``; return the DR real servers that need neighbour elements.

    The cold-sync path: no Element tuples, no sets to hash, one f-string per element
    (10,000 services x 10 real servers went from ~0.8 s to ~0.1 s)."""
    lay = lay or layout(svc)
    kind, family, port = lay.kind, lay.family, lay.port
    prefix = f"{lay.vip} . {lay.proto} . {port}"
    if kind == "nat" and lay.content is not None:  # a shared NAT table (service_elements)
        chain = nat_table_chain(lay.chain, table_for(lay.content))
        _list(out, family, "nat_svc").append(f"{prefix} : goto {chain}")
        _list(out, family, "nat_rport").append(f"{prefix} : {next(iter(lay.by_name.values()))[0].port}")
        return lay.dr_addresses
    _list(out, family, f"{kind}_svc").append(f"{prefix} : goto {lay.chain}")
    if kind == "nat":
        values = {name: f"{rip} . {rs.port}" for name, (rs, rip) in lay.by_name.items()}
        slots = [f"{prefix} . {slot} : {values[name]}" for slot, name in enumerate(lay.table) if name]
        if slots:
            _list(out, family, "nat_slots").extend(slots)
    elif lay.content is not None:
        _list(out, family, f"{kind}_tab").append(f"{prefix} : {table_for(lay.content)}")
    if lay.explicit:
        rs_set = f"{kind}_rs"
        _list(out, family, rs_set).extend(
            f"{prefix} . {' . '.join(map(str, tail))} : {_fmt_value(rs_set, value)}"
            for tail, value in lay.explicit
        )
    if lay.tun:
        _list(out, family, _TUN_SET[kind]).append(prefix)
    return lay.dr_addresses


def _list(out: dict[tuple[str, str], list[str]], family: str, name: str) -> list[str]:
    found = out.get((family, name))
    if found is None:
        found = out[(family, name)] = []
    return found


#: Protocol -> nft's name for it (a plain str: a StrEnum member hashes differently).
PROTO_TEXT = {p: str(p.value) for p in Protocol}


def ip_text(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """The address as nft writes it. str(IPv4Address) formats in Python (~1 us), a
    sizeable part of rendering 110,000 elements; inet_ntoa is C."""
    if type(address) is ipaddress.IPv4Address:
        return socket.inet_ntoa(int(address).to_bytes(4, "big"))
    return str(address)


def neighbour_elements(rip: str, nb: Neighbour) -> frozenset[Element]:
    address = ip_of(rip)
    mark = mark_of(address)
    dr = "dr" if address.version == 4 else "dr6"
    elements = {
        Element("netdev", f"{dr}_mac", (mark,), nb.mac),
        Element("netdev", f"{dr}_smac", (mark,), nb.own_mac),
        Element("netdev", f"{dr}_dev", (mark,), nb.device),
    }
    if address.version == 6:  # the id back to the address it stands for
        elements.add(Element("netdev", "dr6_addr", (mark,), rip))
    return frozenset(elements)


_DEVICE_MAPS = frozenset({"dr_dev", "tun_dev", "dr6_dev", "tun6_dev"})  # values: interface names


def _fmt_value(set_name: str, value: Value) -> str:
    if isinstance(value, tuple):
        return " . ".join(map(str, value))
    if set_name in _DEVICE_MAPS:
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


@functools.lru_cache(maxsize=1 << 16)
def mark_address(mark: int) -> str:
    """The real server address an IPv4 DR mark (the RIP as u32) stands for."""
    return str(ipaddress.IPv4Address(mark))


def mark_of(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> int:
    """The DR mark of a real server: its IPv4 address as u32, or for IPv6 its id, 32 bits
    of a hash of the address: the same on every director (their tables must be equal),
    and which address it stands for is kept in ``dr6_addr``. Two real servers whose ids
    collide cannot both be used (transaction.build reports the second)."""
    if type(address) is ipaddress.IPv4Address:
        return int(address)
    return _id6(address.packed)


@functools.lru_cache(maxsize=1 << 16)
def _id6(packed: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(packed, digest_size=4).digest(), "big")


@functools.lru_cache(maxsize=1 << 16)
def ip_of(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address as nft writes it, parsed (cached: a read meets each one many times)."""
    try:  # ipaddress parses a string in Python, several times slower than inet_pton (as strict)
        return ipaddress.IPv4Address(socket.inet_pton(socket.AF_INET, text))
    except OSError:
        return ipaddress.ip_address(text)  # raises ValueError naming the text


@functools.lru_cache(maxsize=1 << 16)
def service_key(key: tuple[str | int, ...]) -> ServiceKey:
    """The ServiceKey of an element key's ``VIP . proto . port`` (cached: a read meets each
    service once per slot)."""
    vip, proto, port = key
    address = ip_of(str(vip))
    return ServiceKey(address.version, Protocol(str(proto)), address, int(port))
