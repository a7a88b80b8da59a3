"""The planner: a pure function from (desired, observed) to an ordered list of operations.

It never does I/O and touches only what the desired state's ``ownership`` covers:
virtual services outside the owned ranges are reported as foreign and left alone
(kube-proxy deleting kube-vip's services, kube-vip #454, is what this prevents).

Real servers are matched by (address, port), so an edited Service port can never
leave the old ``:80`` real server beside the new ``:6379`` one (the stale real
server incident, docs/incidents.md; kube-router #715): whatever is not desired is removed.

Given ``keys``, only those services are compared, so a one-service change costs
O(that service), not O(all services) as in kube-proxy's syncProxyRules.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

from ..model import (
    DesiredState,
    ObservedState,
    Protocol,
    RealServer,
    RealServerKey,
    RealServerStats,
    ServiceKey,
    VirtualService,
)
from .ops import (
    AddRealServer,
    AddService,
    DeleteRealServer,
    DeleteService,
    EditRealServer,
    EditService,
    Operation,
    SetSysctl,
    SetTimeouts,
)

__all__ = ["Plan", "changed_services", "plan"]


@dataclass(frozen=True, slots=True)
class Plan:
    """Operations in the order they must be applied, plus what was deliberately not touched."""

    ops: tuple[Operation, ...] = ()
    foreign: tuple[ServiceKey, ...] = ()  # kernel services outside the owned ranges
    draining: tuple[tuple[ServiceKey, RealServerKey], ...] = field(
        default=()
    )  # weight 0, waiting for 0 connections

    def __bool__(self) -> bool:
        return bool(self.ops)

    def __len__(self) -> int:
        return len(self.ops)


def plan(
    desired: DesiredState,
    observed: ObservedState,
    *,
    graceful: bool = False,
    keys: Iterable[ServiceKey] | None = None,
    expired: Collection[tuple[ServiceKey, RealServerKey]] = (),
) -> Plan:
    """Operations that turn ``observed`` into ``desired``.

    ``graceful``: a real server that is no longer desired and still has active or
    inactive connections first gets weight 0 and is deleted once they reach 0
    (kube-proxy's graceful termination); one without connections is deleted at once
    (the counters must be fresh: the director reads them for the services it plans).
    ``expired``: drains that took too long (the caller's drain timeout): deleted
    whatever their connections. UDP and SCTP are deleted at once, as kube-proxy does,
    because ``expire_nodest_conn`` ends their flows cleanly.

    ``keys``: compare only these services (the ones a change touched). Timeouts and
    sysctls are always compared; they are few.
    """
    ownership = desired.ownership
    if keys is None:
        candidates = set(desired.services) | set(observed.services)
    else:
        candidates = set(keys)
    foreign = sorted(
        (k for k in candidates if k in observed.services and not ownership.owns(k)), key=ServiceKey.sort_key
    )

    ops: list[Operation] = []
    for name, value in sorted(desired.sysctls.items()):
        if observed.sysctls.get(name) != value:
            ops.append(SetSysctl(name, value))
    if desired.timeouts is not None and desired.timeouts != observed.timeouts:
        ops.append(SetTimeouts(desired.timeouts))

    draining: list[tuple[ServiceKey, RealServerKey]] = []
    service_ops: list[Operation] = []
    diffs: _Diffs = {}
    removed = False
    for key in sorted(candidates, key=ServiceKey.sort_key):
        if not ownership.owns(key):
            continue
        want = desired.services.get(key)
        have = observed.services.get(key)
        if want is None:
            if have is not None:
                service_ops += _remove_service(have, observed, graceful, draining, expired)
                removed = True
            continue
        if have is None:
            service_ops.append(AddService(want))
            service_ops += [AddRealServer(key, rs) for rs in want.realservers]
            continue
        if not want.attributes_equal(have):
            service_ops.append(EditService(want))
        service_ops += _realserver_ops(want, have, observed, graceful, draining, expired, diffs)
    # Deletions of whole services first: they free nothing the adds need, but doing them
    # early means a failed add later in the plan never leaves a stale service behind.
    if removed:
        service_ops.sort(key=lambda op: not isinstance(op, DeleteService))  # stable: keeps the rest in order
    ops += service_ops
    return Plan(ops=tuple(ops), foreign=tuple(foreign), draining=tuple(draining))


#: How one tuple of real servers becomes another: the ones to remove, then the ones to
#: add (True) or edit (False), in order.
_Diff = tuple[tuple[RealServer, ...], tuple[tuple[bool, RealServer], ...]]
#: Per plan: (id of the wanted tuple, id of the held one) -> their diff. Both tuples live
#: in the desired and observed states for the whole plan, so their ids stay theirs.
_Diffs = dict[tuple[int, int], _Diff]


def _realserver_ops(
    want: VirtualService,
    have: VirtualService,
    observed: ObservedState,
    graceful: bool,
    draining: list[tuple[ServiceKey, RealServerKey]],
    expired: Collection[tuple[ServiceKey, RealServerKey]],
    diffs: _Diffs,
) -> list[Operation]:
    key = want.key
    if want.realservers == have.realservers:  # in C, and mostly by identity: the common case
        return []
    if len(want.realservers) == len(have.realservers) and all(
        a.key is b.key for a, b in zip(want.realservers, have.realservers)
    ):
        # The same real servers (keys are shared objects), only values differ: e.g. a node
        # going down is one weight edit in each of 10,000 services, no dict per service.
        return [EditRealServer(key, a) for a, b in zip(want.realservers, have.realservers) if a != b]
    # Real servers are shared tuples (a node leaving is the same removal in every
    # Service): each distinct pair is compared once per plan.
    pair = (id(want.realservers), id(have.realservers))
    diff = diffs.get(pair)
    if diff is None:
        diff = diffs[pair] = _diff(want.realservers, have.realservers)
    removed, kept = diff
    ops: list[Operation] = []
    for rs in removed:
        ops += _remove_realserver(key, rs, observed, graceful, draining, expired)
    ops += [AddRealServer(key, rs) if added else EditRealServer(key, rs) for added, rs in kept]
    return ops


def _diff(want: tuple[RealServer, ...], have: tuple[RealServer, ...]) -> _Diff:
    wanted = {rs.key for rs in want}
    existing = {rs.key: rs for rs in have}
    kept: list[tuple[bool, RealServer]] = []
    for rs in want:
        old = existing.get(rs.key)
        if old is None:
            kept.append((True, rs))
        elif old != rs:
            kept.append((False, rs))
    return tuple(rs for rs in have if rs.key not in wanted), tuple(kept)


def _remove_realserver(
    key: ServiceKey,
    rs: RealServer,
    observed: ObservedState,
    graceful: bool,
    draining: list[tuple[ServiceKey, RealServerKey]],
    expired: Collection[tuple[ServiceKey, RealServerKey]],
) -> list[Operation]:
    if not graceful or (key.protocol in (Protocol.UDP, Protocol.SCTP) and not key.fwmark):
        return [DeleteRealServer(key, rs.key)]
    if (key, rs.key) in expired or _connections(observed.stats, key, rs.key) == 0:
        return [DeleteRealServer(key, rs.key)]  # nothing (left) to drain
    draining.append((key, rs.key))
    if rs.weight != 0:
        return [EditRealServer(key, _with_weight(rs, 0))]
    return []


def _remove_service(
    have: VirtualService,
    observed: ObservedState,
    graceful: bool,
    draining: list[tuple[ServiceKey, RealServerKey]],
    expired: Collection[tuple[ServiceKey, RealServerKey]],
) -> list[Operation]:
    key = have.key
    if not graceful or (key.protocol in (Protocol.UDP, Protocol.SCTP) and not key.fwmark):
        return [DeleteService(key)]
    ops: list[Operation] = []
    busy: list[tuple[ServiceKey, RealServerKey]] = []
    for rs in have.realservers:
        if (key, rs.key) in expired or not _connections(observed.stats, key, rs.key):
            continue
        busy.append((key, rs.key))
        if rs.weight != 0:
            ops.append(EditRealServer(key, _with_weight(rs, 0)))
    if not busy:
        return [DeleteService(key)]  # nothing (left) to drain
    draining += busy
    return ops


def _connections(
    stats: Mapping[tuple[ServiceKey, RealServerKey], RealServerStats], key: ServiceKey, rs: RealServerKey
) -> int:
    s = stats.get((key, rs))
    return 0 if s is None else s.active_conns + s.inactive_conns


def _with_weight(rs: RealServer, weight: int) -> RealServer:
    return RealServer(rs.address, rs.port, weight, rs.forward, rs.u_thresh, rs.l_thresh)


def changed_services(old: DesiredState, new: DesiredState) -> set[ServiceKey]:
    """Keys of the services that differ between two desired states (added, removed or edited).
    Real servers count, names do not (they are not kernel state)."""
    keys = set(old.services) | set(new.services)
    return {k for k in keys if old.services.get(k) != new.services.get(k)}
