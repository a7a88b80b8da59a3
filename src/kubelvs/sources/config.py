"""The YAML config file: owned ranges, timeouts, sysctls and services.

``shape`` checks the shape (types, unknown and missing keys) at the edge into
dataclasses; the result becomes the model and goes through ``model.validate`` for the
rules that span fields.
Both kinds of problem come out as FieldError with the YAML path, e.g.
``services[0] (whoami).realservers[1].port: dr cannot map ports ...``.
The reference of every key is docs/config.md.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml_rs

from ..errors import ConfigError, FieldError, ParseError
from ..model import (
    DesiredState,
    Forward,
    IPNetwork,
    Ownership,
    Protocol,
    RealServer,
    ServiceKey,
    Timeouts,
    VirtualService,
    parse_address,
    validate,
)
from . import shape

__all__ = [
    "Config",
    "RealServerSpec",
    "ServiceSpec",
    "TimeoutsSpec",
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
    graceful: bool = False
    services: tuple[ServiceSpec, ...] = ()
    kubernetes: dict[str, Any] | None = None  # read by kubelvs.sources.kubernetes


def _network(value: Any) -> str:
    text = shape.string(value)
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError as exc:
        raise shape.Invalid(str(exc)) from None  # "'10.0.0.0/33' does not appear to be an IPv4 or IPv6 network"
    return text


def _string_or_integer(value: Any) -> str | int:
    if isinstance(value, str):
        return value
    return shape.integer(value)


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
        "graceful": shape.boolean,
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
                },
            )
        ),
        "kubernetes": shape.optional(shape.mapping_of(lambda value: value)),  # checked by kubelvs.sources.kubernetes
    },
)


def parse_config(data: Any, *, source: str = "config") -> Config:
    """Check the shape of already-loaded YAML/JSON data."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError([FieldError("(top level)", f"{source} must be a mapping of keys, got {type(data).__name__}")])
    config, errors = _CONFIG.parse(data)
    if config is None:
        raise ConfigError(errors)
    return config


def load_config(path: str | Path) -> Config:
    """Read and shape-check a YAML config file (``-`` is not special here)."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ParseError(str(p), None, exc.strerror or str(exc)) from exc
    return parse_config(parse_yaml(text, source=str(p)), source=str(p))


def parse_yaml(text: str, *, source: str) -> Any:
    """YAML 1.2 (yaml-rs, Rust): 30x faster than PyYAML on a 10,000-service file, and a
    duplicate key is an error instead of silently replacing the first."""
    try:
        return yaml_rs.loads(text, parse_datetime=False)
    except yaml_rs.YAMLDecodeError as exc:
        message = str(exc)
        match = re.search(r"line (\d+)", message)
        reason = message.splitlines()[-1].strip() if "\n" in message else message
        raise ParseError(source, int(match.group(1)) if match else None, reason) from exc


def _fwmark_ranges(items: Sequence[str | int]) -> tuple[list[range], list[FieldError]]:
    out: list[range] = []
    errors: list[FieldError] = []
    for i, item in enumerate(items):
        text = str(item)
        try:
            lo, _, hi = text.partition("-")
            first, last = int(lo, 0), int(hi or lo, 0)
            if not 1 <= first <= last <= 2**32 - 1:
                raise ValueError
            out.append(range(first, last + 1))
        except ValueError:
            errors.append(FieldError(f"owned_fwmarks[{i}]", f"{text!r} is not a fwmark or a range N-M within 1..4294967295"))
    return out, errors


def to_desired(config: Config, *, extra_sysctls: Mapping[str, int] | None = None) -> DesiredState:
    """The validated desired state of ``config``; raises ConfigError listing every problem.

    ``extra_sysctls`` (the recommended ones, computed by the caller for its backend and
    kernel) go under the config's own ``sysctls``, which win.
    """
    errors: list[FieldError] = []
    cidrs: list[IPNetwork] = [ipaddress.ip_network(c, strict=False) for c in config.owned_cidrs]
    fwmarks, fw_errors = _fwmark_ranges(config.owned_fwmarks)
    errors += fw_errors
    services: list[VirtualService] = []
    for i, spec in enumerate(config.services):
        where = f"services[{i}]" + (f" ({spec.name})" if spec.name else "")
        svc = _service(spec, where, errors)
        if svc is not None:
            services.append(svc)
    timeouts = Timeouts(config.timeouts.tcp, config.timeouts.tcpfin, config.timeouts.udp) if config.timeouts else None
    sysctls = {**(extra_sysctls or {}), **config.sysctls}
    ownership = Ownership(cidrs=tuple(cidrs), fwmarks=tuple(fwmarks))
    if not errors:  # index paths only line up when every service could be built
        errors += validate(services, ownership=ownership, timeouts=timeouts, sysctls=sysctls)
    if errors:
        raise ConfigError(errors)
    # The model keeps real servers sorted by key, as the kernel read-back does.
    ordered = {s.key: s.with_realservers(s.realservers) for s in services}
    return DesiredState(services=ordered, timeouts=timeouts, sysctls=sysctls, ownership=ownership)


def _service(spec: ServiceSpec, where: str, errors: list[FieldError]) -> VirtualService | None:
    if spec.fwmark is not None:
        if spec.vip is not None or spec.port is not None:
            errors.append(FieldError(where, "give either fwmark or vip/port, not both"))
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
            errors.append(FieldError(f"{where}.vip", f"{spec.vip!r} is not an IPv4 or IPv6 address"))
            return None
        key = ServiceKey(vip.version, spec.protocol, vip, spec.port)
        service_port = spec.port
    realservers = []
    for j, rs in enumerate(spec.realservers):
        try:
            address = parse_address(rs.address)
        except ValueError:
            errors.append(FieldError(f"{where}.realservers[{j}].address", f"{rs.address!r} is not an IPv4 or IPv6 address"))
            continue
        port = service_port if rs.port is None else rs.port
        realservers.append(RealServer(address, port, rs.weight, rs.forward or spec.forward, rs.u_thresh, rs.l_thresh))
    # Keep config order here: validation names realservers[j] by position.
    return VirtualService(
        key=key,
        scheduler=spec.scheduler,
        persistence=spec.persistence,
        netmask=spec.netmask,
        flags=frozenset(spec.flags),
        realservers=tuple(realservers),
        name=spec.name,
    )
