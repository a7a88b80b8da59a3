"""One plan (or part of one) as ONE nft transaction (nftables backend).

``build`` turns the picture and the operations to apply into the transaction's text
and everything the picture becomes once it is committed. The next state of the
services the plan touches is the planner's own reference semantics
(``planner.apply_ops_in_place``, on a copy of just those services); their elements
are diffed against what the picture says the kernel holds, so a one-real-server change
with 10,000 services present is a transaction of a few elements. A new service has
nothing to diff against: it is rendered straight to text (the cold-sync path).

Around the elements the transaction makes whole whatever the last read found missing
(schema.repair_text), the ingress hook on every device a DR or TUN real server is
reached through, the neighbour elements of the DR real servers, TUN's ``tun_dev``, and
deletes counters of real servers that are gone.

What cannot be built is reported, not raised, so that the backend can leave out just
the operations that need it (``PartialApplyError``): ``failed`` names services whose
elements cannot be made, ``unresolved`` the DR real servers that do not answer ARP.
"""

from __future__ import annotations

import itertools
import operator
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ...model import ObservedState, ServiceKey, Timeouts, VirtualService
from ...planner import (
    AddRealServer,
    AddService,
    DeleteRealServer,
    DeleteService,
    EditRealServer,
    EditService,
    Operation,
    SetTimeouts,
    apply_ops_in_place,
)
from . import neigh, tunnel
from .elements import (
    Layout,
    Neighbour,
    dr_changes,
    group_elements,
    ip_of,
    ip_text,
    layout,
    mark_of,
    neighbour_elements,
    render_groups,
    service_elements,
    service_text,
)
from .picture import Picture, stale_counters
from .schema import (
    DEVICE_CHAIN_RULES,
    NAT_FAMILIES,
    TABLE,
    TIMEOUT_CHAIN,
    Element,
    Found,
    delete_device_chain_text,
    device_chain_name,
    device_chain_text,
    nat_entry_table,
    repair_text,
    timeouts_text,
)
from .slottables import Content, TableChanges

__all__ = ["Piece", "Resolver", "ServicesFailed", "Transaction", "build", "commit", "key_of", "touched_by"]


#: What a piece of the script is, for telling from nft's error which part it refused.
Piece = tuple[str, str]  # (kind, text); kind: "skeleton", "devices", "elements", "tables", "timeouts"


class Resolver:
    """DR real servers' neighbours, each looked up (and ARPed for) at most once per apply."""

    def __init__(self, netns: str | None) -> None:
        self.netns = netns
        self._found: dict[str, Neighbour | str] = {}

    def __call__(self, rip: str) -> Neighbour | str:
        """The neighbour, or why there is none."""
        found = self._found.get(rip)
        if found is None:
            try:
                found = neigh.resolve(self.netns, rip)
            except neigh.NeighbourError as exc:
                found = f"DR real server {rip}: {exc}"
            self._found[rip] = found
        return found


@dataclass
class Transaction:
    """The text of one transaction and the picture's parts after it is committed."""

    pieces: list[Piece]
    touched: dict[ServiceKey, int]  # service -> index of its first operation (-1: a repair only)
    services: dict[ServiceKey, VirtualService]  # touched services after the plan (absent: deleted)
    timeouts: Timeouts | None
    dr_of: dict[ServiceKey, frozenset[str]]
    dr_refs: Counter[str]
    neighbours: dict[str, Neighbour]
    devices: dict[int, str]
    tun: tunnel.TunnelChange
    garbage: set[Element]
    found: Found  # what a read would find of the fixed part once this is committed
    tables: TableChanges  # what it does to the shared slot tables
    layouts: dict[ServiceKey, Layout]  # of the touched services after the plan
    unresolved: dict[str, str] = field(default_factory=dict)  # DR real server -> why it has no neighbour

    @property
    def script(self) -> str:
        return "".join(text for _, text in self.pieces)


class ServicesFailed(Exception):
    """Services whose elements cannot be made (service -> why): leave them out, build again."""

    def __init__(self, failed: Mapping[ServiceKey, str]) -> None:
        super().__init__(", ".join(f"{k}: {why}" for k, why in failed.items()))
        self.failed = dict(failed)


def build(
    pic: Picture,
    ops: Sequence[Operation],
    keep: Sequence[int],
    *,
    netns: str | None,
    resolve: Callable[[str], Neighbour | str],
    exclude: Collection[ServiceKey] = (),
    garbage: bool = True,
) -> Transaction:
    """The transaction applying ``ops[i] for i in keep`` (model operations, in plan order)
    to the kernel as pictured, and repairing what the picture says is damaged, leaving
    out the services in ``exclude`` (their repairs too) and, without ``garbage``, the
    counters of gone real servers.

    Raises KeyError when an operation does not apply to the pictured state (a service
    or real server that is not there), ServicesFailed for services whose elements
    cannot be made, and TunnelError naming a TUN real server whose tunnel cannot be
    made. DR real servers without a neighbour are left out and named in ``unresolved``."""
    touched = touched_by(ops, keep)
    for key in pic.actual:
        touched.setdefault(key, -1)
    for key in exclude:
        touched.pop(key, None)
    # The planner's semantics on a copy of the touched services only: O(touched), and the
    # picture is updated only once the kernel has taken the transaction.
    old_services = pic.services
    copy = ObservedState(
        services={k: old_services[k] for k in touched if k in old_services}, timeouts=pic.state.timeouts
    )
    after = apply_ops_in_place(copy, [ops[i] for i in keep])
    new_services = dict(after.services)

    adds: set[Element] = set()
    deletes: set[Element] = set()
    add_text: dict[tuple[str, str], list[str]] = {}  # new services, rendered directly
    tables = TableChanges(pic.tables)
    layouts: dict[ServiceKey, Layout] = {}
    dr_of = _service_elements(pic, touched, new_services, adds, deletes, add_text, tables, layouts)
    table_adds, table_deletes = tables.elements()
    adds |= table_adds
    deletes |= table_deletes
    gone = _garbage(pic, touched, new_services) if garbage else set()
    deletes |= gone

    # DR real servers: their neighbours, and an ingress hook on every device they sit on.
    dr_refs = Counter(pic.dr_refs)  # O(distinct DR real servers), not O(services)
    # Mostly the same (shared) sets: a weight edit keeps the real servers, a node leaving
    # is the same move in every service. Each distinct move is counted once.
    moves = Counter(
        (had, has) for key in touched if (had := pic.dr_of.get(key, frozenset())) != (has := dr_of[key])
    )
    for (had, has), times in moves.items():
        for rip in had:
            dr_refs[rip] -= times
        for rip in has:
            dr_refs[rip] += times
    needed = {rip for rip, n in dr_refs.items() if n > 0}
    neighbours = {rip: nb for rip, nb in pic.neighbours.items() if rip in needed}
    unresolved: dict[str, str] = {}
    # An IPv6 real server's mark is a 32-bit hash of its address: two that collide cannot
    # both be told apart in the slots and neighbour maps; the second one is refused.
    ids = {mark_of(ip_of(rip)): rip for rip in neighbours if ":" in rip}
    for rip in sorted(needed - neighbours.keys()):
        if ":" in rip and (other := ids.setdefault(mark_of(ip_of(rip)), rip)) != rip:
            unresolved[rip] = f"DR real server {rip}: its id (a hash of the address) is that of {other}"
            continue
        resolved = resolve(rip)
        if isinstance(resolved, Neighbour):
            neighbours[rip] = resolved
        else:
            unresolved[rip] = resolved
    deletes |= pic.strays
    for rip, nb in pic.neighbours.items():
        if neighbours.get(rip) != nb:
            deletes |= neighbour_elements(rip, nb)
    for rip, nb in neighbours.items():
        if pic.neighbours.get(rip) != nb:
            adds |= neighbour_elements(rip, nb)
    devices = {nb.ifindex: nb.device for nb in neighbours.values()}
    # TUN real servers: their IPIP devices (made by the caller, before the transaction).
    tun = pic.tunnels.change(netns, touched, new_services)
    devices.update(tun.underlays)
    deletes |= tun.deletes
    adds |= tun.adds

    pieces: list[Piece] = []
    for ifindex, device in sorted(devices.items()):
        rules = pic.found.rules.get(("netdev", device_chain_name(ifindex)))
        if rules != DEVICE_CHAIN_RULES:  # missing, or lost a rule: never a second hook on a device
            pieces.append(("devices", device_chain_text(device, ifindex, exists=rules is not None)))
    # Deletions first: an element whose value changed is deleted and re-added.
    pieces += [
        ("elements", line) for line in render_groups("delete", group_elements(deletes, with_value=False))
    ]
    # Shared NAT tables' maps and chains: deleted once nothing goes to them, made before
    # anything does.
    for text in tables.scripts():
        if text:
            pieces.append(("tables", text))
    pieces += [
        ("elements", line)
        for line in render_groups("add", group_elements(adds, with_value=True, into=add_text))
    ]
    timeouts = next((op.timeouts for op in (ops[i] for i in keep) if type(op) is SetTimeouts), None)
    if timeouts is not None:
        pieces.append(("timeouts", timeouts_text(timeouts, existing=pic.found.objects)))
    for ifindex in sorted(set(pic.device_chains) - set(devices)):
        pieces.append(("devices", delete_device_chain_text(ifindex)))
    tun_part = bool(tun.refs) or pic.found.has_tun()
    found = pic.found
    # The skeleton goes first. Nothing is made in a namespace that has neither table
    # until there is something to put in it.
    if pieces or pic.found.tables or pic.rebuild:
        skeleton = repair_text(pic.found, tun=tun_part)
        if skeleton:
            pieces.insert(0, ("skeleton", skeleton))
        for family in sorted(pic.rebuild, reverse=True):
            pieces.insert(0, ("skeleton", f"delete table {family} {TABLE}\n"))
        found = _found_after(pic.found, tun=tun_part, timeouts=timeouts is not None, devices=devices)
    return Transaction(
        pieces=pieces,
        touched=touched,
        services=new_services,
        timeouts=after.timeouts,
        dr_of=dr_of,
        dr_refs=+dr_refs,
        neighbours=neighbours,
        devices=devices,
        tun=tun,
        garbage=gone,
        found=found,
        tables=tables,
        layouts=layouts,
        unresolved=unresolved,
    )


def _service_elements(
    pic: Picture,
    touched: Mapping[ServiceKey, int],
    new_services: Mapping[ServiceKey, VirtualService],
    adds: set[Element],
    deletes: set[Element],
    add_text: dict[tuple[str, str], list[str]],
    tables: TableChanges,
    lays: dict[ServiceKey, Layout],
) -> dict[ServiceKey, frozenset[str]]:
    """The element changes of the touched services (into ``adds``/``deletes``, new
    services as text into ``add_text``), and the slot tables they leave and take
    (``tables``), and their layouts (into ``lays``); returns the DR real servers of each."""
    dr_of: dict[ServiceKey, frozenset[str]] = {}
    failed: dict[ServiceKey, str] = {}
    old_services = pic.services
    # First where each service goes: which table it names now and which slots it needs
    # (TableChange.plan decides which tables are rewritten in place), then its elements.
    # A DR service that stays DR is diffed by its layouts (dr_changes); the others by
    # their elements: as read (repairs), as the model implies, or none (new).
    olds: dict[ServiceKey, frozenset[Element] | tuple[Layout, int | None]] = {}
    moves: list[tuple[str, int, Content | None]] = []  # (space, table it names, new slots)
    # A DR service's tables are netdev's: looked up there directly (10,000 of each on a
    # node change).
    dr_tables, dr_change = pic.tables.spaces["netdev"], tables.changes["netdev"]
    for key in touched:
        svc = new_services.get(key)
        try:
            old = pic.actual.get(key)
            old_svc = old_services.get(key) if old is None else None
            old_lay = (pic.layouts.get(key) or layout(old_svc)) if old_svc is not None else None
            lay = layout(svc) if svc is not None else None
        except ValueError as exc:
            failed[key] = str(exc)
            continue
        if lay is not None:
            lays[key] = lay
        if old_lay is not None and lay is not None and old_lay.kind == lay.kind and lay.kind != "nat":
            # Its elements are what its model implies (written so, or read and compared):
            # it names the table that holds its slots.
            old_table = dr_tables.lookup(old_lay.content) if old_lay.content is not None else None
            olds[key] = (old_lay, old_table)
            if old_table is not None:
                moves.append(("netdev", old_table, lay.content))
                dr_change.release(old_table)
            continue
        if old is None:
            old = (
                service_elements(old_svc, pic.tables.lookup, old_lay).own
                if old_svc is not None
                else frozenset()
            )
        olds[key] = old
        for e in old:
            if e.set == "dr_tab" or e.set == "dr6_tab":
                tid = int(e.value)  # type: ignore[arg-type]
            elif e.set == "nat_svc" and (chain := nat_entry_table(e.value)) is not None:
                tid = chain[1]  # a shared NAT table: its chain names it
            else:
                continue
            moves.append((e.family, tid, lay.content if lay is not None else None))
            tables.release(e.family, tid)
    if failed:
        raise ServicesFailed(failed)
    tables.plan(moves)
    for key, before in olds.items():
        svc = new_services.get(key)
        if isinstance(before, tuple):
            new_lay = lays[key]
            new_table = dr_change.acquire(new_lay.content) if new_lay.content is not None else None
            gone, made = dr_changes(before[0], before[1], new_lay, new_table)
            deletes.update(gone)
            adds.update(made)
            dr_of[key] = new_lay.dr_addresses
        elif svc is None:
            deletes |= before
            dr_of[key] = frozenset()
        elif not before:
            # A new service: nothing to diff against (the cold-sync path).
            dr_of[key] = service_text(svc, add_text, tables.acquire, lays[key])
        else:
            built = service_elements(svc, tables.acquire, lays[key])
            deletes |= before - built.own
            adds |= built.own - before
            dr_of[key] = built.dr_addresses
    return dr_of


def _garbage(
    pic: Picture, touched: Mapping[ServiceKey, int], new_services: Mapping[ServiceKey, VirtualService]
) -> set[Element]:
    """Counters the packet path created for real servers that no longer exist (known
    from the last read; nobody else deletes them, so they are still there)."""
    gone = set(pic.stale)
    if not pic.counters:
        return gone
    pairs = {(ip_text(k.address), str(k.protocol)) for k in touched if k.address is not None}
    pairs &= pic.counters.keys()
    if pairs:
        # Every service on those VIPs decides which of their counters are live.
        old = pic.services
        current = {
            k: new_services[k] if k in new_services else old[k]
            for k in itertools.chain(new_services, (k for k in old if k not in touched))
            if k.address is not None and (ip_text(k.address), str(k.protocol)) in pairs
        }
        gone |= stale_counters(set().union(*(pic.counters[p] for p in pairs)), current, current.keys())
    return gone


def _found_after(before: Found, *, tun: bool, timeouts: bool, devices: Mapping[int, str]) -> Found:
    """What a read finds once the transaction is committed: the skeleton whole, the
    ingress hooks on ``devices``; the timeouts whole when it set them, else as they were."""
    whole = Found.whole(tun=tun, timeouts=timeouts or before.timeouts_whole(), devices=devices)
    if timeouts or before.timeouts_whole():
        return whole
    left = {(family, TIMEOUT_CHAIN): before.rules.get((family, TIMEOUT_CHAIN), 0) for family in NAT_FAMILIES}
    return Found(
        whole.tables,
        whole.sets,
        {**whole.rules, **left},
        before.objects,
        whole.whole_for,
    )


def commit(pic: Picture, tx: Transaction) -> None:
    """The picture after ``tx`` was committed (the caller removes the devices it no
    longer needs with ``tx.tun.commit()``, which this calls)."""
    services = pic.state.services
    assert isinstance(services, dict)
    for key in tx.touched:
        svc = tx.services.get(key)
        if svc is None:
            services.pop(key, None)
        else:
            services[key] = svc
        lay = tx.layouts.get(key)
        if lay is not None:
            pic.layouts[key] = lay
        else:
            pic.layouts.pop(key, None)
        if tx.dr_of.get(key):
            pic.dr_of[key] = tx.dr_of[key]
        else:
            pic.dr_of.pop(key, None)
    # Counters are those of the last read: every read recomputes them.
    pic.state = ObservedState(services=services, timeouts=tx.timeouts, stats=pic.state.stats)
    pic.found = tx.found
    pic.rebuild = frozenset()
    pic.actual = {}
    pic.strays = set()
    if tx.garbage:
        pic.stale -= tx.garbage
        for e in tx.garbage:
            members = pic.counters.get((e.key[0], e.key[1]))
            if members is not None:
                members.discard(e)
                if not members:
                    del pic.counters[(e.key[0], e.key[1])]
    pic.dr_refs = tx.dr_refs
    pic.neighbours = tx.neighbours
    pic.device_chains = tx.devices
    pic.tunnels = tx.tun.commit()
    pic.tables = tx.tables.commit()


def touched_by(ops: Sequence[Operation], keep: Iterable[int]) -> dict[ServiceKey, int]:
    """Service -> index of its first operation among ``ops[i] for i in keep``."""
    out: dict[ServiceKey, int] = {}
    last: ServiceKey | None = None
    for i in keep:
        key = key_of(ops[i])
        if key is not None and key is not last:  # a service's operations come together, with one key object
            out.setdefault(key, i)
            last = key
    return out


_KEY_OF: dict[type, Callable[[Any], ServiceKey]] = {
    AddRealServer: operator.attrgetter("service"),
    EditRealServer: operator.attrgetter("service"),
    DeleteRealServer: operator.attrgetter("service"),
    AddService: operator.attrgetter("service.key"),
    EditService: operator.attrgetter("service.key"),
    DeleteService: operator.attrgetter("key"),
}


def key_of(op: Operation) -> ServiceKey | None:
    """``planner.service_of`` by a table lookup: it runs once per operation of a cold
    sync (110,000), where the match statement cost ~50 ms."""
    get = _KEY_OF.get(type(op))
    return None if get is None else get(op)
