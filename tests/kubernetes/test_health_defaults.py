"""Health checks with the Kubernetes source: kube-proxy's /healthz for externalTrafficPolicy
Cluster, the Service's healthCheckNodePort for Local, annotations to choose another check
or none, and Events on the Service when a node goes down, comes back, or none is left."""

from __future__ import annotations

import asyncio
from typing import Any

from kubelvs.model import CheckKind, CheckMode, HealthCheck, OnFailure
from kubelvs.roles.health import TargetKey

from . import k8sobjects as k
from .apiserver import FakeApiServer
from .helpers import key, run, settings
from .stack import DirectorStack
from .test_watch import until

ON = {"health": {"enabled": True, "interval": 0.2, "timeout": 0.1, "fall": 1, "rise": 1}}
NODES = [k.node("node1", "10.240.0.101"), k.node("node2", "10.240.0.102")]


def checks(objs: list[dict[str, Any]], section: dict[str, Any] | None = None) -> dict[str, HealthCheck]:
    result = run([*NODES, *objs], {"external_ip_cidrs": ["10.240.0.192/26"], **(section or ON)})
    return {str(k_): c for k_, c in result.desired.health.items()}


def test_cluster_policy_probes_kube_proxy_and_local_the_health_check_node_port() -> None:
    got = checks(
        [
            k.service("cluster", external_ips=["10.240.0.201"]),
            k.service("local", type="LoadBalancer", local=True),
        ],
        {**ON, "lb_pools": [{"name": "default", "cidrs": ["10.240.0.224/28"]}]},
    )
    cluster, local = got["TCP 10.240.0.201:80"], got["TCP 10.240.0.225:80"]
    assert (cluster.kind, cluster.port, cluster.path) == (CheckKind.HTTP, 10256, "/healthz")
    assert (local.kind, local.port, local.path) == (CheckKind.HTTP, 32100, "/healthz")
    assert (cluster.interval, cluster.timeout, cluster.fall, cluster.rise) == (0.2, 0.1, 1, 1)


def test_annotations_choose_the_check_or_none_and_bad_ones_are_an_event() -> None:
    ann = "kubelvs.io/health-"
    objs = [
        k.service("none", external_ips=["10.240.0.201"], annotations={f"{ann}check": "none"}),
        k.service(
            "tcp", external_ips=["10.240.0.202"], annotations={f"{ann}check": "tcp", f"{ann}port": "8080"}
        ),
        k.service(
            "vip", external_ips=["10.240.0.203"], annotations={f"{ann}check": "tcp", f"{ann}mode": "vip"}
        ),
        k.service("bad", external_ips=["10.240.0.204"], annotations={f"{ann}check": "ping"}),
    ]
    got = checks(objs)
    assert "TCP 10.240.0.201:80" not in got
    assert (got["TCP 10.240.0.202:80"].kind, got["TCP 10.240.0.202:80"].port) == (CheckKind.TCP, 8080)
    assert got["TCP 10.240.0.203:80"].mode is CheckMode.VIP
    assert got["TCP 10.240.0.204:80"].port == 10256  # the default check, and an Event says why
    result = run([*NODES, *objs], {"external_ip_cidrs": ["10.240.0.192/26"], **ON})
    (event,) = [e for e in result.events if e.name == "bad"]
    assert (
        event.reason == "InvalidAnnotation"
        and "'ping' is not default, none, tcp, http or https" in event.message
    )
    # Health off in the config: no checks at all, unless a Service asks for one.
    assert checks(objs[:1], {"health": {"enabled": False}}) == {}
    assert checks(objs[1:2], {"health": {"enabled": False}})["TCP 10.240.0.202:80"].kind is CheckKind.TCP


def test_a_check_change_alone_is_a_change_of_the_service() -> None:
    from kubelvs.sources.kubernetes.mapping import Mapper
    from kubelvs.sources.kubernetes.tracker import Store

    store = Store()
    store.replace("Node", NODES)
    store.replace("EndpointSlice", [])
    store.replace("Service", [k.service("web", external_ips=["10.240.0.201"])])
    mapper = Mapper(settings({"external_ip_cidrs": ["10.240.0.192/26"], **ON}))
    mapper.map(store.snapshot(take_changes=True))
    store.apply(
        "Service",
        "MODIFIED",
        k.service("web", external_ips=["10.240.0.201"], annotations={"kubelvs.io/health-check": "tcp"}),
    )
    result = mapper.map(store.snapshot(take_changes=True))
    assert result.changed == frozenset({key("10.240.0.201", 80)})
    assert result.desired.health[key("10.240.0.201", 80)].kind is CheckKind.TCP


def test_events_when_a_node_goes_down_comes_back_and_none_is_left() -> None:
    down: set[str] = set()

    async def probe(target: TargetKey) -> tuple[bool, str]:
        # The probes themselves are tested against real servers (tests/health); here the
        # stand-in cluster's nodes are not hosts, so their answers are decided by the test.
        await asyncio.sleep(0)
        return (str(target.address) not in down), ("HTTP 503" if str(target.address) in down else "HTTP 200")

    async def body(server: FakeApiServer) -> None:
        for obj in k.whoami_objects():
            server.put(obj)
        d = DirectorStack(
            server.url, settings({"external_ip_cidrs": ["10.240.0.192/27"], **ON}), identity="d1"
        )
        await d.start()
        d.program.health.checker.probe = probe  # type: ignore[union-attr]
        whoami = "TCP 10.240.0.201:80"
        await until(
            lambda: (
                d.backend.table().get(whoami)
                == [("10.240.0.101", 80, 1, "dr"), ("10.240.0.102", 80, 1, "dr")]
            )
        )
        down.add("10.240.0.101")
        await until(lambda: d.backend.table()[whoami][0][2] == 0, timeout=5)
        await until(lambda: any(e["reason"] == "RealServerDown" for e in server.events), timeout=5)
        ev = next(e for e in server.events if e["reason"] == "RealServerDown")
        assert ev["involvedObject"]["name"] == "whoami" and ev["type"] == "Warning"
        assert "real server 10.240.0.101:10256 is down (http check: HTTP 503)" in ev["message"]
        down.add("10.240.0.102")  # none left: both stay in (fail open), and the Service is told
        await until(lambda: any(e["reason"] == "NoHealthyRealServer" for e in server.events), timeout=5)
        assert [w for _, _, w, _ in d.backend.table()[whoami]] == [1, 1]
        down.clear()
        await until(lambda: any(e["reason"] == "RealServerUp" for e in server.events), timeout=5)
        assert next(e for e in server.events if e["reason"] == "RealServerUp")["type"] == "Normal"
        await d.close()

    async def main() -> None:
        server = FakeApiServer()
        await server.start()
        try:
            await body(server)
        finally:
            await server.close()

    asyncio.run(main())


def test_on_failure_remove_from_the_settings() -> None:
    got = checks(
        [k.service("web", external_ips=["10.240.0.201"])],
        {"health": {"enabled": True, "on_failure": "remove", "slow_start": 30}},
    )
    assert (
        got["TCP 10.240.0.201:80"].on_failure is OnFailure.REMOVE
        and got["TCP 10.240.0.201:80"].slow_start == 30
    )
