"""Shared slot tables (nftables backend, pure): which tables exist, which services use
each, and what one transaction changes of that.

A DR service's slots are a *table* (``dr_slots``: ``table . slot -> RIP``) that its
``dr_tab`` element names. Services whose real servers have the same addresses and
weights (and so the same Maglev or wrr order: maglev.py names DR owners by address) use
one table: in a cluster that is almost every Service (all nodes, weight 1). A table also
holds the weights its slots do not say (``dr_weights``: ``table . RIP -> weight``: weight
0, or other than 1), so that a node's weight going to 0 and back changes the table, not
the elements of each service that uses it. A table lives while a service uses it; the
last one to leave deletes it in the same transaction. Table numbers are local to a
director (only the tables' contents must agree between directors, and they do: they are
a pure function of the real servers).

NAT services whose real servers all use one port share tables the same way; such a
table is a map of its own in a NAT family's table (``nat_tab_<table>``: ``slot -> RIP``),
its weights are in ``nat_weights``, and a chain of its own (``nat_mh_t3``) does the
DNAT (schema.nat_table_text). Its content says where it lives (``NatTable``: the family
and the scheduler chain, ``ip`` and ``nat_mh``): tables that live in different places are
different tables. Each kubelvs table (``netdev`` for DR, ``ip`` and ``ip6`` for NAT)
numbers its slot tables itself (``TableSpaces``), so that a repair that makes one of
them anew numbers its slot tables as before.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from .schema import Element, delete_nat_table_text, nat_table_chain, nat_table_map, nat_table_text

__all__ = [
    "Content",
    "NatRead",
    "NatTable",
    "SlotTables",
    "TableChange",
    "TableChanges",
    "TableSpaces",
    "table_elements",
    "tables_of",
]


@dataclass(frozen=True, slots=True)
class NatTable:
    """Where a shared NAT table lives: its family's kubelvs table and the scheduler chain
    whose DNAT it serves (``nat_mh``; the table's own chain is ``nat_mh_t<table>``)."""

    family: str
    chain: str

    def address(self, mark: int) -> str:
        """The address text of a member's mark (its address as an integer)."""
        if self.family == "ip":
            return str(ipaddress.IPv4Address(mark))
        return str(ipaddress.IPv6Address(mark))

    def make_text(self, tid: int) -> str:
        """The commands that make table ``tid`` here (its map and its chain)."""
        return nat_table_text(self.family, self.chain, tid)

    def delete_text(self, tid: int) -> str:
        """The commands that delete table ``tid`` here, whole (its chain and its map)."""
        return delete_nat_table_text(self.family, nat_table_chain(self.chain, tid), tid)


class Content(tuple[int, ...]):
    """A table: its slots in order, each the owner's mark (DR: the RIP as u32, or an
    IPv6 real server's id; NAT: the RIP as an integer), and in ``weights`` the (mark,
    weight) of the members the slots do not describe (weight 0 or other than 1), by
    mark; ``nat``: where a NAT table lives (None for a DR table), and ``space`` the
    kubelvs table that holds it (``SPACES``). Two tables are equal when all three are.
    Hashed once: a node change looks each Service's old and new table up several times,
    and hashing 509 marks costs more than the rest of a lookup."""

    weights: tuple[tuple[int, int], ...]
    nat: NatTable | None
    space: str
    _hash: int

    def __new__(
        cls, marks: Iterable[int], weights: Iterable[tuple[int, int]] = (), nat: NatTable | None = None
    ) -> Content:
        content = super().__new__(cls, marks)
        content.weights = tuple(sorted(weights))
        content.nat = nat
        content.space = "netdev" if nat is None else nat.family
        content._hash = hash((tuple.__hash__(content), content.weights, nat))
        return content

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if not isinstance(other, Content):
            return NotImplemented
        return (
            self._hash == other._hash
            and self.weights == other.weights
            and self.nat == other.nat
            and tuple.__eq__(self, other)
        )

    def __ne__(self, other: object) -> bool:
        return not self == other


@dataclass(frozen=True, slots=True)
class NatRead:
    """A shared NAT table as a read found it: where it lives, from its chain's name (None
    when it has no chain), its slots (slot -> owner's address as an integer; empty
    without a map), ``fix``: the commands that make it whole again ("" when it is),
    ``delete``: those that delete what there is of it."""

    table: NatTable | None
    slots: Mapping[int, int]
    fix: str
    delete: str


def table_elements(tid: int, content: Content) -> Iterator[Element]:
    """The elements of table ``tid`` holding ``content``: its slots and its weights."""
    return _elements(tid, dict(enumerate(content)), dict(content.weights), content.nat)


def _elements(
    tid: int, slots: Mapping[int, int], weights: Mapping[int, int], nat: NatTable | None = None
) -> Iterator[Element]:
    if nat is None:
        yield from (Element("netdev", "dr_slots", (tid, slot), mark) for slot, mark in slots.items())
        yield from (Element("netdev", "dr_weights", (tid, mark), w) for mark, w in weights.items())
        return
    family, tab, address = nat.family, nat_table_map(tid), nat.address
    yield from (Element(family, tab, (slot,), address(mark)) for slot, mark in slots.items())
    yield from (Element(family, "nat_weights", (tid, address(mark)), w) for mark, w in weights.items())


def tables_of(elements: Iterable[Element]) -> dict[int, dict[int, int]]:
    """The tables as read, by table: ``dr_slots`` elements as slot -> mark, ``dr_weights``
    and ``nat_weights`` ones as mark -> weight (a NAT member's mark is its address)."""
    out: dict[int, dict[int, int]] = {}
    for e in elements:
        tid, second = e.key
        mark = int(ipaddress.ip_address(second)) if isinstance(second, str) else int(second)
        out.setdefault(int(tid), {})[mark] = int(e.value)  # type: ignore[arg-type]
    return out


def _weight_elements(tid: int, read: Iterable[Element]) -> frozenset[Element]:
    """The weight elements of table ``tid`` as read."""
    return frozenset(e for e in read if int(e.key[0]) == tid)


def _content(slots: Mapping[int, int], weights: Mapping[int, int], nat: NatTable | None) -> Content | None:
    """The table as read, None when some slot is missing (damaged: never reused)."""
    n = len(slots)
    if any(i not in slots for i in range(n)):
        return None
    return Content((slots[i] for i in range(n)), weights.items(), nat)


@dataclass
class SlotTables:
    """The slot tables in the kernel: the live ones (a service uses them) and the
    others, deleted by the next apply."""

    content: dict[int, Content] = field(default_factory=dict)  # table -> its slots
    by_content: dict[Content, int] = field(default_factory=dict)
    refs: Counter[int] = field(default_factory=Counter)  # table -> services that use it
    orphans: dict[int, frozenset[Element]] = field(default_factory=dict)  # table -> its elements
    # NAT tables read that are not whole: the commands that delete what there is of
    # them (a whole one is deleted by ``NatTable.delete_text``); those that no service
    # names, a map without its chain, or a second table of the same content, are deleted
    # by the next apply (``broken``); those that services name are made whole again
    # (``fixes``: the commands).
    deletes: dict[int, str] = field(default_factory=dict)
    broken: set[int] = field(default_factory=set)
    fixes: dict[int, str] = field(default_factory=dict)
    # Live tables whose slots were edited by hand: the kernel's slots as read, put back
    # by the next apply.
    repairs: dict[int, frozenset[Element]] = field(default_factory=dict)
    next_tid: int = 1

    def damaged(self) -> bool:
        return bool(self.orphans or self.broken or self.fixes or self.repairs or self.idle())

    @staticmethod
    def read(
        slots: Iterable[Element],
        weights: Iterable[Element],
        expected: Mapping[int, Iterable[Content]],
        nat: Mapping[int, NatRead] | None = None,
        named: Collection[int] = (),
    ) -> SlotTables:
        """The tables a read found: DR ``dr_slots`` and ``dr_weights``; ``nat``: the NAT
        tables (their weights are among ``weights``: ``nat_weights``, keyed by table .
        RIP). ``expected``: table -> the table each service that names it should find
        there. A table holds what its services expect (its own slots and weights when
        some expect them, else the least of their expectations: slots edited by hand are
        put back in place, in ``repairs``); a table with missing slots that no service
        names, or a second one with the same content, is an orphan. The services that
        name a table are counted by ``use``. ``named``: the tables that services name in
        the kernel (a NAT table not whole that one of them names is made whole again, in
        place)."""
        out = SlotTables()
        unclaimed: dict[int, tuple[dict[int, int], dict[int, int]]] = {}
        weights = list(weights)
        read_slots, read_weights = tables_of(slots), tables_of(weights)
        nats: dict[int, NatTable] = {}
        for tid, table in (nat or {}).items():
            out.next_tid = max(out.next_tid, tid + 1)
            if table.table is None or table.fix:
                out.deletes[tid] = table.delete
            # A map without its chain, a table not whole that no service names: deleted.
            # A table that services name is made whole again.
            if table.table is None or (table.fix and tid not in named):
                out.broken.add(tid)
                continue
            read_slots[tid] = dict(table.slots)
            nats[tid] = table.table
            if table.fix:
                out.fixes[tid] = table.fix
        # A table is its slots: weights without slots are an orphan's.
        for tid in read_weights.keys() - read_slots.keys():
            out.next_tid = max(out.next_tid, tid + 1)
            out.orphans[tid] = _weight_elements(tid, weights)
        for tid, members in sorted(read_slots.items()):
            out.next_tid = max(out.next_tid, tid + 1)
            table_weights = read_weights.get(tid, {})
            where = nats.get(tid)
            have = _content(members, table_weights, where)
            wanted = {c for c in expected.get(tid, ()) if c.nat == where}
            content = have if have in wanted else min(wanted, default=None)
            if content is None or content in out.by_content:
                unclaimed[tid] = (members, table_weights)
                continue
            out.content[tid] = content
            out.by_content[content] = tid
            if content != have:
                out.repairs[tid] = frozenset(_elements(tid, members, table_weights, content.nat))
        # A whole table no service names (its entry was edited, say) stays live: the
        # next apply deletes it unless a service takes it (the one whose entry is put back).
        for tid, (members, table_weights) in unclaimed.items():
            where = nats.get(tid)
            have = _content(members, table_weights, where)
            if have is not None and have not in out.by_content:
                out.content[tid] = have
                out.by_content[have] = tid
            elif where is not None:
                # A NAT table goes with its map and chain; its weights one by one.
                out.broken.add(tid)
                out.deletes.setdefault(tid, where.delete_text(tid))
                out.fixes.pop(tid, None)
                out.orphans[tid] = _weight_elements(tid, weights)
            else:
                out.orphans[tid] = frozenset(_elements(tid, members, table_weights))
        if nat is not None:
            # What is left of a NAT table that is not whole is deleted before anything is
            # made: its number is free, and the table made again takes the one it had.
            out.next_tid = max(out.content, default=0) + 1
        return out

    def idle(self) -> list[int]:
        """Live tables no service names (after a read's ``use``s): deleted by the next
        apply unless a service takes them."""
        return [tid for tid in self.content if self.refs.get(tid, 0) <= 0]

    def use(self, tid: int) -> None:
        """A service names table ``tid`` (its ``dr_tab`` element as read); only live
        tables count, as only they are released (``TableChange.release``)."""
        if tid in self.content:
            self.refs[tid] += 1

    def lookup(self, content: Content) -> int:
        """The live table with these slots, -1 if none (a read's expectation: a service
        whose ``dr_tab`` says otherwise is rewritten)."""
        return self.by_content.get(content, -1)


class TableChange:
    """What one transaction does to the tables, on top of the picture's (which changes
    only when the transaction is committed): ``plan`` where the touched services go,
    then ``acquire`` a table for each one's new slots and ``release`` the one it named.

    A table all of whose services move to the same new table is *rewritten in place*:
    its number stays and only the slots and weights that change are written. When a
    node fails, 10,000 services that share a table change no element of their own; the
    table changes the slots the node held (a tenth of 509 with 10 nodes) and gains the
    node's weight 0."""

    def __init__(self, base: SlotTables) -> None:
        self.base = base
        self.new: dict[Content, int] = {}
        self.rewrite: dict[int, Content] = {}  # base table -> its new slots
        self._rewritten: dict[Content, int] = {}
        self.delta: Counter[int] = Counter()
        self.next_tid = base.next_tid

    def plan(self, moves: Iterable[tuple[int, Content | None]]) -> None:
        """Before any ``acquire``: each touched service's (table it names, new slots or
        None). Decides which tables are rewritten in place."""
        base = self.base
        by_table: dict[int, list[Content | None]] = {}
        for tid, content in moves:
            if tid in base.content:
                by_table.setdefault(tid, []).append(content)
        for tid, contents in sorted(by_table.items()):
            first = contents[0]
            if (
                first is None
                or len(contents) != base.refs.get(tid, 0)
                or first in base.by_content
                or first.nat != base.content[tid].nat  # a NAT table's chain is where it lives
                or first in self._rewritten
                or any(c is not first and c != first for c in contents)  # mostly one object
            ):
                continue
            self.rewrite[tid] = first
            self._rewritten[first] = tid

    def acquire(self, content: Content) -> int:
        tid = self._rewritten.get(content)
        if tid is None:
            tid = self.base.by_content.get(content)
            if tid is None or tid in self.rewrite:  # that table holds other slots from now on
                tid = self.new.get(content)
                if tid is None:
                    tid = self.new[content] = self.next_tid
                    self.next_tid += 1
        self.delta[tid] += 1
        return tid

    def release(self, tid: int) -> None:
        """A service no longer names ``tid`` (an orphan's services were never counted)."""
        if tid in self.base.content:
            self.delta[tid] -= 1

    def _refs(self, tid: int) -> int:
        return self.base.refs.get(tid, 0) + self.delta[tid]

    def elements(self) -> tuple[set[Element], set[Element]]:
        """(adds, deletes) of slots: new tables', the changes of tables rewritten or
        repaired, those of tables nobody uses any more, and the orphans'."""
        base = self.base
        adds: set[Element] = set()
        deletes: set[Element] = set()
        for content, tid in self.new.items():
            if self._refs(tid) > 0:
                adds.update(table_elements(tid, content))
        for tid in set(self.delta) | base.repairs.keys() | set(base.idle()):
            if tid not in base.content:
                continue
            have = base.repairs.get(tid)
            if have is None:
                have = frozenset(table_elements(tid, base.content[tid]))
            if self._refs(tid) <= 0:
                # A NAT table's slots go with its map (``scripts``).
                deletes |= (
                    have if base.content[tid].nat is None else {e for e in have if e.set == "nat_weights"}
                )
                continue
            want = frozenset(table_elements(tid, self.rewrite.get(tid, base.content[tid])))
            adds |= want - have
            deletes |= have - want
        for members in base.orphans.values():
            deletes |= members
        return adds, deletes

    def scripts(self) -> tuple[str, str]:
        """(deletes, creates) of NAT tables' maps and chains: those of the tables nobody
        uses any more and of the broken ones (after the elements that go to them are
        deleted), and those of new tables (before the elements that go to them are added)."""
        base = self.base
        deletes = [base.deletes[tid] for tid in sorted(base.broken)]
        creates = []
        for tid in sorted(set(self.delta) | set(base.idle()) | base.fixes.keys()):
            content = base.content.get(tid)
            if content is None or content.nat is None:
                continue
            if self._refs(tid) <= 0:
                deletes.append(base.deletes.get(tid) or content.nat.delete_text(tid))
            elif tid in base.fixes:
                creates.append(base.fixes[tid])
        for content, tid in self.new.items():
            if content.nat is not None and self._refs(tid) > 0:
                creates.append(content.nat.make_text(tid))
        return "".join(deletes), "".join(creates)

    def commit(self) -> SlotTables:
        """The tables once the transaction is in the kernel."""
        base = self.base
        content = dict(base.content)
        content.update(self.rewrite)
        refs = Counter(base.refs)
        for c, tid in self.new.items():
            content[tid] = c
        for tid, d in self.delta.items():
            refs[tid] += d
        for tid in [t for t in content if refs.get(t, 0) <= 0]:
            refs.pop(tid, None)
            del content[tid]
        return SlotTables(
            content=content,
            by_content={c: tid for tid, c in content.items()},
            refs=refs,
            next_tid=self.next_tid,
        )


#: The kubelvs tables that hold slot tables, each numbering its own (DR: netdev).
SPACES = ("netdev", "ip", "ip6")


@dataclass
class TableSpaces:
    """The slot tables of every kubelvs table (``SPACES``)."""

    spaces: dict[str, SlotTables] = field(default_factory=lambda: {s: SlotTables() for s in SPACES})

    def lookup(self, content: Content) -> int:
        return self.spaces[content.space].lookup(content)

    def damaged(self) -> bool:
        return any(tables.damaged() for tables in self.spaces.values())


class TableChanges:
    """A ``TableChange`` per kubelvs table: what one transaction does to all of them."""

    def __init__(self, base: TableSpaces) -> None:
        self.changes = {space: TableChange(tables) for space, tables in base.spaces.items()}

    def plan(self, moves: Iterable[tuple[str, int, Content | None]]) -> None:
        by_space: dict[str, list[tuple[int, Content | None]]] = {}
        for space, tid, content in moves:
            by_space.setdefault(space, []).append((tid, content))
        for space, changes in by_space.items():
            self.changes[space].plan(changes)

    def acquire(self, content: Content) -> int:
        return self.changes[content.space].acquire(content)

    def release(self, space: str, tid: int) -> None:
        self.changes[space].release(tid)

    def elements(self) -> tuple[set[Element], set[Element]]:
        adds: set[Element] = set()
        deletes: set[Element] = set()
        for change in self.changes.values():
            more, fewer = change.elements()
            adds |= more
            deletes |= fewer
        return adds, deletes

    def scripts(self) -> tuple[str, str]:
        parts = [change.scripts() for change in self.changes.values()]
        return "".join(d for d, _ in parts), "".join(c for _, c in parts)

    def commit(self) -> TableSpaces:
        return TableSpaces({space: change.commit() for space, change in self.changes.items()})
