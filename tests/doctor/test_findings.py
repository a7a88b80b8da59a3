"""Every finding id: a bundle that triggers it and healthy bundles that must not.

Bundles under tests/fixtures/bundles/vm-* were captured with `kubelvs doctor collect` on
real IPVS (Debian 6.1 in the VM tier) and m-* on the machine's kernel, both from states
built in namespaces by tests/doctor/scenarios.py. Where a state cannot be built on either
kernel (tw_recycle is gone since 4.12, conn_reuse_mode's bug needs < 5.9, a conntrack table
near full), one value of a real capture is changed, and the test says so.
"""

from __future__ import annotations

import json
import re

import pytest

from kubelvs.doctor import FINDING_IDS, Bundle, Finding, Severity, analyse, analyse_site
from kubelvs.doctor.examined import examine

from .conftest import BUNDLES, confirmed, ids, load

HEALTHY = [
    "vm-healthy",
    "vm-ip6-healthy",
    "vm-ip6-tun-vip-deprecated",
    "m-node-healthy",
    "m-dr-node-healthy",
    "m-dr-node-vip6-healthy",
    "incident-stale-port-fixed",
]


def _site(name: str) -> dict[str, list]:  # type: ignore[type-arg]
    root = BUNDLES / name
    return analyse_site({d.name: Bundle.load(str(d)) for d in sorted(root.iterdir()) if d.is_dir()})


def _set_sysctl(bundle: Bundle, name: str, value: int | str) -> Bundle:
    text = bundle.texts["sysctl.txt"]
    line = f"{name} = {value}"
    new, n = re.subn(rf"^{re.escape(name)} = .*$", line, text, flags=re.M)
    bundle.texts["sysctl.txt"] = new if n else text + line + "\n"
    bundle.__dict__.pop("sysctls", None)
    return bundle


@pytest.mark.parametrize("name", HEALTHY)
def test_healthy_bundles_have_no_findings(name: str) -> None:
    findings = analyse(load(name))
    assert confirmed(findings) == []
    # A capture without the sysctls may leave a kernel default to confirm: never more than info.
    assert all(f.severity is Severity.INFO and f.to_confirm for f in findings), findings


def test_healthy_tun_site_after_the_incidents_fix() -> None:
    assert all(fs == [] for fs in _site("vm-tun-rp-filter-fixed").values())


# -------------------------------------------------------------- IPVS table vs Kubernetes


def test_stale_realserver_on_real_ipvs() -> None:
    findings = analyse(load("vm-stale"))
    assert ids(findings) == ["stale-realserver"]
    f = findings[0]
    assert f.fix[0] == "ipvsadm -d -t 10.96.0.20:6379 -r 10.0.2.2:80"
    assert "ipvsadm-Ln.txt:5: -> 10.0.2.2:80" in " ".join(f.evidence)


def test_stale_realserver_from_proc_only() -> None:
    b = load("vm-stale")
    for name in ("ipvsadm-Ln.txt", "ipvsadm-Sn.txt"):
        del b.texts[name]
    (f,) = analyse(b)
    assert f.id == "stale-realserver" and any(e.startswith("proc-net-ip_vs.txt:") for e in f.evidence)


def test_missing_realserver_and_virtual_service() -> None:
    b = load("vm-healthy")
    kube = json.loads(b.texts["kubectl.json"])
    kube["items"][1]["endpoints"].append({"addresses": ["10.0.2.4"], "conditions": {"ready": True}})
    svc = json.loads(json.dumps(kube["items"][0]))
    svc["metadata"]["name"] = "api"
    svc["spec"]["clusterIP"], svc["spec"]["clusterIPs"] = "10.96.0.11", ["10.96.0.11"]
    kube["items"].append(svc)
    b.texts["kubectl.json"] = json.dumps(kube)
    findings = analyse(b)
    assert ids(findings) == ["missing-realserver", "missing-virtual-service"]
    assert "10.0.2.4:8080" in findings[0].summary
    assert findings[1].fix[0] == "ipvsadm -A -t 10.96.0.11:80 -s rr"


def test_not_ready_endpoint_is_not_missing_and_unready_is_not_stale() -> None:
    b = load("vm-healthy")
    kube = json.loads(b.texts["kubectl.json"])
    kube["items"][1]["endpoints"][1]["conditions"]["ready"] = False
    kube["items"][1]["endpoints"].append({"addresses": ["10.0.2.9"], "conditions": {"ready": False}})
    b.texts["kubectl.json"] = json.dumps(kube)
    assert analyse(b) == []


def test_weight_zero_leftover() -> None:
    findings = analyse(load("vm-weight-zero"))
    assert ids(findings) == ["weight-zero-leftover"]
    assert findings[0].severity is Severity.WARNING
    assert findings[0].fix == ("ipvsadm -d -t 10.96.0.25:80 -r 10.0.2.3:8080",)


def test_dr_port_mapping_programmed_over_netlink() -> None:
    findings = analyse(load("vm-dr-port"))
    assert ids(findings) == ["dr-port-mapping"]
    assert findings[0].fix[1] == "ipvsadm -a -t 10.96.0.30:80 -r 10.0.2.2:80 -g -w 1"


def test_dr_site_director_ports_are_fine() -> None:
    assert confirmed(analyse(load("incident-dr-site/director"))) == []


# -------------------------------------------------------------- connection table


def test_timewait_on_real_ipvs() -> None:
    findings = analyse(load("vm-timewait"))
    assert ids(findings) == ["tcpfin-timeout-long", "timewait-heavy", "ipvs-timeout-below-keepalive"]
    assert findings[0].fix[0] == "ipvsadm --set 900 30 300"
    assert findings[2].fix[0] == "ipvsadm --set 7260 120 300"


def test_timewait_without_the_timeouts_assumes_the_kernel_defaults() -> None:
    """The same capture without ipvsadm -L --timeout: the kernel's tcpfin 120 s is assumed,
    so the finding stands as likely (info) and names the command that decides it."""
    b = load("vm-timewait")
    del b.texts["ipvsadm-timeout.txt"]
    by_id = {f.id: f for f in analyse(b)}
    tcpfin = by_id["tcpfin-timeout-long"]
    assert (tcpfin.confidence, tcpfin.severity) == ("likely", Severity.INFO)
    assert tcpfin.to_confirm == ("ipvsadm -L --timeout",)
    assert tcpfin.summary.startswith("IPVS tcpfin timeout is 120 s while 1200 of 1200 TCP entries")
    assert not any(e.startswith("ipvsadm-timeout.txt") for e in tcpfin.evidence)
    assert by_id["timewait-heavy"].confidence == "confirmed"  # the table alone proves it


def test_syn_recv_through_a_tunnel_with_strict_rp_filter() -> None:
    site = _site("vm-tun-rp-filter")
    assert ids(site["realserver"]) == ["rp-filter-strict"]
    assert "tunl0" in site["realserver"][0].summary
    assert "IPReversePathFilter" in site["realserver"][0].explanation
    (syn,) = site["director"]
    assert syn.id == "syn-recv-stuck" and "10.0.3.2:80" in syn.summary
    assert "1. on the real server 10.0.3.2 itself: rp-filter-strict" in syn.explanation
    assert "sysctl -w net.ipv4.conf.tunl0.rp_filter=0" in syn.fix


def test_syn_recv_without_ip_forward() -> None:
    findings = analyse(load("vm-ip-forward-off"))
    assert ids(findings) == ["ip-forward-off", "syn-recv-stuck"]
    assert findings[0].fix[0] == "sysctl -w net.ipv4.ip_forward=1"
    assert "1. ip_forward is off" in findings[1].explanation


def test_syn_recv_without_ipv6_forwarding() -> None:
    """The IPv6 twin (vm-ip6-healthy is the same director with forwarding on). IPv4's
    ip_forward is 0 there too, but no IPv4 real server needs it: only IPv6's is named."""
    findings = analyse(load("vm-ip6-forward-off"))
    assert ids(findings) == ["ip-forward-off", "syn-recv-stuck"]
    forward, syn = findings
    assert forward.summary.startswith("net.ipv6.conf.all.forwarding = 0 on a NAT director (1 IPv6 Masq")
    assert forward.fix[0] == "sysctl -w net.ipv6.conf.all.forwarding=1"
    assert "sysctl.txt:703: net.ipv6.conf.all.forwarding = 0" in forward.evidence
    assert "4 of 4 IPVS connections to real server [fd00:2::2]:8080" in syn.summary
    assert "1. IPv6 forwarding is off" in syn.explanation
    assert syn.fix[:2] == (
        "ipvsadm -d -t [fd00:96::60]:80 -r [fd00:2::2]:8080   # take it out of rotation meanwhile",
        "sysctl -w net.ipv6.conf.all.forwarding=1",
    )


# -------------------------------------------------------------- kernel settings


def test_rp_filter_strict_on_vxlan_and_bridge() -> None:
    findings = analyse(load("m-rp-filter-tunnel"))
    assert ids(findings) == ["rp-filter-strict"]
    assert "kube-bridge" in findings[0].summary and "tun-192168926" in findings[0].summary
    assert "em1" not in findings[0].summary


def test_tw_recycle_on_an_old_kernel() -> None:
    # changed value: the option does not exist on kernels >= 4.12
    b = _set_sysctl(load("m-node-healthy"), "net.ipv4.tcp_tw_recycle", 1)
    b.texts["uname.txt"] = "4.9.0-8-amd64\n"
    findings = analyse(b)
    assert ids(findings) == ["tw-recycle-enabled"] and findings[0].severity is Severity.ERROR


def _set_counter(bundle: Bundle, name: str, value: int) -> Bundle:
    from kubelvs.formats.netstat import format_proc_netstat, parse_proc_netstat

    counters = parse_proc_netstat(bundle.texts["proc-net-netstat.txt"])
    counters.sections["TcpExt"][name] = value
    bundle.texts["proc-net-netstat.txt"] = format_proc_netstat(counters)
    bundle.__dict__.pop("counters", None)
    return bundle


def test_paws_rejects_on_a_nat_director() -> None:
    # changed value: PAWSEstab of the real capture raised to the incident's 17855
    b = _set_counter(load("vm-healthy"), "PAWSEstab", 17855)
    findings = analyse(b)
    assert ids(findings) == ["paws-rejects"] and findings[0].severity is Severity.WARNING
    assert any("Masq" in e for e in findings[0].evidence)  # the NAT it is based on


def test_paws_rejects_without_nat_is_only_info() -> None:
    b = _set_counter(load("m-node-healthy"), "PAWSEstab", 17855)
    (f,) = analyse(b)
    assert f.id == "paws-rejects" and f.severity is Severity.INFO


def test_few_paws_rejects_are_noise() -> None:
    assert analyse(_set_counter(load("vm-healthy"), "PAWSEstab", 12)) == []


def test_conn_reuse_mode_on_old_kernel() -> None:
    # changed value: the VM's kernel (6.1) has the fix; the capture's default mode 1 is kept
    b = load("vm-healthy")
    assert b.sysctl("net.ipv4.vs.conn_reuse_mode") == 1
    b.texts["uname.txt"] = "5.4.0-150-generic\n"
    findings = analyse(b)
    assert ids(findings) == ["conn-reuse-mode"]
    (f,) = findings
    assert (f.confidence, f.severity) == ("confirmed", Severity.WARNING)
    # Both sides of the setting, and what the two expire_* settings change.
    assert "1 s or 3 s latency spikes" in f.explanation
    assert "new connections land on terminating pods" in f.explanation
    assert "expire_quiescent_template=1 does the same for persistence templates" in f.explanation
    assert "Here expire_nodest_conn = 1 and expire_quiescent_template = 1." in f.explanation
    assert f.fix[2:] == (
        "sysctl -w net.ipv4.vs.conn_reuse_mode=0",
        "sysctl -w net.ipv4.vs.expire_nodest_conn=1",
        "sysctl -w net.ipv4.vs.expire_quiescent_template=1",
    )


def test_conn_reuse_mode_from_the_default_on_an_old_kernel_is_likely() -> None:
    """The sysctl not captured (a grep excerpt), the kernel old and IPVS in use: the default 1
    holds, so the finding stands as likely, one severity lower, with the command that decides it."""
    b = Bundle(
        {"uname.txt": "4.19.0-8-amd64\n", "ipvsadm-timeout.txt": "Timeout (tcp tcpfin udp): 900 120 300\n"}
    )
    by_id = {f.id: f for f in analyse(b)}
    f = by_id["conn-reuse-mode"]
    assert (f.confidence, f.severity) == ("likely", Severity.INFO)
    assert f.to_confirm == ("sysctl net.ipv4.vs.conn_reuse_mode",)
    assert "Assumed, not in the input: net.ipv4.vs.conn_reuse_mode is the kernel default 1." in f.explanation
    # The setting known, the kernel not: likely too, decided by uname -r.
    b = Bundle({"sysctl.txt": "net.ipv4.vs.conn_reuse_mode = 1\n"})
    (f,) = [f for f in analyse(b) if f.id == "conn-reuse-mode"]
    assert f.confidence == "likely" and f.to_confirm == ("uname -r",)
    # Neither: nothing to go on.
    assert "conn-reuse-mode" not in ids(analyse(Bundle({"uname.txt": "4.19.0-8-amd64\n"})))


def test_conntrack_near_full() -> None:
    b = load("m-node-healthy")
    limit = b.sysctl("net.netfilter.nf_conntrack_max")
    assert limit
    _set_sysctl(b, "net.netfilter.nf_conntrack_count", limit * 95 // 100)
    (f,) = analyse(b)
    assert f.id == "conntrack-near-full" and f.severity is Severity.ERROR


def test_expire_nodest_conn_off() -> None:
    b = _set_sysctl(load("vm-healthy"), "net.ipv4.vs.expire_nodest_conn", 0)
    assert ids(analyse(b)) == ["expire-nodest-conn-off"]
    (f,) = analyse(b)
    assert (f.confidence, f.severity, f.to_confirm) == ("confirmed", Severity.WARNING, ())


def test_expire_nodest_conn_from_the_default_is_likely() -> None:
    """The incident's own listing holds no sysctls: the kernel default 0 is assumed, said so."""
    (f,) = [f for f in analyse(load("incident-stale-port")) if f.id == "expire-nodest-conn-off"]
    assert (f.confidence, f.severity) == ("likely", Severity.INFO)
    assert f.to_confirm == ("sysctl net.ipv4.vs.expire_nodest_conn",)
    assert f.evidence == ()


# -------------------------------------------------------------- DR real servers


def test_dr_arp_on_a_real_node() -> None:
    findings = analyse(load("m-dr-node-arp"))
    assert ids(findings) == ["dr-arp-ignore", "dr-arp-announce"]
    assert findings[0].severity is Severity.ERROR


def test_local_vip_loop_on_a_real_node() -> None:
    findings = analyse(load("m-dr-node-loop"))
    assert ids(findings) == ["local-vip-loop"]


def test_dr_vip_missing_among_several() -> None:
    b = load("m-dr-node-healthy")
    kube = json.loads(b.texts["kubectl.json"])
    kube["items"][0]["spec"]["externalIPs"].append("10.240.0.202")
    b.texts["kubectl.json"] = json.dumps(kube)
    findings = analyse(b)
    assert ids(findings) == ["dr-vip-not-on-realserver"]
    assert findings[0].fix[0] == "ip addr add 10.240.0.202/32 dev lo"


def test_an_ipv6_vip_on_the_lan_interface_is_advertised() -> None:
    """Captured from a node that did answer the segment's solicitation for the VIP (the
    scenario checks it; its twin m-dr-node-vip6-healthy, VIP on lo, did not)."""
    findings = analyse(load("m-dr-node-vip6-on-lan"))
    assert ids(findings) == ["dr-ipv6-vip-on-lan"]
    (f,) = findings
    assert f.severity is Severity.WARNING  # a node's own capture: the VIP comes from its Services
    assert f.summary == (
        "real server holds IPv6 VIP fd00:240::201 on its LAN interface eth1 (default/whoami:p externalIPs)"
    )
    assert f.evidence[0] == "ip-addr.txt:14: eth1: inet6 fd00:240::201/64 scope global nodad"
    assert f.fix == ("ip -6 addr del fd00:240::201/64 dev eth1", "ip -6 addr add fd00:240::201/128 dev lo")


def test_a_proxy_neighbour_entry_advertises_an_ipv6_vip_held_on_lo() -> None:
    """Captured from a node with the VIP on lo and a proxy entry for it on eth1 (proxy_ndp
    and forwarding on there): the scenario checked that the segment's solicitation for the
    VIP was answered."""
    findings = analyse(load("m-dr-node-vip6-proxy-ndp"))
    assert ids(findings) == ["dr-ipv6-vip-proxy-ndp"]
    (f,) = findings
    assert f.severity is Severity.WARNING  # a node's own capture: the VIP comes from its Services
    assert f.summary == (
        "real server answers neighbour solicitations for IPv6 VIP fd00:240::201 on eth1 through a proxy "
        "entry (default/whoami:p externalIPs)"
    )
    assert f.evidence == (
        "ip-neigh-proxy.txt:1: fd00:240::201 dev eth1 proxy",
        "sysctl.txt:554: net.ipv6.conf.all.proxy_ndp = 0",
        "sysctl.txt:676: net.ipv6.conf.eth1.proxy_ndp = 1",
        "sysctl.txt:660: net.ipv6.conf.eth1.forwarding = 1",
        "kubectl.json: fd00:240::201 (default/whoami:p externalIPs)",
    )
    assert f.fix[0] == "ip -6 neigh del proxy fd00:240::201 dev eth1"


@pytest.mark.parametrize(
    ("changes", "answers"),
    [
        ({"net.ipv6.conf.eth1.forwarding": 0}, False),  # the kernel proxies only on a forwarding interface
        ({"net.ipv6.conf.eth1.proxy_ndp": 0}, False),
        ({"net.ipv6.conf.eth1.proxy_ndp": 0, "net.ipv6.conf.all.proxy_ndp": 1}, True),  # all OR the interface
    ],
)
def test_a_proxy_neighbour_entry_answers_only_where_proxying_is_on(
    changes: dict[str, int], answers: bool
) -> None:
    """The kernel's rule (ndisc_recv_ns), as the scenario's real node showed: the entry
    answers with proxy_ndp on the interface or on all, and forwarding on the interface."""
    b = load("m-dr-node-vip6-proxy-ndp")
    for name, value in changes.items():
        b = _set_sysctl(b, name, value)
    assert ids(analyse(b)) == (["dr-ipv6-vip-proxy-ndp"] if answers else [])


def test_a_proxy_entry_for_another_address_or_on_an_ipv4_only_node_is_not_reported() -> None:
    b = load("m-dr-node-vip6-proxy-ndp")
    b.texts["ip-neigh-proxy.txt"] = "fd00:240::99 dev eth1 proxy\n"
    assert ids(analyse(b)) == []
    b = load("m-dr-node-healthy")  # IPv4 VIPs only: not asked for the proxy entries either
    assert "proxy neighbour" not in " ".join(examine(b, origin="bundle").missing)


def test_an_ipv6_vip_preferred_on_the_directors_interface_is_the_source_of_its_tunnels() -> None:
    """Captured on real IPVS: the TUN director held its VIP /128 beside its /64 on the real
    servers' interface, its tunnel packets left from the VIP and every connection hung
    (the scenario checks both; its twin with the VIP deprecated served all of them)."""
    findings = analyse(load("vm-ip6-tun-vip-source"))
    assert ids(findings) == ["director-ipv6-vip-source", "syn-recv-stuck"]
    source, stuck = findings
    assert source.severity is Severity.ERROR
    assert source.summary == (
        "this director sends to its real server(s) [fd00:2::2]:80 from the VIP fd00:2::200, which it holds "
        "on eth-rs as a preferred address"
    )
    assert source.evidence == (
        "ip-addr.txt:20: eth-rs: inet6 fd00:2::200/128 scope global",
        "ip-addr.txt:22: eth-rs: inet6 fd00:2::1/64 scope global",
        "Tunnel real server [fd00:2::2]:80",
    )
    assert source.fix[0] == "ip -6 addr change fd00:2::200/128 dev eth-rs preferred_lft 0"
    assert "1. the director's packets to it come from the VIP" in stuck.explanation


def test_an_ipv6_vip_source_of_dr_real_servers_is_a_warning() -> None:
    """Route real servers still get the clients' traffic; what the director sends them
    itself (health checks) is answered on the real server."""
    b = load("vm-ip6-tun-vip-source")
    b.texts["ipvsadm-Ln.txt"] = b.texts["ipvsadm-Ln.txt"].replace("Tunnel", "Route")
    b.texts.pop("ipvsadm-Lnc.txt")
    b.texts.pop("proc-net-ip_vs_conn.txt")
    (f,) = [f for f in analyse(b) if f.id == "director-ipv6-vip-source"]
    assert f.severity is Severity.WARNING and f.evidence[-1] == "Route real server [fd00:2::2]:80"


def test_two_hosts_answering_neighbour_solicitations_for_one_ipv6_vip_conflict() -> None:
    """The site twin of the two captures above: one node holds the VIP on eth1, the other
    has a proxy entry for it; both answered the segment's solicitation (their scenarios
    checked it), so the segment's neighbour cache flips between them. (The captures come
    from separate labs with the same node addresses, which conflict too: not looked at.)"""
    site = analyse_site({host: load(f"m-dr-node-vip6-{host}") for host in ("on-lan", "proxy-ndp", "healthy")})

    def conflicts(host: str) -> list[Finding]:
        return [f for f in site[host] if f.id == "vip-arp-conflict" and f.subject == "fd00:240::201"]

    (on_lan,), (proxy,) = conflicts("on-lan"), conflicts("proxy-ndp")
    assert on_lan == proxy and conflicts("healthy") == []
    assert "check-failed" not in {f.id for fs in site.values() for f in fs}
    assert on_lan.summary == (
        "2 hosts answer neighbour solicitations for fd00:240::201: on-lan: on eth1; "
        "proxy-ndp: a proxy entry on eth1"
    )
    assert on_lan.fix == (
        "# keep it answered by one host only, the director of the VIP; on the others:",
        "# on on-lan:",
        "ip -6 addr del fd00:240::201/64 dev eth1   # a DR real server holds it on lo instead",
        "# on proxy-ndp:",
        "ip -6 neigh del proxy fd00:240::201 dev eth1",
    )


def test_an_ipv6_vip_missing_is_fixed_without_arp_settings() -> None:
    """The same capture with a dual-stack Service's IPv6 externalIP added: the real server
    needs it on lo, and nothing else (docs/ipv6.md); no accept_local loop for IPv6."""
    b = load("m-dr-node-healthy")
    kube = json.loads(b.texts["kubectl.json"])
    kube["items"][0]["spec"]["externalIPs"].append("fd00:240::201")
    b.texts["kubectl.json"] = json.dumps(kube)
    b = _set_sysctl(b, "net.ipv4.conf.eth1.accept_local", 1)
    findings = analyse(b)
    assert ids(findings) == ["dr-vip-not-on-realserver"]
    assert findings[0].summary.startswith("real server does not hold VIP fd00:240::201 (")
    assert findings[0].fix == ("ip -6 addr add fd00:240::201/128 dev lo",)


# -------------------------------------------------------------- the report as a whole


def test_every_id_is_documented() -> None:
    doc = (BUNDLES.parent.parent.parent / "docs" / "doctor.md").read_text()
    for fid in FINDING_IDS:
        assert f"`{fid}`" in doc, fid
