"""LoadBalancer IP allocation from the configured pools (pure).

The allocation is a function of the Services alone, so every director computes the
same one and the data plane never waits for the status writer:

1. Addresses already in ``status.loadBalancer.ingress`` are kept first, oldest
   Service first. After a restart the allocation is rebuilt from status, so nothing
   is reshuffled (the status is the allocation's durable record).
2. Requested addresses (annotation ``kubelvs.io/load-balancer-ips`` or
   ``spec.loadBalancerIP``) are taken next; a request that cannot be honoured gets a
   Warning Event and no address (never a different one than asked for).
3. Everything else gets the first free address of its pool (the annotated pool, or
   the auto-assign pools in config order); a sharing key first reuses an address its
   group already holds.

Families follow ``spec.ipFamilies`` (which Kubernetes fills from ``ipFamilyPolicy``): a
dual-stack Service gets one address of each family, in that order, as MetalLB does. An
address of a family the Service no longer has is released. When the pools have no free
address of the second family, ``RequireDualStack`` gets a Warning and ``PreferDualStack``
makes do with one family (quietly: that is what it asks for).

Two Services share an address only when both carry the same
``kubelvs.io/allow-shared-ip`` key and no (protocol, port) of one is a port of the other.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from ...model import IPAddress
from . import annotations as ann
from .objects import EventSpec, ObjectId, Service
from .settings import KubeSettings, Pool

__all__ = ["IpamResult", "allocate", "ipam_key", "is_managed_lb", "requested_ips", "sharing_key"]


@dataclass(frozen=True, slots=True)
class IpamResult:
    assigned: Mapping[ObjectId, tuple[IPAddress, ...]]  # every managed Service with an address
    status: Mapping[ObjectId, tuple[str, ...]]  # Services whose status ingress must be set to this
    events: tuple[EventSpec, ...]


def is_managed_lb(svc: Service, settings: KubeSettings) -> bool:
    """A type LoadBalancer Service of our class (or without class, when configured)."""
    if svc.type != "LoadBalancer":
        return False
    if svc.load_balancer_class is None:
        return settings.manage_unclassed
    return svc.load_balancer_class == settings.load_balancer_class


def ipam_key(svc: Service, settings: KubeSettings) -> tuple[object, ...]:
    """Everything of ``svc`` that ``allocate`` reads: equal keys, equal allocation."""
    if svc.type != "LoadBalancer" and not svc.ingress_ips:
        return (svc.id,)
    share = sharing_key(svc)
    return (
        svc.id,
        svc.uid,
        svc.created,
        svc.type,
        svc.load_balancer_class,
        requested_ips(svc),
        svc.annotation(ann.ADDRESS_POOL),
        share,
        svc.ports if share else (),
        svc.ingress_ips,
        svc.ip_families,
        svc.ip_family_policy,
    )


def requested_ips(svc: Service) -> tuple[str, ...]:
    text = svc.annotation(ann.LOAD_BALANCER_IPS)
    if text is not None:
        return tuple(t.strip() for t in text.split(",") if t.strip())
    return (svc.load_balancer_ip,) if svc.load_balancer_ip else ()


def sharing_key(svc: Service) -> str | None:
    return svc.annotation(ann.ALLOW_SHARED_IP) or None


def _ports(svc: Service) -> set[tuple[str, int]]:
    return {(str(p.protocol), p.port) for p in svc.ports}


class _Book:
    """Which Services hold which address while the allocation is built."""

    def __init__(self) -> None:
        self.holders: dict[IPAddress, list[Service]] = {}
        self.assigned: dict[ObjectId, list[IPAddress]] = {}

    def conflict(self, svc: Service, ip: IPAddress) -> Service | None:
        """The holder that keeps ``svc`` off ``ip``, or None when it may take it."""
        key = sharing_key(svc)
        mine = _ports(svc)
        for holder in self.holders.get(ip, ()):
            if holder.id == svc.id:
                continue
            if key is None or sharing_key(holder) != key or mine & _ports(holder):
                return holder
        return None

    def take(self, svc: Service, ip: IPAddress) -> None:
        self.holders.setdefault(ip, []).append(svc)
        self.assigned.setdefault(svc.id, []).append(ip)


def _why_not_shared(svc: Service, holder: Service) -> str:
    key, other = sharing_key(svc), sharing_key(holder)
    if key is None or other is None or key != other:
        return (
            f"both Services need the same {ann.ALLOW_SHARED_IP} annotation to share it "
            f"(this: {key or 'none'}, {holder.ref}: {other or 'none'})"
        )
    both = sorted(_ports(svc) & _ports(holder))
    return "their ports collide: " + ", ".join(f"{p.upper()}/{n}" for p, n in both)


def _pools_for(svc: Service, settings: KubeSettings, events: list[EventSpec]) -> list[Pool] | None:
    name = svc.annotation(ann.ADDRESS_POOL)
    if name is None:
        return [p for p in settings.pools if p.auto_assign]
    pool = settings.pool(name)
    if pool is None:
        known = ", ".join(p.name for p in settings.pools) or "none"
        events.append(
            _event(svc, "UnknownAddressPool", f"{ann.ADDRESS_POOL}: no pool named {name!r} (pools: {known})")
        )
        return None
    return [pool]


def _event(svc: Service, reason: str, message: str, type_: str = "Warning") -> EventSpec:
    return EventSpec(svc.namespace, svc.name, svc.uid, reason, message, type_)


def _families(svc: Service) -> tuple[str, ...]:
    """The families ``svc`` gets an address of, in order ("IPv4", "IPv6"); ("",) for any
    one when the API left ``ipFamilies`` empty."""
    return svc.ip_families or ("",)


def _family_ok(family: str, ip: IPAddress) -> bool:
    return not family or f"IPv{ip.version}" == family


def allocate(services: Iterable[Service], settings: KubeSettings) -> IpamResult:
    """Assign addresses to every managed LoadBalancer Service (see the module docstring)."""
    all_services = sorted(services, key=lambda s: s.age_key)
    managed = [s for s in all_services if is_managed_lb(s, settings)]
    book = _Book()
    events: list[EventSpec] = []

    def in_any_pool(ip: IPAddress) -> bool:
        return any(ip in p for p in settings.pools)

    # 0. Addresses another controller's LoadBalancer Services hold are never handed out.
    for svc in all_services:
        if svc.type == "LoadBalancer" and not is_managed_lb(svc, settings):
            for text in svc.ingress_ips:
                with contextlib.suppress(ValueError):
                    book.holders.setdefault(ipaddress.ip_address(text), []).append(svc)

    # 1. Keep what status already records (restart stability), oldest first.
    for svc in managed:
        wanted = requested_ips(svc)
        pool_name = svc.annotation(ann.ADDRESS_POOL)
        pool = settings.pool(pool_name) if pool_name else None
        for text in svc.ingress_ips:
            if wanted and text not in wanted:
                continue  # the request changed: the old address is released
            try:
                ip = ipaddress.ip_address(text)
            except ValueError:
                continue
            if (pool is not None and ip not in pool) or (pool is None and not in_any_pool(ip)):
                continue
            if not any(_family_ok(f, ip) for f in _families(svc)):
                continue  # a family the Service no longer has: released
            if ip in book.assigned.get(svc.id, ()) or book.conflict(svc, ip) is not None:
                continue
            book.take(svc, ip)

    # 2. Requested addresses.
    for svc in managed:
        wanted = requested_ips(svc)
        if not wanted:
            continue
        for text in wanted:
            try:
                ip = ipaddress.ip_address(text)
            except ValueError:
                events.append(
                    _event(svc, "InvalidLoadBalancerIP", f"requested address {text!r} is not an IP address")
                )
                continue
            if ip in book.assigned.get(svc.id, ()):
                continue
            pools = _pools_for(svc, settings, events)
            if pools is None:
                continue
            if svc.annotation(ann.ADDRESS_POOL) is None:
                pools = list(settings.pools)  # a request may name any pool's address
            if not any(ip in p for p in pools):
                names = (
                    ", ".join(f"{p.name} ({', '.join(map(str, p.cidrs))})" for p in pools)
                    or "none configured"
                )
                events.append(
                    _event(
                        svc,
                        "LoadBalancerIPNotInPool",
                        f"requested address {ip} is not in an address pool: {names}",
                    )
                )
                continue
            holder = book.conflict(svc, ip)
            if holder is not None:
                events.append(
                    _event(
                        svc,
                        "LoadBalancerIPInUse",
                        f"requested address {ip} is already used by Service {holder.ref}; "
                        f"{_why_not_shared(svc, holder)}",
                    )
                )
                continue
            book.take(svc, ip)

    # 3. Allocate for the rest.
    cursors: dict[tuple[str, str], Iterator[IPAddress]] = {}
    for svc in managed:
        if requested_ips(svc):
            continue
        held = book.assigned.get(svc.id, ())
        missing = [f for f in _families(svc) if not any(_family_ok(f, ip) for ip in held)]
        if not missing:
            continue
        pools = _pools_for(svc, settings, events)
        if pools is None:
            continue
        for family in missing:
            found = _shared_address(svc, pools, book, family) or _free_address(pools, book, cursors, family)
            if found is not None:
                book.take(svc, found)
                pool = next(p for p in pools if found in p)
                events.append(_event(svc, "IPAllocated", f"assigned {found} from pool {pool.name}", "Normal"))
            elif family == _families(svc)[0] or svc.ip_family_policy == "RequireDualStack":
                events.append(_event(svc, "AllocationFailed", _no_address(pools, family, svc)))

    assigned = {sid: tuple(ips) for sid, ips in book.assigned.items()}
    status: dict[ObjectId, tuple[str, ...]] = {}
    for svc in all_services:
        if is_managed_lb(svc, settings):
            want = tuple(str(ip) for ip in assigned.get(svc.id, ()))
        elif svc.type != "LoadBalancer":
            # Type changed away from LoadBalancer: release what we had written.
            want = tuple(t for t in svc.ingress_ips if not _ours(t, settings))
        else:
            continue  # another controller's LoadBalancer: never touched
        if want != svc.ingress_ips:
            status[svc.id] = want
    return IpamResult(assigned=assigned, status=status, events=tuple(events))


def _no_address(pools: list[Pool], family: str, svc: Service) -> str:
    if not pools:
        return "no auto-assign address pool is configured (kubernetes.lb_pools)"
    what = f"no free {family} address" if len(_families(svc)) > 1 else "no free address"
    return f"{what} in pool(s) " + ", ".join(
        f"{p.name} ({n} addresses, all in use)" if (n := p.size(family)) else f"{p.name} (no {family} range)"
        for p in pools
    )


def _ours(text: str, settings: KubeSettings) -> bool:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return False
    return any(ip in p for p in settings.pools)


def _shared_address(svc: Service, pools: list[Pool], book: _Book, family: str) -> IPAddress | None:
    key = sharing_key(svc)
    if key is None:
        return None
    for ip in sorted(book.holders, key=lambda a: (a.version, int(a))):
        if (
            any(ip in p for p in pools)
            and _family_ok(family, ip)
            and book.conflict(svc, ip) is None
            and any(sharing_key(h) == key for h in book.holders[ip])
        ):
            return ip
    return None


def _free_address(
    pools: list[Pool], book: _Book, cursors: dict[tuple[str, str], Iterator[IPAddress]], family: str
) -> IPAddress | None:
    for pool in pools:
        # One cursor per (pool, family) for the whole pass: addresses are only taken
        # during it, so one skipped as taken stays taken and the pass costs O(pool size).
        cursor = cursors.get((pool.name, family))
        if cursor is None:
            cursor = cursors[(pool.name, family)] = _addresses(pool, book, family)
        ip = next(cursor, None)
        if ip is not None:
            return ip
    return None


def _addresses(pool: Pool, book: _Book, family: str) -> Iterator[IPAddress]:
    for net in pool.cidrs:
        if family and f"IPv{net.version}" != family:
            continue
        for ip in net.hosts():
            if ip not in book.holders:
                yield ip
