"""Typed, frozen views of the Kubernetes objects the director reads.

Only the fields the mapping uses are kept, so two versions of an object that differ
only in fields we ignore (managedFields, resourceVersion, pod template changes that
do not touch the Service) compare equal and the tracker drops them as no-ops.
Field names and defaults follow the Kubernetes API reference (core/v1 Service,
Node; discovery.k8s.io/v1 EndpointSlice).

Decoding never raises. The watch feeds every event straight into the store
(``tracker.Store.apply``, ``replace``), and an exception there would end that kind's
watch, or fail every re-list, so one malformed object (a hand-written manifest, a
proxy's mangled JSON) would freeze or stop the whole director. The API server
validates what it stores, so a wrong type here is rare and local: the part that is
wrong is skipped (a port without a valid number is not served, a condition that is
not a boolean reads as absent, a malformed Node address is left out) and the reason is
logged as a warning naming the object and the field. ``decode_object`` returns the
reasons too. Where a field is skipped, the result is the conservative one: a Node
whose Ready condition cannot be read is not Ready, a port that cannot be read is not
programmed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ...model import Protocol
from ...model.validate import shown

__all__ = [
    "DEFAULT_AFFINITY_TIMEOUT",
    "EXCLUDE_LB_LABEL",
    "MAX_AFFINITY_TIMEOUT",
    "SERVICE_NAME_LABEL",
    "Endpoint",
    "EndpointSlice",
    "EventSpec",
    "Node",
    "ObjectId",
    "Service",
    "ServicePort",
    "decode_object",
    "object_id",
    "parse_object",
]

ObjectId = tuple[str, str]  # (namespace, name); namespace "" for cluster-scoped Nodes

#: EndpointSlices name their Service with this label.
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
#: Nodes with this label are not load-balancer targets (the cloud controllers honour it too).
EXCLUDE_LB_LABEL = "node.kubernetes.io/exclude-from-external-load-balancers"
#: sessionAffinityConfig.clientIP.timeoutSeconds default (3 hours), and its maximum (1 day).
DEFAULT_AFFINITY_TIMEOUT = 10800
MAX_AFFINITY_TIMEOUT = 86400

log = logging.getLogger("kubelvs.kubernetes.objects")


def object_id(obj: Mapping[str, Any]) -> ObjectId:
    """(namespace, name) from ``metadata``; "" for either when it is missing or not text."""
    meta = obj.get("metadata") if isinstance(obj, Mapping) else None
    if not isinstance(meta, Mapping):
        return ("", "")
    namespace, name = meta.get("namespace"), meta.get("name")
    return (namespace if isinstance(namespace, str) else "", name if isinstance(name, str) else "")


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
    health_check_node_port: int | None = None  # spec.healthCheckNodePort (Local policy, type LoadBalancer)
    ip_family_policy: str = ""  # spec.ipFamilyPolicy: SingleStack, PreferDualStack, RequireDualStack

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


class _Reader:
    """Typed reads of one object's JSON; what does not fit is skipped and noted in
    ``problems`` by its path (``spec.ports[1].port: must be an integer ...``)."""

    __slots__ = ("problems",)

    def __init__(self) -> None:
        self.problems: list[str] = []

    def skip(self, path: str, reason: str) -> None:
        self.problems.append(f"{path}: {reason}")

    def mapping(self, value: Any, path: str) -> Mapping[str, Any]:
        if isinstance(value, Mapping):
            return value
        if value is not None:
            self.skip(path, f"must be an object, got {_kind(value)}; read as empty")
        return _EMPTY

    def items(self, value: Any, path: str) -> list[Any]:
        if isinstance(value, list):
            return value
        if value is not None:
            self.skip(path, f"must be a list, got {_kind(value)}; read as empty")
        return []

    def text(self, value: Any, path: str) -> str | None:
        """A string, or None when absent (null) or not a string."""
        if value is None or isinstance(value, str):
            return value
        self.skip(path, f"must be a string, got {_kind(value)}; ignored")
        return None

    def texts(self, value: Any, path: str) -> tuple[str, ...]:
        out = []
        for i, item in enumerate(self.items(value, path)):
            if isinstance(item, str):
                out.append(item)
            else:
                self.skip(f"{path}[{i}]", f"must be a string, got {_kind(item)}; ignored")
        return tuple(out)

    def flag(self, value: Any, path: str) -> bool | None:
        """A boolean, or None when absent or not a boolean (a string "false" is not false)."""
        if value is None or isinstance(value, bool):
            return value
        self.skip(path, f"must be true or false, got {_kind(value)}; read as unset")
        return None

    def number(self, value: Any, path: str, low: int, high: int) -> int | None:
        """An integer within low..high, or None (absent, another type, out of range)."""
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            self.skip(path, f"must be an integer, got {_kind(value)}; ignored")
        elif not low <= value <= high:
            self.skip(path, f"must be between {low} and {high}, got {shown(value)}; ignored")
        else:
            return value
        return None

    def string_map(self, value: Any, path: str) -> dict[str, str]:
        out = {}
        for key, item in self.mapping(value, path).items():
            if isinstance(key, str) and isinstance(item, str):
                out[key] = item
            else:
                self.skip(f"{path}[{shown(key)}]", f"must be a string, got {_kind(item)}; ignored")
        return out


_EMPTY: Mapping[str, Any] = {}


def _kind(value: Any) -> str:
    """The JSON kind of ``value`` (short: a message must not carry a whole object)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return shown(value)
    if isinstance(value, Mapping):
        return "an object"
    return "a list" if isinstance(value, list) else type(value).__name__


def _metadata(obj: Mapping[str, Any], r: _Reader) -> tuple[Mapping[str, Any], str, str, str]:
    """metadata, namespace, name and resourceVersion ("" for each that is missing)."""
    meta = r.mapping(obj.get("metadata"), "metadata")
    name = r.text(meta.get("name"), "metadata.name")
    if not name:
        r.skip("metadata.name", "missing")
    version = r.text(meta.get("resourceVersion"), "metadata.resourceVersion")
    namespace = r.text(meta.get("namespace"), "metadata.namespace")
    return meta, namespace or "", name or "", version or ""


def _service(obj: Mapping[str, Any], r: _Reader) -> Service:
    meta, namespace, name, version = _metadata(obj, r)
    spec = r.mapping(obj.get("spec"), "spec")
    status = r.mapping(obj.get("status"), "status")
    ports = []
    for i, item in enumerate(r.items(spec.get("ports"), "spec.ports")):
        where = f"spec.ports[{i}]"
        p = r.mapping(item, where)
        proto_text = r.text(p.get("protocol"), f"{where}.protocol") or "TCP"
        try:
            proto = Protocol(proto_text.lower())
        except ValueError:
            continue  # a protocol IPVS has no notion of: not ours to serve (no problem of the object)
        port = r.number(p.get("port"), f"{where}.port", 1, 65535)
        if port is None:
            r.skip(where, "no valid port number; this port is not served")
            continue
        ports.append(
            ServicePort(
                r.text(p.get("name"), f"{where}.name") or "",
                proto,
                port,
                r.number(p.get("nodePort"), f"{where}.nodePort", 1, 65535),
            )
        )
    affinity = 0
    if spec.get("sessionAffinity") == "ClientIP":
        config = r.mapping(spec.get("sessionAffinityConfig"), "spec.sessionAffinityConfig")
        client_ip = r.mapping(config.get("clientIP"), "spec.sessionAffinityConfig.clientIP")
        where = "spec.sessionAffinityConfig.clientIP.timeoutSeconds"
        affinity = (
            r.number(client_ip.get("timeoutSeconds"), where, 1, MAX_AFFINITY_TIMEOUT)
            or DEFAULT_AFFINITY_TIMEOUT
        )
    load_balancer = r.mapping(status.get("loadBalancer"), "status.loadBalancer")
    ingress = []
    for i, item in enumerate(r.items(load_balancer.get("ingress"), "status.loadBalancer.ingress")):
        ip = r.text(
            r.mapping(item, f"status.loadBalancer.ingress[{i}]").get("ip"),
            f"status.loadBalancer.ingress[{i}].ip",
        )
        if ip:
            ingress.append(ip)
    return Service(
        namespace=namespace or "default",
        name=name,
        uid=r.text(meta.get("uid"), "metadata.uid") or "",
        created=r.text(meta.get("creationTimestamp"), "metadata.creationTimestamp") or "",
        type=r.text(spec.get("type"), "spec.type") or "ClusterIP",
        load_balancer_class=r.text(spec.get("loadBalancerClass"), "spec.loadBalancerClass"),
        external_ips=r.texts(spec.get("externalIPs"), "spec.externalIPs"),
        load_balancer_ip=r.text(spec.get("loadBalancerIP"), "spec.loadBalancerIP") or None,
        annotations=tuple(sorted(r.string_map(meta.get("annotations"), "metadata.annotations").items())),
        ports=tuple(ports),
        local_traffic=spec.get("externalTrafficPolicy") == "Local",
        affinity_timeout=affinity,
        ingress_ips=tuple(ingress),
        ip_families=r.texts(spec.get("ipFamilies"), "spec.ipFamilies"),
        resource_version=version,
        health_check_node_port=r.number(
            spec.get("healthCheckNodePort"), "spec.healthCheckNodePort", 1, 65535
        ),
        ip_family_policy=r.text(spec.get("ipFamilyPolicy"), "spec.ipFamilyPolicy") or "",
    )


def _condition(r: _Reader, conditions: Mapping[str, Any], name: str, default: bool, where: str) -> bool:
    # EndpointConditions: a nil ready/serving means "unknown" and is read as true; a
    # nil terminating as false (discovery.k8s.io/v1 API reference). Not a boolean: as nil.
    value = conditions.get(name)
    if value is True or value is False:  # the common case first: three per endpoint of every slice
        return value
    if value is not None:
        r.flag(value, f"{where}.conditions.{name}")
    return default


def _endpointslice(obj: Mapping[str, Any], r: _Reader) -> EndpointSlice:
    meta, namespace, name, version = _metadata(obj, r)
    endpoints = []
    for i, item in enumerate(r.items(obj.get("endpoints"), "endpoints")):
        where = f"endpoints[{i}]"
        ep = r.mapping(item, where)
        conditions = r.mapping(ep.get("conditions"), f"{where}.conditions")
        ready = _condition(r, conditions, "ready", True, where)
        endpoints.append(
            Endpoint(
                node_name=r.text(ep.get("nodeName"), f"{where}.nodeName"),
                ready=ready,
                serving=_condition(r, conditions, "serving", ready, where),
                terminating=_condition(r, conditions, "terminating", False, where),
            )
        )
    port_names: tuple[str, ...] | None = None
    if obj.get("ports") is not None:
        port_names = tuple(
            r.text(r.mapping(p, f"ports[{i}]").get("name"), f"ports[{i}].name") or ""
            for i, p in enumerate(r.items(obj.get("ports"), "ports"))
        )
    labels = r.mapping(meta.get("labels"), "metadata.labels")
    return EndpointSlice(
        namespace=namespace or "default",
        name=name,
        service_name=r.text(labels.get(SERVICE_NAME_LABEL), f"metadata.labels[{SERVICE_NAME_LABEL}]"),
        address_type=r.text(obj.get("addressType"), "addressType") or "IPv4",
        endpoints=tuple(endpoints),
        port_names=port_names,
        resource_version=version,
    )


def _node(obj: Mapping[str, Any], r: _Reader) -> Node:
    meta, _, name, version = _metadata(obj, r)
    spec = r.mapping(obj.get("spec"), "spec")
    status = r.mapping(obj.get("status"), "status")
    ready = False  # a Ready condition that cannot be read: not Ready (the node is not a target)
    for i, item in enumerate(r.items(status.get("conditions"), "status.conditions")):
        c = r.mapping(item, f"status.conditions[{i}]")
        if c.get("type") == "Ready" and c.get("status") == "True":
            ready = True
    addresses = []
    for i, item in enumerate(r.items(status.get("addresses"), "status.addresses")):
        where = f"status.addresses[{i}]"
        a = r.mapping(item, where)
        type_, address = r.text(a.get("type"), f"{where}.type"), r.text(a.get("address"), f"{where}.address")
        if type_ is not None and address is not None:
            addresses.append((type_, address))
    deletion = meta.get("deletionTimestamp")
    return Node(
        name=name,
        addresses=tuple(addresses),
        ready=ready,
        unschedulable=bool(r.flag(spec.get("unschedulable"), "spec.unschedulable")),
        deleting=bool(deletion),  # any value at all means the object is being deleted
        excluded=EXCLUDE_LB_LABEL in r.mapping(meta.get("labels"), "metadata.labels"),
        resource_version=version,
    )


_DECODERS: dict[str, Callable[[Mapping[str, Any], _Reader], Service | EndpointSlice | Node]] = {
    "Service": _service,
    "EndpointSlice": _endpointslice,
    "Node": _node,
}


def decode_object(kind: str, obj: Any) -> tuple[Service | EndpointSlice | Node, list[str]]:
    """Decode one API object of ``kind`` (Service, EndpointSlice or Node): the view, and
    the problems found (each a field path and what was done about it; empty for a good
    object). Never raises for a malformed object (see the module docstring)."""
    r = _Reader()
    if not isinstance(obj, Mapping):
        r.skip("(object)", f"must be an object, got {_kind(obj)}; read as empty")
        obj = _EMPTY
    return _DECODERS[kind](obj, r), r.problems


def parse_object(kind: str, obj: Mapping[str, Any]) -> Service | EndpointSlice | Node:
    """Decode one API object of ``kind``; the problems of a malformed one are logged as a
    warning (its bad parts are skipped; see the module docstring)."""
    parsed, problems = decode_object(kind, obj)
    if problems:
        ns, name = object_id(obj)
        ref = f"{ns}/{name}" if ns else name or "(no name)"
        shown_problems = "; ".join(problems[:10]) + (
            f"; and {len(problems) - 10} more" if len(problems) > 10 else ""
        )
        log.warning("%s %s: malformed, parts skipped: %s", kind, ref, shown_problems)
    return parsed


def parse_service(obj: Mapping[str, Any]) -> Service:
    return parse_object("Service", obj)  # type: ignore[return-value]


def parse_endpointslice(obj: Mapping[str, Any]) -> EndpointSlice:
    return parse_object("EndpointSlice", obj)  # type: ignore[return-value]


def parse_node(obj: Mapping[str, Any]) -> Node:
    return parse_object("Node", obj)  # type: ignore[return-value]
