"""The types the mapping reads and writes: a snapshot of the objects (with what changed
since the previous one) and the mapping's result. Apart from ``mapping`` so that the store
(``tracker``), the status writer and the programs can use them without the translation."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ...model import DesiredState, Forward, IPAddress, ServiceKey, VirtualService
from .ipam import IpamResult
from .objects import EndpointSlice, EventSpec, Node, ObjectId, Service

__all__ = ["MappingResult", "NodeTarget", "Snapshot", "SnapshotChanges"]


@dataclass(frozen=True, slots=True)
class SnapshotChanges:
    """The (kind, id) of every object that changed in ``store`` between its snapshot
    number ``since`` and this one (``since + 1``): what an incremental map reads."""

    store: object
    since: int
    ids: frozenset[tuple[str, ObjectId]]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything the mapping reads: the current objects by (namespace, name)."""

    services: Mapping[ObjectId, Service] = field(default_factory=dict)
    slices: Mapping[ObjectId, EndpointSlice] = field(default_factory=dict)
    nodes: Mapping[ObjectId, Node] = field(default_factory=dict)
    changes: SnapshotChanges | None = None  # None: unknown, map everything


@dataclass(frozen=True, slots=True)
class NodeTarget:
    name: str
    v4: IPAddress | None
    v6: IPAddress | None

    def address(self, family: int) -> IPAddress | None:
        return self.v4 if family == 4 else self.v6


@dataclass(frozen=True, slots=True)
class MappingResult:
    desired: DesiredState
    owners: Mapping[ServiceKey, ObjectId]  # which Service each virtual service serves
    events: tuple[EventSpec, ...]
    status: Mapping[ObjectId, tuple[str, ...]]  # status.loadBalancer.ingress to write (leader only)
    targets: tuple[NodeTarget, ...]  # the eligible nodes, by name
    ipam: IpamResult
    # Keys whose virtual service differs from the previous map's (added, removed or
    # edited; names do not count); None when this map was not incremental.
    changed: frozenset[ServiceKey] | None = None

    def names(self) -> dict[ServiceKey, str]:
        return {k: s.name for k, s in self.desired.services.items()}

    def node_vips(self) -> dict[str, frozenset[IPAddress]]:
        """Node name -> the VIPs it must hold (DR/TUN). Computed on demand: only the
        node agent asks, and it costs O(all real servers)."""
        return _node_vips(self.desired.services, self.targets)


def _node_vips(
    services: Mapping[ServiceKey, VirtualService], targets: Sequence[NodeTarget]
) -> dict[str, frozenset[IPAddress]]:
    by_address: dict[IPAddress, str] = {}
    for t in targets:
        for a in (t.v4, t.v6):
            if a is not None:
                by_address[a] = t.name
    out: dict[str, set[IPAddress]] = {}
    for key, vs in services.items():
        assert key.address is not None
        for rs in vs.realservers:
            if rs.forward in (Forward.DR, Forward.TUN) and rs.address in by_address:
                out.setdefault(by_address[rs.address], set()).add(key.address)
    return {name: frozenset(v) for name, v in out.items()}
