"""Bundles captured from the lab on the machine's kernel (tests/doctor/lab_capture.py):
the kubelvs nftables data plane read from ``nft.json``, and the lab's healthy site.

- ``m-lab-healthy``: the default DR lab, director on nftables, node agents, pods behind
  the kubenet-style bridge ``cbr0`` - nothing to report.
- ``m-lab-stale-nft``: the stale-realserver scenario's director after the naive
  reconciler: ``VIP:6379 -> pod:80, pod:6379`` in table ``kubelvs``.
"""

from __future__ import annotations

import re

from kubelvs.doctor import Bundle, Severity, analyse, analyse_site
from kubelvs.model import Forward

from .conftest import BUNDLES, ids, load

HOSTS = ["dir1", "node1", "node2"]


def _site() -> dict[str, Bundle]:
    return {h: load(f"m-lab-healthy/{h}") for h in HOSTS}


def _set(bundle: Bundle, name: str, value: int) -> Bundle:
    text, n = re.subn(
        rf"^{re.escape(name)} = .*$", f"{name} = {value}", bundle.texts["sysctl.txt"], flags=re.MULTILINE
    )
    assert n == 1, name
    bundle.texts["sysctl.txt"] = text
    bundle.__dict__.pop("sysctls", None)
    return bundle


def test_healthy_lab_site_has_no_findings() -> None:
    bundles = _site()
    assert analyse_site(bundles) == {h: [] for h in HOSTS}
    # ... and not because the doctor saw nothing: the nftables director's table, the DR
    # real servers matched to the nodes, the Service, the VIPs the nodes hold.
    director = bundles["dir1"]
    assert director.services_source == "nftables" and director.role == "director"
    (svc,) = director.services or []
    assert str(svc.key) == "TCP 10.240.0.201:80" and svc.scheduler == "rr"
    assert [(str(rs.address), rs.port, rs.forward) for rs in svc.realservers] == [
        ("10.240.0.101", 80, Forward.DR),
        ("10.240.0.102", 80, Forward.DR),
    ]
    for node in ("node1", "node2"):
        names = {i.name: i for i in bundles[node].interfaces or []}
        assert "10.240.0.201" in {str(a.ip) for a in names["lo"].addresses}
        assert names["cbr0"].kind == "bridge"


def test_pod_bridge_cbr0_is_not_an_arp_interface() -> None:
    """Regression: the lab's healthy nodes got dr-arp-ignore/dr-arp-announce for cbr0, the
    pods' bridge (kubenet's name), whose arp_ignore is 0. Only the node's pods are on it and
    they reach the VIP through their gateway, never by ARP: like cni0/docker0, not checked."""
    node = load("m-lab-healthy/node1")
    assert (
        node.sysctl("net.ipv4.conf.cbr0.arp_ignore") == 0
        and node.sysctl("net.ipv4.conf.cbr0.arp_announce") == 0
    )
    assert analyse(node) == []
    # The uplink still is: the same bundle with eth0's arp_ignore at 0 is reported, for eth0 alone.
    _set(node, "net.ipv4.conf.eth0.arp_ignore", 0)
    (finding,) = analyse(node)
    assert finding.id == "dr-arp-ignore"
    assert finding.summary.endswith("effective arp_ignore is 0 on eth0 (needs 1)")


def test_stale_realserver_in_the_nftables_table() -> None:
    b = load("m-lab-stale-nft")
    assert b.services_source == "nftables" and b.ipvs_services is None
    (svc,) = b.services or []
    assert [str(rs) for rs in svc.realservers] == ["10.230.1.10:80 nat w=1", "10.230.1.10:6379 nat w=1"]
    findings = analyse(b)
    assert ids(findings) == ["stale-realserver"]
    f = findings[0]
    assert f.summary == (
        "TCP 10.240.0.201:6379: real server 10.230.1.10:80 matches no endpoint of "
        "default/skuapi-rds-prod:web (default/skuapi-rds-prod:web has endpoint 10.230.1.10:6379 but the "
        "kubelvs nftables table also sends to port 80: left over from an earlier port/targetPort)"
    )
    assert f.evidence[0] == "nft.json: table kubelvs: TCP 10.240.0.201:6379 -> 10.230.1.10:80 nat weight 1"
    assert f.fix[0].startswith("kubelvs apply -f CONFIG")  # no ipvsadm line for a table IPVS does not hold


def test_stale_realserver_in_the_nftables_table_without_kubernetes_data() -> None:
    b = load("m-lab-stale-nft")
    del b.texts["kubectl.json"]
    findings = analyse(b)
    assert ids(findings) == ["stale-realserver"]
    assert "port 80 looks left over (the service port is 6379)" in findings[0].summary


def test_ipvs_only_checks_stay_quiet_on_the_nftables_table() -> None:
    """expire_nodest_conn and the IPVS timeouts are IPVS's: the nftables table is no reason to report them."""
    b = load("m-lab-stale-nft")
    del b.texts["kubectl.json"]
    b.texts["sysctl.txt"] += "net.ipv4.vs.expire_nodest_conn = 0\n"
    b.texts["ipvsadm-timeout.txt"] = "Timeout (tcp tcpfin udp): 900 120 300\n"
    assert ids(analyse(b)) == ["stale-realserver"]


def test_no_kubelvs_table_no_services() -> None:
    """A node's nft.json holds kube-proxy's table, not kubelvs's: no load-balancer table."""
    node = load("m-lab-healthy/node1")
    assert node.nft is not None and "ip kubelvs_lab_proxy" in node.nft.tables
    assert node.services is None and node.services_source == "" and node.role == "node"
    assert (BUNDLES / "m-lab-healthy" / "node1" / "nft.json").exists()


def test_strict_rp_filter_on_a_pod_bridge_is_not_reported() -> None:
    """Regression: after the rp-filter scenario's fix (VM tier) the node agent leaves cbr0,
    the pods' bridge, at rp_filter 1 (the old conf.all, kept as its own) and the lab serves
    every connection; doctor reported rp-filter-strict on it, even as an error (the
    IPReversePathFilter counter still held the drops of the tunl0 phase). The pods answer
    from their own addresses, routed back through cbr0: strict filtering there drops nothing
    of LVS's. Tunnels and kube-router's kube-bridge (DSR: its pods answer from the VIP) stay
    reported - test_findings.test_rp_filter_strict_on_vxlan_and_bridge, test_incidents."""
    node = load("m-lab-healthy/node1")
    _set(node, "net.ipv4.conf.cbr0.rp_filter", 1)
    _set(node, "net.ipv4.conf.all.rp_filter", 1)
    assert analyse(node) == []
    tunnel = load("m-rp-filter-tunnel")
    assert ids(analyse(tunnel)) == ["rp-filter-strict"]


def test_vip_arp_conflict_in_the_dr_arp_lab() -> None:
    """The dr-arp scenario's broken state (captured from the lab): the workers hold the VIP
    on lo with arp_ignore 0, so they answer ARP for it as the director does. The director
    serving the VIP is not blamed; each worker is, with its own fix."""
    site = analyse_site({h: load(f"m-lab-dr-arp/{h}") for h in HOSTS})
    assert site["dir1"] == []
    for node in ("node1", "node2"):
        assert ids(site[node]) == ["dr-arp-ignore", "vip-arp-conflict", "dr-arp-announce"]
        conflict = site[node][1]
        assert conflict.summary == (
            "3 hosts answer ARP for 10.240.0.201: dir1: on eth0; node1: on lo, arp_ignore 0 on eth0; "
            "node2: on lo, arp_ignore 0 on eth0"
        )
        assert conflict.fix[0] == "# keep it answered by dir1, its director; on the others:"
        assert "# on dir1:" not in conflict.fix
        assert conflict.fix[1:4] == (
            "# on node1:",
            "sysctl -w net.ipv4.conf.eth0.arp_ignore=1",
            "sysctl -w net.ipv4.conf.eth0.arp_announce=2",
        )
    # The healthy twin: the node agent's arp_ignore=1 on the same lab (m-lab-healthy).
    assert all(not [f for f in fs if f.id == "vip-arp-conflict"] for fs in analyse_site(_site()).values())


def test_two_hosts_holding_one_address_on_their_ethernet() -> None:
    """Split brain: a second host holds the VIP on its Ethernet interface (two VRRP masters,
    or MetalLB's layer 2 beside the director). Both are blamed when neither or both serve it;
    here the director serves it, so only the other host is."""
    director = load("m-lab-healthy/dir1")
    node = load("m-lab-healthy/node1")
    text = node.texts["ip-addr.txt"]
    eth = re.search(r"^(\s+inet 10\.240\.0\.\d+/24 .*eth0)$", text, flags=re.MULTILINE)
    assert eth is not None
    node.texts["ip-addr.txt"] = text.replace(
        eth.group(1), eth.group(1) + "\n    inet 10.240.0.201/32 scope global eth0"
    )
    site = analyse_site({"dir1": director, "node1": node})
    assert [f.id for f in site["dir1"]] == []
    (conflict,) = [f for f in site["node1"] if f.id == "vip-arp-conflict"]
    assert conflict.summary == "2 hosts answer ARP for 10.240.0.201: dir1: on eth0; node1: on eth0"
    assert "ip addr del 10.240.0.201/32 dev eth0   # a DR real server holds it on lo instead" in conflict.fix


def test_dr_real_servers_routing_replies_via_their_director() -> None:
    """Captured from the lab with the client behind a router (lab_capture.dr_gateway): with
    the workers' route to the client network via the director no request was answered;
    via the router every one was (the -fixed capture)."""
    site = analyse_site({h: load(f"m-lab-dr-gateway/{h}") for h in HOSTS})
    assert site["dir1"] == []
    for node in ("node1", "node2"):
        (f,) = site[node]
        assert f.id == "dr-director-is-gateway" and f.severity is Severity.ERROR
        assert f.summary == (
            f"real server {node} routes replies via its director dir1 (192.168.58.0/24 via 10.240.0.2): "
            "replies from 10.240.0.201 are dropped there"
        )
        assert f.fix[1] == "ip route replace 192.168.58.0/24 via 10.240.0.254"  # the director's own router
    fixed = analyse_site({h: load(f"m-lab-dr-gateway-fixed/{h}") for h in HOSTS})
    assert fixed == {h: [] for h in HOSTS}


def test_local_traffic_policy_with_a_node_without_endpoints() -> None:
    """Captured from the lab (lab_capture.local_policy): node2's pods gone while the director
    still sent to node2, and the requests it got failed; with pods on both nodes, none did."""
    findings = analyse(load("m-lab-local-policy"))
    assert [(f.id, f.severity) for f in findings] == [("local-policy-node-without-endpoint", Severity.ERROR)]
    (f,) = findings
    assert f.summary == (
        "TCP 10.240.0.201:80: default/whoami:web has externalTrafficPolicy Local, but 1 real server(s) are "
        "nodes without a ready endpoint of it: node2 (10.240.0.102:80)"
    )
    assert f.evidence == (
        "nft.json: table kubelvs: TCP 10.240.0.201:80 -> 10.240.0.102:80 dr weight 1",
        "kubectl.json: default/whoami:web externalTrafficPolicy Local, endpoints on: node1",
    )
    assert analyse(load("m-lab-local-policy-fixed")) == []
    # The same table, the Service with the default policy (Cluster): any node may take it.
    cluster = load("m-lab-local-policy")
    cluster.texts["kubectl.json"] = cluster.texts["kubectl.json"].replace(
        '"externalTrafficPolicy": "Local"', '"externalTrafficPolicy": "Cluster"'
    )
    assert "local-policy-node-without-endpoint" not in ids(analyse(cluster))
