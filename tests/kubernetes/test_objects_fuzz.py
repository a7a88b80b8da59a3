"""The decoder of Kubernetes objects (sources/kubernetes/objects.py) against malformed
JSON: it never raises, keeps every field of its views to its declared type, skips
what does not fit and says why; the store and the mapping behind it keep working.

Why it must not raise: the watch hands every event to ``Store.apply`` (and every
re-list to ``Store.replace``) and catches only the API's errors, so one malformed
object used to end that kind's watch for good (a Service whose ``spec.ports`` was a
string raised AttributeError out of the watch task). The last test shows the watch
against the stand-in API server surviving exactly that.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kubelvs.model import Protocol
from kubelvs.sources.kubernetes.api import KubeApi
from kubelvs.sources.kubernetes.mapping import compute
from kubelvs.sources.kubernetes.objects import (
    MAX_AFFINITY_TIMEOUT,
    Endpoint,
    EndpointSlice,
    Node,
    Service,
    ServicePort,
    decode_object,
    object_id,
    parse_object,
)
from kubelvs.sources.kubernetes.tracker import KINDS, Store

from . import k8sobjects as k
from .apiserver import FakeApiServer
from .helpers import settings as kube_settings
from .test_watch import Watching, run_with_server, until

FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats()  # NaN and infinities too: json.loads accepts NaN and Infinity
    | st.text(max_size=10)
    | st.sampled_from(
        ["", "True", "False", "Ready", "TCP", "SCTP", "ICMP", "Local", "ClientIP", "10.240.0.201", "80"]
    )
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10,
)

NODES = ["node1", "node2", "node3"]


@st.composite
def good_objects(draw: st.DrawFn) -> dict[str, Any]:
    """A well-formed Service, EndpointSlice or Node, as the API server sends them."""
    kind = draw(st.sampled_from(KINDS))
    if kind == "Service":
        type_ = draw(st.sampled_from(["ClusterIP", "LoadBalancer", "NodePort", "ExternalName"]))
        return k.service(
            draw(st.sampled_from(["web", "db", "dns"])),
            type=type_,
            ports=draw(
                st.lists(
                    st.tuples(
                        st.sampled_from(["web", "tls", ""]),
                        st.sampled_from(["TCP", "UDP", "SCTP"]),
                        st.integers(1, 65535),
                    ),
                    max_size=3,
                    unique_by=lambda p: p[0],
                )
            ),
            external_ips=draw(
                st.lists(st.sampled_from(["10.240.0.201", "10.240.0.202", "2001:db8::1"]), max_size=2)
            ),
            annotations=draw(
                st.dictionaries(
                    st.sampled_from(["kubelvs.io/scheduler", "kubelvs.io/forward"]),
                    st.sampled_from(["mh", "rr", "dr", "nat", "bogus"]),
                    max_size=2,
                )
            ),
            local=draw(st.booleans()),
            affinity=draw(st.none() | st.integers(1, MAX_AFFINITY_TIMEOUT)),
            ingress=draw(st.lists(st.sampled_from(["10.240.0.225", "10.240.0.226"]), max_size=1)),
        )
    if kind == "EndpointSlice":
        endpoints = [
            k.endpoint(
                draw(st.sampled_from(NODES)),
                f"10.244.0.{i + 1}",
                ready=draw(st.booleans()),
                terminating=draw(st.booleans()),
            )
            for i in range(draw(st.integers(0, 3)))
        ]
        return k.endpointslice(draw(st.sampled_from(["web", "db"])), endpoints)
    return k.node(
        draw(st.sampled_from(NODES)),
        draw(st.sampled_from(["10.240.0.101", "10.240.0.102"])),
        ready=draw(st.booleans()),
        unschedulable=draw(st.booleans()),
    )


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a JSON value: dictionary keys and list indexes."""
    out = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            out += paths(item, (*prefix, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            out += paths(item, (*prefix, i))
    return out


def nest(value: Any, depth: int, as_list: bool) -> Any:
    for _ in range(depth):
        value = [value] if as_list else {"a": value}
    return value


@st.composite
def malformed_objects(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """A good object with one to three places broken: a value of another type, a key
    removed, or a value buried deep in lists or objects."""
    obj = draw(good_objects())
    kind = obj["kind"]
    obj = copy.deepcopy(obj)
    for _ in range(draw(st.integers(1, 3))):
        places = [p for p in paths(obj) if p and p != ("kind",)]
        if not places:
            break
        place = draw(st.sampled_from(places))
        parent: Any = obj
        for step in place[:-1]:
            parent = parent[step]
        last = place[-1]
        how = draw(st.sampled_from(["replace", "replace", "delete", "nest"]))
        if how == "delete" and isinstance(parent, dict):
            del parent[last]
        elif how == "nest":
            parent[last] = nest(parent[last], draw(st.integers(1, 400)), draw(st.booleans()))
        else:
            parent[last] = draw(json_values)
    return kind, obj


def assert_typed(parsed: Service | EndpointSlice | Node) -> None:
    """Every field of a view has the type the mapping relies on."""

    def texts(values: object) -> bool:
        return isinstance(values, tuple) and all(isinstance(v, str) for v in values)

    if isinstance(parsed, Service):
        for name in ("namespace", "name", "uid", "created", "type", "resource_version"):
            assert isinstance(getattr(parsed, name), str), name
        assert parsed.load_balancer_class is None or isinstance(parsed.load_balancer_class, str)
        assert parsed.load_balancer_ip is None or isinstance(parsed.load_balancer_ip, str)
        assert texts(parsed.external_ips) and texts(parsed.ingress_ips) and texts(parsed.ip_families)
        assert all(isinstance(kv, tuple) and len(kv) == 2 and texts(kv) for kv in parsed.annotations)
        for port in parsed.ports:
            assert isinstance(port, ServicePort) and isinstance(port.name, str)
            assert isinstance(port.protocol, Protocol)
            assert type(port.port) is int and 1 <= port.port <= 65535
            assert port.node_port is None or (type(port.node_port) is int and 1 <= port.node_port <= 65535)
        assert type(parsed.local_traffic) is bool
        assert type(parsed.affinity_timeout) is int and 0 <= parsed.affinity_timeout <= MAX_AFFINITY_TIMEOUT
    elif isinstance(parsed, EndpointSlice):
        for name in ("namespace", "name", "address_type", "resource_version"):
            assert isinstance(getattr(parsed, name), str), name
        assert parsed.service_name is None or isinstance(parsed.service_name, str)
        assert parsed.port_names is None or texts(parsed.port_names)
        for ep in parsed.endpoints:
            assert isinstance(ep, Endpoint)
            assert ep.node_name is None or isinstance(ep.node_name, str)
            assert type(ep.ready) is bool and type(ep.serving) is bool and type(ep.terminating) is bool
    else:
        assert isinstance(parsed, Node)
        assert isinstance(parsed.name, str) and isinstance(parsed.resource_version, str)
        assert all(isinstance(a, tuple) and len(a) == 2 and texts(a) for a in parsed.addresses)
        for name in ("ready", "unschedulable", "deleting", "excluded"):
            assert type(getattr(parsed, name)) is bool, name
    hash(parsed)  # the store compares and keys them


@FUZZ
@given(obj=good_objects())
def test_well_formed_objects_decode_without_problems(obj: dict[str, Any]) -> None:
    parsed, problems = decode_object(obj["kind"], obj)
    assert problems == []
    assert_typed(parsed)
    assert (parsed.namespace if not isinstance(parsed, Node) else "", parsed.name) == (
        object_id(obj) if obj["kind"] != "Node" else ("", obj["metadata"]["name"])
    )


@FUZZ
@given(case=malformed_objects())
def test_malformed_objects_decode_to_typed_views_and_never_raise(case: tuple[str, dict[str, Any]]) -> None:
    kind, obj = case
    parsed, problems = decode_object(kind, obj)
    assert_typed(parsed)
    assert all(isinstance(p, str) and ": " in p and len(p) < 400 for p in problems)
    ns, name = object_id(obj)
    assert isinstance(ns, str) and isinstance(name, str)


@FUZZ
@given(kind=st.sampled_from(KINDS), obj=json_values)
def test_any_json_at_all_decodes(kind: str, obj: Any) -> None:
    parsed, problems = decode_object(kind, obj)
    assert_typed(parsed)
    if not isinstance(obj, dict):
        assert problems[0].startswith("(object): must be an object")
    assert object_id(obj if isinstance(obj, dict) else {}) is not None


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)  # 60 ms each: the mapping
@given(
    cases=st.lists(malformed_objects() | good_objects().map(lambda o: (o["kind"], o)), min_size=1, max_size=8)
)
def test_the_store_and_the_mapping_take_whatever_the_decoder_gives(
    cases: list[tuple[str, dict[str, Any]]],
) -> None:
    store = Store()
    by_kind: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KINDS}
    for kind, obj in cases:
        by_kind[kind].append(obj)
    for kind in KINDS:  # a (re)list of each kind, as the watch does
        store.replace(kind, by_kind[kind])
    for kind, obj in cases:  # then each object again as a watch event
        store.apply(kind, "MODIFIED", obj)
    result = compute(store.snapshot(), kube_settings())
    assert result.desired is not None


def test_problems_name_the_field_and_what_was_done() -> None:
    svc = k.service("web", type="LoadBalancer", ports=[("web", "TCP", 80), ("tls", "TCP", 443)], affinity=60)
    svc["spec"]["ports"][0]["port"] = "80"
    svc["spec"]["ports"][1]["nodePort"] = 99999
    svc["spec"]["externalIPs"] = ["10.240.0.201", 7]
    svc["spec"]["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"] = float("nan")
    svc["metadata"]["annotations"] = {"kubelvs.io/scheduler": ["rr"]}
    parsed, problems = decode_object("Service", svc)
    assert problems == [
        "spec.ports[0].port: must be an integer, got '80'; ignored",
        "spec.ports[0]: no valid port number; this port is not served",
        "spec.ports[1].nodePort: must be between 1 and 65535, got 99999; ignored",
        "spec.sessionAffinityConfig.clientIP.timeoutSeconds: must be an integer, got nan; ignored",
        "spec.externalIPs[1]: must be a string, got 7; ignored",
        "metadata.annotations['kubelvs.io/scheduler']: must be a string, got a list; ignored",
    ]
    assert isinstance(parsed, Service)
    assert [(p.name, p.port, p.node_port) for p in parsed.ports] == [("tls", 443, None)]
    assert parsed.external_ips == ("10.240.0.201",) and parsed.annotations == ()
    assert parsed.affinity_timeout == 10800  # the default, as when the field is absent

    node = k.node("node1", "10.240.0.101")
    node["status"]["conditions"] = "Ready"
    parsed, problems = decode_object("Node", node)
    assert problems == ["status.conditions: must be a list, got 'Ready'; read as empty"]
    assert isinstance(parsed, Node) and not parsed.ready  # unreadable Ready: not a target

    eps = k.endpointslice("web", [k.endpoint("node1", "10.244.0.1")])
    eps["endpoints"][0]["conditions"]["ready"] = "false"  # a string "false" is not false, nor true
    parsed, problems = decode_object("EndpointSlice", eps)
    assert problems == ["endpoints[0].conditions.ready: must be true or false, got 'false'; read as unset"]
    assert (
        isinstance(parsed, EndpointSlice) and parsed.endpoints[0].ready
    )  # unset reads as ready (API reference)


def test_parse_object_logs_the_problems_once_per_object(caplog: pytest.LogCaptureFixture) -> None:
    svc = k.service("web", namespace="shop")
    svc["spec"]["ports"] = "80/TCP"
    with caplog.at_level(logging.WARNING, logger="kubelvs.kubernetes.objects"):
        parsed = parse_object("Service", svc)
    assert isinstance(parsed, Service) and parsed.ports == ()
    assert [r.getMessage() for r in caplog.records] == [
        "Service shop/web: malformed, parts skipped: spec.ports: must be a list, got '80/TCP'; read as empty"
    ]


def test_a_malformed_object_no_longer_ends_the_watch() -> None:
    # Before: parse_service iterated the string "80/TCP" and raised AttributeError out of
    # Store.apply, which ended watch_kind: every later change of every Service was lost.
    async def body(server: FakeApiServer, api: KubeApi) -> None:
        server.put(k.service("good", external_ips=["10.240.0.201"]))
        store = Store()
        w = Watching(api, "Service", store)
        try:
            await until(lambda: store.count("Service") == 1 and w.stats.watches == 1)
            bad = k.service("bad", external_ips=["10.240.0.202"])
            bad["spec"]["ports"] = "80/TCP"
            bad["spec"]["externalTrafficPolicy"] = {"Local": True}
            server.put(bad)
            server.put(k.service("later", external_ips=["10.240.0.203"]))
            await until(lambda: store.count("Service") == 3)
            assert not w.task.done()
            services = store.snapshot().services
            assert services[("default", "bad")].ports == () and not services[("default", "bad")].local_traffic
            assert [p.port for p in services[("default", "later")].ports] == [80]
            await asyncio.sleep(0)
            assert w.stats.errors == 0
        finally:
            await w.close()

    run_with_server(body)
