"""Validation of a desired state: every problem, each naming its field and the reason.

Validation is complete before anything touches the kernel, so bad input changes
nothing. Field paths follow the YAML config (``services[1].realservers[0].port``)
so a user can find the line; the service's name is added when it has one.

Every problem is counted, but only the first ``MAX_ERRORS`` are kept (``ErrorList``):
a wrong 50 MB file once gave 804,545 problems, all built, held and printed, and nobody
reads past the first screen. The rest is one line, ``... and 804,495 more errors``
(``MoreErrors``). Values from the file are quoted at most ``_SHOWN`` characters long
(``shown``): a 4,000-digit port or a megabyte of name must not become the message.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from ipaddress import IPv4Address
from typing import Any, Self, SupportsIndex

from ..errors import ConfigError, FieldError
from .types import (
    KNOWN_SCHEDULERS,
    SCHED_FLAGS,
    DesiredState,
    Forward,
    IPAddress,
    Ownership,
    RealServer,
    ServiceKey,
    Timeouts,
    VirtualService,
)

__all__ = [
    "MAX_ERRORS",
    "MAX_SYSCTL",
    "MAX_TIMEOUT",
    "MAX_WEIGHT",
    "SYSCTL_PREFIXES",
    "ErrorList",
    "MoreErrors",
    "config_error",
    "service_path",
    "shown",
    "validate",
    "validated_state",
]

MAX_WEIGHT = 65535  # ipvsadm's limit (the kernel takes an int, tools and docs use 0..65535)
MAX_TIMEOUT = 2_147_483  # seconds; the kernel stores timeouts as jiffies in an int
MAX_THRESH = 2**31 - 1
MAX_SYSCTL = 2**63 - 1  # sysctls are C ints or longs; beyond this no kernel takes the number
#: Problems kept for the report; the rest are only counted.
MAX_ERRORS = 50
_SHOWN = 60  # characters of a value from the file quoted in a message


def shown(value: Any) -> str:
    """``value`` quoted for a message (``repr``), a long string cut to its first
    ``_SHOWN`` characters, a long number named as such."""
    if isinstance(value, str) and len(value) > _SHOWN:
        return f"{value[:_SHOWN]!r}... ({len(value):,} characters)"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**_SHOWN:
        return f"a number of more than {_SHOWN} digits"  # str() of it may be refused (4,300 digits)
    return repr(value)


class MoreErrors(FieldError):
    """The last entry of a capped list of problems: how many more were found.
    (Not a dataclass of its own: that would cost the start-up of every command.)"""

    count: int

    def __init__(self, count: int) -> None:
        super().__init__("...", f"and {count:,} more error{'s' if count != 1 else ''}")
        object.__setattr__(self, "count", count)

    def __str__(self) -> str:
        return f"... {self.reason}"


class ErrorList(list[FieldError]):
    """A list of problems that keeps the first ``limit`` and counts the rest (``more``).

    A list, so code that appends problems, or hands them to ``ConfigError``, need not
    know; ``listing()`` gives the kept ones plus a ``MoreErrors`` line when some were
    dropped. Callers that would build many problems can ask ``full`` first."""

    def __init__(self, errors: Iterable[FieldError] = (), *, limit: int = MAX_ERRORS) -> None:
        super().__init__()
        self.limit = limit
        self.more = 0
        self.extend(errors)

    def append(self, error: FieldError) -> None:
        if isinstance(error, MoreErrors):  # a capped list of its own: count what it counted
            self.more += error.count
        elif len(self) < self.limit:
            super().append(error)
        else:
            self.more += 1

    def add(self, make: Callable[[], FieldError]) -> None:
        """Append ``make()``, or past the limit only count it: a problem found on every
        real server of a large file costs 0.4 us to count instead of 2.7 us to build."""
        if len(self) < self.limit:
            super().append(make())
        else:
            self.more += 1

    def extend(self, errors: Iterable[FieldError]) -> None:
        for error in errors:
            self.append(error)

    def __iadd__(self, errors: Iterable[FieldError]) -> Self:  # type: ignore[override,misc]
        self.extend(errors)
        return self

    def insert(self, index: SupportsIndex, error: FieldError) -> None:
        raise TypeError("ErrorList keeps problems in the order found: append them")

    @property
    def full(self) -> bool:
        return len(self) >= self.limit

    @property
    def total(self) -> int:
        return len(self) + self.more

    def listing(self) -> list[FieldError]:
        """The problems kept, and ``... and N more errors`` when some were only counted."""
        out = list(self)
        if self.more:
            out.append(MoreErrors(self.more))
        return out


def config_error(errors: Iterable[FieldError]) -> ConfigError:
    """The ConfigError of ``errors``: at most ``MAX_ERRORS`` of them and the count of the rest."""
    capped = errors if isinstance(errors, ErrorList) else ErrorList(errors)
    return ConfigError(capped.listing())


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
    """Return the problems found (empty when valid): the first ``MAX_ERRORS``, then one
    ``MoreErrors`` line counting the rest. ``services`` in config order."""
    errors = ErrorList()
    seen: dict[ServiceKey, str] = {}
    for i, svc in enumerate(services):
        where = service_path(path, i, svc.name)
        _service_errors(svc, where, ownership, errors)
        if svc.key in seen:
            errors.append(
                FieldError(where, f"duplicate virtual service {svc.key}: already declared by {seen[svc.key]}")
            )
        else:
            seen[svc.key] = where
    if timeouts is not None:
        for name in ("tcp", "tcpfin", "udp"):
            value = getattr(timeouts, name)
            if not 1 <= value <= MAX_TIMEOUT:
                errors.append(
                    FieldError(
                        f"timeouts.{name}", f"must be between 1 and {MAX_TIMEOUT} seconds, got {shown(value)}"
                    )
                )
    for name, value in (sysctls or {}).items():
        where = f"sysctls.{_printable(name)}"
        if not name.startswith(SYSCTL_PREFIXES):
            errors.append(
                FieldError(
                    where, f"not a director sysctl kubelvs manages (allowed: {', '.join(SYSCTL_PREFIXES)}*)"
                )
            )
        elif not isinstance(value, int) or isinstance(value, bool):
            errors.append(FieldError(where, f"must be an integer, got {shown(value)}"))
        elif not -MAX_SYSCTL - 1 <= value <= MAX_SYSCTL:
            errors.append(FieldError(where, f"must fit in 64 bits, got {shown(value)}"))
    return errors.listing()


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
        raise config_error(errors)
    return DesiredState(
        services={s.key: s.with_realservers(s.realservers) for s in services},
        timeouts=timeouts,
        sysctls=dict(sysctls or {}),
        ownership=ownership,
    )


def service_path(path: str, index: int, name: str) -> str:
    """``services[3] (web)``: the index, and the name when there is one (shortened, and
    escaped if it holds characters a terminal would act on)."""
    return f"{path}[{index}]" + (f" ({_printable(name)})" if name else "")


def _printable(text: str) -> str:
    if len(text) <= _SHOWN and text.isprintable():  # the common case: as it is
        return text
    return shown(text)


def _service_errors(svc: VirtualService, where: str, ownership: Ownership, errors: ErrorList) -> None:
    # Each problem is handed over as a lambda that builds it: past MAX_ERRORS it is only
    # counted (ErrorList.add), which matters when every real server of a file is wrong.
    key = svc.key
    if key.fwmark:
        if not 1 <= key.fwmark <= 2**32 - 1:
            errors.add(
                lambda: FieldError(
                    f"{where}.fwmark", f"must be between 1 and 4294967295, got {shown(key.fwmark)}"
                )
            )
        if not ownership.owns(key):
            errors.add(
                lambda: FieldError(
                    f"{where}.fwmark",
                    f"fwmark {shown(key.fwmark)} is not inside owned_fwmarks, so kubelvs could not manage it",
                )
            )
    else:
        assert key.address is not None
        if key.address.is_unspecified or key.address.is_multicast:
            errors.add(lambda: FieldError(f"{where}.vip", f"{key.address} is not a unicast address"))
        if not 0 <= key.port <= 65535:
            errors.add(
                lambda: FieldError(f"{where}.port", f"must be between 1 and 65535, got {shown(key.port)}")
            )
        elif key.port == 0 and svc.persistence == 0:
            errors.add(
                lambda: FieldError(f"{where}.port", "port 0 (all ports) is only allowed with persistence")
            )
        if not ownership.owns(key):
            owned = ", ".join(str(c) for c in ownership.cidrs) or "none"
            errors.add(
                lambda: FieldError(
                    f"{where}.vip",
                    f"{key.address} is not inside owned_cidrs ({owned}); kubelvs only programs VIPs it owns",
                )
            )
    if svc.scheduler not in KNOWN_SCHEDULERS:
        errors.add(
            lambda: FieldError(
                f"{where}.scheduler",
                f"unknown IPVS scheduler {shown(svc.scheduler)} "
                f"(known: {', '.join(sorted(KNOWN_SCHEDULERS))})",
            )
        )
    allowed_flags = SCHED_FLAGS.get(svc.scheduler, frozenset()) | {"ops", "flag-1", "flag-2", "flag-3"}
    for flag in sorted(svc.flags - allowed_flags):  # a few per service at most: built at once
        errors.append(
            FieldError(
                f"{where}.flags", f"flag {shown(flag)} is not valid with scheduler {shown(svc.scheduler)}"
            )
        )
    if "ops" in svc.flags and key.protocol != "udp" and not key.fwmark:
        errors.add(
            lambda: FieldError(f"{where}.flags", "one-packet scheduling (ops) is only for UDP services")
        )
    if not 0 <= svc.persistence <= MAX_TIMEOUT:
        errors.add(
            lambda: FieldError(
                f"{where}.persistence",
                f"must be between 0 and {MAX_TIMEOUT} seconds, got {shown(svc.persistence)}",
            )
        )
    max_mask = 32 if key.family == 4 else 128
    if svc.netmask is not None and not 0 <= svc.netmask <= max_mask:
        errors.add(
            lambda: FieldError(
                f"{where}.netmask",
                f"must be a prefix length between 0 and {max_mask}, got {shown(svc.netmask)}",
            )
        )

    seen: set[object] = set()
    # Once per real server of the whole config (100,000 for 10,000 services): the common
    # case, nothing wrong, builds no strings.
    port_fixed = 0 if key.fwmark else key.port  # what DR/TUN real servers must use
    any_port = key.port == 0 and not key.fwmark  # a port-0 service takes any port
    for j, rs in enumerate(svc.realservers):
        _realserver_errors(rs, j, where, key.family, port_fixed, any_port, seen, errors)


def _realserver_errors(
    rs: RealServer,
    j: int,
    where: str,
    family: int,
    port_fixed: int,
    any_port: bool,
    seen: set[object],
    errors: ErrorList,
) -> None:
    address, forward = rs.address, rs.forward
    if rs.key in seen:
        errors.add(lambda: FieldError(_rs_at(where, j), f"duplicate real server {rs.key}"))
    seen.add(rs.key)
    if not _unicast(address):
        errors.add(lambda: FieldError(f"{_rs_at(where, j)}.address", f"{address} is not a unicast address"))
    if address.version != family and forward is not Forward.TUN:
        errors.add(
            lambda: FieldError(
                f"{_rs_at(where, j)}.address",
                f"IPv{address.version} real server in an IPv{family} service (only tun can mix)",
            )
        )
    if not 0 <= rs.port <= 65535:
        errors.add(
            lambda: FieldError(
                f"{_rs_at(where, j)}.port", f"must be between 0 and 65535, got {shown(rs.port)}"
            )
        )
    if not 0 <= rs.weight <= MAX_WEIGHT:
        errors.add(
            lambda: FieldError(
                f"{_rs_at(where, j)}.weight", f"must be between 0 and {MAX_WEIGHT}, got {shown(rs.weight)}"
            )
        )
    if forward is Forward.LOCAL:
        errors.add(
            lambda: FieldError(
                f"{_rs_at(where, j)}.forward", "'local' is chosen by the kernel; use nat, dr or tun"
            )
        )
    elif forward is not Forward.NAT and rs.port != port_fixed and not any_port:
        # DR rewrites only the MAC and TUN only wraps the packet: the port the client
        # used is the port the real server sees. Only NAT can map ports.
        errors.add(
            lambda: FieldError(
                f"{_rs_at(where, j)}.port",
                f"{forward} cannot map ports: real server port {shown(rs.port)} differs from the "
                f"service port {port_fixed} (use forward: nat to map ports)",
            )
        )
    if not 0 <= rs.u_thresh <= MAX_THRESH:
        errors.add(
            lambda: FieldError(
                f"{_rs_at(where, j)}.u_thresh",
                f"must be between 0 and {MAX_THRESH}, got {shown(rs.u_thresh)}",
            )
        )
    if not 0 <= rs.l_thresh <= MAX_THRESH:
        errors.add(
            lambda: FieldError(
                f"{_rs_at(where, j)}.l_thresh",
                f"must be between 0 and {MAX_THRESH}, got {shown(rs.l_thresh)}",
            )
        )
    if rs.u_thresh and rs.l_thresh > rs.u_thresh:
        errors.add(
            lambda: FieldError(
                f"{_rs_at(where, j)}.l_thresh",
                f"lower threshold {shown(rs.l_thresh)} is above the upper {shown(rs.u_thresh)}",
            )
        )


def _rs_at(where: str, index: int) -> str:
    return f"{where}.realservers[{index}]"


def _unicast(address: IPAddress) -> bool:
    """Not unspecified and not multicast (ipaddress's properties, as two integer tests:
    this runs once per real server of the whole config)."""
    n = int(address)
    if isinstance(address, IPv4Address):
        return n != 0 and n >> 28 != 0xE  # 224.0.0.0/4
    return n != 0 and n >> 120 != 0xFF  # ff00::/8
