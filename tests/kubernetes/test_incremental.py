"""The incremental mapping (a snapshot carrying the store's changes) computes exactly
what a mapping of the whole snapshot computes, and only re-maps what changed."""

from __future__ import annotations

import random
from typing import Any

import pytest

from kubelvs.errors import ApplyError
from kubelvs.model import DesiredState
from kubelvs.planner import changed_services
from kubelvs.roles.director import Director
from kubelvs.sources.kubernetes import annotations as ann
from kubelvs.sources.kubernetes.mapping import Mapper, MappingResult, Snapshot, compute
from kubelvs.sources.kubernetes.reconciler import Reconciler
from kubelvs.sources.kubernetes.tracker import Store

from . import k8sobjects as k
from .helpers import key, settings
from .memory_backend import MemoryBackend

NODES = ("node1", "node2", "node3")
VIPS = ("10.240.0.200", "10.240.0.201", "10.240.0.202")  # few: Services collide on them


def _random_service(rng: random.Random, name: str) -> dict[str, Any]:
    ports = rng.choice([[("web", "TCP", 80)], [("web", "TCP", 80), ("dns", "UDP", 53)], [("web", "TCP", 8080)]])
    annotations: dict[str, str] = {}
    if rng.random() < 0.1:
        annotations[ann.SCHEDULER] = rng.choice(["mh", "nope"])  # "nope": an InvalidAnnotation event
    if rng.random() < 0.2:
        annotations[ann.ALLOW_SHARED_IP] = "shared"
    common: dict[str, Any] = {
        "ports": ports,
        "local": rng.random() < 0.5,
        "created": f"2026-11-20T10:00:0{rng.randrange(3)}Z",  # ties: broken by namespace/name
        "annotations": annotations or None,
    }
    if rng.random() < 0.5:
        ips = rng.sample(VIPS, rng.randrange(1, 3))
        if rng.random() < 0.1:
            ips.append("10.240.0.10")  # outside external_ip_cidrs: an event
        return k.service(name, external_ips=ips, **common)
    lb_ip = "10.240.0.230" if rng.random() < 0.2 else None
    ingress = ["10.240.0.231"] if rng.random() < 0.2 else None
    return k.service(name, type="LoadBalancer", lb_ip=lb_ip, ingress=ingress, **common)


def _random_slice(rng: random.Random, name: str) -> dict[str, Any]:
    eps = [k.endpoint(n, f"10.230.{i}.{rng.randrange(250)}", ready=rng.random() < 0.7, terminating=rng.random() < 0.2)
           for i, n in enumerate(rng.sample(NODES, rng.randrange(0, 3)))]
    # The slice's Service label can change: the slice moves to another Service.
    return k.endpointslice(f"s{rng.randrange(8)}", eps, name=name)


def _mutate(rng: random.Random, store: Store) -> None:
    kind = rng.choice(["Service", "Service", "EndpointSlice", "EndpointSlice", "Node"])
    if kind == "Service":
        name = f"s{rng.randrange(8)}"
        if rng.random() < 0.2:
            store.apply("Service", "DELETED", k.service(name))
        else:
            store.apply("Service", "MODIFIED", _random_service(rng, name))
    elif kind == "EndpointSlice":
        name = f"slice{rng.randrange(10)}"
        if rng.random() < 0.2:
            store.apply("EndpointSlice", "DELETED", k.endpointslice("x", [], name=name))
        else:
            store.apply("EndpointSlice", "MODIFIED", _random_slice(rng, name))
    else:
        i = rng.randrange(len(NODES))
        store.apply("Node", "MODIFIED", k.node(NODES[i], f"10.240.0.{101 + i}", ready=rng.random() < 0.8))


def _plain(snap: Snapshot) -> Snapshot:
    return Snapshot(services=snap.services, slices=snap.slices, nodes=snap.nodes)


def _view(r: MappingResult) -> tuple[object, ...]:
    # VirtualService equality ignores names (not kernel state): compare them too.
    services = {k_: (vs, vs.name) for k_, vs in r.desired.services.items()}
    return services, dict(r.owners), r.events, dict(r.status), r.targets


def test_incremental_map_equals_full_map_under_random_changes() -> None:
    rng = random.Random(20261126)
    s = settings()
    store = Store()
    store.replace("Node", [k.node(n, f"10.240.0.{101 + i}") for i, n in enumerate(NODES)])
    store.replace("Service", [_random_service(rng, f"s{i}") for i in range(8)])
    store.replace("EndpointSlice", [_random_slice(rng, f"slice{i}") for i in range(10)])
    mapper = Mapper(s)
    previous = mapper.map(store.snapshot(take_changes=True))
    assert previous.changed is None  # the first map is a whole one
    incremental = 0
    for step in range(400):
        for _ in range(rng.randrange(0, 4)):
            _mutate(rng, store)
        if rng.random() < 0.05:
            store.take_changes()  # a gap: the next map must notice it and map everything
        snap = store.snapshot(take_changes=True)
        result = mapper.map(snap, full=rng.random() < 0.05)  # full: as the periodic full reconcile does
        expected = compute(_plain(snap), s)
        assert _view(result) == _view(expected), f"step {step}"
        if result.changed is not None:
            incremental += 1
            assert result.changed == changed_services(previous.desired, result.desired), f"step {step}"
        previous = result
    assert incremental > 300


def test_one_edit_maps_one_service_and_a_gap_maps_all() -> None:
    store = Store()
    store.replace("Node", [k.node("node1", "10.240.0.101")])
    store.replace("Service", [k.service(f"s{i}", external_ips=[f"10.240.0.{200 + i}"]) for i in range(10)])
    store.replace("EndpointSlice", [])
    mapper = Mapper(settings())
    mapper.map(store.snapshot(take_changes=True))
    assert mapper.recomputed == 10
    store.apply("Service", "MODIFIED", k.service("s3", external_ips=["10.240.0.203"], ports=[("web", "TCP", 8080)]))
    r = mapper.map(store.snapshot(take_changes=True))
    assert mapper.recomputed == 1
    assert r.changed == {key("10.240.0.203", 80), key("10.240.0.203", 8080)}
    assert r.desired.services[key("10.240.0.203", 8080)].name == "default/s3:web"
    store.apply("Service", "MODIFIED", k.service("s4", external_ips=["10.240.0.204"], ports=[("web", "TCP", 8081)]))
    store.take_changes()  # someone else took the changes: this mapper cannot trust the next ones
    r = mapper.map(store.snapshot(take_changes=True))
    assert r.changed is None and key("10.240.0.204", 8081) in r.desired.services
    store.apply("Service", "MODIFIED", k.service("s5", external_ips=["10.240.0.205"], ports=[("web", "TCP", 8082)]))
    r = mapper.map(store.snapshot(take_changes=True), full=True)
    assert r.changed is None and mapper.recomputed == 1  # everything compared, the cache still used
    store.apply("Service", "MODIFIED", k.service("s6", external_ips=["10.240.0.206"], ports=[("web", "TCP", 8083)]))
    r = mapper.map(store.snapshot(take_changes=True))
    assert r.changed == {key("10.240.0.206", 80), key("10.240.0.206", 8083)}


def test_reconciler_syncs_only_what_the_mapper_changed_and_recovers_from_a_failed_sync() -> None:
    s = settings()
    store = Store()
    store.replace("Node", [k.node("node1", "10.240.0.101")])
    store.replace("Service", [k.service(f"s{i}", external_ips=[f"10.240.0.{200 + i}"]) for i in range(5)])
    store.replace("EndpointSlice", [])
    backend = MemoryBackend()
    rec = Reconciler(s, base=DesiredState(ownership=s.ownership), director=Director(backend))
    assert rec.reconcile(store.snapshot(take_changes=True), full=True).full
    store.apply("Service", "MODIFIED", k.service("s1", external_ips=["10.240.0.201"], ports=[("web", "TCP", 8080)]))
    report = rec.reconcile(store.snapshot(take_changes=True))
    assert not report.full and report.changed == 2 and report.ops == 3  # - :80, + :8080 and its real server
    # A failed sync: the mapper moved on, the kernel did not. The next incremental
    # reconcile must not trust the mapper's "changed" (relative to a state never synced).
    store.apply("Service", "MODIFIED", k.service("s2", external_ips=["10.240.0.202"], ports=[("web", "TCP", 8082)]))
    backend.fail_next_apply = True
    with pytest.raises(ApplyError):
        rec.reconcile(store.snapshot(take_changes=True))
    store.apply("Service", "DELETED", k.service("s4"))
    report = rec.reconcile(store.snapshot(take_changes=True))
    assert report.changed == 3  # s2's :80 and :8082 (never synced) and s4's :80, against the last synced state
    assert set(backend.table()) == {"TCP 10.240.0.200:80", "TCP 10.240.0.201:8080", "TCP 10.240.0.202:8082", "TCP 10.240.0.203:80"}


def test_recommended_sysctls_follow_the_changed_services_only() -> None:
    from kubelvs.model import recommended_sysctls
    from kubelvs.sources.kubernetes.runner import RecommendedSysctls

    s = settings()
    store = Store()
    store.replace("Node", [k.node("node1", "10.240.0.101")])
    store.replace("Service", [k.service(f"s{i}", type="NodePort", external_ips=[f"10.240.0.{200 + i}"]) for i in range(4)])
    store.replace("EndpointSlice", [])
    extra = RecommendedSysctls("nftables", (6, 1))
    rec = Reconciler(s, base=DesiredState(ownership=s.ownership), extra_sysctls=extra)
    nat = {ann.FORWARD: "nat"}

    def step(*edits: dict[str, Any]) -> dict[str, int]:
        for e in edits:
            store.apply("Service", "MODIFIED", e)
        _, desired = rec.compute(store.snapshot(take_changes=True))
        # The same as recommended_sysctls over every service, without scanning them.
        assert dict(desired.sysctls) == recommended_sysctls("nftables", (6, 1), desired.services.values())
        return dict(desired.sysctls)

    assert step() == {}
    assert step(k.service("s1", type="NodePort", external_ips=["10.240.0.201"], annotations=nat)) == {"net.ipv4.ip_forward": 1}
    assert step(k.service("s2", type="NodePort", external_ips=["10.240.0.202"], annotations=nat)) == {"net.ipv4.ip_forward": 1}
    assert extra.nat == {key("10.240.0.201", 80), key("10.240.0.202", 80)}
    assert step(k.service("s1", type="NodePort", external_ips=["10.240.0.201"])) == {"net.ipv4.ip_forward": 1}
    store.apply("Service", "DELETED", k.service("s2"))
    assert step() == {}
    assert extra.nat == set()
