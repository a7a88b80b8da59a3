"""Validation of a desired state: every problem, each naming its field and the reason.

Validation is complete before anything touches the kernel, so bad input changes
nothing. Field paths follow the YAML config (``services[1].realservers[0].port``)
so a user can find the line; the service's name is added when it has one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from ipaddress import IPv4Address

from ..errors import ConfigError, FieldError
from .types import (
    KNOWN_SCHEDULERS,
    SCHED_FLAGS,
    DesiredState,
    Forward,
    IPAddress,
    Ownership,
    ServiceKey,
    Timeouts,
    VirtualService,
)

__all__ = ["validate", "validated_state", "SYSCTL_PREFIXES", "MAX_WEIGHT", "MAX_TIMEOUT"]

MAX_WEIGHT = 65535  # ipvsadm's limit (the kernel takes an int, tools and docs use 0..65535)
MAX_TIMEOUT = 2_147_483  # seconds; the kernel stores timeouts as jiffies in an int
MAX_THRESH = 2**31 - 1

#: sysctls a director may ask kubelvs to set; anything else is someone else's business.
SYSCTL_PREFIXES = ("net.ipv4.vs.", "net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding", "net.netfilter.")


def validate(
    services: Sequence[VirtualService],
    *,
    ownership: Ownership,
    timeouts: Timeouts | None = None,
    sysctls: Mapping[str, int] | None = None,
    path: str = "services",
) -> list[FieldError]:
    """Return every problem found (empty when valid). ``services`` in config order."""
    errors: list[FieldError] = []
    seen: dict[ServiceKey, str] = {}
    for i, svc in enumerate(services):
        where = f"{path}[{i}]" + (f" ({svc.name})" if svc.name else "")
        errors += _service_errors(svc, where, ownership)
        if svc.key in seen:
            errors.append(FieldError(where, f"duplicate virtual service {svc.key}: already declared by {seen[svc.key]}"))
        else:
            seen[svc.key] = where
    if timeouts is not None:
        for name in ("tcp", "tcpfin", "udp"):
            value = getattr(timeouts, name)
            if not 1 <= value <= MAX_TIMEOUT:
                errors.append(FieldError(f"timeouts.{name}", f"must be between 1 and {MAX_TIMEOUT} seconds, got {value}"))
    for name, value in (sysctls or {}).items():
        if not name.startswith(SYSCTL_PREFIXES):
            errors.append(
                FieldError(f"sysctls.{name}", f"not a director sysctl kubelvs manages (allowed: {', '.join(SYSCTL_PREFIXES)}*)")
            )
        elif not isinstance(value, int) or isinstance(value, bool):
            errors.append(FieldError(f"sysctls.{name}", f"must be an integer, got {value!r}"))
    return errors


def validated_state(
    services: Sequence[VirtualService],
    *,
    ownership: Ownership,
    timeouts: Timeouts | None = None,
    sysctls: Mapping[str, int] | None = None,
) -> DesiredState:
    """Validate and build a DesiredState, or raise ConfigError with every problem."""
    errors = validate(services, ownership=ownership, timeouts=timeouts, sysctls=sysctls)
    if errors:
        raise ConfigError(errors)
    return DesiredState(
        services={s.key: s.with_realservers(s.realservers) for s in services},
        timeouts=timeouts,
        sysctls=dict(sysctls or {}),
        ownership=ownership,
    )


def _service_errors(svc: VirtualService, where: str, ownership: Ownership) -> list[FieldError]:
    errors: list[FieldError] = []
    key = svc.key
    if key.fwmark:
        if not 1 <= key.fwmark <= 2**32 - 1:
            errors.append(FieldError(f"{where}.fwmark", f"must be between 1 and 4294967295, got {key.fwmark}"))
        if not ownership.owns(key):
            errors.append(
                FieldError(f"{where}.fwmark", f"fwmark {key.fwmark} is not inside owned_fwmarks, so kubelvs could not manage it")
            )
    else:
        assert key.address is not None
        if key.address.is_unspecified or key.address.is_multicast:
            errors.append(FieldError(f"{where}.vip", f"{key.address} is not a unicast address"))
        if not 0 <= key.port <= 65535:
            errors.append(FieldError(f"{where}.port", f"must be between 1 and 65535, got {key.port}"))
        elif key.port == 0 and svc.persistence == 0:
            errors.append(FieldError(f"{where}.port", "port 0 (all ports) is only allowed with persistence"))
        if not ownership.owns(key):
            owned = ", ".join(str(c) for c in ownership.cidrs) or "none"
            errors.append(
                FieldError(
                    f"{where}.vip",
                    f"{key.address} is not inside owned_cidrs ({owned}); kubelvs only programs VIPs it owns",
                )
            )
    if svc.scheduler not in KNOWN_SCHEDULERS:
        errors.append(
            FieldError(f"{where}.scheduler", f"unknown IPVS scheduler {svc.scheduler!r} (known: {', '.join(sorted(KNOWN_SCHEDULERS))})")
        )
    allowed_flags = SCHED_FLAGS.get(svc.scheduler, frozenset()) | {"ops", "flag-1", "flag-2", "flag-3"}
    for flag in sorted(svc.flags - allowed_flags):
        errors.append(FieldError(f"{where}.flags", f"flag {flag!r} is not valid with scheduler {svc.scheduler!r}"))
    if "ops" in svc.flags and key.protocol != "udp" and not key.fwmark:
        errors.append(FieldError(f"{where}.flags", "one-packet scheduling (ops) is only for UDP services"))
    if not 0 <= svc.persistence <= MAX_TIMEOUT:
        errors.append(FieldError(f"{where}.persistence", f"must be between 0 and {MAX_TIMEOUT} seconds, got {svc.persistence}"))
    max_mask = 32 if key.family == 4 else 128
    if svc.netmask is not None and not 0 <= svc.netmask <= max_mask:
        errors.append(FieldError(f"{where}.netmask", f"must be a prefix length between 0 and {max_mask}, got {svc.netmask}"))

    seen: set[object] = set()
    # Once per real server of the whole config (100,000 for 10,000 services): the common
    # case, nothing wrong, builds no strings.
    port_fixed = 0 if key.fwmark else key.port  # what DR/TUN real servers must use
    any_port = key.port == 0 and not key.fwmark  # a port-0 service takes any port
    for j, rs in enumerate(svc.realservers):
        address, forward = rs.address, rs.forward
        if rs.key in seen:
            errors.append(FieldError(_rs_at(where, j), f"duplicate real server {rs.key}"))
        seen.add(rs.key)
        if not _unicast(address):
            errors.append(FieldError(f"{_rs_at(where, j)}.address", f"{address} is not a unicast address"))
        if address.version != key.family and forward is not Forward.TUN:
            errors.append(
                FieldError(
                    f"{_rs_at(where, j)}.address",
                    f"IPv{address.version} real server in an IPv{key.family} service (only tun can mix)",
                )
            )
        if not 0 <= rs.port <= 65535:
            errors.append(FieldError(f"{_rs_at(where, j)}.port", f"must be between 0 and 65535, got {rs.port}"))
        if not 0 <= rs.weight <= MAX_WEIGHT:
            errors.append(FieldError(f"{_rs_at(where, j)}.weight", f"must be between 0 and {MAX_WEIGHT}, got {rs.weight}"))
        if forward is Forward.LOCAL:
            errors.append(FieldError(f"{_rs_at(where, j)}.forward", "'local' is chosen by the kernel; use nat, dr or tun"))
        elif forward is not Forward.NAT and rs.port != port_fixed and not any_port:
            # DR rewrites only the MAC and TUN only wraps the packet: the port the client
            # used is the port the real server sees. Only NAT can map ports.
            errors.append(
                FieldError(
                    f"{_rs_at(where, j)}.port",
                    f"{forward} cannot map ports: real server port {rs.port} differs from the service port "
                    f"{port_fixed} (use forward: nat to map ports)",
                )
            )
        if not 0 <= rs.u_thresh <= MAX_THRESH:
            errors.append(FieldError(f"{_rs_at(where, j)}.u_thresh", f"must be between 0 and {MAX_THRESH}, got {rs.u_thresh}"))
        if not 0 <= rs.l_thresh <= MAX_THRESH:
            errors.append(FieldError(f"{_rs_at(where, j)}.l_thresh", f"must be between 0 and {MAX_THRESH}, got {rs.l_thresh}"))
        if rs.u_thresh and rs.l_thresh > rs.u_thresh:
            errors.append(
                FieldError(f"{_rs_at(where, j)}.l_thresh", f"lower threshold {rs.l_thresh} is above the upper {rs.u_thresh}")
            )
    return errors


def _rs_at(where: str, index: int) -> str:
    return f"{where}.realservers[{index}]"


def _unicast(address: IPAddress) -> bool:
    """Not unspecified and not multicast (ipaddress's properties, as two integer tests:
    this runs once per real server of the whole config)."""
    n = int(address)
    if isinstance(address, IPv4Address):
        return n != 0 and n >> 28 != 0xE  # 224.0.0.0/4
    return n != 0 and n >> 120 != 0xFF  # ff00::/8
