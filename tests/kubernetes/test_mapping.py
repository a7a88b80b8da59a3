"""Every row of the mapping table in docs/kubernetes.md, on real object JSON."""

from __future__ import annotations

from ipaddress import ip_address, ip_network
from typing import TypedDict

import pytest

from kubelvs.errors import ConfigError
from kubelvs.model import Ownership, validate
from kubelvs.sources.kubernetes.mapping import Mapper, compute, vips_for_node
from kubelvs.sources.kubernetes.settings import parse_kubernetes

from . import k8sobjects as k
from .helpers import WHOAMI_SECTION, key, reasons, rs_table, run, settings, snapshot

NODES = [k.node("node1", "10.240.0.101"), k.node("node2", "10.240.0.102")]


class NodeState(TypedDict, total=False):
    """The keyword arguments of ``k.node`` that take a node out of service."""

    ready: bool
    unschedulable: bool
    deleting: bool


ANN = "kubelvs.io/"


def test_whoami_external_ip_dr_to_every_node() -> None:
    r = run(k.whoami_objects())
    assert list(r.desired.services) == [key("10.240.0.201", 80)]
    vs = r.desired.services[key("10.240.0.201", 80)]
    assert vs.scheduler == "mh" and vs.persistence == 0 and vs.name == "default/whoami:web"
    assert rs_table(r, "10.240.0.201", 80) == [("10.240.0.101", 80, 1, "dr"), ("10.240.0.102", 80, 1, "dr")]
    assert r.events == ()
    assert not validate(list(r.desired.services.values()), ownership=r.desired.ownership)
    assert vips_for_node(r, "node1") == {ip_address("10.240.0.201")}


def test_external_ip_outside_allowed_cidrs_is_rejected_with_event() -> None:
    svc = k.service("evil", external_ips=["10.240.0.10", "8.8.8.8", "10.240.0.201"])
    r = run([*NODES, svc])
    assert list(r.desired.services) == [key("10.240.0.201", 80)]
    msgs = [e.message for e in r.events if e.reason == "ExternalIPNotAllowed"]
    assert len(msgs) == 2
    assert msgs[0].startswith(
        "externalIP 10.240.0.10 is outside the allowed ranges (kubernetes.external_ip_cidrs: 10.240.0.192/26)"
    )
    assert "CVE-2020-8554" in msgs[0] and "8.8.8.8" in msgs[1]
    assert all(e.type == "Warning" and e.name == "evil" for e in r.events)


def test_external_ip_inside_a_pool_is_rejected() -> None:
    r = run([*NODES, k.service("grab", external_ips=["10.240.0.225"])])
    assert r.desired.services == {}
    assert reasons(r) == [("default/grab", "ExternalIPInPool")]


def test_load_balancer_gets_pool_address_and_status() -> None:
    svc = k.service("lb", type="LoadBalancer", ports=[("http", "TCP", 80), ("dns", "UDP", 53)])
    r = run([*NODES, svc])
    assert set(r.desired.services) == {key("10.240.0.225", 80), key("10.240.0.225", 53, "udp")}
    assert rs_table(r, "10.240.0.225", 53, "udp") == [
        ("10.240.0.101", 53, 1, "dr"),
        ("10.240.0.102", 53, 1, "dr"),
    ]
    assert r.status == {("default", "lb"): ("10.240.0.225",)}
    assert [(e.reason, e.type) for e in r.events] == [("IPAllocated", "Normal")]


def test_load_balancer_class_filter() -> None:
    ours = k.service("ours", type="LoadBalancer", lb_class="kubelvs.io/lvs", created="2026-11-20T10:00:00Z")
    other = k.service(
        "other",
        type="LoadBalancer",
        lb_class="metallb.io/x",
        ingress=["10.240.0.230"],
        created="2026-11-20T10:00:01Z",
    )
    unclassed = k.service("plain", type="LoadBalancer", created="2026-11-20T10:00:02Z")
    r = run([*NODES, ours, other, unclassed])
    assert set(r.status) == {("default", "ours"), ("default", "plain")}  # "other" never touched
    assert {k_.address for k_ in r.desired.services} == {
        ip_address("10.240.0.225"),
        ip_address("10.240.0.226"),
    }
    section = {"lb_pools": [{"name": "default", "cidrs": ["10.240.0.224/28"]}], "manage_unclassed": False}
    r2 = run([*NODES, ours, other, unclassed], section)
    assert set(r2.status) == {("default", "ours")}


def test_forward_annotation_tun_and_nat() -> None:
    tun = k.service("t", external_ips=["10.240.0.201"], annotations={ANN + "forward": "tun"})
    nat = k.service(
        "n",
        type="LoadBalancer",
        node_ports={"web": 31080},
        annotations={ANN + "forward": "nat"},
        created="2026-11-20T11:00:00Z",
    )
    r = run([*NODES, tun, nat])
    assert rs_table(r, "10.240.0.201", 80) == [("10.240.0.101", 80, 1, "tun"), ("10.240.0.102", 80, 1, "tun")]
    assert rs_table(r, "10.240.0.225", 80) == [
        ("10.240.0.101", 31080, 1, "nat"),
        ("10.240.0.102", 31080, 1, "nat"),
    ]
    assert vips_for_node(r, "node2") == {ip_address("10.240.0.201")}  # NAT needs no VIP on the node


def test_nat_without_node_port_is_refused() -> None:
    r = run([*NODES, k.service("n", external_ips=["10.240.0.201"], annotations={ANN + "forward": "nat"})])
    assert r.desired.services == {}
    assert reasons(r) == [("default/n", "NATNeedsNodePort")]


def test_scheduler_annotation_flags_and_invalid() -> None:
    good = k.service(
        "g",
        external_ips=["10.240.0.201"],
        annotations={ANN + "scheduler": "mh", ANN + "scheduler-flags": "mh-port"},
    )
    wrr = k.service("w", external_ips=["10.240.0.202"], annotations={ANN + "scheduler": "wrr"})
    bad = k.service(
        "b",
        external_ips=["10.240.0.203"],
        annotations={ANN + "scheduler": "fastest", ANN + "forward": "magic"},
    )
    r = run([*NODES, good, wrr, bad])
    assert r.desired.services[key("10.240.0.201", 80)].flags == {"mh-port", "mh-fallback"}
    assert r.desired.services[key("10.240.0.202", 80)].scheduler == "wrr"
    assert key("10.240.0.203", 80) not in r.desired.services
    [ev] = r.events
    assert (
        ev.reason == "InvalidAnnotation"
        and "'magic' is not dr, tun or nat" in ev.message
        and "'fastest'" in ev.message
    )


def test_active_active_directors_hash_the_port_by_default() -> None:
    """With ``bgp:`` (directors sharing flows) a Service without scheduler annotations gets
    ``mh`` with port hashing; annotations and an explicit default still win. ``mh`` always
    falls back (a weight-0 node must not refuse the connections hashed to it)."""
    plain = k.service("p", external_ips=["10.240.0.201"])
    chosen = k.service("c", external_ips=["10.240.0.202"], annotations={ANN + "scheduler": "mh"})
    section = {**WHOAMI_SECTION, "external_ip_cidrs": ["10.240.0.192/27"], "health": {"enabled": False}}
    owned = Ownership(cidrs=(ip_network("10.240.0.0/24"),))
    shared = compute(snapshot([*NODES, plain, chosen]), parse_kubernetes(section, owned, multi_director=True))
    assert shared.desired.services[key("10.240.0.201", 80)].flags == {"mh-port", "mh-fallback"}
    assert shared.desired.services[key("10.240.0.202", 80)].flags == {"mh-fallback"}
    alone = compute(snapshot([*NODES, plain]), parse_kubernetes(section, owned))
    assert alone.desired.services[key("10.240.0.201", 80)].flags == {"mh-fallback"}
    told = parse_kubernetes({**section, "default_scheduler_flags": []}, owned, multi_director=True)
    assert told.default_scheduler_flags == frozenset()
    assert (
        parse_kubernetes(
            {**section, "default_scheduler": "rr"}, owned, multi_director=True
        ).default_scheduler_flags
        == frozenset()
    )
    with pytest.raises(ConfigError) as caught:
        parse_kubernetes(
            {**section, "default_scheduler": "rr", "default_scheduler_flags": ["mh-port"]}, owned
        )
    assert "kubernetes.default_scheduler_flags: mh-port not valid with scheduler rr" in str(caught.value)


def test_sctp_and_multiple_external_ips() -> None:
    svc = k.service(
        "m", external_ips=["10.240.0.201", "10.240.0.202"], ports=[("a", "TCP", 80), ("s", "SCTP", 9000)]
    )
    r = run([*NODES, svc])
    assert set(r.desired.services) == {
        key("10.240.0.201", 80),
        key("10.240.0.202", 80),
        key("10.240.0.201", 9000, "sctp"),
        key("10.240.0.202", 9000, "sctp"),
    }


def test_session_affinity_maps_to_persistence() -> None:
    r = run([*NODES, k.service("a", external_ips=["10.240.0.201"], affinity=600)])
    assert r.desired.services[key("10.240.0.201", 80)].persistence == 600
    svc = k.service("b", external_ips=["10.240.0.202"])
    svc["spec"]["sessionAffinity"] = "ClientIP"  # no config: the API default, 10800 s
    r = run([*NODES, svc])
    assert r.desired.services[key("10.240.0.202", 80)].persistence == 10800


def test_local_policy_weights_by_ready_local_endpoints() -> None:
    nodes = [*NODES, k.node("node3", "10.240.0.103")]
    svc = k.service("l", type="LoadBalancer", local=True)
    eps = k.endpointslice(
        "l",
        [
            k.endpoint("node1", "10.230.1.5"),
            k.endpoint("node1", "10.230.1.6"),
            k.endpoint("node1", "10.230.1.7"),
            k.endpoint("node2", "10.230.2.5"),
            k.endpoint("node2", "10.230.2.6", ready=False, serving=False),  # not ready: not counted
        ],
    )
    r = run([*nodes, svc, eps])
    # node3 hosts no endpoint: no real server
    assert rs_table(r, "10.240.0.225", 80) == [("10.240.0.101", 80, 3, "dr"), ("10.240.0.102", 80, 1, "dr")]
    assert vips_for_node(r, "node3") == frozenset()


def test_local_policy_counts_endpoints_over_several_slices_and_only_the_vip_family() -> None:
    svc = k.service("l", external_ips=["10.240.0.201"], local=True)
    s1 = k.endpointslice("l", [k.endpoint("node1", "10.230.1.5")], name="l-1")
    s2 = k.endpointslice("l", [k.endpoint("node1", "10.230.1.6")], name="l-2")
    v6 = k.endpointslice("l", [k.endpoint("node1", "fd00::5")], name="l-v6", address_type="IPv6")
    other_port = k.endpointslice(
        "l", [k.endpoint("node2", "10.230.2.5")], name="l-3", ports=[("metrics", "TCP", 9090)]
    )
    r = run([*NODES, svc, s1, s2, v6, other_port])
    assert rs_table(r, "10.240.0.201", 80) == [("10.240.0.101", 80, 2, "dr")]


def test_terminating_endpoints_get_weight_zero_then_go() -> None:
    svc = k.service("l", external_ips=["10.240.0.201"], local=True)
    eps = k.endpointslice(
        "l",
        [
            k.endpoint("node1", "10.230.1.5"),
            k.endpoint("node2", "10.230.2.5", ready=False, serving=True, terminating=True),
        ],
    )
    r = run([*NODES, svc, eps])
    assert rs_table(r, "10.240.0.201", 80) == [("10.240.0.101", 80, 1, "dr"), ("10.240.0.102", 80, 0, "dr")]
    gone = k.endpointslice(
        "l",
        [
            k.endpoint("node1", "10.230.1.5"),
            k.endpoint("node2", "10.230.2.5", ready=False, serving=False, terminating=True),
        ],
    )
    r = run([*NODES, svc, gone])
    assert rs_table(r, "10.240.0.201", 80) == [("10.240.0.101", 80, 1, "dr")]


def test_not_ready_cordoned_deleting_and_excluded_nodes_are_removed() -> None:
    nodes = [
        k.node("a", "10.240.0.101"),
        k.node("b", "10.240.0.102", ready=False),
        k.node("c", "10.240.0.103", unschedulable=True),
        k.node("d", "10.240.0.104", deleting=True),
        k.node("e", "10.240.0.105", labels={"node.kubernetes.io/exclude-from-external-load-balancers": ""}),
    ]
    r = run([*nodes, k.service("whoami", external_ips=["10.240.0.201"])])
    assert rs_table(r, "10.240.0.201", 80) == [("10.240.0.101", 80, 1, "dr")]


def test_external_name_and_portless_services_are_ignored() -> None:
    en = k.service("en", type="ExternalName", external_ips=["10.240.0.201"])
    noports = k.service("np", external_ips=["10.240.0.202"], ports=[])
    r = run([*NODES, en, noports])
    assert r.desired.services == {} and r.events == ()


def test_vip_port_conflict_goes_to_older_service_with_event() -> None:
    old = k.service("old", external_ips=["10.240.0.201"], created="2026-11-01T00:00:00Z")
    new = k.service(
        "new",
        namespace="team",
        external_ips=["10.240.0.201"],
        ports=[("web", "TCP", 80), ("alt", "TCP", 8080)],
        created="2026-11-02T00:00:00Z",
    )
    r = run([*NODES, new, old])
    assert r.owners[key("10.240.0.201", 80)] == ("default", "old")
    assert r.owners[key("10.240.0.201", 8080)] == ("team", "new")  # its other port does not collide
    [ev] = r.events
    assert (ev.namespace, ev.name, ev.reason, ev.type) == ("team", "new", "VIPPortConflict", "Warning")
    assert ev.message == (
        "TCP 10.240.0.201:80 is already served for Service default/old, created earlier "
        "(2026-11-01T00:00:00Z); this port is not programmed"
    )


def test_nothing_outside_owned_ranges() -> None:
    # Settings already refuse pools/ranges outside owned_cidrs; every VIP is owned.
    r = run([*NODES, *(k.service(f"s{i}", external_ips=[f"10.240.0.{200 + i}"]) for i in range(5))])
    assert all(r.desired.ownership.owns(key_) for key_ in r.desired.services)


def test_mapper_recomputes_only_changed_services() -> None:
    objs = [*NODES, *(k.service(f"s{i}", external_ips=[f"10.240.0.{200 + i}"]) for i in range(10))]
    m = Mapper(settings())
    m.map(snapshot(objs))
    assert m.recomputed == 10
    objs[3] = k.service("s1", external_ips=["10.240.0.201"], ports=[("web", "TCP", 8080)])
    r = m.map(snapshot(objs))
    assert m.recomputed == 1
    assert (
        key("10.240.0.201", 8080) in r.desired.services and key("10.240.0.201", 80) not in r.desired.services
    )
    objs[0] = k.node("node1", "10.240.0.101", ready=False)
    r = m.map(snapshot(objs))
    assert m.recomputed == 10  # a node change touches every Service
    assert rs_table(r, "10.240.0.200", 80) == [("10.240.0.102", 80, 1, "dr")]


def test_cluster_services_share_one_realserver_tuple_local_ones_their_own() -> None:
    """Services with externalTrafficPolicy Cluster on the same port have the same real
    servers: made once per node set (one tuple object), and made again when a node
    leaves; a Local Service's come from its endpoints, never from that tuple."""
    objs = [
        *NODES,
        *(k.service(f"s{i}", external_ips=[f"10.240.0.{200 + i}"]) for i in range(3)),
        k.service("l", external_ips=["10.240.0.210"], local=True),
        k.endpointslice("l", [k.endpoint("node2", "10.230.2.5")]),
    ]
    m = Mapper(settings())
    r = m.map(snapshot(objs))
    cluster = [r.desired.services[key(f"10.240.0.{200 + i}", 80)].realservers for i in range(3)]
    assert cluster[0] is cluster[1] is cluster[2]
    assert rs_table(r, "10.240.0.200", 80) == [("10.240.0.101", 80, 1, "dr"), ("10.240.0.102", 80, 1, "dr")]
    assert rs_table(r, "10.240.0.210", 80) == [("10.240.0.102", 80, 1, "dr")]
    objs[0] = k.node("node1", "10.240.0.101", ready=False)
    r = m.map(snapshot(objs))
    after = [r.desired.services[key(f"10.240.0.{200 + i}", 80)].realservers for i in range(3)]
    assert after[0] is after[1] is after[2]
    assert rs_table(r, "10.240.0.202", 80) == [("10.240.0.102", 80, 1, "dr")]
    assert rs_table(r, "10.240.0.210", 80) == [("10.240.0.102", 80, 1, "dr")]
    objs[1] = k.node("node2", "10.240.0.102", ready=False)
    objs[0] = k.node("node1", "10.240.0.101")
    r = m.map(snapshot(objs))
    assert rs_table(r, "10.240.0.201", 80) == [("10.240.0.101", 80, 1, "dr")]
    assert key("10.240.0.210", 80) not in r.desired.services or rs_table(r, "10.240.0.210", 80) == []


def test_node_agent_view_tun_vips_and_transient_node_states() -> None:
    from kubelvs.app.node import NodeVips
    from kubelvs.model import Forward
    from kubelvs.sources.config import parse_config
    from kubelvs.sources.kubernetes.mapping import holding_view

    tun = k.service("tun", external_ips=["10.240.0.202"], annotations={ANN + "forward": "tun"})
    objs = [*k.whoami_objects(), tun]
    r = run(objs)
    assert vips_for_node(r, "node1") == {ip_address("10.240.0.201"), ip_address("10.240.0.202")}
    assert vips_for_node(r, "node1", forwards=(Forward.TUN,)) == {ip_address("10.240.0.202")}
    config = parse_config(
        {"owned_cidrs": ["10.240.0.0/24"], "kubernetes": {"external_ip_cidrs": ["10.240.0.192/26"]}}
    )
    want = NodeVips(settings(), config, "node1").compute(snapshot(objs))
    assert (want.vips, want.mode, want.found) == (("10.240.0.201", "10.240.0.202"), "tun", True)

    # NotReady, cordoned, being deleted: not a real server for the director, but the node
    # keeps holding what it serves (a graceful drain still sends it connections).
    states: tuple[NodeState, ...] = ({"ready": False}, {"unschedulable": True}, {"deleting": True})
    for state in states:
        snap = snapshot(
            [k.node("node1", "10.240.0.101", **state), k.node("node2", "10.240.0.102"), *objs[2:]]
        )
        assert vips_for_node(Mapper(settings()).map(snap), "node1") == frozenset()  # the director's view
        assert vips_for_node(Mapper(settings()).map(holding_view(snap, "node1")), "node1") == {
            ip_address("10.240.0.201"),
            ip_address("10.240.0.202"),
        }
        assert holding_view(snap, "node2") is snap  # only its own node is looked at differently
    excluded = snapshot(
        [
            k.node(
                "node1",
                "10.240.0.101",
                labels={"node.kubernetes.io/exclude-from-external-load-balancers": ""},
            ),
            *objs[1:],
        ]
    )
    assert vips_for_node(Mapper(settings()).map(holding_view(excluded, "node1")), "node1") == frozenset()


def test_a_dual_stack_load_balancer_is_one_virtual_service_per_family() -> None:
    """IPAM gives it an address of each family; each virtual service's real servers are the
    nodes' addresses of its family (node2 has no IPv6 address: not in the IPv6 one)."""
    section = {
        "external_ip_cidrs": ["10.240.0.192/26", "fd00:240::/120"],
        "lb_pools": [{"name": "default", "cidrs": ["10.240.0.224/28", "fd00:240::e0/124"]}],
    }
    svc = k.service("web", type="LoadBalancer")
    svc["spec"].update(ipFamilies=["IPv4", "IPv6"], ipFamilyPolicy="PreferDualStack")
    ext = k.service("ext", external_ips=["10.240.0.201", "fd00:240::c9"])
    ext["spec"].update(ipFamilies=["IPv4", "IPv6"], ipFamilyPolicy="RequireDualStack")
    nodes = [k.node("node1", "10.240.0.101", address6="fd00:240::101"), k.node("node2", "10.240.0.102")]
    r = compute(snapshot([*nodes, svc, ext]), settings(section, owned=("10.240.0.0/24", "fd00:240::/64")))
    assert sorted(map(str, r.desired.services)) == sorted(
        ["TCP 10.240.0.225:80", "TCP [fd00:240::e1]:80", "TCP 10.240.0.201:80", "TCP [fd00:240::c9]:80"]
    )
    assert rs_table(r, "fd00:240::e1", 80) == [("fd00:240::101", 80, 1, "dr")]
    assert rs_table(r, "10.240.0.225", 80) == [("10.240.0.101", 80, 1, "dr"), ("10.240.0.102", 80, 1, "dr")]
    assert rs_table(r, "fd00:240::c9", 80) == [("fd00:240::101", 80, 1, "dr")]
    assert not validate(list(r.desired.services.values()), ownership=r.desired.ownership)
    assert vips_for_node(r, "node1") == {
        ip_address(a) for a in ("10.240.0.201", "10.240.0.225", "fd00:240::c9", "fd00:240::e1")
    }
    assert vips_for_node(r, "node2") == {ip_address("10.240.0.201"), ip_address("10.240.0.225")}


def test_an_external_ip_of_a_family_the_service_lacks_is_not_programmed() -> None:
    """kube-proxy on the nodes has no endpoints of that family for a single-stack Service:
    the VIP would lead nowhere."""
    section = {"external_ip_cidrs": ["10.240.0.192/26", "fd00:240::/120"]}
    svc = k.service("web", external_ips=["10.240.0.201", "fd00:240::c9"])  # SingleStack IPv4
    nodes = [k.node("node1", "10.240.0.101", address6="fd00:240::101")]
    r = compute(snapshot([*nodes, svc]), settings(section, owned=("10.240.0.0/24", "fd00:240::/64")))
    assert list(r.desired.services) == [key("10.240.0.201", 80)]
    assert [(e.reason, e.message) for e in r.events] == [
        (
            "ExternalIPWrongFamily",
            "externalIP fd00:240::c9 is IPv6 but the Service's ipFamilies are IPv4; not programmed "
            "(its nodes' kube-proxy has no IPv6 endpoints for it: make the Service dual-stack)",
        )
    ]
