"""Kubernetes objects -> the director's desired state (pure).

One virtual service per (VIP, port, protocol) of every Service we serve:

- VIPs: ``spec.externalIPs`` inside ``kubernetes.external_ip_cidrs`` (any other is
  rejected with a Warning Event: CVE-2020-8554 is about exactly such addresses), and
  for type LoadBalancer Services of our class the addresses IPAM assigned.
- Real servers: the Ready, schedulable, not excluded nodes' addresses (the first of
  ``node_address_types`` in the VIP's family). DR and TUN keep the Service port (the
  node holds the VIP and its kube-proxy serves VIP:port as an external IP); NAT
  rewrites to nodeIP:nodePort, so it needs a nodePort.
- ``externalTrafficPolicy: Local``: only nodes with a ready endpoint, weighted by
  their number of ready endpoints; a node left with only terminating (still serving)
  endpoints gets weight 0: no new connections, established ones finish.
- Session affinity ClientIP -> persistence with the Service's timeout.
- A VIP:port claimed by two Services goes to the older one; the other gets an Event.

``Mapper`` caches each Service's virtual services and recomputes only the Services
whose inputs changed (its own object, its EndpointSlices, its addresses, the node set).
Fed the store's changes with the snapshot, it also resolves only the VIP:ports those
Services claim, so a burst of changes costs O(changed Services), not O(all Services)
(IPAM still runs over every Service, but only when a field it reads changed).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from ...model import (
    DesiredState,
    Forward,
    HealthCheck,
    IPAddress,
    ServiceKey,
    VirtualService,
)
from .ipam import IpamResult, allocate, ipam_key
from .objects import EndpointSlice, EventSpec, ObjectId
from .service import (
    EveryNode,
    NodeShape,
    event,
    node_targets,
    on_nodes,
    service_check,
    service_fragment,
    service_vips,
)
from .settings import KubeSettings
from .snapshot import MappingResult, NodeTarget, Snapshot, SnapshotChanges

__all__ = [
    "Mapper",
    "MappingResult",
    "NodeTarget",
    "Snapshot",
    "SnapshotChanges",
    "compute",
    "holding_view",
    "vips_for_node",
]


@dataclass(frozen=True, slots=True)
class _Fragment:
    services: tuple[VirtualService, ...]
    events: tuple[EventSpec, ...]
    check: HealthCheck | None = None  # the health check of every virtual service of the Service
    # Set when the real servers are every node (externalTrafficPolicy Cluster): the shape
    # of each virtual service's, so that a node change only swaps them (``on_nodes``).
    shapes: tuple[NodeShape, ...] | None = None
    targets: tuple[NodeTarget, ...] = ()  # the nodes it was made for


class Mapper:
    """Maps snapshots to desired states, recomputing only the Services whose inputs changed.

    Given a snapshot that carries the store's changes since the snapshot this mapper
    saw last (``Snapshot.changes``), a map costs O(changed Services): the slices are
    indexed by Service, the VIP:port claims are kept per key, and only the keys the
    changed Services claim(ed) are resolved again. Any other snapshot (the first one,
    one from another store, a gap) is mapped whole, with the per-Service cache.
    """

    def __init__(self, settings: KubeSettings) -> None:
        self.settings = settings
        self._cache: dict[ObjectId, tuple[tuple[object, ...], _Fragment]] = {}
        self._targets: tuple[NodeTarget, ...] = ()
        self._every_node: EveryNode = {}  # the Cluster-policy real servers for _targets
        self._ipam: IpamResult | None = None
        self._ipam_keys: dict[ObjectId, tuple[object, ...]] = {}
        # Incremental state, valid for the snapshot ``_seen`` names.
        self._seen: tuple[object, int] | None = None
        self._slices: dict[ObjectId, dict[ObjectId, EndpointSlice]] = {}  # Service id -> its slices
        self._slice_service: dict[ObjectId, ObjectId] = {}  # slice id -> Service id
        self._placed: dict[ObjectId, _Fragment] = {}  # Service id -> the fragment resolved
        self._claims: dict[ServiceKey, set[ObjectId]] = {}  # owned key -> Services whose fragment has it
        self._services: dict[ServiceKey, VirtualService] = {}  # key -> the winner's virtual service
        self._health: dict[ServiceKey, HealthCheck] = {}  # key -> the winner's check (checked keys only)
        self._owners: dict[ServiceKey, ObjectId] = {}
        self._frag_events: dict[ObjectId, tuple[EventSpec, ...]] = {}
        self._conflicts: dict[ObjectId, tuple[EventSpec, ...]] = {}
        self.recomputed = 0  # Services recomputed by the last ``map`` call (for tests and the benchmark)
        self.allocated: IpamResult | None = None  # the last allocation (never None again once made)

    def node_names(self) -> dict[str, str]:
        """Eligible nodes' addresses -> their Node names."""
        return {str(a): t.name for t in self._targets for a in (t.v4, t.v6) if a is not None}

    def ipam_usage(self) -> dict[str, tuple[int, int]]:
        """Per pool: addresses in use, free (for /metrics)."""
        allocated = self.allocated
        used = {a for addrs in allocated.assigned.values() for a in addrs} if allocated is not None else set()
        usage = {}
        for pool in self.settings.pools:
            in_use = sum(1 for a in used if a in pool)
            usage[pool.name] = (in_use, pool.size() - in_use)
        return usage

    def map(self, snap: Snapshot, *, full: bool = False) -> MappingResult:
        """``full``: map the whole snapshot even when it carries the changes (the
        periodic full reconcile checks the incremental bookkeeping this way too)."""
        settings = self.settings
        changes = snap.changes
        incremental = (
            not full
            and changes is not None
            and self._seen is not None
            and self._seen == (changes.store, changes.since)
        )
        self._seen = None  # set again only when this map completes
        if incremental:
            assert changes is not None
            dirty = {oid for kind, oid in changes.ids if kind == "Service"}
            self._reindex_slices((oid for kind, oid in changes.ids if kind == "EndpointSlice"), snap, dirty)
        else:
            for index in (
                self._slices,
                self._slice_service,
                self._placed,
                self._claims,
                self._services,
                self._owners,
                self._frag_events,
                self._conflicts,
                self._health,
            ):
                index.clear()
            self._reindex_slices(snap.slices, snap, set())
            dirty = set(snap.services)

        # IPAM reads only a few fields of each Service: when none of them changed, the
        # allocation cannot have changed either (a port edit does not re-run it).
        # ``_ipam`` is None from the moment a key changes until ``allocate`` returns, so
        # a map interrupted in between cannot leave a stale allocation behind.
        old_ipam = self._ipam
        if incremental:
            for sid in [d for d in dirty if d in self._ipam_keys or d in snap.services]:
                svc = snap.services.get(sid)
                new_key = ipam_key(svc, settings) if svc is not None else None
                if new_key != self._ipam_keys.get(sid):
                    self._ipam = None
                    if new_key is None:
                        del self._ipam_keys[sid]
                    else:
                        self._ipam_keys[sid] = new_key
        else:
            keys = {sid: ipam_key(s, settings) for sid, s in snap.services.items()}
            if keys != self._ipam_keys:
                self._ipam = None
            self._ipam_keys = keys
        if self._ipam is None:
            ipam = self._ipam = self.allocated = allocate(snap.services.values(), settings)
            if incremental and old_ipam is not None:
                old = old_ipam.assigned
                dirty |= {s for s in old.keys() | ipam.assigned.keys() if old.get(s) != ipam.assigned.get(s)}
        else:
            ipam = self._ipam

        # The Services whose own inputs (object, slices, addresses) may have changed; a
        # node change makes the others dirty too, but only their real servers can change.
        inputs_dirty = set(dirty) if incremental else None
        targets = node_targets(snap.nodes.values(), settings)
        if targets == self._targets:
            targets = self._targets  # the fragments made for them hold this object
        else:
            self._every_node = {}  # the node set changed: every Service's real servers may change
            self._targets = targets
            dirty |= set(snap.services)

        # Recompute the dirty Services' fragments (the cache still saves the unchanged
        # ones: a full map of an unchanged snapshot recomputes nothing).
        recomputed = 0
        if not incremental:
            for sid in list(self._cache):
                if sid not in snap.services:
                    del self._cache[sid]
        updates: list[tuple[ObjectId, _Fragment | None]] = []
        remapped: dict[ObjectId, _Fragment] = {}  # Service -> the fragment its nodes were swapped in
        for sid in dirty:
            svc = snap.services.get(sid)
            if svc is None:
                self._cache.pop(sid, None)
                updates.append((sid, None))
                continue
            cached = self._cache.get(sid)
            frag: _Fragment | None
            if cached is not None and inputs_dirty is not None and sid not in inputs_dirty:
                inputs, frag = cached  # the same inputs as when it was made
            else:
                inputs = (
                    svc,
                    ipam.assigned.get(sid, ()),
                    tuple(self._slices_of(sid)) if svc.local_traffic else (),
                )
                frag = cached[1] if cached is not None and _same(cached[0], inputs) else None
            if frag is None or frag.targets is not targets:
                recomputed += 1
                if frag is not None and frag.shapes is not None:
                    # Only the nodes changed: nothing but the real servers can differ.
                    services = on_nodes(frag.services, frag.shapes, targets, self._every_node)
                    remapped[sid] = frag
                    frag = _Fragment(
                        services=services,
                        events=frag.events,
                        check=frag.check,
                        shapes=frag.shapes,
                        targets=targets,
                    )
                else:
                    assigned = ipam.assigned.get(sid, ())
                    slices = self._slices_of(sid)
                    vips, ev1 = service_vips(svc, assigned, settings)
                    vss, shapes, ev2 = service_fragment(
                        svc, vips, slices, targets, settings, self._every_node
                    )
                    check, ev3 = service_check(svc, settings, shapes)
                    frag = _Fragment(
                        services=tuple(vss),
                        events=tuple(ev1 + ev2 + ev3),
                        check=check if vss else None,
                        shapes=None if svc.local_traffic else tuple(shapes),
                        targets=targets,
                    )
                self._cache[sid] = (inputs, frag)
            updates.append((sid, frag))
        self.recomputed = recomputed
        if not incremental:
            # Oldest first, so that the desired state's order does not depend on the store's.
            updates.sort(key=lambda u: snap.services[u[0]].age_key)
        changed = self._resolve(updates, snap, remapped)

        # Events in an order that does not depend on the store's: IPAM's, then each
        # Service's own, then the VIP:port conflicts, oldest Service first.
        events = list(ipam.events)
        for sid in sorted(self._frag_events, key=lambda sid: snap.services[sid].age_key):
            events += self._frag_events[sid]
        for sid in sorted(self._conflicts, key=lambda sid: snap.services[sid].age_key):
            events += self._conflicts[sid]
        desired = DesiredState(
            services=dict(self._services), ownership=settings.ownership, health=dict(self._health)
        )
        result = MappingResult(
            desired=desired,
            owners=dict(self._owners),
            events=tuple(events),
            status=ipam.status,
            targets=targets,
            ipam=ipam,
            changed=frozenset(changed) if incremental else None,
        )
        if changes is not None:
            self._seen = (changes.store, changes.since + 1)
        return result

    def _slices_of(self, sid: ObjectId) -> list[EndpointSlice]:
        return sorted(self._slices.get(sid, {}).values(), key=lambda s: s.name)

    def _reindex_slices(self, ids: Iterable[ObjectId], snap: Snapshot, dirty: set[ObjectId]) -> None:
        """Move the slices ``ids`` to their current Service's group; both Services get dirty."""
        for slice_id in ids:
            old_sid = self._slice_service.pop(slice_id, None)
            if old_sid is not None:
                group = self._slices[old_sid]
                del group[slice_id]
                if not group:
                    del self._slices[old_sid]
                dirty.add(old_sid)
            sl = snap.slices.get(slice_id)
            if sl is not None and sl.service_name:
                sid = (sl.namespace, sl.service_name)
                self._slices.setdefault(sid, {})[slice_id] = sl
                self._slice_service[slice_id] = sid
                dirty.add(sid)

    def _resolve(
        self,
        updates: list[tuple[ObjectId, _Fragment | None]],
        snap: Snapshot,
        remapped: Mapping[ObjectId, _Fragment],
    ) -> set[ServiceKey]:
        """Place the updated fragments; a VIP:port claimed by several Services goes to
        the oldest. ``remapped``: the fragments whose real servers were swapped (all else
        the same). Returns the keys whose virtual service changed."""
        owns = self.settings.ownership.owns
        placed, claims, services, owners = self._placed, self._claims, self._services, self._owners
        touched: set[ServiceKey] = set()
        recheck: set[ObjectId] = set()  # Services whose conflict events may have changed
        changed: set[ServiceKey] = set()
        for sid, frag in updates:
            old = placed.get(sid)
            if old is not None and frag is not None and remapped.get(sid) is old:
                # Only its real servers changed (a node change): the claims and the
                # conflicts stay; the virtual services the Service holds are replaced.
                placed[sid] = frag
                for vs in frag.services:
                    if owners.get(vs.key) == sid and services[vs.key].realservers != vs.realservers:
                        services[vs.key] = vs
                        changed.add(vs.key)
                continue
            placed.pop(sid, None)
            self._frag_events.pop(sid, None)
            self._conflicts.pop(sid, None)
            if old is not None:
                for vs in old.services:
                    claimants = claims.get(vs.key)
                    if claimants is not None:
                        claimants.discard(sid)
                        touched.add(vs.key)
            if frag is None:
                continue
            placed[sid] = frag
            recheck.add(sid)
            if frag.events:
                self._frag_events[sid] = frag.events
            for vs in frag.services:
                if owns(vs.key):
                    claims.setdefault(vs.key, set()).add(sid)
                    touched.add(vs.key)
        health = self._health
        for key in touched:
            before = services.get(key), health.get(key)
            claimants = claims.get(key)
            if not claimants:
                claims.pop(key, None)
                services.pop(key, None)
                owners.pop(key, None)
                health.pop(key, None)
            else:
                if len(claimants) == 1:
                    [winner] = claimants
                else:
                    winner = min(claimants, key=lambda s: snap.services[s].age_key)
                    recheck |= claimants  # the losers' events name the holder
                services[key] = next(vs for vs in placed[winner].services if vs.key == key)
                owners[key] = winner
                check = placed[winner].check
                if check is None:
                    health.pop(key, None)
                else:
                    health[key] = check
                recheck.add(winner)
            if (services.get(key), health.get(key)) != before:  # a check of its own counts as a change
                changed.add(key)
        for sid in recheck:
            frag = placed.get(sid)
            if frag is None:
                continue
            events: list[EventSpec] = []
            for vs in frag.services:
                holder_id = owners.get(vs.key)  # every owned key of a placed fragment has one
                if holder_id == sid:
                    continue
                svc = snap.services[sid]
                if holder_id is None:
                    # Pools and external_ip_cidrs are checked to lie inside owned_cidrs, so
                    # this is a safety net: nothing outside the owned ranges is programmed.
                    events.append(
                        event(svc, "VIPNotOwned", f"{vs.key} is outside owned_cidrs; not programmed")
                    )
                    continue
                holder = snap.services[holder_id]
                events.append(
                    event(
                        svc,
                        "VIPPortConflict",
                        f"{vs.key} is already served for Service {holder.ref}, created earlier "
                        f"({holder.created}); this port is not programmed",
                    )
                )
            if events:
                self._conflicts[sid] = tuple(events)
            else:
                self._conflicts.pop(sid, None)
        return changed


def _same(a: tuple[object, ...], b: tuple[object, ...]) -> bool:
    # Objects are replaced, never mutated: identity first, equality as the fallback.
    return all(x is y or x == y for x, y in zip(a, b, strict=True))


def compute(snap: Snapshot, settings: KubeSettings) -> MappingResult:
    """The desired state of ``snap`` (no cache)."""
    return Mapper(settings).map(snap)


def vips_for_node(
    result: MappingResult, node_name: str, *, forwards: Iterable[Forward] = (Forward.DR, Forward.TUN)
) -> frozenset[IPAddress]:
    """The VIPs node ``node_name`` must hold (on lo, with arp_ignore=1/arp_announce=2) to
    serve its DR and TUN real servers (weight 0 included: their connections finish);
    empty for a node that is no real server. ``forwards=(Forward.TUN,)``: only the VIPs
    it serves by TUN (the node agent's mode)."""
    target = next((t for t in result.targets if t.name == node_name), None)
    if target is None:
        return frozenset()  # not an eligible node: it must hold no VIP
    mine = {a for a in (target.v4, target.v6) if a is not None}
    wanted = frozenset(forwards)
    return frozenset(
        key.address
        for key, vs in result.desired.services.items()
        if key.address is not None
        and any(rs.address in mine and rs.forward in wanted for rs in vs.realservers)
    )


def holding_view(snap: Snapshot, node_name: str) -> Snapshot:
    """``snap`` as the node agent of ``node_name`` maps it: its own node counts as
    eligible while it exists, even when it is NotReady, cordoned or being deleted.

    Those states are transient, and the director may still send the node the
    established connections of a graceful drain (weight 0). Holding the VIP while the
    director sends nothing new is harmless: arp_ignore/arp_announce stay set, so the
    node never answers or announces it. A node labelled
    ``node.kubernetes.io/exclude-from-external-load-balancers`` (a standing decision,
    not a drain) or deleted holds nothing. Everything else, including
    ``externalTrafficPolicy: Local`` without a local endpoint, is the director's
    mapping unchanged."""
    node = snap.nodes.get(("", node_name))
    if node is None or node.eligible or node.excluded:
        return snap
    nodes = dict(snap.nodes)
    nodes[node.id] = replace(node, ready=True, unschedulable=False, deleting=False)
    return replace(snap, nodes=nodes)  # the Mapper reads every node on every map: ``changes`` stays valid
