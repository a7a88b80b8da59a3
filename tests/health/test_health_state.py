"""Health state as properties: rise/fall hysteresis, slow start, one probe per target
however many services share it, and the weights a state change gives."""

from __future__ import annotations

import asyncio
import ipaddress
import time

from hypothesis import given
from hypothesis import strategies as st

from kubelvs.app.health import HealthChecker
from kubelvs.model import DesiredState, Forward, Ownership, Protocol, RealServer, ServiceKey, VirtualService
from kubelvs.model.health import CheckKind, CheckMode, HealthCheck, OnFailure
from kubelvs.roles.health import HealthOverlay, Status, TargetKey, TargetState, effective, record, target_of

TCP = HealthCheck(kind=CheckKind.TCP, rise=2, fall=3)


@given(
    results=st.lists(st.booleans(), max_size=60),
    rise=st.integers(1, 5),
    fall=st.integers(1, 5),
)
def test_hysteresis(results: list[bool], rise: int, fall: int) -> None:
    check = HealthCheck(kind=CheckKind.TCP, rise=rise, fall=fall)
    state = TargetState()
    statuses = []
    for t, ok in enumerate(results):
        state = record(state, ok, "", check, float(t))
        statuses.append(state.status)
    # Goes down exactly on the result that completes `fall` failures in a row, comes back
    # exactly on the one that completes `rise` successes (the first success from unknown).
    for t, status in enumerate(statuses):
        before = statuses[t - 1] if t else Status.UNKNOWN
        if status is before:
            continue
        tail = results[: t + 1]
        run = len(tail) - max((i + 1 for i, r in enumerate(tail) if r != tail[-1]), default=0)
        if status is Status.DOWN:
            assert not tail[-1] and run == fall
        else:
            assert tail[-1] and (run == rise if before is Status.DOWN else before is Status.UNKNOWN)
    if len(results) >= fall and not any(results[-fall:]):
        assert statuses[-1] is Status.DOWN
    if len(results) >= rise and all(results[-rise:]):
        assert statuses[-1] is Status.UP


def test_alternating_results_never_flap() -> None:
    state = record(TargetState(), True, "", TCP, 0)
    for t in range(1, 100):
        state = record(state, t % 2 == 0, "", TCP, t)
        assert state.status is Status.UP


@given(weight=st.integers(1, 100), slow=st.floats(0.5, 300), steps=st.lists(st.floats(0, 400), min_size=1))
def test_slow_start_ramps_monotonically_to_the_full_weight(
    weight: int, slow: float, steps: list[float]
) -> None:
    check = HealthCheck(kind=CheckKind.TCP, slow_start=slow)
    rs = RealServer(ipaddress.ip_address("10.0.0.11"), 80, weight, Forward.DR)
    state = TargetState(status=Status.UP, since=1000.0, came_back=1000.0)
    last = 0
    for elapsed in sorted(steps):
        got = effective(rs, state, check, 1000.0 + elapsed)
        assert got is not None and 1 <= got.weight <= weight and got.weight >= last
        last = got.weight
        if elapsed >= slow:
            assert got.weight == weight


def _services(n: int, nodes: int, check: HealthCheck) -> DesiredState:
    services, health = {}, {}
    for i in range(n):
        key = ServiceKey(4, "tcp", ipaddress.ip_address(f"10.240.{i // 250}.{i % 250}"), 80)  # type: ignore[arg-type]
        rss = [RealServer(ipaddress.ip_address(f"10.1.0.{j + 1}"), 80, 1, Forward.DR) for j in range(nodes)]
        services[key] = VirtualService(key=key, scheduler="mh").with_realservers(rss)
        health[key] = check
    return DesiredState(services=services, ownership=Ownership(), health=health)


def test_a_thousand_services_on_ten_nodes_are_ten_probes_and_a_node_down_is_one_batch() -> None:
    desired = _services(1000, 10, TCP)
    overlay = HealthOverlay()
    overlay.refresh(desired, None)
    assert len(overlay.targets) == 10
    node3 = next(t for t in overlay.targets if str(t.address) == "10.1.0.3")
    assert overlay.affected({node3}) == set(desired.services)
    down = {node3: TargetState(status=Status.DOWN, since=5.0)}
    adjusted = overlay.apply(desired, None, down, 10.0)
    for vs in adjusted.services.values():
        weights = {str(rs.address): rs.weight for rs in vs.realservers}
        assert weights["10.1.0.3"] == 0 and sum(weights.values()) == 9
    # A VIP-mode check is one probe per (VIP, node): it proves that node serves that VIP.
    vip_mode = _services(3, 2, HealthCheck(kind=CheckKind.TCP, mode=CheckMode.VIP))
    overlay.refresh(vip_mode, None)
    assert len(overlay.targets) == 6


def test_remove_on_failure_leaves_the_real_server_out_and_back_in() -> None:
    check = HealthCheck(kind=CheckKind.TCP, on_failure=OnFailure.REMOVE)
    desired = _services(2, 3, check)
    overlay = HealthOverlay()
    overlay.refresh(desired, None)
    node1 = next(t for t in overlay.targets if str(t.address) == "10.1.0.1")
    adjusted = overlay.apply(desired, None, {node1: TargetState(status=Status.DOWN)}, 0)
    assert all(len(vs.realservers) == 2 for vs in adjusted.services.values())
    adjusted = overlay.apply(desired, overlay.affected({node1}), {node1: TargetState(status=Status.UP)}, 0)
    assert adjusted.services == desired.services


def test_the_checker_probes_each_target_at_its_interval() -> None:
    targets = [
        TargetKey(ipaddress.ip_address(f"10.1.0.{i}"), 80, HealthCheck(kind=CheckKind.TCP, interval=0.1))
        for i in range(1, 51)
    ]
    seen: dict[TargetKey, int] = {}
    changes: list[set[TargetKey]] = []

    async def probe(target: TargetKey) -> tuple[bool, str]:
        seen[target] = seen.get(target, 0) + 1
        return str(target.address) != "10.1.0.7", "x"

    async def main() -> HealthChecker:
        checker = HealthChecker(probe, changes.append)
        checker.set_targets(targets)
        stop = asyncio.Event()
        task = asyncio.create_task(checker.run(stop))
        started = time.monotonic()
        await asyncio.sleep(1.0)
        stop.set()
        await task
        elapsed = time.monotonic() - started
        # About elapsed / interval probes each (spread over the interval at the start).
        assert all(abs(seen[t] - elapsed / 0.1) <= 2 for t in targets), seen
        return checker

    checker = asyncio.run(main())
    down = [t for t, s in checker.states.items() if s.status is Status.DOWN]
    assert [str(t.address) for t in down] == ["10.1.0.7"]
    assert {str(t.address) for c in changes for t in c} == {
        f"10.1.0.{i}" for i in range(1, 51)
    }  # up, one down


def test_a_vip_mode_check_of_an_ipv6_vip_is_direct() -> None:
    """One annotation covers both VIPs of a dual-stack Service; the data-path probe builds
    IPv4 packets, so the IPv6 VIP's real servers are probed on their own address."""
    check = HealthCheck(kind=CheckKind.TCP, mode=CheckMode.VIP)
    v4 = ServiceKey(4, Protocol.TCP, ipaddress.ip_address("10.240.0.201"), 80)
    v6 = ServiceKey(6, Protocol.TCP, ipaddress.ip_address("fd00:240::201"), 80)
    rs4 = RealServer(ipaddress.ip_address("10.240.0.101"), 80, 1, Forward.DR)
    rs6 = RealServer(ipaddress.ip_address("fd00:240::101"), 80, 1, Forward.DR)
    through = target_of(v4, rs4, check)
    direct = target_of(v6, rs6, check)
    assert through is not None and through.vip == v4.address
    assert direct is not None and direct.vip is None and str(direct.address) == "fd00:240::101"
