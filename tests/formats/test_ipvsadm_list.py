"""ipvsadm -L listings, /proc/net/ip_vs and --timeout: round trips and messy input."""

from __future__ import annotations

import dataclasses
from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kubelvs.formats.ipvsadm_list import (
    Listing,
    format_listing,
    format_proc_ip_vs,
    format_timeout,
    parse_listing,
    parse_proc_ip_vs,
    parse_timeout,
)
from kubelvs.model import Forward, RealServerStats, Timeouts, VirtualService, parse_address

from ..strategies import services


def _listable(svc: VirtualService) -> VirtualService:
    # -Ln does not print thresholds: they cannot round-trip through it.
    return svc.with_realservers(dataclasses.replace(rs, u_thresh=0, l_thresh=0) for rs in svc.realservers)


@st.composite
def listings(draw: st.DrawFn) -> Listing:
    svcs = [_listable(s) for s in draw(st.lists(services(), max_size=4, unique_by=lambda s: s.key))]
    stats = {}
    for svc in svcs:
        for rs in svc.realservers:
            stats[(svc.key, rs.key)] = RealServerStats(
                active_conns=draw(st.integers(0, 10**6)), inactive_conns=draw(st.integers(0, 10**6))
            )
    return Listing(services=svcs, stats=stats, version="1.2.1 (size=4096)")


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(listings())
def test_ln_round_trip(listing: Listing) -> None:
    back = parse_listing(format_listing(listing))
    assert back.problems == []
    assert back.services == listing.services
    assert back.stats == listing.stats


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(listings())
def test_proc_ip_vs_round_trip(listing: Listing) -> None:
    back = parse_proc_ip_vs(format_proc_ip_vs(listing))
    assert back.problems == []
    assert back.services == listing.services and back.stats == listing.stats


def test_real_proc_ip_vs_text() -> None:
    # as printed by Linux 6.1 (captured in the VM tier), IPv6 in %pI6 notation
    text = (
        "IP Virtual Server version 1.2.1 (size=4096)\n"
        "Prot LocalAddress:Port Scheduler Flags\n"
        "  -> RemoteAddress:Port Forward Weight ActiveConn InActConn\n"
        "TCP  0A6C98D2:18EB rr \n"
        "  -> AC1A06B9:0050      Masq    1      0          0         \n"
        "TCP  [2001:0db8:0000:0000:0000:0000:0000:0001]:0050 wlc \n"
        "  -> [2001:0db8:0000:0000:0000:0000:0000:0002]:0050      Route   2      1          0         \n"
        "FWM  00000064 mh \n"
    )
    listing = parse_proc_ip_vs(text)
    assert listing.problems == []
    assert [str(s.key) for s in listing.services] == [
        "TCP 10.108.152.210:6379",
        "TCP [2001:db8::1]:80",
        "FWM 100",
    ]
    assert listing.services[0].realservers[0].port == 80
    assert listing.services[1].realservers[0].forward is Forward.DR


def test_names_crlf_no_header_and_truncation() -> None:
    text = (
        "TCP  10.108.152.210:6379 rr\r\n"
        "  -> 172.26.6.185:http            Masq    1      0          0         \r\n"
        "  -> 172.26.6.185:6379            Masq    1      3\r\n"  # truncated
        "--\r\n"
        "TCP  myhost.example:https wlc\r\n"  # host name: cannot be turned back without DNS
        "  -> 10.0.0.2:https Route 1 0 0\r\n"
        "UDP  10.0.0.10:domain rr\r\n"
        "  -> 10.0.0.11:domain Masq 1 0 5\r\n"
    )
    listing = parse_listing(text)
    assert [str(s.key) for s in listing.services] == ["TCP 10.108.152.210:6379", "UDP 10.0.0.10:53"]
    assert [str(r.key) for r in listing.services[0].realservers] == ["172.26.6.185:80"]
    assert len(listing.problems) == 3
    assert "ipvsadm -Ln:3" in listing.problems[0] and "truncated" in listing.problems[0]
    assert "host name" in listing.problems[1]
    assert "before any service" in listing.problems[2]  # the host-named service was skipped


def test_persistent_mask_flags_ops() -> None:
    text = (
        "TCP  10.0.0.1:80 sh (sh-fallback,sh-port) persistent 300 mask 255.255.255.0 ops\n"
        "  -> 10.0.0.2:80 Tunnel 0 0 0\n"
        "TCP  10.0.0.1:81 mh mh-port\n"  # ipvsadm 1.29 prints flags without parentheses
    )
    listing = parse_listing(text)
    svc = listing.services[0]
    assert svc.flags == frozenset({"sh-fallback", "sh-port", "ops"})
    assert svc.persistence == 300 and svc.netmask == 24
    assert svc.realservers[0].forward is Forward.TUN and svc.realservers[0].weight == 0
    assert listing.services[1].flags == frozenset({"mh-port"})


def test_stats_and_rate_with_suffixes() -> None:
    text = (
        "IP Virtual Server version 1.2.1 (size=4096)\n"
        "Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes\n"
        "  -> RemoteAddress:Port\n"
        "TCP  10.0.0.1:80                       12K     100M        0    5000G        0\n"
        "  -> 10.0.0.2:80                          6       50       40     2500     2000\n"
    )
    listing = parse_listing(text)
    assert listing.kind == "stats" and listing.problems == []
    key = listing.services[0].key
    assert listing.service_stats[key].conns == 12000 and listing.service_stats[key].in_bytes == 5000 * 10**9
    rs = (key, listing.services[0].realservers[0].key)
    assert listing.stats[rs].out_bytes == 2000


def test_garbage_never_raises() -> None:
    listing = parse_listing("\x00\x01 binary\nTCP\n  ->\nFWM x rr\n" + "TCP 1.2.3.4:99999 rr\n")
    assert listing.services == [] and len(listing.problems) == 5


def test_timeout() -> None:
    assert parse_timeout("Timeout (tcp tcpfin udp): 900 120 300\n") == Timeouts(900, 120, 300)
    assert parse_timeout("Timeout (tcp tcpfin udp): 900 120\n") is None
    assert parse_timeout(format_timeout(Timeouts(7200, 30, 300))) == Timeouts(7200, 30, 300)


def test_ipv6_service_text() -> None:
    listing = parse_listing("TCP  [2001:db8::1]:443 rr\n  -> [2001:db8::2]:8443 Masq 1 0 0\n")
    assert listing.services[0].realservers[0].address == parse_address("2001:db8::2")


def test_kernel_and_ipvsadm_listings_captured_together_agree() -> None:
    """vm-* fixtures: /proc/net/ip_vs (hex) and ipvsadm -Ln of the same real IPVS table
    (but for the scheduler flags, which /proc/net/ip_vs does not show)."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "fixtures" / "bundles"
    pairs = sorted(root.glob("vm-*/**/ipvsadm-Ln.txt"))
    assert len(pairs) >= 8
    for ln in pairs:
        a = parse_listing(ln.read_text())
        b = parse_proc_ip_vs(ln.with_name("proc-net-ip_vs.txt").read_text())
        unflagged = [replace(svc, flags=frozenset()) for svc in a.services]
        assert a.problems == b.problems == [] and unflagged == b.services, ln
