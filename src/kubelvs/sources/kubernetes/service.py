"""One Service -> its virtual services (pure): the translation the Mapper applies to each
Service whose inputs changed. Its VIPs (allowed externalIPs, then IPAM's addresses), its
real servers (the eligible nodes, weighted by local endpoints under Local policy), its
health check (kube-proxy's health port, healthCheckNodePort, or what the annotations
ask), and the Events about what it asks for and cannot get. The rules are in
``mapping``'s docstring and docs/kubernetes.md."""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import replace

from ...model import (
    KNOWN_SCHEDULERS,
    SCHED_FLAGS,
    CheckKind,
    CheckMode,
    Forward,
    HealthCheck,
    IPAddress,
    RealServer,
    ServiceKey,
    VirtualService,
    desired_flags,
    in_key_order,
)
from ...model.validate import MAX_TIMEOUT, MAX_WEIGHT
from . import annotations as ann
from .objects import EndpointSlice, EventSpec, Node, Service
from .settings import KubeSettings
from .snapshot import NodeTarget

__all__ = [
    "EveryNode",
    "NodeShape",
    "event",
    "every_node",
    "node_targets",
    "on_nodes",
    "service_check",
    "service_fragment",
    "service_vips",
]


def node_targets(nodes: Iterable[Node], settings: KubeSettings) -> tuple[NodeTarget, ...]:
    """Eligible nodes with their address per family, sorted by name."""
    out = []
    for node in sorted(nodes, key=lambda n: n.name):
        if not node.eligible:
            continue
        found: dict[int, IPAddress] = {}
        for wanted in settings.node_address_types:
            for type_, text in node.addresses:
                if type_ != wanted:
                    continue
                try:
                    ip = ipaddress.ip_address(text)
                except ValueError:
                    continue
                found.setdefault(ip.version, ip)
        if found:
            out.append(NodeTarget(node.name, found.get(4), found.get(6)))
    return tuple(out)


def event(svc: Service, reason: str, message: str, type_: str = "Warning") -> EventSpec:
    return EventSpec(svc.namespace, svc.name, svc.uid, reason, message, type_)


def service_vips(
    svc: Service, assigned: Sequence[IPAddress], settings: KubeSettings
) -> tuple[list[IPAddress], list[EventSpec]]:
    """The Service's VIPs: allowed externalIPs, then its assigned LoadBalancer addresses."""
    vips: list[IPAddress] = []
    events: list[EventSpec] = []
    if svc.type == "ExternalName":
        return vips, events
    allowed = ", ".join(str(c) for c in settings.external_ip_cidrs) or "none"
    for text in svc.external_ips:
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            events.append(event(svc, "InvalidExternalIP", f"externalIPs: {text!r} is not an IP address"))
            continue
        if not settings.external_ip_allowed(ip):
            events.append(
                event(
                    svc,
                    "ExternalIPNotAllowed",
                    f"externalIP {ip} is outside the allowed ranges (kubernetes.external_ip_cidrs: "
                    f"{allowed}); not programmed (an arbitrary externalIP could capture another "
                    "destination's traffic, CVE-2020-8554)",
                )
            )
            continue
        if svc.ip_families and f"IPv{ip.version}" not in svc.ip_families:
            events.append(
                event(
                    svc,
                    "ExternalIPWrongFamily",
                    f"externalIP {ip} is IPv{ip.version} but the Service's ipFamilies are "
                    f"{', '.join(svc.ip_families)}; not programmed (its nodes' kube-proxy has no "
                    f"IPv{ip.version} endpoints for it: make the Service dual-stack)",
                )
            )
            continue
        pool = next((p for p in settings.pools if ip in p), None)
        if pool is not None:
            events.append(
                event(
                    svc,
                    "ExternalIPInPool",
                    f"externalIP {ip} is inside LoadBalancer pool {pool.name}, whose addresses only IPAM "
                    "assigns; not programmed (ask for it with type LoadBalancer and "
                    f"{ann.LOAD_BALANCER_IPS})",
                )
            )
            continue
        if ip not in vips:
            vips.append(ip)
    for ip in assigned:
        if ip not in vips:
            vips.append(ip)
    return vips, events


_CHECK_KINDS = {"tcp": CheckKind.TCP, "http": CheckKind.HTTP, "https": CheckKind.HTTPS}


def service_check(
    svc: Service, settings: KubeSettings, shapes: Sequence[NodeShape]
) -> tuple[HealthCheck | None, list[EventSpec]]:
    """The check of the Service's real servers (the nodes): by default kube-proxy's
    ``/healthz`` on its health port for externalTrafficPolicy Cluster (is the node's
    proxy alive), the Service's ``healthCheckNodePort`` for Local (does the node have a
    ready endpoint); the annotations choose another or none."""
    chosen = (svc.annotation(ann.HEALTH_CHECK) or "default").strip().lower()
    if chosen == "none" or (chosen == "default" and settings.health is None):
        return None, []
    base = settings.health or HealthCheck(kind=CheckKind.HTTP, path="/healthz")
    node_port = svc.health_check_node_port if svc.local_traffic else None
    default = replace(
        base, kind=CheckKind.HTTP, path="/healthz", port=node_port or settings.kube_proxy_health_port
    )
    bad: list[str] = []
    if chosen == "default":
        check = default
    elif chosen in _CHECK_KINDS:
        check = replace(
            base, kind=_CHECK_KINDS[chosen], path=svc.annotation(ann.HEALTH_PATH) or "/healthz", port=None
        )
        port_text = svc.annotation(ann.HEALTH_PORT)
        if port_text is not None:
            if port_text.isdigit() and 1 <= int(port_text) <= 65535:
                check = replace(check, port=int(port_text))
            else:
                bad.append(f"{ann.HEALTH_PORT}: {port_text!r} is not a port number")
        if not check.path.startswith("/"):
            bad.append(f"{ann.HEALTH_PATH}: {check.path!r} must start with /")
    else:
        bad.append(f"{ann.HEALTH_CHECK}: {chosen!r} is not default, none, tcp, http or https")
        check = default
    mode = (svc.annotation(ann.HEALTH_MODE) or "direct").strip().lower()
    if mode == "vip":
        if check.kind is not CheckKind.TCP:
            bad.append(
                f"{ann.HEALTH_MODE}: vip probes a TCP handshake through the data path: use "
                f"{ann.HEALTH_CHECK}: tcp"
            )
        elif any(forward is Forward.NAT for _, _, forward in shapes):
            bad.append(f"{ann.HEALTH_MODE}: vip needs forward dr or tun")
        else:
            check = replace(check, mode=CheckMode.VIP)
    elif mode != "direct":
        bad.append(f"{ann.HEALTH_MODE}: {mode!r} is not direct or vip")
    if bad:
        message = "; ".join(bad) + "; the default check is used"
        return (default if settings.health is not None else None), [event(svc, "InvalidAnnotation", message)]
    return check, []


#: What a virtual service's real servers are made of: the nodes' addresses of one IP
#: family, with one port and forwarding method.
NodeShape = tuple[int, int, Forward]

#: The real servers of every ``externalTrafficPolicy: Cluster`` Service of the same shape,
#: for one set of targets: shape -> the sorted, shared tuple (``every_node``'s memo).
EveryNode = dict[NodeShape, tuple[RealServer, ...]]


def every_node(targets: Sequence[NodeTarget], shape: NodeShape, memo: EveryNode) -> tuple[RealServer, ...]:
    """The real servers of a Cluster-policy virtual service of ``shape``: every target
    with an address of its family, weight 1; made once per shape while ``memo`` lives (a
    node going NotReady remaps every Service, and all but the Local ones get the same
    few tuples)."""
    found = memo.get(shape)
    if found is None:
        family, port, forward = shape
        made = []
        for target in targets:
            address = target.address(family)
            if address is not None:
                made.append(_realserver(address, port, 1, forward))
        found = memo[shape] = in_key_order(made)
    return found


def on_nodes(
    services: Sequence[VirtualService],
    shapes: Sequence[NodeShape],
    targets: Sequence[NodeTarget],
    memo: EveryNode,
) -> tuple[VirtualService, ...]:
    """A Cluster-policy Service's virtual services with the real servers of ``targets``:
    all that a node change changes in them (see ``service_fragment``)."""
    return tuple(
        vs.holding(every_node(targets, shape, memo)) for vs, shape in zip(services, shapes, strict=True)
    )


def service_fragment(
    svc: Service,
    vips: Sequence[IPAddress],
    slices: Sequence[EndpointSlice],
    targets: Sequence[NodeTarget],
    settings: KubeSettings,
    memo: EveryNode,
) -> tuple[list[VirtualService], list[NodeShape], list[EventSpec]]:
    """The virtual services of one Service (before conflicts between Services are
    resolved), each with the shape of its real servers. ``memo``: the Cluster-policy real
    servers already made for ``targets`` (``every_node``)."""
    events: list[EventSpec] = []
    shapes: list[NodeShape] = []
    if not vips or not svc.ports:
        return [], shapes, events
    forward_text = svc.annotation(ann.FORWARD)
    chosen = svc.annotation(ann.SCHEDULER)
    scheduler = chosen or settings.default_scheduler
    flags_text = svc.annotation(ann.SCHEDULER_FLAGS)
    if flags_text is None and chosen is None:
        flags = settings.default_scheduler_flags
    else:
        flags = frozenset(f.strip() for f in (flags_text or "").split(",") if f.strip())
    bad = []
    if forward_text is not None and forward_text not in ("dr", "tun", "nat"):
        bad.append(f"{ann.FORWARD}: {forward_text!r} is not dr, tun or nat")
    if scheduler not in KNOWN_SCHEDULERS:
        bad.append(f"{ann.SCHEDULER}: unknown IPVS scheduler {scheduler!r}")
    elif flags - SCHED_FLAGS.get(scheduler, frozenset()):
        bad.append(
            f"{ann.SCHEDULER_FLAGS}: {', '.join(sorted(flags - SCHED_FLAGS.get(scheduler, frozenset())))} "
            f"not valid with scheduler {scheduler}"
        )
    if bad:
        events.append(event(svc, "InvalidAnnotation", "; ".join(bad) + "; the Service is not programmed"))
        return [], shapes, events
    forward = Forward(forward_text) if forward_text else settings.default_forward
    persistence = min(svc.affinity_timeout, MAX_TIMEOUT)

    out: list[VirtualService] = []
    for port in svc.ports:
        if forward is Forward.NAT and not port.node_port:
            events.append(
                event(
                    svc,
                    "NATNeedsNodePort",
                    f"port {port.name or port.port}: forward nat sends to nodeIP:nodePort, and this port has "
                    "no nodePort; not programmed",
                )
            )
            continue
        rs_port = port.node_port if forward is Forward.NAT else port.port
        assert rs_port is not None
        for vip in vips:
            shape = (vip.version, rs_port, forward)
            if svc.local_traffic:
                realservers = _local(svc, port.name, shape, slices, targets)
            else:
                realservers = every_node(targets, shape, memo)
            shapes.append(shape)
            out.append(
                VirtualService(
                    key=ServiceKey(vip.version, port.protocol, vip, port.port),
                    scheduler=scheduler,
                    persistence=persistence,
                    flags=desired_flags(scheduler, flags),
                    realservers=realservers,
                    name=f"{svc.namespace}/{svc.name}:{port.name or port.port}",
                )
            )
    return out, shapes, events


@functools.lru_cache(maxsize=1 << 16)
def _realserver(address: IPAddress, port: int, weight: int, forward: Forward) -> RealServer:
    # One object per node, port, weight and method: the nodes are the real servers of
    # every Service, so 10,000 Services hold a few dozen instead of 100,000 (memory, and
    # a node going NotReady rebuilds every Service).
    return RealServer(address, port, weight, forward)


def _local(
    svc: Service,
    port_name: str,
    shape: NodeShape,
    slices: Sequence[EndpointSlice],
    targets: Sequence[NodeTarget],
) -> tuple[RealServer, ...]:
    """``externalTrafficPolicy: Local``: the nodes with a ready endpoint of the port,
    weighted by their number; a node left with only terminating (still serving) endpoints
    gets weight 0: established connections finish, new ones go elsewhere."""
    family, port, forward = shape
    ready: dict[str, int] = {}
    terminating: dict[str, int] = {}
    address_type = f"IPv{family}"
    for sl in slices:
        if sl.address_type != address_type:
            continue  # dual-stack Services have a slice per family: count each pod once
        if sl.port_names is not None and port_name not in sl.port_names:
            continue
        for ep in sl.endpoints:
            if not ep.node_name:
                continue
            if ep.ready and not ep.terminating:
                ready[ep.node_name] = ready.get(ep.node_name, 0) + 1
            elif ep.serving and ep.terminating:
                terminating[ep.node_name] = terminating.get(ep.node_name, 0) + 1
    made = []
    for target in targets:
        address = target.address(family)
        if address is None:
            continue
        if ready.get(target.name):
            made.append(_realserver(address, port, min(ready[target.name], MAX_WEIGHT), forward))
        elif terminating.get(target.name):
            made.append(_realserver(address, port, 0, forward))
    return in_key_order(made)
