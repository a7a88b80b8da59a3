"""Shared DR slot tables (nftables backend, pure): which tables exist, which services use
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
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from .schema import Element

__all__ = ["Content", "SlotTables", "TableChange", "table_elements", "tables_of"]


class Content(tuple[int, ...]):
    """A table: its slots in order, each the owner's mark (the RIP as u32), and in
    ``weights`` the (mark, weight) of the members the slots do not describe (weight 0 or
    other than 1), by mark; two tables are equal when both are. Hashed once: a node
    change looks each Service's old and new table up several times, and hashing 509
    marks costs more than the rest of a lookup."""

    weights: tuple[tuple[int, int], ...]
    _hash: int

    def __new__(cls, marks: Iterable[int], weights: Iterable[tuple[int, int]] = ()) -> Content:
        content = super().__new__(cls, marks)
        content.weights = tuple(sorted(weights))
        content._hash = hash((tuple.__hash__(content), content.weights))
        return content

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if not isinstance(other, Content):
            return NotImplemented
        return self._hash == other._hash and self.weights == other.weights and tuple.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self == other


def table_elements(tid: int, content: Content) -> Iterator[Element]:
    """The elements of table ``tid`` holding ``content``: its slots and its weights."""
    yield from (Element("netdev", "dr_slots", (tid, slot), mark) for slot, mark in enumerate(content))
    yield from (Element("netdev", "dr_weights", (tid, mark), weight) for mark, weight in content.weights)


def _elements(tid: int, slots: Mapping[int, int], weights: Mapping[int, int]) -> Iterator[Element]:
    yield from (Element("netdev", "dr_slots", (tid, slot), mark) for slot, mark in slots.items())
    yield from (Element("netdev", "dr_weights", (tid, mark), weight) for mark, weight in weights.items())


def tables_of(elements: Iterable[Element]) -> dict[int, dict[int, int]]:
    """The tables as read, by table: ``dr_slots`` elements as slot -> mark, ``dr_weights``
    ones as mark -> weight."""
    out: dict[int, dict[int, int]] = {}
    for e in elements:
        tid, second = e.key
        out.setdefault(int(tid), {})[int(second)] = int(e.value)  # type: ignore[arg-type]
    return out


def _content(slots: Mapping[int, int], weights: Mapping[int, int]) -> Content | None:
    """The table as read, None when some slot is missing (damaged: never reused)."""
    n = len(slots)
    if any(i not in slots for i in range(n)):
        return None
    return Content((slots[i] for i in range(n)), weights.items())


@dataclass
class SlotTables:
    """The DR slot tables in the kernel: the live ones (a service uses them) and the
    others, deleted by the next apply."""

    content: dict[int, Content] = field(default_factory=dict)  # table -> its slots
    by_content: dict[Content, int] = field(default_factory=dict)
    refs: Counter[int] = field(default_factory=Counter)  # table -> services that use it
    orphans: dict[int, frozenset[Element]] = field(default_factory=dict)  # table -> its elements
    # Live tables whose slots were edited by hand: the kernel's slots as read, put back
    # by the next apply.
    repairs: dict[int, frozenset[Element]] = field(default_factory=dict)
    next_tid: int = 1

    def damaged(self) -> bool:
        return bool(self.orphans or self.repairs or self.idle())

    @staticmethod
    def read(
        slots: Iterable[Element], weights: Iterable[Element], expected: Mapping[int, Iterable[Content]]
    ) -> SlotTables:
        """The tables a read found (``dr_slots``, ``dr_weights``). ``expected``: table ->
        the table each service that names it should find there. A table holds what its
        services expect (its own slots and weights when some expect them, else the least
        of their expectations: slots edited by hand are put back in place, in
        ``repairs``); a table with missing slots that no service names, or a second one
        with the same content, is an orphan. The services that name a table are counted
        by ``use``."""
        out = SlotTables()
        unclaimed: dict[int, tuple[dict[int, int], dict[int, int]]] = {}
        read_slots, read_weights = tables_of(slots), tables_of(weights)
        # A table is its slots: weights without slots are an orphan's.
        for tid in read_weights.keys() - read_slots.keys():
            out.next_tid = max(out.next_tid, tid + 1)
            out.orphans[tid] = frozenset(_elements(tid, {}, read_weights[tid]))
        for tid, members in sorted(read_slots.items()):
            out.next_tid = max(out.next_tid, tid + 1)
            table_weights = read_weights.get(tid, {})
            have = _content(members, table_weights)
            wanted = set(expected.get(tid, ()))
            content = have if have in wanted else min(wanted, default=None)
            if content is None or content in out.by_content:
                unclaimed[tid] = (members, table_weights)
                continue
            out.content[tid] = content
            out.by_content[content] = tid
            if content != have:
                out.repairs[tid] = frozenset(_elements(tid, members, table_weights))
        # A whole table no service names (its entry was edited, say) stays live: the
        # next apply deletes it unless a service takes it (the one whose entry is put back).
        for tid, (members, table_weights) in unclaimed.items():
            have = _content(members, table_weights)
            if have is not None and have not in out.by_content:
                out.content[tid] = have
                out.by_content[have] = tid
            else:
                out.orphans[tid] = frozenset(_elements(tid, members, table_weights))
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
                deletes |= have
                continue
            want = frozenset(table_elements(tid, self.rewrite.get(tid, base.content[tid])))
            adds |= want - have
            deletes |= have - want
        for members in base.orphans.values():
            deletes |= members
        return adds, deletes

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
