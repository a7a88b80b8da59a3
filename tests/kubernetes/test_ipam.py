"""LoadBalancer IPAM: requested, allocated, conflict, exhausted, sharing, release, restart."""

from __future__ import annotations

from ipaddress import ip_address

from kubelvs.sources.kubernetes.ipam import allocate

from . import k8sobjects as k
from .helpers import settings, snapshot

ANN = "kubelvs.io/"
POOL = {
    "lb_pools": [
        {"name": "default", "cidrs": ["10.240.0.224/29"]},
        {"name": "manual", "cidrs": ["10.240.0.240/30"], "auto_assign": False},
    ]
}


def ipam(objs: list[dict], section: dict | None = None):  # type: ignore[no-untyped-def,type-arg]
    owned = ("10.240.0.0/24", "fd00:240::/64")
    return allocate(snapshot(objs).services.values(), settings(section or POOL, owned=owned))


def ts(i: int) -> str:
    return f"2026-11-20T10:00:{i:02d}Z"


def test_allocates_first_free_in_age_order() -> None:
    r = ipam(
        [
            k.service("b", type="LoadBalancer", created=ts(2)),
            k.service("a", type="LoadBalancer", created=ts(1)),
        ]
    )
    assert r.assigned == {
        ("default", "a"): (ip_address("10.240.0.225"),),
        ("default", "b"): (ip_address("10.240.0.226"),),
    }
    assert r.status == {("default", "a"): ("10.240.0.225",), ("default", "b"): ("10.240.0.226",)}


def test_requested_by_annotation_and_spec_load_balancer_ip() -> None:
    a = k.service(
        "a", type="LoadBalancer", annotations={ANN + "load-balancer-ips": "10.240.0.229"}, created=ts(1)
    )
    b = k.service(
        "b", type="LoadBalancer", lb_ip="10.240.0.241", created=ts(2)
    )  # a manual pool may be requested
    c = k.service("c", type="LoadBalancer", created=ts(3))
    r = ipam([a, b, c])
    assert r.assigned[("default", "a")] == (ip_address("10.240.0.229"),)
    assert r.assigned[("default", "b")] == (ip_address("10.240.0.241"),)
    assert r.assigned[("default", "c")] == (ip_address("10.240.0.225"),)


def test_requested_outside_pools_and_invalid() -> None:
    a = k.service("a", type="LoadBalancer", lb_ip="10.240.0.50")
    b = k.service("b", type="LoadBalancer", annotations={ANN + "load-balancer-ips": "not-an-ip"})
    r = ipam([a, b])
    assert r.assigned == {}
    by = {e.name: e for e in r.events}
    assert by["a"].reason == "LoadBalancerIPNotInPool"
    assert by["a"].message.startswith(
        "requested address 10.240.0.50 is not in an address pool: default (10.240.0.224/29)"
    )
    assert by["b"].reason == "InvalidLoadBalancerIP"


def test_requested_conflict_older_holder_keeps_it() -> None:
    a = k.service("a", type="LoadBalancer", lb_ip="10.240.0.226", created=ts(1))
    b = k.service("b", type="LoadBalancer", lb_ip="10.240.0.226", created=ts(2))
    r = ipam([b, a])
    assert r.assigned == {("default", "a"): (ip_address("10.240.0.226"),)}
    [ev] = r.events
    assert (ev.name, ev.reason) == ("b", "LoadBalancerIPInUse")
    assert "already used by Service default/a" in ev.message and "allow-shared-ip" in ev.message


def test_exhausted_pool_gives_clear_event() -> None:
    svcs = [k.service(f"s{i}", type="LoadBalancer", created=ts(i)) for i in range(7)]
    r = ipam(svcs)
    assert len(r.assigned) == 6  # /29: 6 usable addresses
    [ev] = [e for e in r.events if e.type == "Warning"]
    assert (ev.name, ev.reason) == ("s6", "AllocationFailed")
    assert ev.message == "no free address in pool(s) default (6 addresses, all in use)"


def test_unknown_pool_annotation() -> None:
    r = ipam([k.service("a", type="LoadBalancer", annotations={ANN + "address-pool": "gold"})])
    assert [(e.reason, e.message) for e in r.events] == [
        ("UnknownAddressPool", "kubelvs.io/address-pool: no pool named 'gold' (pools: default, manual)")
    ]


def test_named_pool() -> None:
    r = ipam([k.service("a", type="LoadBalancer", annotations={ANN + "address-pool": "manual"})])
    assert r.assigned[("default", "a")] == (ip_address("10.240.0.241"),)


def test_restart_is_stable_from_status() -> None:
    """Allocation rebuilt from status: a new, older Service never takes an address away."""
    objs = [k.service(f"s{i}", type="LoadBalancer", created=ts(10 + i)) for i in range(4)]
    first = ipam(objs)
    written = [
        k.service(
            f"s{i}", type="LoadBalancer", created=ts(10 + i), ingress=list(first.status[("default", f"s{i}")])
        )
        for i in range(4)
    ]
    del written[1]  # s1 deleted: its address is free again
    newcomer = k.service("older-looking", type="LoadBalancer", created=ts(1))
    second = ipam([newcomer, *reversed(written)])
    for i in (0, 2, 3):
        assert second.assigned[("default", f"s{i}")] == first.assigned[("default", f"s{i}")]
    assert second.assigned[("default", "older-looking")] == first.assigned[("default", "s1")]
    assert set(second.status) == {("default", "older-looking")}  # nothing else rewritten


def test_sharing_needs_same_key_and_disjoint_ports() -> None:
    share = {ANN + "allow-shared-ip": "dns"}
    tcp = k.service(
        "dns-tcp",
        type="LoadBalancer",
        ports=[("dns", "TCP", 53)],
        annotations={**share, ANN + "load-balancer-ips": "10.240.0.230"},
        created=ts(1),
    )
    udp = k.service(
        "dns-udp",
        type="LoadBalancer",
        ports=[("dns", "UDP", 53)],
        annotations={**share, ANN + "load-balancer-ips": "10.240.0.230"},
        created=ts(2),
    )
    auto = k.service(
        "dns-more", type="LoadBalancer", ports=[("dot", "TCP", 853)], annotations=share, created=ts(3)
    )
    clash = k.service(
        "clash",
        type="LoadBalancer",
        ports=[("dns", "UDP", 53)],
        annotations={**share, ANN + "load-balancer-ips": "10.240.0.230"},
        created=ts(4),
    )
    nokey = k.service(
        "nokey", type="LoadBalancer", ports=[("x", "TCP", 99)], lb_ip="10.240.0.230", created=ts(5)
    )
    r = ipam([tcp, udp, auto, clash, nokey])
    ip = (ip_address("10.240.0.230"),)
    assert r.assigned[("default", "dns-tcp")] == ip and r.assigned[("default", "dns-udp")] == ip
    assert r.assigned[("default", "dns-more")] == ip  # allocated onto its group's address
    assert ("default", "clash") not in r.assigned and ("default", "nokey") not in r.assigned
    msgs = {e.name: e.message for e in r.events if e.type == "Warning"}
    assert "their ports collide: UDP/53" in msgs["clash"]
    assert "same kubelvs.io/allow-shared-ip annotation" in msgs["nokey"]


def test_release_on_type_change_and_request_change() -> None:
    was_lb = k.service("a", type="ClusterIP", ingress=["10.240.0.225"])
    moved = k.service(
        "b",
        type="LoadBalancer",
        ingress=["10.240.0.226"],
        annotations={ANN + "load-balancer-ips": "10.240.0.227"},
    )
    r = ipam([was_lb, moved])
    assert r.status == {("default", "a"): (), ("default", "b"): ("10.240.0.227",)}
    assert ("default", "a") not in r.assigned


def test_other_class_status_is_never_touched_nor_its_address_reused() -> None:
    r = ipam(
        [
            k.service("m", type="LoadBalancer", lb_class="metallb", ingress=["10.240.0.225"]),
            k.service("n", type="LoadBalancer"),
        ]
    )
    assert ("default", "m") not in r.status and ("default", "m") not in r.assigned
    assert r.assigned[("default", "n")] == (ip_address("10.240.0.226"),)


# -------------------------------------------------------------- dual stack

DUAL_POOL = {"lb_pools": [{"name": "default", "cidrs": ["10.240.0.224/29", "fd00:240::e0/125"]}]}


def dual(name: str, families: list[str], policy: str, **kw: object) -> dict:  # type: ignore[type-arg]
    svc = k.service(name, type="LoadBalancer", **kw)  # type: ignore[arg-type]
    svc["spec"].update(ipFamilies=families, ipFamilyPolicy=policy)
    return svc


def test_a_dual_stack_service_gets_one_address_per_family_in_its_order() -> None:
    r = ipam(
        [
            dual("a", ["IPv4", "IPv6"], "RequireDualStack", created=ts(1)),
            dual("b", ["IPv6", "IPv4"], "PreferDualStack", created=ts(2)),
            dual("c", ["IPv6"], "SingleStack", created=ts(3)),
        ],
        DUAL_POOL,
    )
    assert r.status == {
        ("default", "a"): ("10.240.0.225", "fd00:240::e1"),
        ("default", "b"): ("fd00:240::e2", "10.240.0.226"),
        ("default", "c"): ("fd00:240::e3",),
    }
    assert [e.reason for e in r.events] == ["IPAllocated"] * 5


def test_the_second_family_is_required_only_by_require_dual_stack() -> None:
    """Pools with IPv4 ranges only: PreferDualStack makes do with IPv4, quietly."""
    r = ipam(
        [
            dual("prefer", ["IPv4", "IPv6"], "PreferDualStack", created=ts(1)),
            dual("require", ["IPv4", "IPv6"], "RequireDualStack", created=ts(2)),
        ]
    )
    assert r.status == {("default", "prefer"): ("10.240.0.225",), ("default", "require"): ("10.240.0.226",)}
    failed = [(e.name, e.message) for e in r.events if e.reason == "AllocationFailed"]
    assert failed == [("require", "no free IPv6 address in pool(s) default (no IPv6 range)")]


def test_dual_stack_from_status_then_back_to_single_stack_releases_the_other_family() -> None:
    held = ["10.240.0.228", "fd00:240::e5"]
    both = dual("a", ["IPv4", "IPv6"], "RequireDualStack", ingress=held)
    assert ipam([both], DUAL_POOL).status == {}  # kept as they are: nothing to write
    single = dual("a", ["IPv4"], "SingleStack", ingress=held)
    r = ipam([single], DUAL_POOL)
    assert r.status == {("default", "a"): ("10.240.0.228",)}
    # IPv4 held from before, then made dual-stack: the IPv6 address is added after it.
    grown = dual("a", ["IPv4", "IPv6"], "PreferDualStack", ingress=held[:1])
    assert ipam([grown], DUAL_POOL).status == {("default", "a"): ("10.240.0.228", "fd00:240::e1")}
