"""The object store the watches feed, with previous/current per changed object.

Like kube-proxy's change trackers, the store keeps, per object changed since the last
reconcile, the first ``previous`` and the latest ``current``; an object that went back
to where it was drops out (a no-op). Objects are parsed into frozen views that keep
only the fields the mapping reads, so status-only churn (a Node heartbeat bumping
resourceVersion) is a no-op too and costs no reconcile.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .objects import EndpointSlice, Node, ObjectId, Service, object_id, parse_object
from .snapshot import Snapshot, SnapshotChanges

__all__ = ["KINDS", "Change", "Store"]

KINDS = ("Service", "EndpointSlice", "Node")

Parsed = Service | EndpointSlice | Node


@dataclass(frozen=True, slots=True)
class Change:
    kind: str
    id: ObjectId
    previous: Parsed | None
    current: Parsed | None


class Store:
    """Current objects of every kind, and what changed since ``take_changes``."""

    def __init__(self, on_change: Callable[[], None] | None = None) -> None:
        self._objects: dict[str, dict[ObjectId, Parsed]] = {k: {} for k in KINDS}
        self._pending: dict[tuple[str, ObjectId], tuple[Parsed | None, Parsed | None]] = {}
        self.synced: set[str] = set()  # kinds listed at least once
        self.on_change = on_change  # None for tests that poll
        self.last_event = 0.0  # time.monotonic() of the last real change
        self._taken = 0  # how many times the pending changes were taken

    @property
    def initialized(self) -> bool:
        """Every kind has been listed once: before that a missing object means "not seen
        yet", not "deleted", so nothing may be reconciled (kube-proxy's isInitialized)."""
        return self.synced >= set(KINDS)

    def _record(self, kind: str, oid: ObjectId, current: Parsed | None) -> bool:
        objects = self._objects[kind]
        previous = objects.get(oid)
        if previous == current:
            return False
        if current is None:
            del objects[oid]
        else:
            objects[oid] = current
        first = self._pending.get((kind, oid))
        original = previous if first is None else first[0]
        if original == current:
            self._pending.pop((kind, oid), None)
        else:
            self._pending[(kind, oid)] = (original, current)
        self.last_event = time.monotonic()
        return True

    def apply(self, kind: str, event_type: str, obj: Mapping[str, Any]) -> bool:
        """Apply one watch event (ADDED, MODIFIED, DELETED). True when something changed."""
        oid = _oid(kind, obj)
        current = None if event_type == "DELETED" else parse_object(kind, obj)
        changed = self._record(kind, oid, current)
        if changed and self.on_change:
            self.on_change()
        return changed

    def replace(self, kind: str, objects: Iterable[Mapping[str, Any]]) -> int:
        """Replace every object of ``kind`` with a fresh list (a (re)list). Objects
        missing from it were deleted while we were not watching. Returns the number of
        changes."""
        fresh = {_oid(kind, o): parse_object(kind, o) for o in objects}
        changes = 0
        for oid in list(self._objects[kind]):
            if oid not in fresh:
                changes += self._record(kind, oid, None)
        for oid, parsed in fresh.items():
            changes += self._record(kind, oid, parsed)
        self.synced.add(kind)
        if self.on_change and (changes or self.initialized):
            self.on_change()
        return changes

    def take_changes(self) -> list[Change]:
        out = [Change(kind, oid, prev, cur) for (kind, oid), (prev, cur) in self._pending.items()]
        self._pending.clear()
        self._taken += 1
        return out

    def snapshot(self, *, take_changes: bool = False) -> Snapshot:
        """The current objects. ``take_changes``: also take the pending changes, which
        the snapshot carries (``Snapshot.changes``) so that a Mapper that mapped the
        previous such snapshot maps only what changed since."""
        changes = None
        if take_changes:
            changes = SnapshotChanges(store=self, since=self._taken, ids=frozenset(self._pending))
            self._pending.clear()
            self._taken += 1
        # Shallow copies: the values are frozen, only the dicts change afterwards. (Copying
        # 10,000 entries is a C loop of well under a millisecond.)
        return Snapshot(
            services=dict(self._objects["Service"]),  # type: ignore[arg-type]
            slices=dict(self._objects["EndpointSlice"]),  # type: ignore[arg-type]
            nodes=dict(self._objects["Node"]),  # type: ignore[arg-type]
            changes=changes,
        )

    def count(self, kind: str) -> int:
        return len(self._objects[kind])


def _oid(kind: str, obj: Mapping[str, Any]) -> ObjectId:
    ns, name = object_id(obj)
    if kind == "Node":
        return ("", name)
    return (ns or "default", name)
