"""Health checks of real servers, as values (no I/O): what to probe, how often, and what
a failure does. The probes themselves run in ``kubelvs.probes``, their schedule and
state in the director program (``app.health``); ``roles.health`` turns states into
weights.

The settings are keepalived's and ldirectord's, with the defaults GitHub's glb-healthcheck
uses (2 s interval, 1 s timeout, 3 results to go down): ``interval``, ``timeout``,
``rise`` (good results in a row to come back), ``fall`` (bad results in a row to go
down), and what a failure does: ``weight0`` (the real server stays, at weight 0: no new
connections, established ones go on; keepalived's ``inhibit_on_failure``, ldirectord's
``quiescent``) or ``remove``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, fields

__all__ = ["NO_CHECK", "CheckKind", "CheckMode", "HealthCheck", "OnFailure"]


class CheckKind(enum.StrEnum):
    NONE = "none"  # no checks: always up
    TCP = "tcp"  # a TCP connection is accepted
    HTTP = "http"  # GET path: the status is one of ``expect_status`` (and the body contains ``body``)
    HTTPS = "https"  # the same over TLS (the certificate is not verified: real servers are addressed by IP)
    UDP = "udp"  # ``send`` is answered (with ``expect`` in the answer, when given)
    EXEC = "exec"  # ``command`` exits 0 (ldirectord's and keepalived's MISC_CHECK)


class CheckMode(enum.StrEnum):
    DIRECT = "direct"  # probe the real server's own address
    VIP = "vip"  # probe the VIP the way the director forwards it (DR: to the real server's MAC; TUN: in IPIP)


class OnFailure(enum.StrEnum):
    WEIGHT0 = "weight0"
    REMOVE = "remove"


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """One check. Two real servers with the same address and the same check share one
    probe, however many virtual services they belong to (no check storms)."""

    kind: CheckKind = CheckKind.NONE
    interval: float = 2.0  # seconds between probes
    timeout: float = 1.0  # seconds a probe may take
    rise: int = 2  # good results in a row: down -> up
    fall: int = 3  # bad results in a row: up -> down
    on_failure: OnFailure = OnFailure.WEIGHT0
    slow_start: float = 0.0  # seconds over which a real server that came back ramps up to its weight
    mode: CheckMode = CheckMode.DIRECT
    port: int | None = None  # None: the real server's port
    path: str = "/"  # http(s)
    expect_status: tuple[int, ...] = (200,)  # http(s)
    body: str | None = None  # http(s): a text the body must contain
    host: str | None = None  # http(s): the Host header (default: the address probed)
    send: str = ""  # udp
    expect: str | None = None  # udp: a text the answer must contain
    command: tuple[str, ...] = ()  # exec; $ADDRESS and $PORT are replaced
    # A check is part of every probe's key, looked up for every real server of every
    # service when a node changes state (100,000 lookups at 10,000 services): hash once.
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # The field names are listed once, below the class: ``fields()`` costs ~40 us,
        # and the Kubernetes source makes a check per Service.
        object.__setattr__(self, "_hash", hash(tuple([getattr(self, name) for name in _CHECK_FIELDS])))

    def __hash__(self) -> int:
        return self._hash

    @property
    def enabled(self) -> bool:
        return self.kind is not CheckKind.NONE


_CHECK_FIELDS = tuple(f.name for f in fields(HealthCheck) if f.name != "_hash")

#: The check of a real server that has none configured: always up, never probed.
NO_CHECK = HealthCheck()
