"""ip addr (text and JSON), ip route/rule, kubectl JSON/YAML, nft JSON."""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kubelvs.doctor.live import live_texts
from kubelvs.formats.iproute import (
    Address,
    Interface,
    format_ip_addr,
    format_ip_addr_json,
    parse_ip_addr,
    parse_ip_route,
    parse_ip_rule,
)
from kubelvs.formats.kube import parse_kube
from kubelvs.formats.nft_json import parse_nft_json

_IFACE = st.builds(
    lambda name, idx, kind, addrs, deprecated: Interface(
        name=name,
        index=idx,
        flags=("BROADCAST", "UP", "LOWER_UP"),
        link_type="ether",
        kind=kind,
        mac="02:00:00:00:00:01",
        addresses=[
            Address(ipaddress.ip_interface(a), "global", deprecated=":" in a and deprecated) for a in addrs
        ],
    ),
    st.sampled_from(["eth0", "eth1", "lo0", "kube-bridge", "tun-192168926", "br0", "dummy0"]),
    st.integers(1, 9999),
    st.sampled_from(["", "dummy", "bridge", "vxlan", "veth"]),
    st.lists(st.sampled_from(["10.0.0.1/24", "10.240.0.201/32", "2001:db8::1/64"]), unique=True, max_size=3),
    st.booleans(),
)


def _shape(ifaces: list[Interface]) -> list[tuple[object, ...]]:
    return [
        (
            i.name,
            i.index,
            i.flags,
            i.link_type,
            i.kind,
            [(str(a.interface), a.scope, a.deprecated) for a in i.addresses],
        )
        for i in ifaces
    ]


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_IFACE, max_size=4, unique_by=lambda i: i.name))
def test_ip_addr_round_trips(ifaces: list[Interface]) -> None:
    for text in (format_ip_addr(ifaces), format_ip_addr_json(ifaces)):
        back, problems = parse_ip_addr(text)
        assert problems == [] and _shape(back) == _shape(ifaces)


@pytest.mark.skipif(shutil.which("ip") is None, reason="iproute2 missing")
def test_real_ip_addr_text_and_json_agree() -> None:
    text = subprocess.run(["ip", "-d", "addr"], capture_output=True, text=True, check=True).stdout
    data = subprocess.run(["ip", "-j", "-d", "addr"], capture_output=True, text=True, check=True).stdout
    a, pa = parse_ip_addr(text)
    b, pb = parse_ip_addr(data)
    assert pa == pb == []
    assert [(i.name, i.link_type, [str(x.interface) for x in i.addresses]) for i in a] == [
        (i.name, i.link_type, [str(x.interface) for x in i.addresses]) for i in b
    ]


@pytest.mark.netns
def test_a_deprecated_address_reads_so_from_text_json_and_netlink(make_netns: Callable[[str], str]) -> None:
    """What keeps an IPv6 VIP from becoming the director's source address (docs/ipv6.md)."""
    ns = make_netns("addr")
    subprocess.run(["ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", "p0"], check=True)
    subprocess.run(["ip", "-n", ns, "-6", "addr", "add", "fd00:2::1/64", "dev", "eth0", "nodad"], check=True)
    add = [
        "ip",
        "-n",
        ns,
        "-6",
        "addr",
        "add",
        "fd00:2::200/128",
        "dev",
        "eth0",
        "nodad",
        "preferred_lft",
        "0",
    ]
    subprocess.run(add, check=True)
    text = subprocess.run(["ip", "-n", ns, "addr"], capture_output=True, text=True, check=True).stdout
    data = subprocess.run(["ip", "-n", ns, "-j", "addr"], capture_output=True, text=True, check=True).stdout
    live = live_texts(ns, kubectl=False)["ip-addr.txt"]
    for output in (text, data, live):
        interfaces, problems = parse_ip_addr(output)
        (eth0,) = [i for i in interfaces if i.name == "eth0"]
        assert problems == []
        assert {str(a.ip): a.deprecated for a in eth0.addresses if a.scope == "global"} == {
            "fd00:2::1": False,
            "fd00:2::200": True,
        }


def test_ip_addr_bad_json_and_orphan_lines() -> None:
    assert parse_ip_addr("[{broken")[0] == []
    ifaces, problems = parse_ip_addr(
        "    inet 10.0.0.1/24 scope global eth0\n1: lo: <LOOPBACK> mtu 1\n    inet 1.2.3/8 x\n"
    )
    assert [i.name for i in ifaces] == ["lo"] and len(problems) == 2


def test_ip_route_and_rule() -> None:
    routes, _ = parse_ip_route(
        "default via 192.0.2.1 dev eth0 \nlocal 10.96.0.10 dev kube-ipvs0 table local proto kernel\n"
        "10.0.0.0/8 proto bird \n\tnexthop via 10.0.0.1 dev eth0 weight 1\n"
    )
    assert [(r.dst, r.dev, r.via, r.table) for r in routes] == [
        ("default", "eth0", "192.0.2.1", "main"),
        ("local 10.96.0.10", "kube-ipvs0", "", "local"),
        ("10.0.0.0/8", "", "", "main"),
    ]
    rules, problems = parse_ip_rule("0:\tfrom all lookup local\n32766:\tfrom all lookup main\nbogus\n")
    assert rules == [(0, "from all lookup local"), (32766, "from all lookup main")] and len(problems) == 1


KUBE = {
    "apiVersion": "v1",
    "kind": "List",
    "items": [
        {
            "kind": "Service",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {
                "clusterIP": "10.96.0.10",
                "clusterIPs": ["10.96.0.10"],
                "type": "LoadBalancer",
                "externalIPs": ["10.240.0.201"],
                "ports": [
                    {"name": "http", "port": 80, "targetPort": "http", "nodePort": 30080, "protocol": "TCP"}
                ],
            },
            "status": {"loadBalancer": {"ingress": [{"ip": "10.240.0.210"}]}},
        },
        {
            "kind": "EndpointSlice",
            "metadata": {
                "name": "web-1",
                "namespace": "shop",
                "labels": {"kubernetes.io/service-name": "web"},
            },
            "endpoints": [
                {"addresses": ["10.0.2.2"], "conditions": {"ready": True}},
                {"addresses": ["10.0.2.3"], "conditions": {"ready": False}},
            ],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        },
        {
            "kind": "Node",
            "metadata": {"name": "n1"},
            "status": {
                "addresses": [
                    {"type": "InternalIP", "address": "10.240.0.101"},
                    {"type": "Hostname", "address": "n1"},
                ]
            },
        },
    ],
}


def test_kubectl_json_and_yaml_agree() -> None:
    import yaml

    for text in (json.dumps(KUBE), yaml.safe_dump(KUBE)):
        state = parse_kube(text)
        assert state.problems == []
        (sp,) = state.ports
        assert (
            sp.ref == "shop/web:http"
            and sp.endpoints == {("10.0.2.2", 8080)}
            and sp.not_ready == {("10.0.2.3", 8080)}
        )
        assert sp.frontends() == [("10.96.0.10", 80), ("10.240.0.201", 80), ("10.240.0.210", 80)]
        assert sp.node_port == 30080 and state.node_ips == {"n1": ["10.240.0.101"]}


def test_kubectl_garbage() -> None:
    assert parse_kube("{not json").problems
    assert parse_kube(": : :\n- [").problems
    state = parse_kube(
        '{"kind": "Service", "metadata": {"name": "x"}, "spec": {"ports": [{"port": "eighty"}]}}'
    )
    assert state.ports == [] and state.problems


def test_nft_json() -> None:
    text = json.dumps(
        {
            "nftables": [
                {"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
                {"table": {"family": "ip", "name": "nat", "handle": 1}},
                {"chain": {"family": "ip", "table": "nat", "name": "POSTROUTING", "handle": 1}},
                {
                    "rule": {
                        "family": "ip",
                        "table": "nat",
                        "chain": "POSTROUTING",
                        "handle": 2,
                        "expr": [
                            {"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "eth0"}},
                            {"masquerade": None},
                        ],
                    }
                },
            ]
        }
    )
    ruleset = parse_nft_json(text)
    assert ruleset.tables == ["ip nat"] and ruleset.rules == 1
    assert ruleset.nat_rules == ["ip nat POSTROUTING: masquerade"]
    assert parse_nft_json("garbage").problems


@pytest.mark.skipif(shutil.which("nft") is None, reason="nft missing")
def test_real_nft_json_of_an_empty_namespace_ruleset() -> None:
    out = subprocess.run(["nft", "-j", "list", "ruleset"], capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(out.stderr)
    assert parse_nft_json(out.stdout).problems == []
