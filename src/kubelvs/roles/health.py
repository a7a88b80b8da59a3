"""Health in the director's desired state (pure: the clock is passed in).

    probe results -> TargetState (rise/fall hysteresis)        ``record``
    desired state + states -> the weights the kernel gets       ``HealthOverlay``

A *target* is one probe: a real-server address, the port probed and the check (and, for
``vip`` mode, the VIP and how the director forwards to it). Every (virtual service,
real server) with that address and check shares it, so 1,000 services on 10 nodes cost
10 probes per interval. The overlay keeps, per virtual service, the weights its health
gives, and recomputes only the services whose desired state changed or whose targets
changed state: a node going down is one batch of weight changes for every service that
uses it, without recomputing anything else.

A real server that is down gets weight 0 (``on_failure: weight0``: no new connections,
established ones go on) or is left out (``remove``). One that came back after being down
ramps up over ``slow_start`` seconds. Until its first result a real server counts as up:
a director that restarts must not take every real server out of service while it
probes them. When every checked real server of a service is down, the service keeps
them all ("fail open", as cloud load balancers do when all targets are unhealthy): a
check that fails everywhere at once is more often the check's own fault (a firewall, a
wrong port) than every node's, and sending traffic somewhere beats sending it nowhere.
``no_healthy`` lists those services so that the director can say so.
"""

from __future__ import annotations

import enum
import functools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import NamedTuple

from ..model import DesiredState, Forward, IPAddress, RealServer, RealServerKey, ServiceKey, VirtualService
from ..model.health import NO_CHECK, CheckMode, HealthCheck, OnFailure

__all__ = ["HealthOverlay", "Status", "TargetKey", "TargetState", "record", "target_of"]


class Status(enum.StrEnum):
    UNKNOWN = "unknown"
    UP = "up"
    DOWN = "down"


@dataclass(frozen=True, slots=True)
class TargetKey:
    """One probe: what is probed, and how."""

    address: IPAddress
    port: int
    check: HealthCheck
    vip: IPAddress | None = None  # vip mode: the VIP sent to ``address`` the way the director forwards
    forward: Forward = Forward.DR  # vip mode: dr (to the real server's MAC) or tun (inside IPIP)
    _hash: int = field(init=False, repr=False, compare=False)  # looked up per real server: hash once

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash((self.address, self.port, self.check, self.vip, self.forward)))

    def __hash__(self) -> int:
        return self._hash

    def __str__(self) -> str:
        where = f"{self.address}:{self.port}"
        if self.vip is not None:
            where = f"{self.vip}:{self.port} via {self.address} ({self.forward})"
        return f"{self.check.kind} {where}"


def target_of(key: ServiceKey, rs: RealServer, check: HealthCheck) -> TargetKey | None:
    """The probe of real server ``rs`` of service ``key``; None when it is not checked.
    The data-path probe (probes/vip.py) builds IPv4 packets: the IPv6 VIP of a dual-stack
    Service whose annotation asks for ``vip`` is checked direct (the config file refuses
    ``mode: vip`` on an IPv6 service instead)."""
    if not check.enabled:
        return None
    if (
        check.mode is CheckMode.VIP
        and rs.forward in (Forward.DR, Forward.TUN)
        and key.address is not None
        and key.address.version == 4
    ):
        port = check.port or key.port
        return TargetKey(rs.address, port, check, vip=key.address, forward=rs.forward)
    return _direct_target(rs, check, key.port)


@functools.lru_cache(maxsize=1 << 16)
def _direct_target(rs: RealServer, check: HealthCheck, service_port: int) -> TargetKey:
    # One object per (real server, check): the nodes recur in every Service, and a node
    # going NotReady looks up the targets of all 100,000 real servers of 10,000 Services.
    return TargetKey(rs.address, check.port or rs.port or service_port, check)


@dataclass(frozen=True, slots=True)
class TargetState:
    status: Status = Status.UNKNOWN
    since: float = 0.0  # when it entered this status (the caller's clock)
    good: int = 0  # good results in a row
    bad: int = 0  # bad results in a row
    detail: str = ""  # what the last result said
    came_back: float | None = None  # when it went from down to up (slow start counts from here)
    probes: int = 0


def record(state: TargetState, ok: bool, detail: str, check: HealthCheck, now: float) -> TargetState:
    """The state after one probe result. Down after ``fall`` bad results in a row; up
    after ``rise`` good ones (from unknown: after the first)."""
    good, bad = (state.good + 1, 0) if ok else (0, state.bad + 1)
    status, since, came_back = state.status, state.since, state.came_back
    if ok and status is not Status.UP and (status is Status.UNKNOWN or good >= check.rise):
        came_back = now if status is Status.DOWN else None
        status, since = Status.UP, now
    elif not ok and status is not Status.DOWN and bad >= check.fall:
        status, since, came_back = Status.DOWN, now, None
    return TargetState(status, since, good, bad, detail, came_back, state.probes + 1)


def effective(rs: RealServer, state: TargetState | None, check: HealthCheck, now: float) -> RealServer | None:
    """``rs`` with the weight its health gives it (None: left out)."""
    if state is None or state.status is Status.UNKNOWN:
        return rs
    if state.status is Status.DOWN:
        if check.on_failure is OnFailure.REMOVE:
            return None
        return rs if rs.weight == 0 else _weighted(rs, 0)
    if check.slow_start > 0 and state.came_back is not None and rs.weight > 0:
        elapsed = now - state.came_back
        if elapsed < check.slow_start:
            return _weighted(rs, max(1, math.ceil(rs.weight * elapsed / check.slow_start)))
    return rs


def _weighted(rs: RealServer, weight: int) -> RealServer:
    # The constructor, not dataclasses.replace: a node going down reweights one real
    # server in every service (10,000 of them), and replace() costs several times more.
    return RealServer(rs.address, rs.port, weight, rs.forward, rs.u_thresh, rs.l_thresh)


class HealthOverlay:
    """The desired state with health applied, kept per virtual service."""

    def __init__(self) -> None:
        self._targets: dict[ServiceKey, tuple[tuple[RealServerKey, TargetKey], ...]] = {}
        self.users: dict[TargetKey, set[ServiceKey]] = {}  # target -> the services it serves
        self._adjusted: dict[ServiceKey, VirtualService] = {}
        self._ramping: dict[ServiceKey, float] = {}  # service -> when its slowest ramp ends
        self.no_healthy: set[ServiceKey] = set()  # services whose every checked real server is down

    @property
    def targets(self) -> set[TargetKey]:
        return set(self.users)

    def refresh(self, desired: DesiredState, changed: Iterable[ServiceKey] | None) -> None:
        """Follow the desired state's real servers and checks (``changed``: only these
        services changed since the last call; None: any may have)."""
        keys = set(self._targets) | set(desired.services) if changed is None else set(changed)
        for key in keys:
            for _, target in self._targets.pop(key, ()):
                users = self.users.get(target)
                if users is not None:
                    users.discard(key)
                    if not users:
                        del self.users[target]
            vs = desired.services.get(key)
            check = desired.health.get(key, NO_CHECK)
            if vs is None or not check.enabled:
                continue
            pairs = []
            for rs in vs.realservers:
                rs_target = target_of(key, rs, check)
                if rs_target is not None:
                    pairs.append((rs.key, rs_target))
                    self.users.setdefault(rs_target, set()).add(key)
            self._targets[key] = _shared_pairs(tuple(pairs))

    def pairs(self) -> dict[ServiceKey, tuple[tuple[RealServerKey, TargetKey], ...]]:
        """Per checked service, each real server and its target."""
        return dict(self._targets)

    def affected(self, targets: Iterable[TargetKey]) -> set[ServiceKey]:
        """The services that use any of ``targets``."""
        out: set[ServiceKey] = set()
        for t in targets:
            out |= self.users.get(t, set())
        return out

    def ramps_due(self, now: float) -> tuple[set[ServiceKey], float | None]:
        """Services whose slow-start ramp moves on (recompute them about once a second),
        and the seconds until the next ramp ends (None: no ramp in progress)."""
        keys = set(self._ramping)
        for key in [k for k, end in self._ramping.items() if end <= now]:
            del self._ramping[key]
        return keys, (min(self._ramping.values()) - now if self._ramping else None)

    def apply(
        self,
        desired: DesiredState,
        keys: Iterable[ServiceKey] | None,
        states: Mapping[TargetKey, TargetState],
        now: float,
    ) -> DesiredState:
        """``desired`` with the weights the targets' states give; only ``keys`` are
        recomputed (None: all), the others come from the last call."""
        recompute = set(desired.services) if keys is None else set(keys)
        if keys is None:
            self._adjusted.clear()
            self.no_healthy.clear()
        # The services of a cluster mostly have equal real servers and checks: each
        # distinct (real servers, targets, check) is adjusted once per call, and the
        # services that share it share the adjusted tuple too (which makes the layers
        # below compare and look it up by identity).
        memo: dict[_MemoKey, _Adjusted] = {}
        for key in recompute:
            vs = desired.services.get(key)
            if vs is None:
                self._adjusted.pop(key, None)
                self._ramping.pop(key, None)
                self.no_healthy.discard(key)
                continue
            adjusted = self._adjust(vs, desired.health.get(key, NO_CHECK), states, now, memo)
            if adjusted is vs:
                self._adjusted.pop(key, None)  # health changes nothing in it: the desired one
            else:
                self._adjusted[key] = adjusted
        if not self._adjusted:
            return desired  # no check changes a weight (or no service is checked)
        services = dict(desired.services)
        for key, vs in self._adjusted.items():
            if key in services:
                services[key] = vs
        return replace(desired, services=services)

    def _adjust(
        self,
        vs: VirtualService,
        check: HealthCheck,
        states: Mapping[TargetKey, TargetState],
        now: float,
        memo: dict[_MemoKey, _Adjusted],
    ) -> VirtualService:
        key = vs.key
        pairs = self._targets.get(key, ())
        self.no_healthy.discard(key)
        if not pairs:
            self._ramping.pop(key, None)
            return vs
        # By identity (both are shared by value: shared_realservers, _shared_pairs), alive
        # for the length of the call (``desired`` and ``_targets`` hold them). The targets
        # carry the check: the same targets, the same check.
        memo_key = (id(vs.realservers), id(pairs))
        got = memo.get(memo_key)
        if got is None:
            got = memo[memo_key] = _adjusted(vs.realservers, pairs, check, states, now)
        realservers, ramp_end, no_healthy = got
        if no_healthy:
            self.no_healthy.add(key)  # fail open: see the module docstring
        if ramp_end > now:
            self._ramping[key] = ramp_end
        else:
            self._ramping.pop(key, None)
        if realservers is None:
            return vs
        return vs.holding(realservers)  # same order as before (sorted by key): no sort


_MemoKey = tuple[int, int]
_Pairs = tuple[tuple[RealServerKey, TargetKey], ...]


@functools.lru_cache(maxsize=4096)
def _shared_pairs(pairs: _Pairs) -> _Pairs:
    """The one tuple of its value (a service's real servers and their targets): most
    services have the same, and ``HealthOverlay.apply`` adjusts each distinct one once."""
    return pairs


class _Adjusted(NamedTuple):
    realservers: tuple[RealServer, ...] | None  # None: as they were
    ramp_end: float  # when the slowest slow-start ramp ends (0: none in progress)
    no_healthy: bool  # every checked real server is down: left as they were (fail open)


def _adjusted(
    realservers: tuple[RealServer, ...],
    pairs: tuple[tuple[RealServerKey, TargetKey], ...],
    check: HealthCheck,
    states: Mapping[TargetKey, TargetState],
    now: float,
) -> _Adjusted:
    """The real servers with the weights their targets' states give."""
    if len(pairs) == len(realservers) and all(p[0] is rs.key for p, rs in zip(pairs, realservers)):
        targets = [t for _, t in pairs]  # the usual case: built from this very value, in its order
    else:
        by_key = dict(pairs)
        targets = [by_key.get(rs.key) for rs in realservers]  # type: ignore[misc]
    got_states = [states.get(t) if t is not None else None for t in targets]
    if all(st is not None and st.status is Status.DOWN for st in got_states):
        return _Adjusted(None, 0.0, True)
    out: list[RealServer] = []
    ramp_end = 0.0
    changed = False
    for rs, state in zip(realservers, got_states):
        if state is None or state.status is Status.UNKNOWN:
            out.append(rs)
            continue
        got = effective(rs, state, check, now)
        if got is not rs:
            changed = True
        if got is not None:
            out.append(got)
        if state.came_back is not None and check.slow_start > 0:
            ramp_end = max(ramp_end, state.came_back + check.slow_start)
    return _Adjusted(tuple(out) if changed else None, ramp_end, False)
