"""The director and the node agent against a real kube-apiserver, each with nothing but the
identity deploy/rbac.yaml gives it: a bound ServiceAccount token from the TokenRequest API,
RBAC enforced by the server. Every call they make must be allowed (no warning of a refused
write, the writes visible through the API), and what the manifests do not grant is refused
by the server, which proves RBAC is really checked."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from kubelvs.sources.kubernetes.api import KubeApi

from ..kubernetes import k8sobjects as k
from ..kubernetes.helpers import WHOAMI_SECTION, settings
from ..kubernetes.stack import DirectorStack
from ..kubernetes.test_watch import until
from .cluster import SA_NAMESPACE, ApiStatus, Cluster

pytestmark = pytest.mark.real_apiserver


def whoami_cluster(kube: Cluster) -> None:
    """The whoami objects of the stand-in tests, plus a LoadBalancer Service and a Service
    whose externalIP is not allowed (an Event), created through the API."""
    kube.create_all(
        [
            *k.whoami_objects(),
            k.service("lb", type="LoadBalancer"),
            k.service("evil", external_ips=["10.240.0.10"]),
        ]
    )


def refused(kube: Cluster, token: str, method: str, path: str, body: k.Obj | None = None) -> str:
    with pytest.raises(ApiStatus) as err:
        kube.call(method, path, body, token=token)
    assert err.value.code == 403, err.value
    return err.value.reason


@pytest.mark.usefixtures("rbac")
def test_the_director_works_with_exactly_its_rbac(
    kube: Cluster, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    whoami_cluster(kube)
    token = kube.token_for(SA_NAMESPACE, "kubelvs-director")
    kubeconfig = kube.kubeconfig_for(token, tmp_path / "director.kubeconfig")
    caplog.set_level(logging.WARNING, logger="kubelvs")

    async def main() -> None:
        api = await KubeApi.connect(kubeconfig)
        d = DirectorStack(api, settings(WHOAMI_SECTION), identity="director-a")
        await d.start()
        try:
            await until(
                lambda: {"TCP 10.240.0.201:80", "TCP 10.240.0.225:80"} <= set(d.backend.table()), timeout=20
            )
            writer = d.source.writer
            assert writer is not None
            await until(lambda: d.elector.is_leader and writer.status_writes >= 1, timeout=20)
            await until(lambda: writer.event_posts >= 2, timeout=20)
            assert d.backend.table()["TCP 10.240.0.201:80"] == [
                ("10.240.0.101", 80, 1, "dr"),
                ("10.240.0.102", 80, 1, "dr"),
            ]
        finally:
            await d.close()

    asyncio.run(main())
    # What it wrote, read back with the admin's identity.
    lb = kube.call("GET", "/api/v1/namespaces/default/services/lb")
    assert lb["status"]["loadBalancer"]["ingress"] == [{"ip": "10.240.0.225", "ipMode": "VIP"}]
    # The API server's own repair controllers may post Events about the same Services
    # (through events.k8s.io, without a `source`): only the director's are checked.
    events = kube.call("GET", "/api/v1/namespaces/default/events")["items"]
    ours = [e for e in events if e.get("reportingComponent") == "kubelvs.io/director"]
    assert {(e["involvedObject"]["name"], e["reason"], e["type"]) for e in ours} >= {
        ("lb", "IPAllocated", "Normal"),
        ("evil", "ExternalIPNotAllowed", "Warning"),
    }, events
    assert all(e["source"] == {"component": "kubelvs-director", "host": "director-a"} for e in ours), ours
    # The same Events through the newer events.k8s.io API (what `kubectl events` reads).
    newer = kube.call("GET", "/apis/events.k8s.io/v1/namespaces/default/events")["items"]
    assert {(e["regarding"]["name"], e["reason"]) for e in newer} >= {
        ("lb", "IPAllocated"),
        ("evil", "ExternalIPNotAllowed"),
    }
    lease = kube.call("GET", "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/kubelvs-director")
    assert lease["spec"]["holderIdentity"] in ("director-a", "")  # "" once released on close
    refusals = [
        r.getMessage()
        for r in caplog.records
        if "not written" in r.getMessage() or "not posted" in r.getMessage()
    ]
    assert refusals == []

    # Beyond the manifests: refused by the server.
    svc = "/api/v1/namespaces/default/services/lb"
    refused(kube, token, "PATCH", svc, {"spec": {"externalIPs": ["10.240.0.202"]}})
    refused(kube, token, "DELETE", svc)
    refused(kube, token, "GET", "/api/v1/namespaces/default/secrets")
    refused(kube, token, "GET", "/api/v1/pods")
    leases = "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases"
    refused(kube, token, "GET", f"{leases}/kube-controller-manager")
    refused(kube, token, "GET", "/apis/coordination.k8s.io/v1/namespaces/default/leases")


@pytest.mark.usefixtures("rbac")
def test_the_node_agent_identity_only_reads(kube: Cluster) -> None:
    whoami_cluster(kube)
    token = kube.token_for(SA_NAMESPACE, "kubelvs-node")
    for path in ("/api/v1/services", "/apis/discovery.k8s.io/v1/endpointslices", "/api/v1/nodes"):
        assert kube.call("GET", path, token=token)["items"], path
    refused(kube, token, "PATCH", "/api/v1/namespaces/default/services/lb/status", {"status": {}})
    refused(
        kube,
        token,
        "POST",
        "/api/v1/namespaces/default/events",
        {"metadata": {"name": "x"}, "involvedObject": {"kind": "Service", "name": "lb"}},
    )
    refused(kube, token, "GET", "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/kubelvs-director")


@pytest.mark.usefixtures("rbac")
def test_two_directors_share_one_lease_and_the_other_takes_over(kube: Cluster, tmp_path: Path) -> None:
    """The Lease's optimistic concurrency for real (resourceVersion conflicts between two
    writers): one holder at a time, and the other takes over once the holder stops."""
    whoami_cluster(kube)
    token = kube.token_for(SA_NAMESPACE, "kubelvs-director")
    kubeconfig = kube.kubeconfig_for(token, tmp_path / "director.kubeconfig")
    lease_path = "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/kubelvs-director"

    def holder() -> str:
        return str(kube.call("GET", lease_path)["spec"].get("holderIdentity") or "")

    async def main() -> None:
        stacks = {
            name: DirectorStack(await KubeApi.connect(kubeconfig), settings(WHOAMI_SECTION), identity=name)
            for name in ("director-a", "director-b")
        }
        for d in stacks.values():
            await d.start()
        try:
            leaders: list[str] = []

            def one_leader() -> bool:
                leaders[:] = [n for n, d in stacks.items() if d.elector is not None and d.elector.is_leader]
                return len(leaders) == 1

            await until(one_leader, timeout=20)
            first = leaders[0]
            assert await asyncio.to_thread(holder) == first
            for _ in range(10):  # stays one leader while both renew and retry
                await asyncio.sleep(0.2)
                assert one_leader() and leaders == [first]
            await stacks.pop(first).close()
            (other,) = stacks
            await until(lambda: one_leader() and leaders == [other], timeout=20)
            assert await asyncio.to_thread(holder) == other
        finally:
            for d in stacks.values():
                await d.close()

    asyncio.run(main())
