"""The Kubernetes objects a lab stands for, in ``kubectl get ... -o json`` form.

There is no cluster in the lab, but its director serves a Service all the same (the
``whoami`` with external IP 10.240.0.201, or the stale-realserver scenario's
edited ``skuapi-rds-prod``). Writing that Service, its EndpointSlice and the worker
Nodes the way ``kubectl get svc,endpoints,endpointslices,nodes -A -o json`` prints
them gives ``kubelvs doctor`` the desired state it compares the data plane with
(``kubectl.json`` of a bundle): exactly what the lab simulates, nothing more (no
cluster IP: the lab's director serves only the external IP).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # topology imports this module
    from .topology import LabSpec, NodeInfo

__all__ = ["Endpoint", "kubectl_json", "lab_kubectl_json"]


@dataclass(frozen=True, slots=True)
class Endpoint:
    pod: str
    node: str
    ip: str


def kubectl_json(
    *,
    name: str,
    vip: str,
    port: int,
    target_port: int,
    endpoints: Sequence[Endpoint],
    nodes: Sequence[tuple[str, str]],  # (node name, InternalIP)
    namespace: str = "default",
    traffic_policy: str = "Cluster",  # spec.externalTrafficPolicy
) -> str:
    """A ``List`` with one Service (``externalIPs: [vip]``), its EndpointSlice and the Nodes."""
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "labels": {"name": name}},
        "spec": {
            "type": "ClusterIP",
            "externalIPs": [vip],
            "ports": [{"name": "web", "protocol": "TCP", "port": port, "targetPort": target_port}],
            "selector": {"app": name},
            **({"externalTrafficPolicy": "Local"} if traffic_policy == "Local" else {}),
        },
    }
    slice_ = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{name}-lab",
            "namespace": namespace,
            "labels": {"kubernetes.io/service-name": name},
        },
        "addressType": "IPv4",
        "ports": [{"name": "web", "protocol": "TCP", "port": target_port}],
        "endpoints": [
            {
                "addresses": [e.ip],
                "conditions": {"ready": True},
                "nodeName": e.node,
                "targetRef": {"kind": "Pod", "name": e.pod, "namespace": namespace},
            }
            for e in endpoints
        ],
    }
    node_items = [
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": n},
            "status": {
                "addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": n}]
            },
        }
        for n, ip in nodes
    ]
    return (
        json.dumps({"apiVersion": "v1", "kind": "List", "items": [service, slice_, *node_items]}, indent=1)
        + "\n"
    )


def lab_kubectl_json(spec: LabSpec, nodes: Sequence[NodeInfo]) -> str:
    """The lab's ``whoami`` Service: external IP ``spec.vip``, port ``spec.port`` to the
    pods' ``spec.target_port``, every pod of every node an endpoint."""
    return kubectl_json(
        name="whoami",
        vip=spec.vip,
        port=spec.port,
        target_port=spec.target_port,
        endpoints=[Endpoint(p.name, n.name, p.ip) for n in nodes for p in n.pods],
        nodes=[(n.name, n.ip) for n in nodes],
    )
