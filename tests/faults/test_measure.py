"""How the fault runner turns the stream's requests into figures (pure, no lab): which
fault a request is counted for, when traffic flowed again, how two states differ."""

from __future__ import annotations

from ipaddress import ip_address

from kubelvs.lab.faults import FaultResult, Image, NodeImage, Request, attribute, flow_restored
from kubelvs.model import Forward, Protocol, RealServer, ServiceKey, VirtualService


def req(start: float, ok: bool = True, took: float = 0.01, error: str = "") -> Request:
    return Request(start, start + took, ok, server="pod" if ok else "", error=error)


def test_requests_count_for_the_window_they_end_in() -> None:
    windows = [("baseline", 0.0), ("a", 10.0), ("b", 20.0)]
    in_flight = req(9.5, ok=False, took=2.0, error="timed out")  # sent before a, ended during a
    got = attribute([req(1), req(11), in_flight, req(25), req(-1)], windows)
    assert [r.start for r in got["baseline"]] == [1]
    assert [r.start for r in got["a"]] == [11, 9.5]
    assert [r.start for r in got["b"]] == [25]


def test_traffic_flows_again_after_the_last_failure() -> None:
    assert flow_restored([req(1), req(2)], injected=0.5) == 0.5
    reqs = [req(1), req(2, ok=False), req(3), req(4, ok=False), req(5), req(6)]
    assert flow_restored(reqs, injected=0.5) == 5
    assert flow_restored([req(1), req(2, ok=False)], injected=0.5) is None


def service(weight: int) -> tuple[ServiceKey, VirtualService]:
    key = ServiceKey(4, Protocol("tcp"), ip_address("10.240.0.201"), 80)
    rss = [
        RealServer(ip_address(a), 80, weight=weight, forward=Forward.DR)
        for a in ("10.240.0.101", "10.240.0.102")
    ]
    return key, VirtualService(key=key, scheduler="rr", realservers=tuple(rss))


def test_differences_name_what_is_not_back() -> None:
    key, vs = service(1)
    node = NodeImage(vip=True, arp_ignore=1, arp_announce=2)
    good = Image({key: vs}, None, {"net.ipv4.vs.expire_nodest_conn": 1}, "tables", {"node1": node})
    assert good.differences(good) == []
    _, heavier = service(5)
    bad = Image(
        {key: heavier},
        None,
        {"net.ipv4.vs.expire_nodest_conn": 0},
        "other",
        {"node1": NodeImage(vip=False, arp_ignore=0, arp_announce=2)},
    )
    found = good.differences(bad)
    assert len(found) == 4, found
    assert "w=5" in found[0] and "w=1" in found[0]
    assert found[1] == "net.ipv4.vs.expire_nodest_conn=0 (want 1)"
    assert found[2] == "nftables tables differ from the repaired state"
    assert found[3].startswith("node1: VIP missing, arp_ignore 0")
    assert good.differences(bad, only=[]) == [found[3]]  # only the nodes besides the services named
    broken = Image({}, None, {}, "", {}, error="read failed: gone")
    assert good.differences(broken) == ["read failed: gone"]


def test_targets_are_met_only_when_every_one_is() -> None:
    def result(
        failed: int, repair_ms: int | None, *, allowed: bool = False, checks: bool = True
    ) -> FaultResult:
        return FaultResult(
            fault="f",
            title="t",
            backend="ipvs",
            kind="kernel",
            removes_realserver=allowed,
            requests=40,
            failed=failed,
            errors={},
            repair_ms=repair_ms,
            state_ms=repair_ms,
            flow_ms=0,
            target_failed=None if allowed else 0,
            target_repair_ms=2000,
            met=False,
            checks={"c": checks},
        )

    assert result(0, 1999).meets()
    assert not result(1, 1999).meets()  # a failed request where none is allowed
    assert result(5, 1999, allowed=True).meets()
    assert not result(0, 2001).meets()
    assert result(0, 5999).meets(time_scale=3.0) and not result(0, 6001).meets(time_scale=3.0)
    assert not result(0, None).meets()  # never repaired
    assert not result(0, 100, checks=False).meets()
