"""The failure modes added for pasted evidence, each from a real capture that triggers it
and a healthy twin that must not (tests/doctor/scenarios.py built both in namespaces on
real IPVS in the VM tier; tests/doctor/lab_capture.py from the lab on this kernel, see
test_lab_bundles.py for those)."""

from __future__ import annotations

from kubelvs.doctor import Severity, analyse, analyse_site
from kubelvs.doctor.paste import analyse_paste, read_paste

from .conftest import ids, load


def _site(name: str) -> dict[str, list]:  # type: ignore[type-arg]
    return analyse_site({h: load(f"{name}/{h}") for h in ("dir1", "dir2")})


def test_the_vip_as_the_client_of_the_host_own_connections() -> None:
    """The director's own connections to its VIP (held on kube-ipvs0, as on every node)
    left from the VIP; the real server's node holds it too: 0 of 4 connected."""
    findings = analyse(load("vm-vip-source"))
    assert ids(findings) == ["vip-as-client-source", "syn-recv-stuck"]
    vip, syn = findings
    assert vip.severity is Severity.ERROR
    assert vip.summary == "4 IPVS connection(s) have the VIP 10.96.0.70 itself as their client (SYN_RECV 4)"
    assert all(" SYN_RECV 10.96.0.70:" in e for e in vip.evidence)
    # The fix printed is the one applied for the healthy twin, where 4 of 4 connected.
    assert (
        vip.fix[0]
        == "ip route replace local 10.96.0.70 dev kube-ipvs0 table local proto kernel scope host src 10.0.2.1"
    )
    assert "1. the connections come from the VIP itself" in syn.explanation
    assert analyse(load("vm-vip-source-fixed")) == []


def test_a_drained_real_server_that_reused_client_ports_still_reach() -> None:
    """conn_reuse_mode=0 and expire_nodest_conn=0: a client reusing its port landed on the
    drained 10.0.2.2 (weight 0, no longer an endpoint). With expire_nodest_conn=1 this
    kernel scheduled it anew, to 10.0.2.3."""
    findings = analyse(load("vm-reused-port"))
    assert "weight-zero-still-used" in ids(findings)
    (f,) = [f for f in findings if f.id == "weight-zero-still-used"]
    assert f.summary == (
        "TCP 10.96.0.75:80: real server 10.0.2.2:8080 has weight 0 but 1 open or opening connection(s) "
        "(ESTABLISHED 1)"
    )
    assert "its endpoint is gone from Kubernetes" in f.explanation and "conn_reuse_mode = 0" in f.explanation
    assert f.fix[0] == "ipvsadm -d -t 10.96.0.75:80 -r 10.0.2.2:8080   # its pod is gone"
    assert any(e.startswith("ipvsadm-Lnc.txt:") and "ESTABLISHED 10.0.1.2:40000" in e for e in f.evidence)
    twin = analyse(load("vm-reused-port-rescheduled"))
    assert "weight-zero-still-used" not in ids(twin)
    assert ids(twin) == ["weight-zero-leftover"]  # drained, idle, never deleted: the older finding


def test_persistence_templates_pinning_clients_to_a_drained_server() -> None:
    """-p 300, 10.0.2.2 drained with expire_quiescent_template=0: the client's next two
    connections still went to 10.0.2.2. With 1, they went to 10.0.2.3."""
    (f,) = analyse(load("vm-persistence-template"))
    assert (f.id, f.severity, f.confidence) == ("persistence-template-stale", Severity.WARNING, "confirmed")
    assert f.evidence[0].endswith("ASSURED 10.0.1.2:0 10.96.0.80:80 10.0.2.2:8080")
    assert f.fix == ("sysctl -w net.ipv4.vs.expire_quiescent_template=1",)
    # The twin's dropped template shows port 65535: not a pin.
    assert analyse(load("vm-persistence-template-expired")) == []


def test_two_directors_with_the_same_maglev_set_in_another_order() -> None:
    site = _site("vm-mh-directors")
    for host in ("dir1", "dir2"):
        (f,) = site[host]
        assert f.id == "directors-disagree"
        assert f.summary == (
            "TCP 10.96.0.90:80: directors dir1 and dir2 would send the same flow to different real servers "
            "(destination order 10.0.2.4:80 10.0.2.3:80 10.0.2.2:80 vs 10.0.2.3:80 10.0.2.2:80 10.0.2.4:80)"
        )
        # Re-added in reverse, each new one at the head of the list: dir1's order again.
        assert f.fix[-3:] == (
            "ipvsadm -a -t 10.96.0.90:80 -r 10.0.2.2:80 -g -w 1",
            "ipvsadm -a -t 10.96.0.90:80 -r 10.0.2.3:80 -g -w 1",
            "ipvsadm -a -t 10.96.0.90:80 -r 10.0.2.4:80 -g -w 1",
        )
    assert _site("vm-mh-directors-same") == {"dir1": [], "dir2": []}


def test_two_pasted_tables_are_compared_as_two_directors() -> None:
    """Paste mode: /proc/net/ip_vs of both directors, one after the other. ipvsadm -Ln
    sorts the real servers, so two ipvsadm listings cannot show the order: no finding."""
    dirs = [load(f"vm-mh-directors/{h}") for h in ("dir1", "dir2")]
    text = "".join(
        f"director {n}:\n$ cat /proc/net/ip_vs\n{b.texts['proc-net-ip_vs.txt']}\n"
        for n, b in enumerate(dirs, 1)
    )
    paste = read_paste(text)
    assert [s.name for s in paste.sections] == ["proc-net-ip_vs.txt", "proc-net-ip_vs.txt"]
    (f,) = [f for f in analyse_paste(paste) if f.id == "directors-disagree"]
    assert f.summary.startswith("TCP 10.96.0.90:80: directors lines 3-9 and lines 13-19 would send")
    # Evidence in the paste's own line numbers: each table's service line and list order.
    assert f.evidence == (
        "line 6 (cat /proc/net/ip_vs): TCP  0A60005A:0050 mh",
        "line 16 (cat /proc/net/ip_vs): TCP  0A60005A:0050 mh",
        "line 3 (cat /proc/net/ip_vs): list order 10.0.2.4:80 10.0.2.3:80 10.0.2.2:80",
        "line 13 (cat /proc/net/ip_vs): list order 10.0.2.3:80 10.0.2.2:80 10.0.2.4:80",
    )
    listings = "".join(f"$ ipvsadm -Ln\n{b.texts['ipvsadm-Ln.txt']}" for b in dirs)
    assert "directors-disagree" not in ids(analyse_paste(read_paste(listings)))
    same = [load(f"vm-mh-directors-same/{h}") for h in ("dir1", "dir2")]
    text = "".join(f"$ cat /proc/net/ip_vs\n{b.texts['proc-net-ip_vs.txt']}" for b in same)
    assert "directors-disagree" not in ids(analyse_paste(read_paste(text)))


def test_mh_without_fallback_with_a_terminating_endpoint_at_weight_0() -> None:
    """kube-proxy's mh (mh-port only), 10.0.2.3 set to weight 0 (its endpoint terminating):
    IPVS refused the new connections hashed to it. The twin with mh-fallback answered all."""
    findings = analyse(load("vm-mh-without-fallback"))
    assert ids(findings)[0] == "hash-without-fallback"
    f = findings[0]
    assert f.severity is Severity.ERROR
    assert f.summary == (
        "TCP 10.96.0.95:80: mh without mh-fallback and 1 real server(s) at weight 0 (10.0.2.3:8080): "
        "the new connections hashed to them are refused"
    )
    assert "kubernetes/kubernetes#139497" in f.explanation
    assert f.fix[0] == "ipvsadm -E -t 10.96.0.95:80 -s mh -b mh-fallback,mh-port"
    assert any(e.startswith("ipvsadm-Ln.txt:") and "10.0.2.3:8080" in e for e in f.evidence)
    assert "hash-without-fallback" not in ids(analyse(load("vm-mh-with-fallback")))
