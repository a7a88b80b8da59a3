"""The mapping table of docs/kubernetes.md with objects a real kube-apiserver defaulted,
validated and allocated (cluster IPs, NodePorts, healthCheckNodePort, sessionAffinity's
default timeout): created through the API, read by a director through list + watch, and
edited through the API while it runs."""

from __future__ import annotations

import asyncio

import pytest

from kubelvs.sources.kubernetes.api import KubeApi

from ..kubernetes import k8sobjects as k
from ..kubernetes.helpers import WHOAMI_SECTION, settings
from ..kubernetes.stack import DirectorStack
from ..kubernetes.test_watch import until
from .cluster import Cluster, for_create

pytestmark = pytest.mark.real_apiserver

ANN = "kubelvs.io/"
HOLD = "kubelvs.test/hold"  # a finalizer: the node stays, with deletionTimestamp, once deleted


async def converge(d: DirectorStack, want: dict[str, list[tuple[str, int, int, str]]]) -> None:
    try:
        await until(lambda: d.backend.table() == want, timeout=20)
    except AssertionError:
        raise AssertionError(f"the director's table {d.backend.table()} is not {want}") from None


def node_ports(svc: k.Obj) -> dict[str, int]:
    return {p["name"]: p["nodePort"] for p in svc["spec"]["ports"]}


def test_every_mapping_row_with_objects_the_api_server_made(kube: Cluster) -> None:
    exclude = {"node.kubernetes.io/exclude-from-external-load-balancers": ""}
    held = k.node("node6", "10.240.0.106")
    held["metadata"]["finalizers"] = [HOLD]
    nodes = [
        k.node("node1", "10.240.0.101"),
        k.node("node2", "10.240.0.102"),
        k.node("node3", "10.240.0.103", unschedulable=True),
        k.node("node4", "10.240.0.104", ready=False),
        k.node("node5", "10.240.0.105", labels=exclude),
        held,
    ]
    kube.create_all(nodes)
    kube.call("DELETE", "/api/v1/nodes/node6")
    assert kube.call("GET", "/api/v1/nodes/node6")["metadata"]["deletionTimestamp"]

    created = {
        "whoami": kube.create(for_create(k.service("whoami", external_ips=["10.240.0.201"]))),
        # Local: weights from the ready endpoints on each node; the server allocates the
        # health-check NodePort. Created before "nat" so that it is the older one, or of
        # the same second and first by name: either way the pool's first address is its.
        "local": kube.create(for_create(k.service("local", type="LoadBalancer", local=True))),
        # NAT: to the NodePort the API server allocated.
        "nat": kube.create(
            for_create(k.service("nat", type="LoadBalancer", annotations={ANN + "forward": "nat"}))
        ),
        # Another controller's class: never touched.
        "other": kube.create(for_create(k.service("other", type="LoadBalancer", lb_class="metallb.io/x"))),
        # A requested address (the deprecated spec field; the annotation is the same path).
        "asked": kube.create(for_create(k.service("asked", type="LoadBalancer", lb_ip="10.240.0.230"))),
        # ClientIP affinity without a config: the server fills in 10800 s.
        "sticky": kube.create(
            for_create(k.service("sticky", external_ips=["10.240.0.202"], ports=[("dns", "UDP", 53)]))
        ),
    }
    sticky = created["sticky"]
    sticky["spec"]["sessionAffinity"] = "ClientIP"
    created["sticky"] = kube.call("PUT", "/api/v1/namespaces/default/services/sticky", sticky)
    assert created["sticky"]["spec"]["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"] == 10800
    assert created["local"]["spec"]["healthCheckNodePort"] >= 30000
    nat_port = node_ports(created["nat"])["web"]
    assert 30000 <= nat_port <= 32767

    kube.create(
        for_create(
            k.endpointslice(
                "local",
                [
                    k.endpoint("node1", "10.230.1.5"),
                    k.endpoint("node1", "10.230.1.6"),
                    k.endpoint("node2", "10.230.2.5"),
                    k.endpoint("node2", "10.230.2.6", ready=False, serving=True, terminating=True),
                    k.endpoint("node1", "10.230.1.7", ready=False, serving=False),
                ],
            )
        )
    )

    async def main() -> None:
        api = await KubeApi.connect(kube.kubeconfig)
        d = DirectorStack(api, settings(WHOAMI_SECTION), identity="director-a")
        await d.start()
        try:
            want = {
                "TCP 10.240.0.201:80": [("10.240.0.101", 80, 1, "dr"), ("10.240.0.102", 80, 1, "dr")],
                # The pool's first address to the oldest Service (creationTimestamp counts
                # seconds; within one second, by name).
                "TCP 10.240.0.225:80": [("10.240.0.101", 80, 2, "dr"), ("10.240.0.102", 80, 1, "dr")],
                "TCP 10.240.0.226:80": [
                    ("10.240.0.101", nat_port, 1, "nat"),
                    ("10.240.0.102", nat_port, 1, "nat"),
                ],
                "UDP 10.240.0.202:53": [("10.240.0.101", 53, 1, "dr"), ("10.240.0.102", 53, 1, "dr")],
                "TCP 10.240.0.230:80": [("10.240.0.101", 80, 1, "dr"), ("10.240.0.102", 80, 1, "dr")],
            }
            await converge(d, want)
            persistence = {str(key): vs.persistence for key, vs in d.backend.read().services.items()}
            assert persistence["UDP 10.240.0.202:53"] == 10800 and persistence["TCP 10.240.0.201:80"] == 0
            await until(
                lambda: d.source.writer is not None and d.source.writer.status_writes >= 3, timeout=20
            )

            # Edits through the API: a port change, a cordon, a terminating endpoint gone.
            whoami = kube.call("GET", "/api/v1/namespaces/default/services/whoami")
            whoami["spec"]["ports"][0]["port"] = 8080
            kube.call("PUT", "/api/v1/namespaces/default/services/whoami", whoami)
            kube.merge_patch("/api/v1/nodes/node2", {"spec": {"unschedulable": True}})
            want.pop("TCP 10.240.0.201:80")
            want["TCP 10.240.0.201:8080"] = [("10.240.0.101", 8080, 1, "dr")]
            want["TCP 10.240.0.226:80"] = [("10.240.0.101", nat_port, 1, "nat")]
            want["UDP 10.240.0.202:53"] = [("10.240.0.101", 53, 1, "dr")]
            want["TCP 10.240.0.230:80"] = [("10.240.0.101", 80, 1, "dr")]
            # A cordoned node leaves every Service, Local ones too (docs/kubernetes.md).
            want["TCP 10.240.0.225:80"] = [("10.240.0.101", 80, 2, "dr")]
            await converge(d, want)
        finally:
            await d.close()

    asyncio.run(main())
    # status.loadBalancer written by the leader, read back (the other class's left alone).
    ingress = {
        name: kube.call("GET", f"/api/v1/namespaces/default/services/{name}")["status"]["loadBalancer"].get(
            "ingress"
        )
        for name in ("local", "nat", "asked", "other")
    }
    assert ingress == {
        "local": [{"ip": "10.240.0.225", "ipMode": "VIP"}],
        "nat": [{"ip": "10.240.0.226", "ipMode": "VIP"}],
        "asked": [{"ip": "10.240.0.230", "ipMode": "VIP"}],
        "other": None,
    }
    kube.merge_patch("/api/v1/nodes/node6", {"metadata": {"finalizers": None}})
