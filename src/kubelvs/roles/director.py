"""The director's reconcile step: keep one backend converged to a desired state.

A full sync reads the whole kernel table once, plans, applies. After a successful
apply the director keeps ``apply_ops(observed, plan)`` as its picture of the kernel,
so a later change to a few services is planned against memory and costs
O(changed services) - kube-proxy instead re-reads and re-syncs every service on
every change. Callers run a full sync on a slow timer too (someone else may have
edited the table), and at once when the backend says it was changed elsewhere.

A kernel refusal affects only its service: the backend applies everything else and
reports what it did not apply (``PartialApplyError``); the director records the
failing services, leaves their operations out of the following syncs until their
retry time (0.5 s doubling up to 30 s, like the API watches' backoff), and retries
them with a full sync, whose read repairs whatever the refusal left. The picture is
dropped after any failure. The deletion guard (``roles.guard``) holds back a step that
would delete most of the owned services at once.

Drains (``graceful``): a real server that leaves and still has connections gets weight 0
and is deleted once its active and inactive connections reach 0 (asked of the kernel
every ``DRAIN_POLL`` seconds, for the draining services only) or its virtual service's
drain timeout passes. The start of each drain is kept (and survives a restart through
the director's state file): kube-proxy's graceful termination keeps its list in memory
only, and a restarted kube-proxy leaves weight-0 real servers behind.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from ..backends import Backend
from ..bulk import no_gc
from ..errors import CapabilityError, KubelvsError, PartialApplyError
from ..model import NO_TRAFFIC, DesiredState, ErrorList, ObservedState, RealServerKey, ServiceKey
from ..planner import (
    AddService,
    DeleteRealServer,
    DeleteService,
    Operation,
    Plan,
    apply_ops_in_place,
    plan,
    service_of,
)
from .guard import DeletionGuard, GuardSettings, HeldDeletion

__all__ = ["DRAIN_POLL", "Director", "ServiceFailure", "SyncResult"]

RETRY_FIRST = 0.5
RETRY_MAX = 30.0
#: Seconds between two looks at the connections of the real servers draining.
DRAIN_POLL = 1.0

#: A real server of a virtual service.
Pair = tuple[ServiceKey, RealServerKey]


@dataclass(frozen=True, slots=True)
class ServiceFailure:
    """A virtual service whose operations the kernel refused, and when it is retried."""

    key: ServiceKey
    operation: str  # the first operation refused
    reason: str
    attempts: int
    since: float  # the caller's clock (time.monotonic by default)
    retry_at: float


@dataclass(frozen=True, slots=True)
class SyncResult:
    plan: Plan
    full: bool  # True when the kernel was read (not only the in-memory picture used)
    applied: tuple[Operation, ...] = ()  # what was applied (dry run: nothing)
    deferred: tuple[Operation, ...] = ()  # left out: a failing service before its retry time, held deletions
    failures: Mapping[ServiceKey, ServiceFailure] = field(default_factory=dict)  # failing after this sync
    new_failures: tuple[str, ...] = ()  # what this sync could not apply, one line each
    held: HeldDeletion | None = None
    # Real servers deleted after draining: (service, real server, why: "no connections
    # left" or "drain timeout"), with how long they drained.
    drains_finished: tuple[tuple[ServiceKey, RealServerKey, str, float], ...] = ()

    @property
    def ok(self) -> bool:
        """Everything planned was applied."""
        return not self.new_failures and not self.deferred


class Director:
    """Reconciles ``backend`` to desired states handed to ``sync``. Not thread-safe."""

    def __init__(
        self,
        backend: Backend,
        *,
        graceful: bool = False,
        keep_picture: bool = True,
        guard: GuardSettings | None = None,  # None: no deletion guard (one-shot commands)
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``keep_picture=False`` for a one-shot reconcile (``kubelvs apply``): the picture
        of the kernel is what makes later syncs O(changed), and updating it costs as much
        as planning; a process that exits after one sync has no use for it."""
        self.backend = backend
        self.graceful = graceful
        self.keep_picture = keep_picture
        self.guard = DeletionGuard(guard) if guard is not None else None
        self.clock = clock
        self._observed: ObservedState | None = None
        self._failures: dict[ServiceKey, ServiceFailure] = {}
        self._drains: dict[Pair, float] = {}  # real servers draining, since when (the clock)
        self._drain_deadline: float | None = None  # when the first drain runs out
        self._drain_poll_at = 0.0  # when the drains' connections are looked at again

    @property
    def observed(self) -> ObservedState | None:
        """The director's picture of the kernel after the last successful sync."""
        return self._observed

    @property
    def failures(self) -> Mapping[ServiceKey, ServiceFailure]:
        return dict(self._failures)

    @property
    def drains(self) -> Mapping[Pair, float]:
        """Real servers draining (weight 0, waiting for their connections), since when."""
        return dict(self._drains)

    def restore_drains(self, since: Mapping[Pair, float]) -> None:
        """Drains a previous run of the director started (read back from its state file),
        so that a restart neither restarts their timeout nor forgets them."""
        self._drains.update(since)

    def next_due(self) -> float | None:
        """Seconds until a failing service's retry, a held deletion or a drain check is due
        (None: nothing waits). Drains are checked every ``DRAIN_POLL`` seconds."""
        times = [f.retry_at for f in self._failures.values()]
        if self.guard is not None and self.guard.held is not None:
            times.append(self.guard.held.until)
        if self._drains:
            times.append(min(self._drain_poll_at, self._drain_deadline or self._drain_poll_at))
        return max(0.0, min(times) - self.clock()) if times else None

    def check(self, desired: DesiredState) -> None:
        """Raise CapabilityError when the backend cannot do what ``desired`` asks."""
        problems = self.backend.problems(desired)
        if problems:  # one per service can be 10,000: the first ones and a count
            raise CapabilityError(ErrorList(problems).listing())

    def sync(
        self, desired: DesiredState, *, changed: Iterable[ServiceKey] | None = None, dry_run: bool = False
    ) -> SyncResult:
        """Converge to ``desired``. ``changed``: only these services changed since the
        last sync (use the in-memory picture); None: read the kernel and compare all.
        A retry that is due forces a full sync. Raises CapabilityError (nothing done)
        and BackendError when the backend could not be used at all; refusals of single
        operations are in the result instead."""
        with no_gc():
            return self._sync(desired, changed, dry_run)

    def _sync(self, desired: DesiredState, changed: Iterable[ServiceKey] | None, dry_run: bool) -> SyncResult:
        self.check(desired)
        now = self.clock()
        due = any(f.retry_at <= now for f in self._failures.values())
        full = changed is None or self._observed is None or due
        keys: set[ServiceKey] | None = None
        if full:
            if not dry_run:
                self.backend.refresh()  # e.g. a real server's MAC changed (nftables DR)
            observed = self.backend.read(sysctls=desired.sysctls)
        else:
            assert self._observed is not None and changed is not None
            observed = self._observed
            keys = set(changed)
            if self.guard is not None and self.guard.held is not None:
                keys |= self.guard.held.keys  # so that the guard sees the same deletions again
            if self.graceful:
                keys |= {k for k, _ in self._drains}  # their connections may have ended
        # Draining waits for connections: a backend that keeps none (nftables) has none to
        # wait for, and its leaving real servers go at once, with no counter looked up (a
        # node NotReady at 10,000 services spent 0.17 s learning that every count is 0).
        graceful = self.graceful and self.backend.tracks_connections
        expired = self._expired(desired, now) if graceful else frozenset()
        the_plan = plan(desired, observed, graceful=graceful, keys=keys, expired=expired)
        if graceful and not full and not dry_run:
            # The picture's counters are from the last full read: whether a leaving real
            # server still has connections is asked of the kernel, for those services only.
            leaving = _leaving(the_plan, observed)
            # The plan asks only whether a real server has connections: planned again only
            # when a refreshed answer differs.
            if leaving and self._refresh_stats(observed, leaving):
                the_plan = plan(desired, observed, graceful=True, keys=keys, expired=expired)
        if dry_run:
            return SyncResult(plan=the_plan, full=full)

        held = self._hold(desired, observed, keys, the_plan, now)
        waiting = {k for k, f in self._failures.items() if f.retry_at > now}
        ops: list[Operation] = []
        deferred: list[Operation] = []
        for op in the_plan.ops:
            key = service_of(op)
            (deferred if key is not None and (key in held or key in waiting) else ops).append(op)
        try:
            self.backend.apply(ops)
        except PartialApplyError as exc:
            self._observed = None  # the next sync reads the kernel (see the module docstring)
            failed = exc.failed_indexes
            applied = tuple(op for i, op in enumerate(ops) if i not in failed)
            self._record(ops, exc, now)
            self._clear_converged(the_plan, ops, full, failed)
            return SyncResult(
                plan=the_plan,
                full=full,
                applied=applied,
                deferred=tuple(deferred),
                failures=dict(self._failures),
                new_failures=tuple(str(f) for f in exc.failures),
                held=self.guard.held if self.guard is not None else None,
            )
        except KubelvsError:
            self._observed = None  # unknown now: the next sync reads the kernel
            raise
        finally:
            draining = self._drains
            self._track_drains(the_plan, keys, desired, now)
        self._clear_converged(the_plan, ops, full, frozenset())
        finished = _finished_drains(draining, self._drains, ops, expired, now)
        # The picture is ours alone (read for us, or kept from the last sync): update in place.
        self._observed = apply_ops_in_place(observed, ops) if self.keep_picture else None
        return SyncResult(
            plan=the_plan,
            full=full,
            applied=tuple(ops),
            deferred=tuple(deferred),
            failures=dict(self._failures),
            held=self.guard.held if self.guard is not None else None,
            drains_finished=finished,
        )

    def _expired(self, desired: DesiredState, now: float) -> frozenset[Pair]:
        return frozenset(
            pair for pair, since in self._drains.items() if now - since >= desired.drain_timeout_of(pair[0])
        )

    def _refresh_stats(self, observed: ObservedState, pairs: set[Pair]) -> bool:
        """Read the counters of these real servers into the picture; True when one got or
        lost connections (what the planner asks of them). Only the leaving ones are
        compared: a node going NotReady at 10,000 services looked at all 100,000 real
        servers here (0.25 s) to learn about the 10,000 that leave."""
        fresh = self.backend.read_stats({key for key, _ in pairs})
        stats = observed.stats
        assert isinstance(stats, dict)  # the picture is ours: updated in place
        flipped = False
        for pair in pairs:
            new = fresh.get(pair, NO_TRAFFIC)
            old = stats.get(pair, NO_TRAFFIC)
            if (old.active_conns + old.inactive_conns > 0) != (new.active_conns + new.inactive_conns > 0):
                flipped = True
            stats[pair] = new
        return flipped

    def _track_drains(
        self, the_plan: Plan, keys: set[ServiceKey] | None, desired: DesiredState, now: float
    ) -> None:
        """The drains of the services this plan covered are exactly its ``draining``
        (kept with their start time); drains of other services go on."""
        if keys is None:
            kept: dict[Pair, float] = {}
        else:
            kept = {pair: t for pair, t in self._drains.items() if pair[0] not in keys}
        for pair in the_plan.draining:
            kept[pair] = self._drains.get(pair, now)
        self._drains = kept
        self._drain_poll_at = now + DRAIN_POLL
        self._drain_deadline = min(
            (t + desired.drain_timeout_of(pair[0]) for pair, t in kept.items()), default=None
        )

    def _hold(
        self,
        desired: DesiredState,
        observed: ObservedState,
        keys: set[ServiceKey] | None,
        the_plan: Plan,
        now: float,
    ) -> frozenset[ServiceKey]:
        """The services whose deletion the guard holds back in this step."""
        if self.guard is None:
            return frozenset()
        owns = desired.ownership.owns
        candidates = observed.services.keys() if keys is None else (k for k in keys if k in observed.services)
        removed = [k for k in candidates if k not in desired.services and owns(k)]
        added = sum(1 for op in the_plan.ops if type(op) is AddService)
        # Counting the owned services is O(all of them): only a step that deletes more
        # services than it adds can be held back (guard.check), so only that one needs it.
        owned = sum(1 for k in observed.services if owns(k)) if len(removed) > added else 0
        return self.guard.check(removed, added, owned, now)

    def _record(self, ops: list[Operation], exc: PartialApplyError, now: float) -> None:
        seen: set[ServiceKey] = set()
        for failure in exc.failures:
            key = service_of(ops[failure.index])
            if key is None or key in seen or failure.reason.startswith("skipped:"):
                # One attempt per service and sync, named by its first refusal: the
                # operations after it (IPVS: a real server of a service it refused to
                # create) fail only because of it.
                continue
            seen.add(key)
            previous = self._failures.get(key)
            attempts = 1 if previous is None else previous.attempts + 1
            delay = min(RETRY_MAX, RETRY_FIRST * 2 ** (attempts - 1))
            self._failures[key] = ServiceFailure(
                key=key,
                operation=failure.operation,
                reason=failure.reason,
                attempts=attempts,
                since=now if previous is None else previous.since,
                retry_at=now + delay,
            )

    def _clear_converged(
        self, the_plan: Plan, ops: list[Operation], full: bool, failed: frozenset[int]
    ) -> None:
        """Forget failures of services that were applied without error in this sync, or
        that a full plan found already converged (no operations: e.g. removed from the
        desired state, or repaired by someone)."""
        if not self._failures:
            return
        failing_now = {service_of(ops[i]) for i in failed}
        touched = {service_of(op) for op in ops}
        planned = {service_of(op) for op in the_plan.ops}
        for key in list(self._failures):
            if key in failing_now:
                continue
            if key in touched or (full and key not in planned):
                del self._failures[key]


def _leaving(the_plan: Plan, observed: ObservedState) -> set[Pair]:
    """The real servers this plan drains or deletes (those of deleted services too)."""
    leaving = set(the_plan.draining)
    for op in the_plan.ops:
        if type(op) is DeleteRealServer:
            leaving.add((op.service, op.realserver))
        elif type(op) is DeleteService:
            leaving.update((op.key, rs.key) for rs in observed.services[op.key].realservers)
    return leaving


def _finished_drains(
    before: Mapping[Pair, float],
    after: Mapping[Pair, float],
    ops: Iterable[Operation],
    expired: frozenset[Pair],
    now: float,
) -> tuple[tuple[ServiceKey, RealServerKey, str, float], ...]:
    """The drains that ended with their real server deleted by ``ops`` (not those whose
    real server came back)."""
    ended = [pair for pair in before if pair not in after]
    if not ended:
        return ()
    deleted = {(op.service, op.realserver) for op in ops if isinstance(op, DeleteRealServer)}
    gone = {op.key for op in ops if isinstance(op, DeleteService)}
    return tuple(
        (key, rs, "drain timeout" if (key, rs) in expired else "no connections left", now - before[(key, rs)])
        for key, rs in ended
        if (key, rs) in deleted or key in gone
    )
