"""The incidents' own outputs (docs/incidents.md) must each produce the finding their operators arrived at."""

from __future__ import annotations

import shutil
from pathlib import Path

from kubelvs.doctor import Bundle, Severity, analyse, analyse_site

from .conftest import BUNDLES, confirmed, ids, load


def test_stale_port_80_beside_6379_from_the_incident_listing() -> None:
    # `ipvsadm | grep -2 10.108.152.210`: no header, port names instead of numbers.
    findings = analyse(load("incident-stale-port"))
    first = findings[0]
    assert first.id == "stale-realserver" and first.severity is Severity.ERROR
    assert (
        "172.26.6.185:80" in first.fix[0]
        and first.fix[0] == "ipvsadm -d -t 10.108.152.210:6379 -r 172.26.6.185:80"
    )
    assert any("172.26.6.185:http" in e for e in first.evidence)
    assert ids(confirmed(findings)) == ["stale-realserver"]


def test_stale_port_confirmed_by_endpoints(tmp_path: Path) -> None:
    target = tmp_path / "b"
    shutil.copytree(BUNDLES / "incident-stale-port", target)
    endpoints = """---
apiVersion: v1
kind: Endpoints
metadata:
  name: skuapi-rds-prod
  namespace: default
subsets:
- addresses:
  - ip: 172.26.6.185
  ports:
  - name: redis
    port: 6379
    protocol: TCP
"""
    (target / "kubectl.yaml").write_text((target / "kubectl.yaml").read_text() + endpoints)
    findings = analyse(Bundle.load(str(target)))
    assert ids(confirmed(findings)) == ["stale-realserver"]
    assert "endpoint 172.26.6.185:6379" in findings[0].summary
    assert "default/skuapi-rds-prod:redis" in findings[0].summary


def test_incident_after_fix_is_clean() -> None:
    # Only what the listing cannot show: expire_nodest_conn, assumed at its default (likely, info).
    findings = analyse(load("incident-stale-port-fixed"))
    assert [(f.id, f.confidence, f.severity) for f in findings] == [
        ("expire-nodest-conn-off", "likely", Severity.INFO)
    ]


def test_timewait_incident(incident_timewait: Path) -> None:
    findings = analyse(Bundle.load(str(incident_timewait)))
    got = ids(findings, at_least="warning")
    assert "tcpfin-timeout-long" in got and "timewait-heavy" in got and "paws-rejects" in got
    tcpfin = next(f for f in findings if f.id == "tcpfin-timeout-long")
    assert tcpfin.fix[0] == "ipvsadm --set 900 30 300"  # what the incident's operators ran
    assert "TIME_WAIT 10003" in tcpfin.summary
    paws = next(f for f in findings if f.id == "paws-rejects")
    assert "PAWSEstab 17855" in paws.summary
    assert any("17855 packets rejects" in e for e in paws.evidence)
    assert "syn-recv-stuck" not in got  # 40 SYN_RECV spread over 2000 real servers is normal
    # The incident's 900 s timeout alone: idle connections die before the default keep-alive.
    keepalive = next(f for f in findings if f.id == "ipvs-timeout-below-keepalive")
    assert (keepalive.confidence, keepalive.severity) == ("likely", Severity.INFO)
    assert keepalive.summary == "IPVS tcp timeout 900 s is shorter than tcp_keepalive_time 7200 s"
    assert keepalive.to_confirm == (
        "sysctl net.ipv4.tcp_keepalive_time   # on the clients and the real servers: keep-alive is theirs",
    )


def test_syn_recv_and_rp_filter_incident() -> None:
    findings = analyse(load("incident-syn-recv"))
    assert ids(findings) == ["rp-filter-strict", "syn-recv-stuck"]
    rp, syn = findings
    assert rp.severity is Severity.ERROR  # escalated: connections are hanging now
    for iface in ("tun-192168926", "tun-192168929", "tunl0", "kube-bridge"):
        assert iface in rp.summary
    assert "docker0" not in rp.summary  # rp_filter 2 = loose: fine
    assert "em1" not in rp.summary  # physical: not tunnelled
    assert rp.fix[0].startswith("sysctl -w net.ipv4.conf.all.rp_filter=0")
    assert "172.26.8.17:80" in syn.summary and "3 of 3" in syn.summary
    assert "1. strict rp_filter" in syn.explanation


def test_syn_recv_lines_alone() -> None:
    target = load("incident-syn-recv")
    del target.texts["sysctl.txt"]
    findings = analyse(target)
    assert ids(findings) == ["syn-recv-stuck"]


def test_incident_sysctl_conf_on_its_centos_kernel_and_on_a_new_one() -> None:
    b = load("incident-sysctl-conf")
    assert [(f.id, f.severity) for f in analyse(b)] == [("tw-recycle-enabled", Severity.WARNING)]
    b = load("incident-sysctl-conf")
    b.texts["uname.txt"] = "6.1.0-28-amd64\n"
    (f,) = analyse(b)
    assert f.id == "tw-recycle-enabled" and f.severity is Severity.INFO and "no longer has" in f.summary


def test_dr_site_healthy_node_and_loop_node() -> None:
    site = analyse_site({h: load(f"incident-dr-site/{h}") for h in ("director", "node1", "node2")})
    assert confirmed(site["director"]) == [] and site["node1"] == []
    assert ids(site["node2"]) == ["local-vip-loop", "dr-vip-not-on-realserver"]
    loop = site["node2"][0]
    assert "ip addr add 10.240.0.201/32 dev lo" in loop.fix
    assert "sysctl -w net.ipv4.conf.eth1.accept_local=0" in loop.fix


def test_dr_loop_from_one_node_bundle_and_the_incidents_service() -> None:
    node = load("incident-dr-site/node2")
    node.texts["kubectl.yaml"] = (BUNDLES / "incident-whoami-svc.yaml").read_text()
    assert ids(analyse(node)) == ["local-vip-loop"]


def test_dr_arp_ignore_broken_on_node1() -> None:
    node = load("incident-dr-site/node1")
    node.texts["sysctl.txt"] = node.texts["sysctl.txt"].replace("eth1.arp_ignore = 1", "eth1.arp_ignore = 0")
    findings = analyse(node)
    assert ids(findings) == ["dr-arp-ignore"]
    assert findings[0].fix == (
        "sysctl -w net.ipv4.conf.eth1.arp_ignore=1",
        "# persist: net.ipv4.conf.<if>.arp_ignore = 1 in /etc/sysctl.d/90-lvs-dr.conf",
    )
    node.texts["sysctl.txt"] = node.texts["sysctl.txt"].replace(
        "eth1.arp_announce = 2", "eth1.arp_announce = 0"
    )
    node.__dict__.pop("sysctls", None)
    assert ids(analyse(node)) == ["dr-arp-ignore", "dr-arp-announce"]


def test_all_arp_ignore_raises_the_effective_value() -> None:
    node = load("incident-dr-site/node1")
    node.texts["sysctl.txt"] = node.texts["sysctl.txt"].replace(
        "all.arp_announce = 0", "all.arp_announce = 2"
    )
    assert analyse(node) == []
    node = load("incident-dr-site/node1")
    node.texts["sysctl.txt"] = node.texts["sysctl.txt"].replace("all.arp_ignore = 0", "all.arp_ignore = 8")
    (f,) = analyse(node)
    assert f.id == "dr-arp-ignore" and "8 on eth1" in f.summary
