from __future__ import annotations

from ipaddress import ip_address, ip_network
from typing import Any

from kubelvs.model import Ownership, Protocol, ServiceKey
from kubelvs.sources.kubernetes.mapping import MappingResult, Snapshot, compute
from kubelvs.sources.kubernetes.objects import EndpointSlice, Node, Service, parse_object
from kubelvs.sources.kubernetes.settings import KubeSettings, parse_kubernetes

WHOAMI_SECTION: dict[str, Any] = {
    "external_ip_cidrs": ["10.240.0.192/26"],
    "lb_pools": [{"name": "default", "cidrs": ["10.240.0.224/28"]}],
}


def settings(
    section: dict[str, Any] | None = None, owned: tuple[str, ...] = ("10.240.0.0/24",)
) -> KubeSettings:
    data = dict(WHOAMI_SECTION if section is None else section)
    data.setdefault("external_ip_cidrs", ["10.240.0.192/27"])
    # The stand-in API server's nodes are not hosts: nothing to probe unless a test says so.
    data.setdefault("health", {"enabled": False})
    return parse_kubernetes(data, Ownership(cidrs=tuple(ip_network(c) for c in owned)))


def snapshot(objs: list[dict[str, Any]]) -> Snapshot:
    services, slices, nodes = {}, {}, {}
    for o in objs:
        parsed = parse_object(o["kind"], o)
        if isinstance(parsed, Service):
            services[parsed.id] = parsed
        elif isinstance(parsed, EndpointSlice):
            slices[parsed.id] = parsed
        elif isinstance(parsed, Node):
            nodes[parsed.id] = parsed
    return Snapshot(services, slices, nodes)


def run(objs: list[dict[str, Any]], section: dict[str, Any] | None = None) -> MappingResult:
    return compute(snapshot(objs), settings(section))


def key(vip: str, port: int, proto: str = "tcp") -> ServiceKey:
    address = ip_address(vip)
    return ServiceKey(address.version, Protocol(proto), address, port)


def rs_table(
    result: MappingResult, vip: str, port: int, proto: str = "tcp"
) -> list[tuple[str, int, int, str]]:
    vs = result.desired.services[key(vip, port, proto)]
    return [(str(r.address), r.port, r.weight, str(r.forward)) for r in vs.realservers]


def reasons(result: MappingResult) -> list[tuple[str, str]]:
    return [(f"{e.namespace}/{e.name}", e.reason) for e in result.events]
