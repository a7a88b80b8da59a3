"""Drains that track connections: a real server that leaves is set to weight 0 while it has
connections, deleted once they reach 0 or its service's drain timeout passes; UDP goes at
once; a restarted director goes on with the drains its predecessor started."""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from pathlib import Path

from kubelvs.app.state import DirectorStateFile, drains_to_restore
from kubelvs.backends.memory import MemoryBackend
from kubelvs.model import (
    DesiredState,
    Forward,
    Ownership,
    RealServer,
    RealServerStats,
    ServiceKey,
    VirtualService,
)
from kubelvs.roles.director import DRAIN_POLL, Director

OWNED = Ownership(cidrs=(ipaddress.ip_network("10.240.0.0/24"),))


def service(nodes: tuple[int, ...], protocol: str = "tcp") -> VirtualService:
    key = ServiceKey(4, protocol, ipaddress.ip_address("10.240.0.201"), 80)  # type: ignore[arg-type]
    rss = [RealServer(ipaddress.ip_address(f"10.240.0.{n}"), 80, 1, Forward.DR) for n in nodes]
    return VirtualService(key=key, scheduler="mh").with_realservers(rss)


def desired(vs: VirtualService, timeout: float = 30.0) -> DesiredState:
    return DesiredState(services={vs.key: vs}, ownership=OWNED, drain_timeout=timeout)


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def weights(backend: MemoryBackend) -> dict[str, int]:
    return {a: w for rows in backend.table().values() for a, _, w, _ in rows}


def busy(backend: MemoryBackend, node: int, active: int, inactive: int = 0) -> None:
    key = service((101,)).key
    rs = RealServer(ipaddress.ip_address(f"10.240.0.{node}"), 80).key
    backend.set_stats(key, rs, RealServerStats(active_conns=active, inactive_conns=inactive))


def test_a_leaving_real_server_drains_until_its_connections_end() -> None:
    clock, backend = Clock(), MemoryBackend()
    director = Director(backend, graceful=True, clock=clock)
    director.sync(desired(service((101, 102, 103))))
    busy(backend, 102, active=3, inactive=2)
    # Node 102 and 103 leave: 103 has no connections and goes at once; 102 drains.
    result = director.sync(desired(service((101,))), changed=[service((101,)).key])
    assert weights(backend) == {"10.240.0.101": 1, "10.240.0.102": 0}
    assert list(result.plan.draining) == [(service((101,)).key, service((102,)).realservers[0].key)]
    assert director.next_due() == DRAIN_POLL
    # Still connections (read fresh from the "kernel", not from the picture): it stays.
    clock.now += DRAIN_POLL
    busy(backend, 102, active=0, inactive=1)
    director.sync(desired(service((101,))), changed=[])
    assert "10.240.0.102" in weights(backend)
    clock.now += DRAIN_POLL
    busy(backend, 102, active=0, inactive=0)
    finished = director.sync(desired(service((101,))), changed=[]).drains_finished
    assert weights(backend) == {"10.240.0.101": 1}
    assert not director.drains and director.next_due() is None
    # Reported once (a DrainFinished Event): the real server, why, and how long it drained.
    node102 = service((102,)).realservers[0].key
    assert finished == ((service((101,)).key, node102, "no connections left", 2 * DRAIN_POLL),)
    assert director.sync(desired(service((101,))), changed=[]).drains_finished == ()


def test_the_counters_of_every_real_server_are_asked_before_its_service_goes() -> None:
    # The picture's counters are from the last full read (none then): the connections a
    # real server got since are asked before its service is deleted, and it drains. Only
    # the leaving real servers are asked, and a whole service's are all leaving.
    clock, backend = Clock(), MemoryBackend()
    director = Director(backend, graceful=True, clock=clock)
    director.sync(desired(service((101, 102))))
    busy(backend, 102, active=1)
    gone = DesiredState(services={}, ownership=OWNED, drain_timeout=30.0)
    result = director.sync(gone, changed=[service((101,)).key])
    assert weights(backend) == {"10.240.0.101": 1, "10.240.0.102": 0}
    assert list(result.plan.draining) == [(service((101,)).key, service((102,)).realservers[0].key)]
    clock.now += DRAIN_POLL
    busy(backend, 102, active=0)
    director.sync(gone, changed=[])
    assert backend.table() == {}


def test_a_drain_ends_at_the_timeout_whatever_the_connections() -> None:
    clock, backend = Clock(), MemoryBackend()
    director = Director(backend, graceful=True, clock=clock)
    director.sync(desired(service((101, 102)), timeout=5))
    busy(backend, 102, active=7)
    director.sync(desired(service((101,)), timeout=5), changed=[service((101,)).key])
    assert weights(backend) == {"10.240.0.101": 1, "10.240.0.102": 0}
    clock.now += 4
    director.sync(desired(service((101,)), timeout=5), changed=[])
    assert "10.240.0.102" in weights(backend)
    assert director.next_due() == 1.0  # the deadline, sooner than the next poll would be
    clock.now += 1
    result = director.sync(desired(service((101,)), timeout=5), changed=[])
    assert weights(backend) == {"10.240.0.101": 1}
    assert [(why, seconds) for _, _, why, seconds in result.drains_finished] == [("drain timeout", 5)]


def test_udp_real_servers_are_deleted_at_once() -> None:
    clock, backend = Clock(), MemoryBackend()
    director = Director(backend, graceful=True, clock=clock)
    director.sync(desired(service((101, 102), "udp")))
    key = service((101,), "udp").key
    backend.set_stats(key, service((102,), "udp").realservers[0].key, RealServerStats(active_conns=4))
    result = director.sync(desired(service((101,), "udp")), changed=[key])
    assert weights(backend) == {"10.240.0.101": 1}
    assert result.drains_finished == ()  # never drained


def test_a_restarted_director_goes_on_with_the_drains_of_the_one_before(tmp_path: Path) -> None:
    clock, backend = Clock(), MemoryBackend()
    state = DirectorStateFile(tmp_path / "state.json", backend="memory", source="test")
    first = Director(backend, graceful=True, clock=clock)
    first.sync(desired(service((101, 102)), timeout=10))
    busy(backend, 102, active=2)
    first.sync(desired(service((101,)), timeout=10), changed=[service((101,)).key])
    state.write(first)
    # The director restarts 4 s later (a new process, a new clock): the drain is not lost
    # (no weight-0 leftover) and its timeout goes on from where it was, not from zero.
    later = Clock()
    later.now = 50.0
    clock.now += 4
    second = Director(backend, graceful=True, clock=later)
    restored = drains_to_restore(tmp_path / "state.json", later.now)
    assert [round(later.now - t) for t in restored.values()] == [0]  # written at the drain's start
    second.restore_drains({pair: t - 4 for pair, t in restored.items()})  # as if read 4 s later
    second.sync(desired(service((101,)), timeout=10))
    assert weights(backend) == {"10.240.0.101": 1, "10.240.0.102": 0}
    assert second.next_due() == DRAIN_POLL
    later.now += 6  # 4 + 6 = the 10 s timeout
    second.sync(desired(service((101,)), timeout=10), changed=[])
    assert weights(backend) == {"10.240.0.101": 1}


def test_a_director_without_graceful_deletes_at_once() -> None:
    backend = MemoryBackend()
    director = Director(backend, graceful=False)
    director.sync(desired(service((101, 102))))
    busy(backend, 102, active=9)
    director.sync(desired(service((101,))), changed=[service((101,)).key])
    assert weights(backend) == {"10.240.0.101": 1}
    assert replace(desired(service((101,))), drain_timeout=3).drain_timeout_of(service((101,)).key) == 3
