"""``kubectl get svc,endpoints,endpointslices,nodes -A -o json|yaml``: what IPVS should hold.

Accepts a ``List`` (what ``kubectl get`` prints), a single object (``kubectl get
svc X -o yaml``) or several YAML documents. From it come, per service port, the
frontends (cluster IPs, external IPs, load-balancer IPs, node ports) and the
endpoints (address and the numeric target port, from EndpointSlices or Endpoints).
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field
from typing import Any

import yaml

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
    problems: list[str] = field(default_factory=list)

    def all_node_ips(self) -> set[str]:
        return {ip for ips in self.node_ips.values() for ip in ips}


def _load(text: str) -> list[Any]:
    stripped = text.lstrip()
    if stripped.startswith("{") or stripped.startswith("["):
        data = json.loads(stripped)
        return data if isinstance(data, list) else [data]
    return [d for d in yaml.safe_load_all(text) if d is not None]


def _items(docs: list[Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for doc in docs:
        if not isinstance(doc, dict):
            continue
        if isinstance(doc.get("items"), list):
            out.extend(i for i in doc["items"] if isinstance(i, dict))
        else:
            out.append(doc)
    return out


def parse_kube(text: str, *, source: str = "kubectl") -> KubeState:
    state = KubeState()
    try:
        items = _items(_load(text))
    except (ValueError, yaml.YAMLError) as exc:
        state.problems.append(f"{source}: neither JSON nor YAML kubectl output: {str(exc).splitlines()[0]}")
        return state
    by_service: dict[tuple[str, str], list[ServicePort]] = {}
    for item in items:
        try:
            kind = item.get("kind")
            meta = item.get("metadata") or {}
            ns, name = meta.get("namespace", "default"), meta.get("name", "")
            if kind == "Service":
                spec = item.get("spec") or {}
                ips = [ip for ip in (spec.get("clusterIPs") or [spec.get("clusterIP")]) if ip and ip != "None"]
                lb = [i["ip"] for i in ((item.get("status") or {}).get("loadBalancer") or {}).get("ingress") or [] if i.get("ip")]
                for p in spec.get("ports") or []:
                    sp = ServicePort(ns, name, p.get("name") or "", p.get("protocol", "TCP"), int(p["port"]),
                                     p.get("targetPort", p["port"]), p.get("nodePort"), ips,
                                     list(spec.get("externalIPs") or []), lb, spec.get("type", "ClusterIP"))
                    state.ports.append(sp)
                    by_service.setdefault((ns, name), []).append(sp)
            elif kind == "Node":
                addrs = (item.get("status") or {}).get("addresses") or []
                state.node_ips[name] = [a["address"] for a in addrs if a.get("type") in ("InternalIP", "ExternalIP")]
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            state.problems.append(f"{source}: {item.get('kind')} {item.get('metadata', {}).get('name')}: {exc!r}")
    for item in items:
        try:
            kind = item.get("kind")
            meta = item.get("metadata") or {}
            ns = meta.get("namespace", "default")
            if kind == "EndpointSlice":
                svc_name = (meta.get("labels") or {}).get("kubernetes.io/service-name", "")
                for port in item.get("ports") or []:
                    for sp in by_service.get((ns, svc_name), []):
                        if (port.get("name") or "") != sp.port_name or port.get("protocol", "TCP") != sp.protocol:
                            continue
                        sp.have_endpoints_object = True
                        for ep in item.get("endpoints") or []:
                            ready = (ep.get("conditions") or {}).get("ready", True) is not False
                            for addr in ep.get("addresses") or []:
                                (sp.endpoints if ready else sp.not_ready).add((addr, int(port["port"])))
            elif kind == "Endpoints":
                for subset in item.get("subsets") or []:
                    for port in subset.get("ports") or []:
                        for sp in by_service.get((ns, meta.get("name", "")), []):
                            if (port.get("name") or "") != sp.port_name or port.get("protocol", "TCP") != sp.protocol:
                                continue
                            sp.have_endpoints_object = True
                            for addr in subset.get("addresses") or []:
                                sp.endpoints.add((addr["ip"], int(port["port"])))
                            for addr in subset.get("notReadyAddresses") or []:
                                sp.not_ready.add((addr["ip"], int(port["port"])))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            state.problems.append(f"{source}: {item.get('kind')} {item.get('metadata', {}).get('name')}: {exc!r}")
    for sp in state.ports:  # normalise addresses (IPv6 text forms)
        sp.endpoints = {(str(ipaddress.ip_address(a)), p) for a, p in sp.endpoints}
    return state
