"""The YAML config file: owned ranges, timeouts, sysctls and services.

``shape`` checks the shape (types, unknown and missing keys) at the edge into
dataclasses; the result becomes the model and goes through ``model.validate`` for the
rules that span fields.
Both kinds of problem come out as FieldError with the YAML path, e.g.
``services[0] (whoami).realservers[1].port: dr cannot map ports ...``: the first
``MAX_ERRORS`` of them, and a line counting the rest.
The file itself is read by ``formats.textfile`` (size limit, UTF-8, no NUL: the YAML
parser would stop at a NUL and return the part before it as a valid config), and
whatever the YAML parser raises becomes a ParseError with line and column.
The reference of every key is docs/config.md.

One cohesive thing (over 500 lines): the shape of every config key, so that the
reference in docs/config.md has one counterpart.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

import yaml_rs

from ..errors import ConfigError, FieldError
from ..formats.textfile import TextFileError, check_text, read_text_file, source_name
from ..model import (
    DEFAULT_DRAIN_TIMEOUT,
    NO_CHECK,
    CheckKind,
    CheckMode,
    DesiredState,
    ErrorList,
    Forward,
    HealthCheck,
    IPNetwork,
    OnFailure,
    Ownership,
    Protocol,
    RealServer,
    ServiceKey,
    Timeouts,
    VirtualService,
    config_error,
    desired_flags,
    parse_address,
    service_path,
    shown,
    validate,
)
from . import shape
from .bgp import BGP, BgpSpec, bgp_errors
from .vrrp import VRRP, VrrpSpec, vrrp_errors

__all__ = [
    "Config",
    "DeletionGuardSpec",
    "HealthSpec",
    "RealServerSpec",
    "ServiceSpec",
    "TimeoutsSpec",
    "config_document",
    "load_config",
    "parse_config",
    "parse_yaml",
    "to_desired",
]


# Not frozen, unlike the other specs: one is built per real server of the file, and a
# frozen dataclass's __init__ costs three times as much. Nothing changes one after parsing.
@dataclass(slots=True)
class RealServerSpec:
    address: str
    port: int | None = None  # default: the service's port
    weight: int = 1
    forward: Forward | None = None  # default: the service's forward
    u_thresh: int = 0
    l_thresh: int = 0


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    name: str = ""
    vip: str | None = None
    port: int | None = None
    protocol: Protocol = Protocol.TCP
    fwmark: int | None = None
    family: Literal[4, 6] = 4  # only for fwmark services; otherwise taken from vip
    scheduler: str = "wlc"
    flags: tuple[str, ...] = ()
    persistence: int = 0
    netmask: int | None = None
    forward: Forward = Forward.DR
    realservers: tuple[RealServerSpec, ...] = ()
    health: HealthSpec | None = None
    drain_timeout: float | None = None  # None: the top-level drain_timeout


@dataclass(frozen=True, slots=True)
class HealthSpec:
    """``health_defaults:`` and a service's ``health:``. Every key is optional: a service's
    own keys win over ``health_defaults:``, which win over the built-in defaults
    (``model.health.HealthCheck``)."""

    kind: CheckKind | None = None
    interval: float | None = None
    timeout: float | None = None
    rise: int | None = None
    fall: int | None = None
    on_failure: OnFailure | None = None
    slow_start: float | None = None
    mode: CheckMode | None = None
    port: int | None = None
    path: str | None = None
    expect_status: tuple[int, ...] | None = None
    body: str | None = None
    host: str | None = None
    send: str | None = None
    expect: str | None = None
    command: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class DeletionGuardSpec:
    """``deletion_guard:``: how much a running director deletes at once (docs/config.md)."""

    max_share: float = 0.5
    settle_seconds: float = 30.0


@dataclass(frozen=True, slots=True)
class TimeoutsSpec:
    tcp: int
    tcpfin: int
    udp: int


@dataclass(frozen=True, slots=True)
class Config:
    owned_cidrs: tuple[str, ...] = ()
    owned_fwmarks: tuple[str | int, ...] = ()
    timeouts: TimeoutsSpec | None = None
    recommended_sysctls: bool = True
    sysctls: dict[str, int] = field(default_factory=dict)
    graceful: bool | None = None  # None: the running director drains, a one-shot apply does not
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT
    deletion_guard: DeletionGuardSpec | None = None  # None: the director's defaults
    health_defaults: HealthSpec | None = None
    services: tuple[ServiceSpec, ...] = ()
    kubernetes: dict[str, Any] | None = None  # read by kubelvs.sources.kubernetes
    vrrp: VrrpSpec | None = None  # None: no VRRP (sources/vrrp.py)
    bgp: BgpSpec | None = None  # None: no BGP (sources/bgp.py)


def _network(value: Any) -> str:
    text = shape.string(value)
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError as exc:
        # "'10.0.0.0/33' does not appear to be an IPv4 or IPv6 network"
        raise shape.Invalid(str(exc)) from None
    return text


def _string_or_integer(value: Any) -> str | int:
    if isinstance(value, str):
        return value
    return shape.integer(value)


_SECONDS = shape.bounded(shape.number, minimum=0.01, maximum=86400)
_HEALTH = shape.Record(
    HealthSpec,
    {
        "kind": shape.choice(CheckKind),
        "interval": _SECONDS,
        "timeout": _SECONDS,
        "rise": shape.bounded(shape.integer, minimum=1, maximum=100),
        "fall": shape.bounded(shape.integer, minimum=1, maximum=100),
        "on_failure": shape.choice(OnFailure),
        "slow_start": shape.bounded(shape.number, minimum=0, maximum=86400),
        "mode": shape.choice(CheckMode),
        "port": shape.bounded(shape.integer, minimum=1, maximum=65535),
        "path": shape.string,
        "expect_status": shape.list_of(shape.bounded(shape.integer, minimum=100, maximum=599)),
        "body": shape.string,
        "host": shape.string,
        "send": shape.string,
        "expect": shape.string,
        "command": shape.list_of(shape.string),
    },
)

_CONFIG = shape.Record(
    Config,
    {
        "owned_cidrs": shape.list_of(_network),
        "owned_fwmarks": shape.list_of(_string_or_integer),
        "timeouts": shape.optional(
            shape.Record(TimeoutsSpec, {"tcp": shape.integer, "tcpfin": shape.integer, "udp": shape.integer})
        ),
        "recommended_sysctls": shape.boolean,
        "sysctls": shape.mapping_of(shape.integer),
        "graceful": shape.optional(shape.boolean),
        "drain_timeout": shape.bounded(shape.number, minimum=0, maximum=86400),
        "deletion_guard": shape.optional(
            shape.Record(
                DeletionGuardSpec,
                {
                    "max_share": shape.bounded(shape.number, minimum=0, maximum=1),
                    "settle_seconds": shape.bounded(shape.number, minimum=0, maximum=86400),
                },
            )
        ),
        "health_defaults": shape.optional(_HEALTH),
        "services": shape.list_of(
            shape.Record(
                ServiceSpec,
                {
                    "name": shape.string,
                    "vip": shape.optional(shape.string),
                    "port": shape.optional(shape.integer),
                    "protocol": shape.choice(Protocol),
                    "fwmark": shape.optional(shape.integer),
                    "family": shape.choice(4, 6),
                    "scheduler": shape.string,
                    "flags": shape.list_of(shape.string),
                    "persistence": shape.integer,
                    "netmask": shape.optional(shape.integer),
                    "forward": shape.choice(Forward),
                    "realservers": shape.list_of(
                        shape.Record(
                            RealServerSpec,
                            {
                                "address": shape.string,
                                "port": shape.optional(shape.integer),
                                "weight": shape.integer,
                                "forward": shape.optional(shape.choice(Forward)),
                                "u_thresh": shape.integer,
                                "l_thresh": shape.integer,
                            },
                        )
                    ),
                    "health": shape.optional(_HEALTH),
                    "drain_timeout": shape.optional(shape.bounded(shape.number, minimum=0, maximum=86400)),
                },
            )
        ),
        # Checked by kubelvs.sources.kubernetes (settings.parse_kubernetes).
        "kubernetes": shape.optional(shape.mapping_of(lambda value: value)),
        "vrrp": shape.optional(VRRP),
        "bgp": shape.optional(BGP),
    },
)


def parse_config(data: Any, *, source: str = "config") -> Config:
    """Check the shape of already-loaded YAML/JSON data."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(
            [FieldError("(top level)", f"{source} must be a mapping of keys, got {type(data).__name__}")]
        )
    config, errors = _CONFIG.parse(data)
    if config is None:
        raise ConfigError(errors)
    errors = vrrp_errors(config.vrrp) if config.vrrp is not None else []
    errors += bgp_errors(config.bgp) if config.bgp is not None else []
    if errors:
        raise ConfigError(errors)
    return config


def load_config(path: str | Path) -> Config:
    """Read and shape-check a YAML config file; ``-`` reads standard input.

    Raises TextFileError (a ParseError: unreadable, too large, not UTF-8 text, bad
    YAML; with line and column where there is one) or ConfigError."""
    text = read_text_file(path)
    source = source_name(path)
    return parse_config(_load_yaml(text, source), source=source)


def parse_yaml(text: str, *, source: str) -> Any:
    """YAML 1.2 (yaml-rs, Rust): 30x faster than PyYAML on a 10,000-service file, and a
    duplicate key is an error instead of silently replacing the first.

    ``text`` is checked as a file's would be (no NUL, no control characters), since
    the parser stops at a NUL and returns what came before it."""
    check_text(text, source)
    return _load_yaml(text, source)


_PLACE = re.compile(r"line (\d+), column (\d+)")


def _load_yaml(text: str, source: str) -> Any:
    try:
        return yaml_rs.loads(text, parse_datetime=False)
    except MemoryError:
        raise
    except Exception as exc:
        # Besides YAMLDecodeError, yaml-rs lets out ValueError (an integer of more than
        # 4,300 digits), TypeError (a mapping as a key: unhashable) and RecursionError.
        message = str(exc)
        place = _PLACE.search(message)
        reason = message.strip().splitlines()[-1].strip() if message.strip() else type(exc).__name__
        if not isinstance(exc, yaml_rs.YAMLDecodeError):
            reason = f"cannot read this YAML: {reason}"
        if len(reason) > 200:  # the parser quotes the offending line, however long it is
            reason = reason[:200] + "..."
        line, column = (int(place.group(1)), int(place.group(2))) if place else (None, None)
        raise TextFileError(source, line, column, reason) from None


def _fwmark_ranges(items: Sequence[str | int], errors: ErrorList) -> list[range]:
    out: list[range] = []
    for i, item in enumerate(items):
        try:
            text = str(item)
            lo, _, hi = text.partition("-")
            first, last = int(lo, 0), int(hi or lo, 0)
            if not 1 <= first <= last <= 2**32 - 1:
                raise ValueError
            out.append(range(first, last + 1))
        except ValueError:  # also an integer too long for str() or int()
            errors.append(
                FieldError(
                    f"owned_fwmarks[{i}]",
                    f"{shown(item)} is not a fwmark or a range N-M within 1..4294967295",
                )
            )
    return out


def to_desired(config: Config, *, extra_sysctls: Mapping[str, int] | None = None) -> DesiredState:
    """The validated desired state of ``config``; raises ConfigError listing every problem.

    ``extra_sysctls`` (the recommended ones, computed by the caller for its backend and
    kernel) go under the config's own ``sysctls``, which win.
    """
    errors = ErrorList()
    cidrs: list[IPNetwork] = [ipaddress.ip_network(c, strict=False) for c in config.owned_cidrs]
    fwmarks = _fwmark_ranges(config.owned_fwmarks, errors)
    services: list[VirtualService] = []
    for i, spec in enumerate(config.services):
        svc = _service(spec, service_path("services", i, spec.name), errors)
        if svc is not None and not errors:  # after a problem they are only checked, not kept
            services.append(svc)
    timeouts = (
        Timeouts(config.timeouts.tcp, config.timeouts.tcpfin, config.timeouts.udp)
        if config.timeouts
        else None
    )
    sysctls = {**(extra_sysctls or {}), **config.sysctls}
    ownership = Ownership(cidrs=tuple(cidrs), fwmarks=tuple(fwmarks))
    if not errors:  # index paths only line up when every service could be built
        errors += validate(services, ownership=ownership, timeouts=timeouts, sysctls=sysctls)
    if errors:
        raise config_error(errors)
    health = _health(config, services, errors)
    if errors:
        raise config_error(errors)
    # The model keeps real servers sorted by key, as the kernel read-back does.
    ordered = {s.key: s.with_realservers(s.realservers) for s in services}
    return DesiredState(
        services=ordered, timeouts=timeouts, sysctls=sysctls, ownership=ownership, health=health
    )


def _health(
    config: Config, services: Sequence[VirtualService], errors: ErrorList
) -> dict[ServiceKey, HealthCheck]:
    """Each service's check: its own ``health:`` over ``health_defaults:`` over the
    built-in defaults; only services with a check other than ``none`` are listed."""
    defaults = config.health_defaults
    if defaults is not None:
        _check_health(_merge(NO_CHECK, defaults), "health_defaults", None, errors)
    out: dict[ServiceKey, HealthCheck] = {}
    for i, (spec, vs) in enumerate(zip(config.services, services, strict=True)):
        check = NO_CHECK if defaults is None else _merge(NO_CHECK, defaults)
        if spec.health is not None:
            check = _merge(check, spec.health)
        if not check.enabled:
            continue
        where = f"{service_path('services', i, spec.name)}.health"
        if _check_health(check, where, vs, errors):
            out[vs.key] = check
    return out


def _merge(base: HealthCheck, spec: HealthSpec) -> HealthCheck:
    values = {f.name: getattr(spec, f.name) for f in fields(spec) if getattr(spec, f.name) is not None}
    return replace(base, **values)


def _check_health(check: HealthCheck, where: str, vs: VirtualService | None, errors: ErrorList) -> bool:
    """The rules between a check's keys (and the service it checks); True when none is broken."""
    before = len(errors)
    if check.timeout > check.interval:
        errors.append(
            FieldError(
                f"{where}.timeout", f"{check.timeout:g} s is longer than the interval ({check.interval:g} s)"
            )
        )
    if check.kind is CheckKind.EXEC and not check.command:
        errors.append(FieldError(f"{where}.command", "required with kind exec (the command to run)"))
    if check.kind in (CheckKind.HTTP, CheckKind.HTTPS) and not check.path.startswith("/"):
        errors.append(FieldError(f"{where}.path", f"{shown(check.path)} must start with /"))
    if check.kind in (CheckKind.HTTP, CheckKind.HTTPS) and not check.expect_status:
        errors.append(FieldError(f"{where}.expect_status", "must list at least one status"))
    if check.mode is CheckMode.VIP and vs is not None:
        if check.kind is not CheckKind.TCP:
            errors.append(
                FieldError(f"{where}.mode", "vip probes a TCP handshake through the data path: use kind tcp")
            )
        elif vs.key.address is None or vs.key.address.version != 4 or vs.key.protocol is not Protocol.TCP:
            errors.append(FieldError(f"{where}.mode", "vip needs an IPv4 TCP virtual service"))
        else:
            nat = [str(rs.address) for rs in vs.realservers if rs.forward is Forward.NAT]
            if nat:
                errors.append(
                    FieldError(
                        f"{where}.mode",
                        f"vip probes the VIP through DR or TUN real servers; {', '.join(nat)} use nat "
                        "(check them with mode direct)",
                    )
                )
    return len(errors) == before


def config_document(state: DesiredState) -> dict[str, Any]:
    """The config document (plain data, ready for ``yaml_rs.dumps``) whose ``to_desired``
    is ``state`` again: what ``kubelvs import`` writes, and what the loader's property
    tests check the round trip with. Services in kernel order, defaults left out."""
    doc: dict[str, Any] = {"owned_cidrs": [str(net) for net in state.ownership.cidrs]}
    if state.ownership.fwmarks:
        doc["owned_fwmarks"] = [
            str(r.start) if len(r) == 1 else f"{r.start}-{r.stop - 1}" for r in state.ownership.fwmarks
        ]
    if state.timeouts is not None:
        doc["timeouts"] = {
            "tcp": state.timeouts.tcp,
            "tcpfin": state.timeouts.tcpfin,
            "udp": state.timeouts.udp,
        }
    if state.sysctls:
        doc["sysctls"] = dict(state.sysctls)
    doc["services"] = [
        _service_document(state.services[k]) for k in sorted(state.services, key=ServiceKey.sort_key)
    ]
    return doc


def _service_document(svc: VirtualService) -> dict[str, Any]:
    out: dict[str, Any] = {"name": svc.name} if svc.name else {}
    key = svc.key
    if key.fwmark:
        out["fwmark"] = key.fwmark
        if key.family == 6:
            out["family"] = 6
    else:
        out.update(vip=str(key.address), port=key.port, protocol=str(key.protocol))
    out["scheduler"] = svc.scheduler
    if svc.flags:
        out["flags"] = sorted(svc.flags)
    if svc.persistence:
        out["persistence"] = svc.persistence
    if svc.netmask is not None:
        out["netmask"] = svc.netmask
    out["realservers"] = [
        {
            "address": str(rs.address),
            "port": rs.port,
            "weight": rs.weight,
            "forward": str(rs.forward),
            **({"u_thresh": rs.u_thresh} if rs.u_thresh else {}),
            **({"l_thresh": rs.l_thresh} if rs.l_thresh else {}),
        }
        for rs in svc.realservers
    ]
    return out


def _service(spec: ServiceSpec, where: str, errors: ErrorList) -> VirtualService | None:
    if spec.fwmark is not None:
        if spec.vip is not None or spec.port is not None:
            errors.append(FieldError(where, "give either fwmark or vip/port, not both"))
            return None
        if not 1 <= spec.fwmark <= 0xFFFFFFFF:
            errors.append(
                FieldError(f"{where}.fwmark", f"must be between 1 and 4294967295, got {shown(spec.fwmark)}")
            )
            return None
        key = ServiceKey.for_fwmark(spec.fwmark, spec.family)
        service_port = 0
    else:
        if spec.vip is None or spec.port is None:
            errors.append(FieldError(where, "a service needs vip and port (or fwmark)"))
            return None
        try:
            vip = parse_address(spec.vip)
        except ValueError:
            errors.append(FieldError(f"{where}.vip", f"{shown(spec.vip)} is not an IPv4 or IPv6 address"))
            return None
        key = ServiceKey(vip.version, spec.protocol, vip, spec.port)
        service_port = spec.port
    realservers = []
    for j, rs in enumerate(spec.realservers):
        try:
            address = parse_address(rs.address)
        except ValueError:
            errors.append(
                FieldError(
                    f"{where}.realservers[{j}].address", f"{shown(rs.address)} is not an IPv4 or IPv6 address"
                )
            )
            continue
        port = service_port if rs.port is None else rs.port
        realservers.append(
            RealServer(address, port, rs.weight, rs.forward or spec.forward, rs.u_thresh, rs.l_thresh)
        )
    # Keep config order here: validation names realservers[j] by position.
    return VirtualService(
        key=key,
        scheduler=spec.scheduler,
        persistence=spec.persistence,
        netmask=spec.netmask,
        flags=desired_flags(spec.scheduler, frozenset(spec.flags)),
        realservers=tuple(realservers),
        name=spec.name,
    )
