"""Typed, frozen views of the Kubernetes objects the director reads.

Only the fields the mapping uses are kept, so two versions of an object that differ
only in fields we ignore (managedFields, resourceVersion, pod template changes that
do not touch the Service) compare equal and the tracker drops them as no-ops.
Field names and defaults follow the Kubernetes API reference (core/v1 Service,
Node; discovery.k8s.io/v1 EndpointSlice).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ...model import Protocol

__all__ = [
    "ObjectId",
    "ServicePort",
    "Service",
    "Endpoint",
    "EndpointSlice",
    "Node",
    "EventSpec",
    "parse_object",
    "object_id",
    "SERVICE_NAME_LABEL",
    "EXCLUDE_LB_LABEL",
    "DEFAULT_AFFINITY_TIMEOUT",
]

ObjectId = tuple[str, str]  # (namespace, name); namespace "" for cluster-scoped Nodes

#: EndpointSlices name their Service with this label.
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
#: Nodes with this label are not load-balancer targets (the cloud controllers honour it too).
EXCLUDE_LB_LABEL = "node.kubernetes.io/exclude-from-external-load-balancers"
#: sessionAffinityConfig.clientIP.timeoutSeconds default (3 hours).
DEFAULT_AFFINITY_TIMEOUT = 10800


def object_id(obj: Mapping[str, Any]) -> ObjectId:
    meta = obj.get("metadata") or {}
    return (meta.get("namespace") or "", meta.get("name") or "")


@dataclass(frozen=True, slots=True)
class ServicePort:
    name: str
    protocol: Protocol
    port: int
    node_port: int | None


@dataclass(frozen=True, slots=True)
class Service:
    namespace: str
    name: str
    uid: str
    created: str  # RFC 3339 UTC ("2026-11-26T06:00:00Z"): sorts as text
    type: str
    load_balancer_class: str | None
    external_ips: tuple[str, ...]
    load_balancer_ip: str | None  # spec.loadBalancerIP (deprecated upstream, still honoured)
    annotations: tuple[tuple[str, str], ...]
    ports: tuple[ServicePort, ...]
    local_traffic: bool  # externalTrafficPolicy: Local
    affinity_timeout: int  # 0: no session affinity
    ingress_ips: tuple[str, ...]  # status.loadBalancer.ingress[].ip
    ip_families: tuple[str, ...]
    resource_version: str = field(default="", compare=False)

    @property
    def id(self) -> ObjectId:
        return (self.namespace, self.name)

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def age_key(self) -> tuple[str, str, str]:
        """Older first; ties broken by namespace/name so every director agrees."""
        return (self.created, self.namespace, self.name)

    def annotation(self, key: str) -> str | None:
        for k, v in self.annotations:
            if k == key:
                return v
        return None


@dataclass(frozen=True, slots=True)
class Endpoint:
    node_name: str | None
    ready: bool
    serving: bool
    terminating: bool


@dataclass(frozen=True, slots=True)
class EndpointSlice:
    namespace: str
    name: str
    service_name: str | None
    address_type: str
    endpoints: tuple[Endpoint, ...]
    port_names: tuple[str, ...] | None  # None: the slice lists no ports (applies to all)
    resource_version: str = field(default="", compare=False)

    @property
    def id(self) -> ObjectId:
        return (self.namespace, self.name)


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    addresses: tuple[tuple[str, str], ...]  # (type, address) in the API's order
    ready: bool
    unschedulable: bool
    deleting: bool
    excluded: bool  # labelled exclude-from-external-load-balancers
    resource_version: str = field(default="", compare=False)

    @property
    def id(self) -> ObjectId:
        return ("", self.name)

    @property
    def eligible(self) -> bool:
        """A load-balancer target: Ready, not cordoned, not being deleted, not excluded."""
        return self.ready and not self.unschedulable and not self.deleting and not self.excluded


@dataclass(frozen=True, slots=True)
class EventSpec:
    """A Kubernetes Event about a Service (``involvedObject``), before it is posted."""

    namespace: str
    name: str
    uid: str
    reason: str
    message: str
    type: str = "Warning"


# ---------------------------------------------------------------- parsing


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def parse_service(obj: Mapping[str, Any]) -> Service:
    meta = _meta(obj)
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    ports = []
    for p in spec.get("ports") or ():
        try:
            proto = Protocol(str(p.get("protocol") or "TCP").lower())
        except ValueError:
            continue  # a protocol IPVS has no notion of: not ours to serve
        ports.append(ServicePort(p.get("name") or "", proto, int(p.get("port") or 0), p.get("nodePort")))
    affinity = 0
    if spec.get("sessionAffinity") == "ClientIP":
        cfg = ((spec.get("sessionAffinityConfig") or {}).get("clientIP") or {})
        affinity = int(cfg.get("timeoutSeconds") or DEFAULT_AFFINITY_TIMEOUT)
    ingress = tuple(i["ip"] for i in ((status.get("loadBalancer") or {}).get("ingress") or ()) if i.get("ip"))
    return Service(
        namespace=meta.get("namespace") or "default",
        name=meta.get("name") or "",
        uid=meta.get("uid") or "",
        created=meta.get("creationTimestamp") or "",
        type=spec.get("type") or "ClusterIP",
        load_balancer_class=spec.get("loadBalancerClass"),
        external_ips=tuple(spec.get("externalIPs") or ()),
        load_balancer_ip=spec.get("loadBalancerIP") or None,
        annotations=tuple(sorted((meta.get("annotations") or {}).items())),
        ports=tuple(ports),
        local_traffic=spec.get("externalTrafficPolicy") == "Local",
        affinity_timeout=affinity,
        ingress_ips=ingress,
        ip_families=tuple(spec.get("ipFamilies") or ()),
        resource_version=meta.get("resourceVersion") or "",
    )


def _cond(value: Any, default: bool) -> bool:
    # EndpointConditions: a nil ready/serving means "unknown" and is read as true; a
    # nil terminating as false (discovery.k8s.io/v1 API reference).
    return default if value is None else bool(value)


def parse_endpointslice(obj: Mapping[str, Any]) -> EndpointSlice:
    meta = _meta(obj)
    endpoints = []
    for ep in obj.get("endpoints") or ():
        cond = ep.get("conditions") or {}
        ready = _cond(cond.get("ready"), True)
        endpoints.append(
            Endpoint(
                node_name=ep.get("nodeName"),
                ready=ready,
                serving=_cond(cond.get("serving"), ready),
                terminating=_cond(cond.get("terminating"), False),
            )
        )
    ports = obj.get("ports")
    return EndpointSlice(
        namespace=meta.get("namespace") or "default",
        name=meta.get("name") or "",
        service_name=(meta.get("labels") or {}).get(SERVICE_NAME_LABEL),
        address_type=obj.get("addressType") or "IPv4",
        endpoints=tuple(endpoints),
        port_names=None if ports is None else tuple(p.get("name") or "" for p in ports),
        resource_version=meta.get("resourceVersion") or "",
    )


def parse_node(obj: Mapping[str, Any]) -> Node:
    meta = _meta(obj)
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or ())
    return Node(
        name=meta.get("name") or "",
        addresses=tuple((a.get("type") or "", a.get("address") or "") for a in status.get("addresses") or ()),
        ready=ready,
        unschedulable=bool(spec.get("unschedulable")),
        deleting=bool(meta.get("deletionTimestamp")),
        excluded=EXCLUDE_LB_LABEL in (meta.get("labels") or {}),
        resource_version=meta.get("resourceVersion") or "",
    )


_PARSERS = {"Service": parse_service, "EndpointSlice": parse_endpointslice, "Node": parse_node}


def parse_object(kind: str, obj: Mapping[str, Any]) -> Service | EndpointSlice | Node:
    """Parse one API object of ``kind`` (Service, EndpointSlice or Node)."""
    return _PARSERS[kind](obj)  # type: ignore[no-any-return]
