"""Builders of Kubernetes object JSON as the API server returns it (shapes from the
Kubernetes API reference: core/v1 Service and Node, discovery.k8s.io/v1 EndpointSlice)."""

from __future__ import annotations

import copy
import uuid
from typing import Any

Obj = dict[str, Any]


def service(
    name: str,
    *,
    namespace: str = "default",
    type: str = "ClusterIP",
    ports: list[tuple[str, str, int]] | None = None,  # (name, protocol, port)
    node_ports: dict[str, int] | None = None,
    external_ips: list[str] | None = None,
    annotations: dict[str, str] | None = None,
    lb_class: str | None = None,
    lb_ip: str | None = None,
    local: bool = False,
    affinity: int | None = None,
    ingress: list[str] | None = None,
    created: str = "2026-11-20T10:00:00Z",
    rv: str = "1",
    cluster_ip: str = "10.32.0.60",
) -> Obj:
    ports = ports if ports is not None else [("web", "TCP", 80)]
    spec: Obj = {
        "clusterIP": cluster_ip,
        "clusterIPs": [cluster_ip],
        "internalTrafficPolicy": "Cluster",
        "ipFamilies": ["IPv4"],
        "ipFamilyPolicy": "SingleStack",
        "ports": [],
        "selector": {"app": name},
        "sessionAffinity": "None",
        "type": type,
    }
    for pname, proto, port in ports:
        p: Obj = {"name": pname, "port": port, "protocol": proto, "targetPort": port}
        if type in ("LoadBalancer", "NodePort"):
            p["nodePort"] = (node_ports or {}).get(pname, 30000 + port % 2000)
        spec["ports"].append(p)
    if type in ("LoadBalancer", "NodePort"):
        spec["externalTrafficPolicy"] = "Local" if local else "Cluster"
        spec["allocateLoadBalancerNodePorts"] = True
    if type == "LoadBalancer" and local:
        spec["healthCheckNodePort"] = 32100
    if local and type == "ClusterIP":
        spec["externalTrafficPolicy"] = "Local"  # allowed with externalIPs
    if external_ips:
        spec["externalIPs"] = list(external_ips)
    if lb_class:
        spec["loadBalancerClass"] = lb_class
    if lb_ip:
        spec["loadBalancerIP"] = lb_ip
    if affinity is not None:
        spec["sessionAffinity"] = "ClientIP"
        spec["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": affinity}}
    meta: Obj = {
        "name": name,
        "namespace": namespace,
        "uid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"svc/{namespace}/{name}/{created}")),
        "resourceVersion": rv,
        "creationTimestamp": created,
        "labels": {"app": name},
    }
    if annotations:
        meta["annotations"] = dict(annotations)
    status: Obj = {"loadBalancer": {}}
    if ingress:
        status["loadBalancer"]["ingress"] = [{"ip": ip, "ipMode": "VIP"} for ip in ingress]
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": spec, "status": status}


def endpoint(
    node: str, ip: str, *, ready: bool = True, serving: bool | None = None, terminating: bool = False
) -> Obj:
    return {
        "addresses": [ip],
        "conditions": {
            "ready": ready,
            "serving": ready if serving is None else serving,
            "terminating": terminating,
        },
        "nodeName": node,
        "targetRef": {
            "kind": "Pod",
            "name": f"pod-{ip}",
            "namespace": "default",
            "uid": str(uuid.uuid5(uuid.NAMESPACE_URL, ip)),
        },
        "zone": "zone-a",
    }


def endpointslice(
    service_name: str,
    endpoints: list[Obj],
    *,
    namespace: str = "default",
    name: str | None = None,
    ports: list[tuple[str, str, int]] | None = None,
    address_type: str = "IPv4",
    rv: str = "1",
) -> Obj:
    ports = ports if ports is not None else [("web", "TCP", 80)]
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name or f"{service_name}-abcde",
            "namespace": namespace,
            "generateName": f"{service_name}-",
            "uid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"eps/{namespace}/{name or service_name}")),
            "resourceVersion": rv,
            "creationTimestamp": "2026-11-20T10:00:01Z",
            "labels": {
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
                "kubernetes.io/service-name": service_name,
            },
            "ownerReferences": [
                {
                    "apiVersion": "v1",
                    "kind": "Service",
                    "name": service_name,
                    "uid": "x",
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "addressType": address_type,
        "endpoints": endpoints,
        "ports": [{"name": n, "protocol": p, "port": port} for n, p, port in ports],
    }


def node(
    name: str,
    address: str,
    *,
    ready: bool = True,
    unschedulable: bool = False,
    deleting: bool = False,
    labels: dict[str, str] | None = None,
    rv: str = "1",
    address6: str | None = None,  # a dual-stack node's IPv6 InternalIP
) -> Obj:
    meta: Obj = {
        "name": name,
        "uid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"node/{name}")),
        "resourceVersion": rv,
        "creationTimestamp": "2026-11-01T00:00:00Z",
        "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", **(labels or {})},
    }
    if deleting:
        meta["deletionTimestamp"] = "2026-11-26T06:00:00Z"
    spec: Obj = {"podCIDR": "10.230.1.0/24", "podCIDRs": ["10.230.1.0/24"]}
    if unschedulable:
        spec["unschedulable"] = True
        spec["taints"] = [
            {
                "effect": "NoSchedule",
                "key": "node.kubernetes.io/unschedulable",
                "timeAdded": "2026-11-26T06:00:00Z",
            }
        ]
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": meta,
        "spec": spec,
        "status": {
            "addresses": [
                {"address": address, "type": "InternalIP"},
                *([{"address": address6, "type": "InternalIP"}] if address6 else []),
                {"address": name, "type": "Hostname"},
            ],
            "conditions": [
                {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory"},
                {
                    "type": "Ready",
                    "status": "True" if ready else "Unknown",
                    "reason": "KubeletReady" if ready else "NodeStatusUnknown",
                    "lastHeartbeatTime": "2026-11-26T06:00:00Z",
                    "lastTransitionTime": "2026-11-26T06:00:00Z",
                },
            ],
            "nodeInfo": {"kubeletVersion": "v1.34.1", "kubeProxyVersion": "v1.34.1"},
        },
    }


def with_rv(obj: Obj, rv: str) -> Obj:
    out = copy.deepcopy(obj)
    out["metadata"]["resourceVersion"] = rv
    return out


#: The whoami lab: two workers and the whoami Service with externalIP 10.240.0.201.
def whoami_objects() -> list[Obj]:
    return [
        node("node1", "10.240.0.101"),
        node("node2", "10.240.0.102"),
        service("whoami", external_ips=["10.240.0.201"]),
        endpointslice("whoami", [endpoint("node1", "10.230.1.5"), endpoint("node2", "10.230.2.7")]),
    ]
