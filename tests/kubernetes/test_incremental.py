"""The incremental mapping (a snapshot carrying the store's changes) computes exactly
what a mapping of the whole snapshot computes, and only re-maps what changed."""

from __future__ import annotations

import random
from typing import Any

from kubelvs.app.director import DirectorOptions, DirectorProgram
from kubelvs.backends.memory import MemoryBackend
from kubelvs.model import recommended_sysctls
from kubelvs.planner import changed_services, service_of
from kubelvs.sources.config import Config
from kubelvs.sources.kubernetes import annotations as ann
from kubelvs.sources.kubernetes.desired import KubernetesSource
from kubelvs.sources.kubernetes.mapping import Mapper, MappingResult, Snapshot, compute
from kubelvs.sources.kubernetes.tracker import Store

from . import k8sobjects as k
from .helpers import key, settings

NODES = ("node1", "node2", "node3")
VIPS = ("10.240.0.200", "10.240.0.201", "10.240.0.202")  # few: Services collide on them


def _random_service(rng: random.Random, name: str) -> dict[str, Any]:
    ports = rng.choice(
        [[("web", "TCP", 80)], [("web", "TCP", 80), ("dns", "UDP", 53)], [("web", "TCP", 8080)]]
    )
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
    eps = [
        k.endpoint(
            n, f"10.230.{i}.{rng.randrange(250)}", ready=rng.random() < 0.7, terminating=rng.random() < 0.2
        )
        for i, n in enumerate(rng.sample(NODES, rng.randrange(0, 3)))
    ]
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
    store.apply(
        "Service", "MODIFIED", k.service("s3", external_ips=["10.240.0.203"], ports=[("web", "TCP", 8080)])
    )
    r = mapper.map(store.snapshot(take_changes=True))
    assert mapper.recomputed == 1
    assert r.changed == frozenset({key("10.240.0.203", 80), key("10.240.0.203", 8080)})
    assert r.desired.services[key("10.240.0.203", 8080)].name == "default/s3:web"
    store.apply(
        "Service", "MODIFIED", k.service("s4", external_ips=["10.240.0.204"], ports=[("web", "TCP", 8081)])
    )
    store.take_changes()  # someone else took the changes: this mapper cannot trust the next ones
    r = mapper.map(store.snapshot(take_changes=True))
    assert r.changed is None and key("10.240.0.204", 8081) in r.desired.services
    store.apply(
        "Service", "MODIFIED", k.service("s5", external_ips=["10.240.0.205"], ports=[("web", "TCP", 8082)])
    )
    r = mapper.map(store.snapshot(take_changes=True), full=True)
    assert r.changed is None and mapper.recomputed == 1  # everything compared, the cache still used
    store.apply(
        "Service", "MODIFIED", k.service("s6", external_ips=["10.240.0.206"], ports=[("web", "TCP", 8083)])
    )
    r = mapper.map(store.snapshot(take_changes=True))
    assert r.changed == frozenset({key("10.240.0.206", 80), key("10.240.0.206", 8083)})


def _program(backend: MemoryBackend | None = None) -> DirectorProgram:
    """The director program over a Kubernetes source whose store the test fills itself."""
    source = KubernetesSource(Config(), settings=settings())
    store = source.objects.store
    store.replace("Node", [k.node("node1", "10.240.0.101")])
    store.replace("EndpointSlice", [])
    return DirectorProgram(DirectorOptions(), source, backend or MemoryBackend())


def test_director_syncs_only_what_the_mapper_changed_and_recovers_from_a_refused_sync() -> None:
    refused: set[str] = set()
    backend = MemoryBackend(refuse=lambda op: "injected" if str(service_of(op)) in refused else None)
    program = _program(backend)
    store = program.source.objects.store  # type: ignore[attr-defined]
    store.replace("Service", [k.service(f"s{i}", external_ips=[f"10.240.0.{200 + i}"]) for i in range(5)])
    program.step(True)
    assert program.last_result is not None and program.last_result.full
    store.apply(
        "Service", "MODIFIED", k.service("s1", external_ips=["10.240.0.201"], ports=[("web", "TCP", 8080)])
    )
    program.step(False)
    result = program.last_result
    assert (
        not result.full and program.last_compared == 2 and len(result.applied) == 3
    )  # - :80, + :8080, its real server
    # A refused service: the rest goes ahead, the director drops its picture of the kernel,
    # so the next step reads the kernel whatever the mapper says changed.
    refused.add("TCP 10.240.0.202:8082")
    store.apply(
        "Service", "MODIFIED", k.service("s2", external_ips=["10.240.0.202"], ports=[("web", "TCP", 8082)])
    )
    program.step(False)
    assert [str(k) for k in program.director.failures] == ["TCP 10.240.0.202:8082"]
    assert "TCP 10.240.0.202:80" not in backend.table()  # its deletion went ahead
    refused.clear()
    store.apply("Service", "DELETED", k.service("s4"))
    program.director.clock = lambda: float("inf")  # the retry is due
    program.step(False)
    assert program.last_result.full and not program.director.failures
    assert set(backend.table()) == {
        "TCP 10.240.0.200:80",
        "TCP 10.240.0.201:8080",
        "TCP 10.240.0.202:8082",
        "TCP 10.240.0.203:80",
    }


def test_recommended_sysctls_follow_the_changed_services_only() -> None:
    program = _program()
    store = program.source.objects.store  # type: ignore[attr-defined]
    store.replace(
        "Service",
        [k.service(f"s{i}", type="NodePort", external_ips=[f"10.240.0.{200 + i}"]) for i in range(4)],
    )
    nat = {ann.FORWARD: "nat"}
    tracker = program.sysctls
    first = [True]

    def step(*edits: dict[str, Any]) -> dict[str, int]:
        for e in edits:
            store.apply("Service", "MODIFIED", e)
        program.step(first.pop() if first else False)
        desired = program.last_synced
        assert desired is not None
        # The same as recommended_sysctls over every service, without scanning them.
        assert dict(desired.sysctls) == recommended_sysctls(
            tracker.backend, tracker.kernel, desired.services.values()
        )
        return dict(desired.sysctls)

    assert step() == {}
    assert step(k.service("s1", type="NodePort", external_ips=["10.240.0.201"], annotations=nat)) == {
        "net.ipv4.ip_forward": 1
    }
    assert step(k.service("s2", type="NodePort", external_ips=["10.240.0.202"], annotations=nat)) == {
        "net.ipv4.ip_forward": 1
    }
    assert tracker.nat == {key("10.240.0.201", 80), key("10.240.0.202", 80)}
    assert step(k.service("s1", type="NodePort", external_ips=["10.240.0.201"])) == {"net.ipv4.ip_forward": 1}
    store.apply("Service", "DELETED", k.service("s2"))
    assert step() == {}
    assert tracker.nat == set()
