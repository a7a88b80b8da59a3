"""``kubelvs top``'s frame (pure): rates from two reads, the director's names, health and
drains, sorting and filtering. The lab test (tests/lab/test_metrics.py) runs the
command against real traffic."""

from __future__ import annotations

import time

from kubelvs.formats.top import frame, render
from kubelvs.model import ObservedState, RealServerStats

from .test_director import service


def _observed(stats: dict[tuple[int, int], RealServerStats]) -> ObservedState:
    services = {s.key: s for s in (service(201), service(202, nodes=(103,)))}
    keyed = {}
    for (vip, node), st in stats.items():
        vs = next(v for v in services.values() if str(v.key.address).endswith(f".{vip}"))
        rs = next(r for r in vs.realservers if str(r.address).endswith(f".{node}"))
        keyed[(vs.key, rs.key)] = st
    return ObservedState(services=services, stats=keyed)


BEFORE = _observed(
    {
        (201, 101): RealServerStats(conns=10, in_packets=100, in_bytes=10_000),
        (201, 102): RealServerStats(conns=5, in_packets=50, in_bytes=5_000),
        (202, 103): RealServerStats(conns=0),
    }
)
AFTER = _observed(
    {
        (201, 101): RealServerStats(
            conns=30, in_packets=300, in_bytes=30_000, active_conns=4, inactive_conns=2
        ),
        (201, 102): RealServerStats(conns=1, in_packets=10, in_bytes=1_000),  # deleted and added again
        (202, 103): RealServerStats(conns=2, in_packets=8, in_bytes=800),
    }
)
DIRECTOR = {
    "names": {"services": {"TCP 10.240.0.201:80": "shop/web"}, "realservers": {"10.240.0.101": "node1"}},
    "drains": [
        {
            "service": "TCP 10.240.0.201:80",
            "realserver": "10.240.0.102:80",
            "since": time.time() - 5,
            "connections": 3,
        }
    ],
}


def test_rates_are_differences_over_the_interval_with_the_directors_names() -> None:
    f = frame("ipvs", BEFORE, AFTER, 2.0, DIRECTOR)
    web, other = f.services
    assert (web.what, web.name, other.name) == ("TCP 10.240.0.201:80", "shop/web", "svc202")
    node1, node2 = web.realservers
    assert (node1.name, node1.conns_per_s, node1.in_packets_per_s, node1.in_bits_per_s) == (
        "node1",
        10,
        100,
        80_000,
    )
    assert (node1.active, node1.inactive, node1.weight) == (4, 2, 1)
    # A counter that went back (deleted and added again) is no negative rate.
    assert (node2.conns_per_s, node2.in_packets_per_s) == (0, 0)
    assert node2.drain.startswith("draining, 3 conn left, ")
    assert (web.conns_per_s, web.in_packets_per_s, web.active) == (10, 100, 4)


def test_render_sorts_filters_and_says_what_nftables_cannot_count() -> None:
    f = frame("ipvs", BEFORE, AFTER, 2.0, DIRECTOR)
    by_packets = render(f, sort="packets_per_s").splitlines()
    assert by_packets[2].startswith("TCP 10.240.0.201:80") and by_packets[5].startswith("TCP 10.240.0.202:80")
    by_name = render(f, sort="name").splitlines()
    assert by_name[2].startswith("TCP 10.240.0.201:80")  # "shop/web" before "svc202"
    assert render(f, sort="name", reverse=True).splitlines()[2].startswith("TCP 10.240.0.202:80")
    only = render(f, filter_text="node1")
    assert "10.240.0.201:80" in only and "10.240.0.202" not in only and "filter 'node1'" in only
    lines = render(frame("nftables", BEFORE, AFTER, 2.0)).splitlines()
    assert lines[2].split()[:3] == ["TCP", "10.240.0.201:80", "svc201"]
    assert lines[2].split()[3] == "-"  # no connection counts on nftables: not 0
