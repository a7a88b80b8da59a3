"""The running director against the stand-in API server: converges on changes (at
once after a quiet spell, a burst in one coalesced reconcile), keeps the kernel through
an outage, writes status and Events as the only leader among several active-active
directors. The tests that need no fault only the stand-in can make run on a real
kube-apiserver too (``SERVERS``)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from kubelvs.backends.memory import MemoryBackend
from kubelvs.model import RealServerKey, RealServerStats, ServiceKey
from kubelvs.planner import service_of

from ..realkube.cluster import RealApi
from . import k8sobjects as k
from .apiserver import FakeApiServer
from .helpers import settings
from .stack import ApiUnderTest, DirectorStack
from .test_watch import until

WHOAMI = "TCP 10.240.0.201:80"


def run(body: Any, **kw: Any) -> Any:
    async def main() -> Any:
        server = FakeApiServer(**kw)
        await server.start()
        try:
            return await body(server)
        finally:
            await server.close()

    return asyncio.run(main())


SERVERS = ["stand-in", pytest.param("real", marks=pytest.mark.real_apiserver)]


def run_on(server: str, request: pytest.FixtureRequest, body: Any) -> Any:
    """``body(api)`` against the stand-in, or the session's real kube-apiserver."""
    if server == "stand-in":
        return run(body)
    real = RealApi(request.getfixturevalue("kube"))
    return asyncio.run(body(real))


def whoami(server: ApiUnderTest) -> None:
    for obj in k.whoami_objects():
        server.put(obj)


@pytest.mark.parametrize("server_kind", SERVERS)
def test_converges_on_edits_incrementally(server_kind: str, request: pytest.FixtureRequest) -> None:
    async def body(server: ApiUnderTest) -> None:
        whoami(server)
        d = DirectorStack(await server.client(), settings(), identity="d1")
        await d.start()
        await until(lambda: WHOAMI in d.backend.table())
        assert d.backend.table()[WHOAMI] == [("10.240.0.101", 80, 1, "dr"), ("10.240.0.102", 80, 1, "dr")]
        # One list per kind: the watches start from the start-up list's resourceVersion.
        assert {kind: s.lists for kind, s in d.stats.items()} == {"Service": 1, "EndpointSlice": 1, "Node": 1}
        reads = d.backend.reads
        # Port change: the old VIP:80 goes, VIP:8080 comes (kube-router #715 cannot happen).
        svc = server.get("Service", "default", "whoami")
        svc["spec"]["ports"][0]["port"] = 8080
        server.put(svc)
        await until(lambda: "TCP 10.240.0.201:8080" in d.backend.table() and WHOAMI not in d.backend.table())
        # Node removed.
        server.delete("Node", "", "node2")
        await until(lambda: d.backend.table()["TCP 10.240.0.201:8080"] == [("10.240.0.101", 8080, 1, "dr")])
        assert d.backend.reads == reads  # incremental: planned against memory, no kernel re-read
        await d.close()

    run_on(server_kind, request, body)


def test_burst_after_a_step_is_one_reconcile() -> None:
    async def body(server: FakeApiServer) -> None:
        whoami(server)
        d = DirectorStack(
            server.url,
            settings({"external_ip_cidrs": ["10.240.0.192/26"], "coalesce_ms": 300}),
            identity="d1",
        )
        await d.start()
        await until(lambda: WHOAMI in d.backend.table())
        # A change, and the burst right after its step: the burst waits out the 300 ms
        # since that step and goes into one step.
        server.put(k.service("first", external_ips=["10.240.0.219"]))
        await until(lambda: len(d.backend.table()) == 2, timeout=5)
        before = d.loop.steps
        applies = len(d.backend.applies)
        for i in range(20):
            server.put(k.service(f"burst{i}", external_ips=[f"10.240.0.{220 + i}"]))
        await until(lambda: len(d.backend.table()) == 22, timeout=5)
        await asyncio.sleep(0.4)
        assert d.loop.steps - before == 1
        assert len(d.backend.applies) - applies == 1
        assert d.source.mapper.recomputed == 20  # only the new Services were mapped
        await d.close()

    run(body)


def test_a_change_after_a_quiet_spell_is_programmed_at_once() -> None:
    async def body(server: FakeApiServer) -> None:
        whoami(server)
        # A second of coalescing: a change that waited for it would take over a second.
        d = DirectorStack(
            server.url,
            settings({"external_ip_cidrs": ["10.240.0.192/26"], "coalesce_ms": 1000}),
            identity="d1",
        )
        await d.start()
        await until(lambda: WHOAMI in d.backend.table())
        await asyncio.sleep(1.2)  # quiet for longer than the coalescing delay
        started = asyncio.get_running_loop().time()
        server.put(k.service("single", external_ips=["10.240.0.220"]))
        await until(lambda: "TCP 10.240.0.220:80" in d.backend.table(), timeout=5)
        assert asyncio.get_running_loop().time() - started < 0.8
        await d.close()

    run(body)


@pytest.mark.parametrize("server_kind", SERVERS)
def test_outage_keeps_kernel_then_converges(server_kind: str, request: pytest.FixtureRequest) -> None:
    async def body(server: ApiUnderTest) -> None:
        whoami(server)
        d = DirectorStack(await server.client(), settings(), identity="d1", resync=0.3)
        await d.start()
        await until(lambda: WHOAMI in d.backend.table(), timeout=20)
        table = d.backend.table()
        await server.stop()
        await until(lambda: sum(s.errors for s in d.stats.values()) >= 3, timeout=10)
        await asyncio.sleep(1.2)  # several resync periods and watch retries while away
        assert d.backend.table() == table
        assert d.loop.failures == 0
        if isinstance(server, FakeApiServer):
            server.delete("Node", "", "node1")  # changed while the director could not see it
            await server.start()
        else:  # a real server takes no change while it is away
            await server.start()
            server.delete("Node", "", "node1")
        await until(lambda: d.backend.table()[WHOAMI] == [("10.240.0.102", 80, 1, "dr")], timeout=20)
        await d.close()

    run_on(server_kind, request, body)


def test_a_refused_service_is_retried_and_reported_while_others_go_ahead() -> None:
    refused = {"TCP 10.240.0.202:80"}

    def refuse(op: object) -> str | None:
        key = service_of(op)  # type: ignore[arg-type]
        return "injected refusal" if key is not None and str(key) in refused else None

    async def body(server: FakeApiServer) -> None:
        whoami(server)
        d = DirectorStack(
            server.url, settings(), identity="d1", resync=30, backend=MemoryBackend(refuse=refuse)
        )
        await d.start()
        await until(lambda: WHOAMI in d.backend.table())
        server.put(k.service("second", external_ips=["10.240.0.202"], created="2026-11-21T00:00:00Z"))
        server.put(k.service("third", external_ips=["10.240.0.203"], created="2026-11-21T00:00:01Z"))
        # The refused service does not hold up the other one added in the same burst.
        await until(lambda: "TCP 10.240.0.203:80" in d.backend.table(), timeout=5)
        await until(lambda: any(e["reason"] == "SyncFailed" for e in server.events), timeout=5)
        ev = next(e for e in server.events if e["reason"] == "SyncFailed")
        assert ev["involvedObject"]["name"] == "second" and "injected refusal" in ev["message"]
        assert "TCP 10.240.0.202:80" not in d.backend.table()
        assert [str(k) for k in d.director.failures] == ["TCP 10.240.0.202:80"]
        refused.clear()  # the cause goes away: the retry (with backoff) programs it
        await until(lambda: "TCP 10.240.0.202:80" in d.backend.table(), timeout=5)
        await until(lambda: not d.director.failures, timeout=5)
        assert d.loop.failures == 0  # a refusal is no failed step: the rest went ahead
        await d.close()

    run(body)


def test_leader_writes_status_and_events_once_among_two_directors() -> None:
    async def body(server: FakeApiServer) -> None:
        whoami(server)
        server.put(k.service("lb", type="LoadBalancer", created="2026-11-21T00:00:00Z"))
        server.put(k.service("evil", external_ips=["1.2.3.4"], created="2026-11-21T00:00:01Z"))
        a = DirectorStack(server.url, settings(), identity="a")
        b = DirectorStack(server.url, settings(), identity="b")
        await a.start()
        await b.start()
        lb = "TCP 10.240.0.225:80"
        await until(lambda: lb in a.backend.table() and lb in b.backend.table())
        assert a.backend.table() == b.backend.table()  # active-active: the same desired state
        await until(
            lambda: (
                server.get("Service", "default", "lb")["status"]["loadBalancer"].get("ingress")
                == [{"ip": "10.240.0.225", "ipMode": "VIP"}]
            )
        )
        await until(lambda: any(e["reason"] == "ExternalIPNotAllowed" for e in server.events))
        await asyncio.sleep(0.5)
        assert [e.is_leader for e in (a.elector, b.elector)].count(True) == 1
        assert len(server.status_patches) == 1
        reasons = sorted(e["reason"] for e in server.events)
        assert reasons == ["ExternalIPNotAllowed", "IPAllocated"]  # posted once, not once per director
        ev = next(e for e in server.events if e["reason"] == "ExternalIPNotAllowed")
        assert (
            ev["involvedObject"]["name"] == "evil"
            and ev["type"] == "Warning"
            and ev["source"]["component"] == "kubelvs-director"
        )
        # The leader goes away: the other takes over the writing within the lease time.
        leader, other = (a, b) if a.elector.is_leader else (b, a)
        await leader.close()
        await until(lambda: other.elector.is_leader, timeout=5)
        svc = server.get("Service", "default", "lb")
        svc["spec"]["type"] = "ClusterIP"  # type change: the address is released
        server.put(svc)
        await until(
            lambda: not server.get("Service", "default", "lb")["status"]["loadBalancer"].get("ingress")
        )
        await until(lambda: lb not in other.backend.table())
        await other.close()

    run(body)


def test_exhausted_pool_event_through_the_api() -> None:
    async def body(server: FakeApiServer) -> None:
        whoami(server)
        section = {
            "external_ip_cidrs": ["10.240.0.192/27"],
            "lb_pools": [{"name": "tiny", "cidrs": ["10.240.0.240/31"]}],
        }
        for i in range(3):
            server.put(k.service(f"lb{i}", type="LoadBalancer", created=f"2026-11-21T00:00:0{i}Z"))
        d = DirectorStack(server.url, settings(section), identity="d1")
        await d.start()
        await until(lambda: any(e["reason"] == "AllocationFailed" for e in server.events))
        ev = next(e for e in server.events if e["reason"] == "AllocationFailed")
        assert ev["involvedObject"]["name"] == "lb2"
        assert ev["message"] == "no free address in pool(s) tiny (2 addresses, all in use)"
        await d.close()

    run(body)


def test_metrics_show_the_pools_and_the_watch_restarts() -> None:
    """/metrics of a Kubernetes director: a pool's addresses in use and free follow the
    LoadBalancer Services; a watch the API server drops is counted when it restarts."""

    def sample(d: DirectorStack, name: str, **labels: str) -> float | None:
        assert d.program is not None
        for family in text_string_to_metric_families(d.program.metrics.page().decode()):
            for s in family.samples:
                if s.name == name and labels.items() <= s.labels.items():
                    return float(s.value)
        return None

    async def body(server: FakeApiServer) -> None:
        whoami(server)
        section = {"lb_pools": [{"name": "tiny", "cidrs": ["10.240.0.240/29"]}]}  # 6 usable addresses
        server.put(k.service("lb0", type="LoadBalancer", created="2026-11-21T00:00:00Z"))
        d = DirectorStack(server.url, settings(section), identity="d1")
        await d.start()
        try:
            await until(lambda: sample(d, "kubelvs_ipam_addresses", pool="tiny", state="in_use") == 1)
            assert sample(d, "kubelvs_ipam_addresses", pool="tiny", state="free") == 5
            server.put(k.service("lb1", type="LoadBalancer", created="2026-11-21T00:00:01Z"))
            await until(lambda: sample(d, "kubelvs_ipam_addresses", pool="tiny", state="in_use") == 2)
            assert sample(d, "kubelvs_ipam_addresses", pool="tiny", state="free") == 4
            assert sample(d, "kubelvs_kubernetes_watch_restarts_total", kind="Service") == 0
            server.drop_watches()
            await until(
                lambda: (sample(d, "kubelvs_kubernetes_watch_restarts_total", kind="Service") or 0) >= 1
            )
        finally:
            await d.close()

    run(body)


def test_every_director_tells_of_its_own_drains_leader_or_not() -> None:
    """A node leaves while it has connections: each director drains it in its own kernel
    and, once the connections end, posts DrainFinished on the Service (not only the
    leader: each drain is that director's) and logs it."""

    async def body(server: FakeApiServer) -> None:
        whoami(server)
        a = DirectorStack(server.url, settings(), identity="a")
        b = DirectorStack(server.url, settings(), identity="b")
        await a.start()
        await b.start()
        try:
            key = ServiceKey.parse(WHOAMI)
            node2 = RealServerKey.parse("10.240.0.102:80")

            async def table_has(d: DirectorStack, row: tuple[str, int, int, str] | None) -> None:
                def there() -> bool:
                    table = d.backend.table()
                    return WHOAMI in table and (row is None or row in table[WHOAMI])

                await until(there)

            for d in (a, b):
                await table_has(d, None)
                d.backend.set_stats(key, node2, RealServerStats(active_conns=1))
            server.delete("Node", "", "node2")
            for d in (a, b):
                await table_has(d, ("10.240.0.102", 80, 0, "dr"))  # draining: weight 0
                d.backend.set_stats(key, node2, RealServerStats())

            def finished() -> set[str]:
                return {e["source"]["host"] for e in server.events if e["reason"] == "DrainFinished"}

            await until(lambda: finished() == {"a", "b"}, timeout=10)
            ev = next(e for e in server.events if e["reason"] == "DrainFinished")
            assert ev["type"] == "Normal" and ev["involvedObject"]["name"] == "whoami"
            assert ev["message"].startswith(f"{WHOAMI}: real server 10.240.0.102:80 removed after draining")
            assert ev["message"].endswith("(no connections left)")
        finally:
            await a.close()
            await b.close()

    run(body)
