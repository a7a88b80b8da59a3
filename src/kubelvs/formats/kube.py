"""``kubectl get svc,endpoints,endpointslices,nodes -A -o json|yaml``: what IPVS should hold.

Accepts a ``List`` (what ``kubectl get`` prints), a single object (``kubectl get
svc X -o yaml``) or several YAML documents. From it come, per service port, the
frontends (cluster IPs, external IPs, load-balancer IPs, node ports) and the
endpoints (address and the numeric target port, from EndpointSlices or Endpoints).

Kubernetes objects are untyped JSON: every field is checked for its type (and
addresses, ports and protocols for their values) before use, so the result holds only
well-formed values. A field of the wrong type is a problem naming the object and the
field; the rest is still read. Text that is neither JSON nor YAML, or nests deeper than
the parsers recurse, sets ``unreadable``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import yaml

from .tokens import MAX_PROBLEMS, ip_address, printable, quote

__all__ = ["KubeState", "ServicePort", "parse_kube"]


@dataclass
class ServicePort:
    namespace: str
    name: str
    port_name: str
    protocol: str  # "TCP", "UDP", "SCTP"
    port: int
    target_port: int | str | None
    node_port: int | None
    cluster_ips: list[str] = field(default_factory=list)
    external_ips: list[str] = field(default_factory=list)  # spec.externalIPs
    lb_ips: list[str] = field(default_factory=list)  # status.loadBalancer.ingress[].ip
    type: str = "ClusterIP"
    endpoints: set[tuple[str, int]] = field(default_factory=set)  # ready (address, port)
    not_ready: set[tuple[str, int]] = field(default_factory=set)
    have_endpoints_object: bool = False
    traffic_policy: str = "Cluster"  # spec.externalTrafficPolicy
    endpoint_nodes: set[str] = field(default_factory=set)  # nodeName of the ready endpoints

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}" + (f":{self.port_name}" if self.port_name else "")

    def frontends(self) -> list[tuple[str, int]]:
        """(VIP, port) pairs IPVS serves for this port (node ports need node addresses)."""
        return [(ip, self.port) for ip in [*self.cluster_ips, *self.external_ips, *self.lb_ips]]


@dataclass
class KubeState:
    ports: list[ServicePort] = field(default_factory=list)
    node_ips: dict[str, list[str]] = field(default_factory=dict)  # node name -> InternalIP/ExternalIP
    problems: list[str] = field(default_factory=list)  # the first MAX_PROBLEMS
    unreadable: bool = False  # the text as a whole is not kubectl output: nothing in it was used
    bad_fields: int = 0  # fields of the wrong type or value (the first MAX_PROBLEMS are in problems)
    source: str = ""  # where the text came from (file name), for evidence lines

    def all_node_ips(self) -> set[str]:
        return {ip for ips in self.node_ips.values() for ip in ips}


_PROTOCOLS = ("TCP", "UDP", "SCTP")


class _Unreadable(Exception):
    """The text is neither JSON nor YAML (or nests past what the parsers can recurse)."""


def _load(text: str) -> list[Any]:
    stripped = text.lstrip()
    try:
        if stripped.startswith(("{", "[")):
            data = json.loads(stripped)
            return data if isinstance(data, list) else [data]
        return [d for d in yaml.safe_load_all(text) if d is not None]
    except (ValueError, yaml.YAMLError) as exc:  # ValueError: JSON, and YAML's bad dates and huge ints
        raise _Unreadable(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
    except RecursionError:
        raise _Unreadable("nested too deeply") from None


def _items(docs: list[Any]) -> list[dict[Any, Any]]:
    """The objects: a List's items (the List itself too, so an empty one still counts as
    kubectl output), or the documents themselves."""
    out: list[dict[Any, Any]] = []
    for doc in docs:
        if not isinstance(doc, dict):
            continue
        items = doc.get("items")
        if isinstance(items, list):
            out.extend(i for i in items if isinstance(i, dict))
        out.append(doc)
    return out


class _Item:
    """Typed access to one Kubernetes object: a field of the wrong type is reported once
    (kind namespace/name: field: why) and reads as absent, so the rest of the object and
    the other objects are still used."""

    def __init__(self, item: dict[Any, Any], source: str, state: KubeState) -> None:
        self.item = item
        self.source = source
        self.state = state
        kind = item.get("kind")
        self.kind = kind if isinstance(kind, str) else ""
        self.namespace = self.name = ""  # bad() names the object: set before the first read
        self.meta = self.obj(item, "metadata")
        self.namespace = self.text(self.meta, "namespace", at="metadata.") or "default"
        self.name = self.text(self.meta, "name", at="metadata.")

    def bad(self, path: str, why: str) -> None:
        self.state.bad_fields += 1
        if len(self.state.problems) < MAX_PROBLEMS:
            where = f"{self.kind or 'object'} {self.namespace}/{self.name}"
            self.state.problems.append(f"{self.source}: {printable(where, 100)}: {path}: {why}")

    def obj(self, parent: dict[Any, Any], key: str, *, at: str = "") -> dict[Any, Any]:
        """``parent[key]`` when an object (``at``: the path to ``parent``, for messages)."""
        value = parent.get(key)
        if value is None or isinstance(value, dict):
            return value or {}
        self.bad(at + key, f"{_a(value)}, not an object")
        return {}

    def seq(self, parent: dict[Any, Any], key: str, *, at: str = "") -> list[Any]:
        value = parent.get(key)
        if value is None or isinstance(value, list):
            return value or []
        self.bad(at + key, f"{_a(value)}, not a list")
        return []

    def text(self, parent: dict[Any, Any], key: str, default: str = "", *, at: str = "") -> str:
        value = parent.get(key)
        if value is None:
            return default
        if isinstance(value, str):
            return value
        self.bad(at + key, f"{quote(str(value), 40)} is not a string")
        return default

    def addresses(self, values: list[Any], path: str) -> list[str]:
        """IP addresses, normalised as ``str(ip_address(...))`` prints them (IPv6 text forms
        differ; the IPVS table prints that form)."""
        out = []
        for value in values:
            address = ip_address(value) if isinstance(value, str) else None
            if address is None:
                if value not in ("None", ""):  # a headless service's clusterIP is "None"
                    self.bad(path, f"{quote(str(value), 60)} is not an IP address")
                continue
            out.append(str(address))
        return out

    def port(self, parent: dict[Any, Any], key: str, path: str) -> int | None:
        value = parent.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= 65535:
            return value
        if value is not None:
            self.bad(path, f"{quote(str(value), 40)} is not a port number 1-65535")
        return None


def _a(value: object) -> str:
    """``a list``, ``an int``: the JSON type a field had instead."""
    kind = type(value).__name__
    name = {"dict": "object", "NoneType": "null", "str": "string", "bool": "boolean"}.get(kind, kind)
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def parse_kube(text: str, *, source: str = "kubectl") -> KubeState:
    state = KubeState(source=source)
    try:
        items = _items(_load(text))
    except _Unreadable as exc:
        state.problems.append(f"{source}: neither JSON nor YAML kubectl output: {quote(str(exc), 200)}")
        state.unreadable = True
        return state
    if not any(isinstance(i, dict) and ("kind" in i or "items" in i) for i in items):
        # An empty cluster is a List whose items are empty: that has "items". This is not kubectl output.
        state.problems.append(
            f"{source}: no Kubernetes object in it (kubectl get ... -o json|yaml prints a List)"
        )
        state.unreadable = True
        return state
    by_service: dict[tuple[str, str], list[ServicePort]] = {}
    objects = [_Item(item, source, state) for item in items]
    for obj in objects:
        if obj.kind == "Service":
            _service(obj, state, by_service)
        elif obj.kind == "Node":
            status = obj.obj(obj.item, "status")
            ips = []
            for n, a in enumerate(obj.seq(status, "addresses", at="status.")):
                if isinstance(a, dict) and a.get("type") in ("InternalIP", "ExternalIP"):
                    ips += obj.addresses([a.get("address")], f"status.addresses[{n}].address")
            state.node_ips[obj.name] = ips
    for obj in objects:
        if obj.kind == "EndpointSlice":
            _endpoint_slice(obj, by_service)
        elif obj.kind == "Endpoints":
            _endpoints(obj, by_service)
    return state


def _service(obj: _Item, state: KubeState, by_service: dict[tuple[str, str], list[ServicePort]]) -> None:
    spec = obj.obj(obj.item, "spec")
    single = spec.get("clusterIP")
    cluster = obj.seq(spec, "clusterIPs", at="spec.") or ([single] if single is not None else [])
    ips = obj.addresses(cluster, "spec.clusterIPs")
    external = obj.addresses(obj.seq(spec, "externalIPs", at="spec."), "spec.externalIPs")
    balancer = obj.obj(obj.obj(obj.item, "status"), "loadBalancer", at="status.")
    ingress = obj.seq(balancer, "ingress", at="status.loadBalancer.")
    lb = obj.addresses(
        [i["ip"] for i in ingress if isinstance(i, dict) and i.get("ip") is not None],
        "status.loadBalancer.ingress[].ip",
    )
    svc_type = obj.text(spec, "type", "ClusterIP", at="spec.")
    policy = obj.text(spec, "externalTrafficPolicy", "Cluster", at="spec.")
    for n, p in enumerate(obj.seq(spec, "ports", at="spec.")):
        path = f"spec.ports[{n}]"
        if not isinstance(p, dict):
            obj.bad(path, f"{_a(p)}, not an object")
            continue
        port = obj.port(p, "port", f"{path}.port")
        protocol = obj.text(p, "protocol", "TCP", at=f"{path}.")
        if port is None:
            if "port" not in p:
                obj.bad(f"{path}.port", "missing")
            continue
        if protocol not in _PROTOCOLS:
            obj.bad(f"{path}.protocol", f"{quote(protocol, 40)} is not one of {', '.join(_PROTOCOLS)}")
            continue
        target = p.get("targetPort", port)
        if not (isinstance(target, str) or (isinstance(target, int) and not isinstance(target, bool))):
            obj.bad(f"{path}.targetPort", f"{quote(str(target), 40)} is neither a port number nor a name")
            target = None
        sp = ServicePort(
            obj.namespace,
            obj.name,
            obj.text(p, "name", at=f"{path}."),
            protocol,
            port,
            target,
            obj.port(p, "nodePort", f"{path}.nodePort"),
            ips,
            external,
            lb,
            svc_type,
            traffic_policy="Local" if policy == "Local" else "Cluster",
        )
        state.ports.append(sp)
        by_service.setdefault((obj.namespace, obj.name), []).append(sp)


def _matching(obj: _Item, port: dict[Any, Any], candidates: list[ServicePort], at: str) -> list[ServicePort]:
    name, protocol = obj.text(port, "name", at=at), obj.text(port, "protocol", "TCP", at=at)
    return [sp for sp in candidates if name == sp.port_name and protocol == sp.protocol]


def _endpoint_slice(obj: _Item, by_service: dict[tuple[str, str], list[ServicePort]]) -> None:
    if obj.item.get("addressType", "IPv4") not in ("IPv4", "IPv6"):
        return  # FQDN slices hold host names, which IPVS never does
    labels = obj.obj(obj.meta, "labels", at="metadata.")
    service = obj.text(labels, "kubernetes.io/service-name", at="metadata.labels.")
    candidates = by_service.get((obj.namespace, service), [])
    for n, port in enumerate(obj.seq(obj.item, "ports")):
        if not isinstance(port, dict):
            obj.bad(f"ports[{n}]", f"{_a(port)}, not an object")
            continue
        number = obj.port(port, "port", f"ports[{n}].port")
        for sp in _matching(obj, port, candidates, f"ports[{n}]."):
            sp.have_endpoints_object = True
            if number is None:
                continue
            for m, ep in enumerate(obj.seq(obj.item, "endpoints")):
                if not isinstance(ep, dict):
                    continue
                at = f"endpoints[{m}]."
                ready = obj.obj(ep, "conditions", at=at).get("ready", True) is not False
                for address in obj.addresses(obj.seq(ep, "addresses", at=at), f"{at}addresses"):
                    (sp.endpoints if ready else sp.not_ready).add((address, number))
                node = obj.text(ep, "nodeName", at=at)
                if ready and node:
                    sp.endpoint_nodes.add(node)


def _endpoints(obj: _Item, by_service: dict[tuple[str, str], list[ServicePort]]) -> None:
    candidates = by_service.get((obj.namespace, obj.name), [])
    for n, subset in enumerate(obj.seq(obj.item, "subsets")):
        if not isinstance(subset, dict):
            obj.bad(f"subsets[{n}]", f"{_a(subset)}, not an object")
            continue
        for m, port in enumerate(obj.seq(subset, "ports", at=f"subsets[{n}].")):
            if not isinstance(port, dict):
                continue
            number = obj.port(port, "port", f"subsets[{n}].ports[{m}].port")
            for sp in _matching(obj, port, candidates, f"subsets[{n}].ports[{m}]."):
                sp.have_endpoints_object = True
                if number is None:
                    continue
                for key, into in (("addresses", sp.endpoints), ("notReadyAddresses", sp.not_ready)):
                    listed = obj.seq(subset, key, at=f"subsets[{n}].")
                    ips = [a.get("ip") for a in listed if isinstance(a, dict)]
                    into.update((ip, number) for ip in obj.addresses(ips, f"subsets[{n}].{key}[].ip"))
                    if key == "addresses":
                        sp.endpoint_nodes.update(
                            a["nodeName"]
                            for a in listed
                            if isinstance(a, dict) and isinstance(a.get("nodeName"), str)
                        )
