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

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from ...model import (
    KNOWN_SCHEDULERS,
    SCHED_FLAGS,
    CheckKind,
    CheckMode,
    DesiredState,
    Forward,
    HealthCheck,
    IPAddress,
    RealServer,
    ServiceKey,
    VirtualService,
)
from ...model.validate import MAX_TIMEOUT, MAX_WEIGHT
from . import annotations as ann
from .ipam import IpamResult, allocate, ipam_key
from .objects import EndpointSlice, EventSpec, Node, ObjectId, Service
from .settings import KubeSettings
from .snapshot import MappingResult, NodeTarget, Snapshot, SnapshotChanges

__all__ = ["Mapper", "MappingResult", "NodeTarget", "Snapshot", "SnapshotChanges", "compute", "holding_view", "vips_for_node"]


def node_targets(nodes: Iterable[Node], settings: KubeSettings) -> tuple[NodeTarget, ...]:
    """Eligible nodes with their address per family, sorted by name."""
    out = []
    for node in sorted(nodes, key=lambda n: n.name):
        if not node.eligible:
            continue
        found: dict[int, IPAddress] = {}
        for wanted in settings.node_address_types:
            for type_, text in node.addresses:
                if type_ != wanted:
                    continue
                try:
                    ip = ipaddress.ip_address(text)
                except ValueError:
                    continue
                found.setdefault(ip.version, ip)
        if found:
            out.append(NodeTarget(node.name, found.get(4), found.get(6)))
    return tuple(out)


def _event(svc: Service, reason: str, message: str, type_: str = "Warning") -> EventSpec:
    return EventSpec(svc.namespace, svc.name, svc.uid, reason, message, type_)


@dataclass(frozen=True, slots=True)
class _Fragment:
    services: tuple[VirtualService, ...]
    events: tuple[EventSpec, ...]
    check: HealthCheck | None = None  # the health check of every virtual service of the Service


def service_vips(svc: Service, assigned: Sequence[IPAddress], settings: KubeSettings) -> tuple[list[IPAddress], list[EventSpec]]:
    """The Service's VIPs: allowed externalIPs, then its assigned LoadBalancer addresses."""
    vips: list[IPAddress] = []
    events: list[EventSpec] = []
    if svc.type == "ExternalName":
        return vips, events
    allowed = ", ".join(str(c) for c in settings.external_ip_cidrs) or "none"
    for text in svc.external_ips:
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            events.append(_event(svc, "InvalidExternalIP", f"externalIPs: {text!r} is not an IP address"))
            continue
        if not settings.external_ip_allowed(ip):
            events.append(
                _event(
                    svc,
                    "ExternalIPNotAllowed",
                    f"externalIP {ip} is outside the allowed ranges (kubernetes.external_ip_cidrs: {allowed}); "
                    "not programmed (an arbitrary externalIP could capture another destination's traffic, CVE-2020-8554)",
                )
            )
            continue
        pool = next((p for p in settings.pools if ip in p), None)
        if pool is not None:
            events.append(
                _event(
                    svc,
                    "ExternalIPInPool",
                    f"externalIP {ip} is inside LoadBalancer pool {pool.name}, whose addresses only IPAM assigns; "
                    f"not programmed (ask for it with type LoadBalancer and {ann.LOAD_BALANCER_IPS})",
                )
            )
            continue
        if ip not in vips:
            vips.append(ip)
    for ip in assigned:
        if ip not in vips:
            vips.append(ip)
    return vips, events


_CHECK_KINDS = {"tcp": CheckKind.TCP, "http": CheckKind.HTTP, "https": CheckKind.HTTPS}


def service_check(
    svc: Service, settings: KubeSettings, services: Sequence[VirtualService]
) -> tuple[HealthCheck | None, list[EventSpec]]:
    """The check of the Service's real servers (the nodes): by default kube-proxy's
    ``/healthz`` on its health port for externalTrafficPolicy Cluster (is the node's
    proxy alive), the Service's ``healthCheckNodePort`` for Local (does the node have a
    ready endpoint); the annotations choose another or none."""
    chosen = (svc.annotation(ann.HEALTH_CHECK) or "default").strip().lower()
    if chosen == "none" or (chosen == "default" and settings.health is None):
        return None, []
    base = settings.health or HealthCheck(kind=CheckKind.HTTP, path="/healthz")
    node_port = svc.health_check_node_port if svc.local_traffic else None
    default = replace(base, kind=CheckKind.HTTP, path="/healthz", port=node_port or settings.kube_proxy_health_port)
    bad: list[str] = []
    if chosen == "default":
        check = default
    elif chosen in _CHECK_KINDS:
        check = replace(base, kind=_CHECK_KINDS[chosen], path=svc.annotation(ann.HEALTH_PATH) or "/healthz", port=None)
        port_text = svc.annotation(ann.HEALTH_PORT)
        if port_text is not None:
            if port_text.isdigit() and 1 <= int(port_text) <= 65535:
                check = replace(check, port=int(port_text))
            else:
                bad.append(f"{ann.HEALTH_PORT}: {port_text!r} is not a port number")
        if not check.path.startswith("/"):
            bad.append(f"{ann.HEALTH_PATH}: {check.path!r} must start with /")
    else:
        bad.append(f"{ann.HEALTH_CHECK}: {chosen!r} is not default, none, tcp, http or https")
        check = default
    mode = (svc.annotation(ann.HEALTH_MODE) or "direct").strip().lower()
    if mode == "vip":
        if check.kind is not CheckKind.TCP:
            bad.append(f"{ann.HEALTH_MODE}: vip probes a TCP handshake through the data path: use {ann.HEALTH_CHECK}: tcp")
        elif any(rs.forward is Forward.NAT for vs in services for rs in vs.realservers):
            bad.append(f"{ann.HEALTH_MODE}: vip needs forward dr or tun")
        else:
            check = replace(check, mode=CheckMode.VIP)
    elif mode != "direct":
        bad.append(f"{ann.HEALTH_MODE}: {mode!r} is not direct or vip")
    if bad:
        message = "; ".join(bad) + "; the default check is used"
        return (default if settings.health is not None else None), [_event(svc, "InvalidAnnotation", message)]
    return check, []


def service_fragment(
    svc: Service,
    vips: Sequence[IPAddress],
    slices: Sequence[EndpointSlice],
    targets: Sequence[NodeTarget],
    settings: KubeSettings,
) -> tuple[list[VirtualService], list[EventSpec]]:
    """The virtual services of one Service (before conflicts between Services are resolved)."""
    events: list[EventSpec] = []
    if not vips or not svc.ports:
        return [], events
    forward_text = svc.annotation(ann.FORWARD)
    scheduler = svc.annotation(ann.SCHEDULER) or settings.default_scheduler
    flags_text = svc.annotation(ann.SCHEDULER_FLAGS) or ""
    flags = frozenset(f.strip() for f in flags_text.split(",") if f.strip())
    bad = []
    if forward_text is not None and forward_text not in ("dr", "tun", "nat"):
        bad.append(f"{ann.FORWARD}: {forward_text!r} is not dr, tun or nat")
    if scheduler not in KNOWN_SCHEDULERS:
        bad.append(f"{ann.SCHEDULER}: unknown IPVS scheduler {scheduler!r}")
    elif flags - SCHED_FLAGS.get(scheduler, frozenset()):
        bad.append(
            f"{ann.SCHEDULER_FLAGS}: {', '.join(sorted(flags - SCHED_FLAGS.get(scheduler, frozenset())))} "
            f"not valid with scheduler {scheduler}"
        )
    if bad:
        events.append(_event(svc, "InvalidAnnotation", "; ".join(bad) + "; the Service is not programmed"))
        return [], events
    forward = Forward(forward_text) if forward_text else settings.default_forward
    persistence = min(svc.affinity_timeout, MAX_TIMEOUT)

    out: list[VirtualService] = []
    for port in svc.ports:
        if forward is Forward.NAT and not port.node_port:
            events.append(
                _event(
                    svc,
                    "NATNeedsNodePort",
                    f"port {port.name or port.port}: forward nat sends to nodeIP:nodePort, and this port has no nodePort; "
                    "not programmed",
                )
            )
            continue
        rs_port = port.node_port if forward is Forward.NAT else port.port
        assert rs_port is not None
        for vip in vips:
            weights = _weights(svc, port.name, vip.version, slices, targets)
            realservers = []
            for target, weight in weights:
                address = target.address(vip.version)
                assert address is not None
                realservers.append(RealServer(address, rs_port, weight, forward))
            key = ServiceKey(vip.version, port.protocol, vip, port.port)
            out.append(
                VirtualService(
                    key=key,
                    scheduler=scheduler,
                    persistence=persistence,
                    flags=flags,
                    name=f"{svc.namespace}/{svc.name}:{port.name or port.port}",
                ).with_realservers(realservers)
            )
    return out, events


def _weights(
    svc: Service, port_name: str, family: int, slices: Sequence[EndpointSlice], targets: Sequence[NodeTarget]
) -> list[tuple[NodeTarget, int]]:
    usable = [t for t in targets if t.address(family) is not None]
    if not svc.local_traffic:
        return [(t, 1) for t in usable]
    ready: dict[str, int] = {}
    terminating: dict[str, int] = {}
    address_type = f"IPv{family}"
    for sl in slices:
        if sl.address_type != address_type:
            continue  # dual-stack Services have a slice per family: count each pod once
        if sl.port_names is not None and port_name not in sl.port_names:
            continue
        for ep in sl.endpoints:
            if not ep.node_name:
                continue
            if ep.ready and not ep.terminating:
                ready[ep.node_name] = ready.get(ep.node_name, 0) + 1
            elif ep.serving and ep.terminating:
                terminating[ep.node_name] = terminating.get(ep.node_name, 0) + 1
    out = []
    for t in usable:
        if ready.get(t.name):
            out.append((t, min(ready[t.name], MAX_WEIGHT)))
        elif terminating.get(t.name):
            out.append((t, 0))  # weight 0: established connections finish, new ones go elsewhere
    return out


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

    def map(self, snap: Snapshot, *, full: bool = False) -> MappingResult:
        """``full``: map the whole snapshot even when it carries the changes (the
        periodic full reconcile checks the incremental bookkeeping this way too)."""
        settings = self.settings
        changes = snap.changes
        incremental = (
            not full and changes is not None and self._seen is not None and self._seen == (changes.store, changes.since)
        )
        self._seen = None  # set again only when this map completes
        if incremental:
            assert changes is not None
            dirty = {oid for kind, oid in changes.ids if kind == "Service"}
            self._reindex_slices((oid for kind, oid in changes.ids if kind == "EndpointSlice"), snap, dirty)
        else:
            for index in (self._slices, self._slice_service, self._placed, self._claims, self._services, self._owners,
                          self._frag_events, self._conflicts, self._health):
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
            ipam = self._ipam = allocate(snap.services.values(), settings)
            if incremental and old_ipam is not None:
                old = old_ipam.assigned
                dirty |= {s for s in old.keys() | ipam.assigned.keys() if old.get(s) != ipam.assigned.get(s)}
        else:
            ipam = self._ipam

        targets = node_targets(snap.nodes.values(), settings)
        if targets != self._targets:
            self._cache.clear()  # the node set changed: every Service's real servers may change
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
        for sid in dirty:
            svc = snap.services.get(sid)
            if svc is None:
                self._cache.pop(sid, None)
                updates.append((sid, None))
                continue
            slices = sorted(self._slices.get(sid, {}).values(), key=lambda s: s.name)
            assigned = ipam.assigned.get(sid, ())
            inputs = (svc, assigned, tuple(slices) if svc.local_traffic else ())
            cached = self._cache.get(sid)
            if cached is not None and _same(cached[0], inputs):
                frag = cached[1]
            else:
                recomputed += 1
                vips, ev1 = service_vips(svc, assigned, settings)
                vss, ev2 = service_fragment(svc, vips, slices, targets, settings)
                check, ev3 = service_check(svc, settings, vss)
                frag = _Fragment(tuple(vss), tuple(ev1 + ev2 + ev3), check if vss else None)
                self._cache[sid] = (inputs, frag)
            updates.append((sid, frag))
        self.recomputed = recomputed
        if not incremental:
            # Oldest first, so that the desired state's order does not depend on the store's.
            updates.sort(key=lambda u: snap.services[u[0]].age_key)
        changed = self._resolve(updates, snap)

        # Events in an order that does not depend on the store's: IPAM's, then each
        # Service's own, then the VIP:port conflicts, oldest Service first.
        events = list(ipam.events)
        for sid in sorted(self._frag_events, key=lambda sid: snap.services[sid].age_key):
            events += self._frag_events[sid]
        for sid in sorted(self._conflicts, key=lambda sid: snap.services[sid].age_key):
            events += self._conflicts[sid]
        desired = DesiredState(services=dict(self._services), ownership=settings.ownership, health=dict(self._health))
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

    def _resolve(self, updates: list[tuple[ObjectId, _Fragment | None]], snap: Snapshot) -> set[ServiceKey]:
        """Place the updated fragments; a VIP:port claimed by several Services goes to
        the oldest. Returns the keys whose virtual service changed."""
        owns = self.settings.ownership.owns
        placed, claims, services, owners = self._placed, self._claims, self._services, self._owners
        touched: set[ServiceKey] = set()
        recheck: set[ObjectId] = set()  # Services whose conflict events may have changed
        for sid, frag in updates:
            old = placed.pop(sid, None)
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
        changed: set[ServiceKey] = set()
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
                    events.append(_event(svc, "VIPNotOwned", f"{vs.key} is outside owned_cidrs; not programmed"))
                    continue
                holder = snap.services[holder_id]
                events.append(
                    _event(
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
        if key.address is not None and any(rs.address in mine and rs.forward in wanted for rs in vs.realservers)
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
