"""The ``kubernetes:`` section of the config file, typed and validated.

The core config passes the section through raw (``Config.kubernetes``); this module
checks its shape (``kubelvs.sources.shape``) and the cross-field rules (pools and
allowed external IP ranges inside ``owned_cidrs``, pools that do not overlap). Every problem
comes out as a FieldError with the YAML path, e.g.
``kubernetes.lb_pools[0].cidrs[1]: '10.1.0.0/33' is not a network``.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from ...errors import ConfigError, FieldError
from ...model import (
    KNOWN_SCHEDULERS,
    SCHED_FLAGS,
    CheckKind,
    Forward,
    HealthCheck,
    IPNetwork,
    OnFailure,
    Ownership,
)
from .. import shape

__all__ = ["ANNOTATION_PREFIX", "KubeSettings", "KubernetesSpec", "Pool", "PoolSpec", "parse_kubernetes"]

#: Every annotation kubelvs reads starts with this (documented in docs/kubernetes.md).
ANNOTATION_PREFIX = "kubelvs.io/"


@dataclass(frozen=True, slots=True)
class PoolSpec:
    name: str
    cidrs: tuple[str, ...]
    auto_assign: bool = (
        True  # False: only Services that name the pool (or request an IP in it) get its addresses
    )


@dataclass(frozen=True, slots=True)
class LeaderSpec:
    enabled: bool = True
    namespace: str = "kube-system"
    name: str = "kubelvs-director"
    lease_seconds: int = 15
    renew_seconds: float = 5.0


@dataclass(frozen=True, slots=True)
class HealthDefaultsSpec:
    enabled: bool = True
    interval: float = 2.0
    timeout: float = 1.0
    rise: int = 2
    fall: int = 3
    on_failure: str = "weight0"
    slow_start: float = 0.0
    kube_proxy_port: int = 10256  # kube-proxy's --healthz-bind-address port


@dataclass(frozen=True, slots=True)
class KubernetesSpec:
    external_ip_cidrs: tuple[str, ...] = ()
    lb_pools: tuple[PoolSpec, ...] = ()
    load_balancer_class: str = "kubelvs.io/lvs"
    manage_unclassed: bool = True  # also serve type LoadBalancer Services without loadBalancerClass
    default_forward: str = "dr"
    default_scheduler: str = "mh"
    # None: mh-port when the director shares flows with others (bgp:), else none.
    default_scheduler_flags: tuple[str, ...] | None = None
    node_address_types: tuple[str, ...] = ("InternalIP", "ExternalIP")
    coalesce_ms: int = 100
    resync_seconds: float = 60.0  # full kernel sync
    relist_seconds: float = 900.0  # full re-list of the API objects
    watch_timeout_seconds: int = 300
    backoff_max_seconds: float = 30.0
    leader: LeaderSpec = LeaderSpec()
    health: HealthDefaultsSpec = HealthDefaultsSpec()
    drain_timeout_seconds: float = 30.0


_POSITIVE = shape.bounded(shape.number, above=0)

_SECTION = shape.Record(
    KubernetesSpec,
    {
        "external_ip_cidrs": shape.list_of(shape.string),
        "lb_pools": shape.list_of(
            shape.Record(
                PoolSpec,
                {"name": shape.string, "cidrs": shape.list_of(shape.string), "auto_assign": shape.boolean},
            )
        ),
        "load_balancer_class": shape.string,
        "manage_unclassed": shape.boolean,
        "default_forward": shape.choice("dr", "tun", "nat"),
        "default_scheduler": shape.string,
        "default_scheduler_flags": shape.optional(shape.list_of(shape.string)),
        "node_address_types": shape.list_of(shape.string),
        "coalesce_ms": shape.bounded(shape.integer, minimum=0, maximum=60_000),
        "resync_seconds": _POSITIVE,
        "relist_seconds": _POSITIVE,
        "watch_timeout_seconds": shape.bounded(shape.integer, minimum=1),
        "backoff_max_seconds": _POSITIVE,
        "leader": shape.Record(
            LeaderSpec,
            {
                "enabled": shape.boolean,
                "namespace": shape.string,
                "name": shape.string,
                "lease_seconds": shape.bounded(shape.integer, minimum=2),
                "renew_seconds": _POSITIVE,
            },
        ),
        "drain_timeout_seconds": shape.bounded(shape.number, minimum=0, maximum=86400),
        "health": shape.Record(
            HealthDefaultsSpec,
            {
                "enabled": shape.boolean,
                "interval": shape.bounded(shape.number, minimum=0.05, maximum=3600),
                "timeout": shape.bounded(shape.number, minimum=0.01, maximum=3600),
                "rise": shape.bounded(shape.integer, minimum=1, maximum=100),
                "fall": shape.bounded(shape.integer, minimum=1, maximum=100),
                "on_failure": shape.choice("weight0", "remove"),
                "slow_start": shape.bounded(shape.number, minimum=0, maximum=86400),
                "kube_proxy_port": shape.bounded(shape.integer, minimum=1, maximum=65535),
            },
        ),
    },
)


@dataclass(frozen=True, slots=True)
class Pool:
    name: str
    cidrs: tuple[IPNetwork, ...]
    auto_assign: bool = True

    def __contains__(self, address: object) -> bool:
        return any(address in net for net in self.cidrs)

    def size(self, family: str = "") -> int:
        """Usable addresses, of one family ("IPv4", "IPv6") or all ("")."""
        return sum(_usable(net) for net in self.cidrs if not family or f"IPv{net.version}" == family)


# One shared instance is safe: HealthCheck is frozen.
_DEFAULT_HEALTH = HealthCheck(kind=CheckKind.HTTP, path="/healthz")


@dataclass(frozen=True, slots=True)
class KubeSettings:
    """The validated section. ``ownership`` comes from the top-level ``owned_cidrs``."""

    ownership: Ownership
    external_ip_cidrs: tuple[IPNetwork, ...] = ()
    pools: tuple[Pool, ...] = ()
    load_balancer_class: str = "kubelvs.io/lvs"
    manage_unclassed: bool = True
    default_forward: Forward = Forward.DR
    default_scheduler: str = "mh"
    default_scheduler_flags: frozenset[str] = frozenset()  # for Services without the scheduler annotations
    node_address_types: tuple[str, ...] = ("InternalIP", "ExternalIP")
    coalesce_seconds: float = 0.1
    resync_seconds: float = 60.0
    relist_seconds: float = 900.0
    watch_timeout_seconds: int = 300
    backoff_max_seconds: float = 30.0
    leader_enabled: bool = True
    leader_namespace: str = "kube-system"
    leader_name: str = "kubelvs-director"
    lease_seconds: int = 15
    renew_seconds: float = 5.0
    # The real servers' checks unless a Service's annotations say otherwise; None: no checks.
    # ``port`` None: kube-proxy's health port (Cluster) or the Service's healthCheckNodePort (Local).
    health: HealthCheck | None = _DEFAULT_HEALTH
    kube_proxy_health_port: int = 10256
    drain_timeout_seconds: float = 30.0  # a node that leaves a Service drains this long at most

    def external_ip_allowed(self, address: object) -> bool:
        return any(address in net for net in self.external_ip_cidrs)

    def pool(self, name: str) -> Pool | None:
        return next((p for p in self.pools if p.name == name), None)


def _usable(net: IPNetwork) -> int:
    # As ``hosts()`` counts them: IPv4 /30 and wider lose the network and broadcast
    # addresses, IPv6 /126 and wider the subnet-router anycast address.
    if net.version == 4 and net.prefixlen < 31:
        return net.num_addresses - 2
    if net.version == 6 and net.prefixlen < 127:
        return net.num_addresses - 1
    return net.num_addresses


def _net(text: str, where: str, errors: list[FieldError]) -> IPNetwork | None:
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        errors.append(FieldError(where, f"{text!r} is not a network ({exc})"))
        return None


def parse_kubernetes(data: Any, ownership: Ownership, *, multi_director: bool = False) -> KubeSettings:
    """Validate the raw ``kubernetes:`` mapping; raise ConfigError listing every problem.
    ``multi_director``: the config has ``bgp:`` (directors share flows): ``mh`` hashes the
    port too by default, so that clients behind one NAT address spread over the nodes."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([FieldError("kubernetes", f"must be a mapping of keys, got {type(data).__name__}")])
    spec, problems = _SECTION.parse(data, path="kubernetes")
    if spec is None:
        raise ConfigError(problems)

    errors: list[FieldError] = []
    owned = ", ".join(str(c) for c in ownership.cidrs) or "none"

    def inside_owned(net: IPNetwork, where: str) -> None:
        if not any(net.version == o.version and net.subnet_of(o) for o in ownership.cidrs):  # type: ignore[arg-type]
            errors.append(
                FieldError(
                    where, f"{net} is not inside owned_cidrs ({owned}); kubelvs only programs VIPs it owns"
                )
            )

    ext: list[IPNetwork] = []
    for i, text in enumerate(spec.external_ip_cidrs):
        where = f"kubernetes.external_ip_cidrs[{i}]"
        net = _net(text, where, errors)
        if net is not None:
            inside_owned(net, where)
            ext.append(net)

    pools: list[Pool] = []
    seen_names: set[str] = set()
    taken: list[tuple[IPNetwork, str]] = []
    for i, p in enumerate(spec.lb_pools):
        where = f"kubernetes.lb_pools[{i}]"
        if not p.name:
            errors.append(FieldError(f"{where}.name", "must not be empty"))
        elif p.name in seen_names:
            errors.append(FieldError(f"{where}.name", f"duplicate pool name {p.name!r}"))
        seen_names.add(p.name)
        if not p.cidrs:
            errors.append(FieldError(f"{where}.cidrs", "a pool needs at least one network"))
        nets: list[IPNetwork] = []
        for j, text in enumerate(p.cidrs):
            at = f"{where}.cidrs[{j}]"
            net = _net(text, at, errors)
            if net is None:
                continue
            inside_owned(net, at)
            for other, other_at in taken:
                if other.version == net.version and net.overlaps(other):
                    errors.append(FieldError(at, f"{net} overlaps {other} of {other_at}"))
            # A pool may lie inside external_ip_cidrs (the issue's own example does); the
            # mapping then refuses externalIPs inside a pool, so IPAM alone hands them out.
            taken.append((net, at))
            nets.append(net)
        pools.append(Pool(p.name, tuple(nets), p.auto_assign))

    if spec.default_scheduler not in KNOWN_SCHEDULERS:
        errors.append(
            FieldError("kubernetes.default_scheduler", f"unknown IPVS scheduler {spec.default_scheduler!r}")
        )
    if spec.default_scheduler_flags is not None:
        default_flags = frozenset(spec.default_scheduler_flags)
    else:
        default_flags = (
            frozenset({"mh-port"}) if multi_director and spec.default_scheduler == "mh" else frozenset()
        )
    wrong = default_flags - SCHED_FLAGS.get(spec.default_scheduler, frozenset())
    if wrong:
        errors.append(
            FieldError(
                "kubernetes.default_scheduler_flags",
                f"{', '.join(sorted(wrong))} not valid with scheduler {spec.default_scheduler}",
            )
        )
    h = spec.health
    if h.timeout > h.interval:
        errors.append(
            FieldError(
                "kubernetes.health.timeout", f"{h.timeout:g} s is longer than the interval ({h.interval:g} s)"
            )
        )
    if not spec.node_address_types:
        errors.append(
            FieldError("kubernetes.node_address_types", "needs at least one address type (e.g. InternalIP)")
        )
    if errors:
        raise ConfigError(errors)
    return KubeSettings(
        ownership=ownership,
        external_ip_cidrs=tuple(ext),
        pools=tuple(pools),
        load_balancer_class=spec.load_balancer_class,
        manage_unclassed=spec.manage_unclassed,
        default_forward=Forward(spec.default_forward),
        default_scheduler=spec.default_scheduler,
        default_scheduler_flags=default_flags,
        node_address_types=tuple(spec.node_address_types),
        coalesce_seconds=spec.coalesce_ms / 1000,
        resync_seconds=spec.resync_seconds,
        relist_seconds=spec.relist_seconds,
        watch_timeout_seconds=spec.watch_timeout_seconds,
        backoff_max_seconds=spec.backoff_max_seconds,
        leader_enabled=spec.leader.enabled,
        leader_namespace=spec.leader.namespace,
        leader_name=spec.leader.name,
        lease_seconds=spec.leader.lease_seconds,
        renew_seconds=spec.leader.renew_seconds,
        health=HealthCheck(
            kind=CheckKind.HTTP,
            path="/healthz",
            interval=h.interval,
            timeout=h.timeout,
            rise=h.rise,
            fall=h.fall,
            on_failure=OnFailure(h.on_failure),
            slow_start=h.slow_start,
        )
        if h.enabled
        else None,
        kube_proxy_health_port=h.kube_proxy_port,
        drain_timeout_seconds=spec.drain_timeout_seconds,
    )
