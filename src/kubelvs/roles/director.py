"""The director's reconcile step: keep one backend converged to a desired state.

A full sync reads the whole kernel table once, plans, applies. After a successful
apply the director keeps ``apply_ops(observed, plan)`` as its picture of the kernel,
so a later change to a few services is planned against memory and costs
O(changed services) - kube-proxy instead re-reads and re-syncs every service on
every change. Any failure drops the picture; the next sync reads the kernel again,
so a half-applied plan is always repaired. Callers run a full sync on a slow timer
too (someone else may have edited the table).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..backends import Backend
from ..bulk import no_gc
from ..errors import CapabilityError, KubelvsError
from ..model import DesiredState, ObservedState, ServiceKey
from ..planner import Plan, apply_ops_in_place, plan

__all__ = ["Director", "SyncResult"]


@dataclass(frozen=True, slots=True)
class SyncResult:
    plan: Plan
    full: bool  # True when the kernel was read (not only the in-memory picture used)


class Director:
    """Reconciles ``backend`` to desired states handed to ``sync``. Not thread-safe."""

    def __init__(self, backend: Backend, *, graceful: bool = False, keep_picture: bool = True) -> None:
        """``keep_picture=False`` for a one-shot reconcile (``kubelvs apply``): the picture
        of the kernel is what makes later syncs O(changed), and updating it costs as much
        as planning; a process that exits after one sync has no use for it."""
        self.backend = backend
        self.graceful = graceful
        self.keep_picture = keep_picture
        self._observed: ObservedState | None = None

    @property
    def observed(self) -> ObservedState | None:
        """The director's picture of the kernel after the last successful sync."""
        return self._observed

    def check(self, desired: DesiredState) -> None:
        """Raise CapabilityError when the backend cannot do what ``desired`` asks."""
        problems = self.backend.problems(desired)
        if problems:
            raise CapabilityError(problems)

    def sync(
        self, desired: DesiredState, *, changed: Iterable[ServiceKey] | None = None, dry_run: bool = False
    ) -> SyncResult:
        """Converge to ``desired``. ``changed``: only these services changed since the
        last sync (use the in-memory picture); None: read the kernel and compare all."""
        with no_gc():
            return self._sync(desired, changed, dry_run)

    def _sync(self, desired: DesiredState, changed: Iterable[ServiceKey] | None, dry_run: bool) -> SyncResult:
        self.check(desired)
        full = changed is None or self._observed is None
        if full:
            if not dry_run:
                self.backend.refresh()  # e.g. a real server's MAC changed (nftables DR)
            observed = self.backend.read(sysctls=desired.sysctls)
            changed = None
        else:
            assert self._observed is not None
            observed = self._observed
        the_plan = plan(desired, observed, graceful=self.graceful, keys=changed)
        if dry_run:
            return SyncResult(plan=the_plan, full=full)
        try:
            self.backend.apply(the_plan.ops)
        except KubelvsError:
            self._observed = None  # unknown now: the next sync reads the kernel
            raise
        # The picture is ours alone (read for us, or kept from the last sync): update in place.
        self._observed = apply_ops_in_place(observed, the_plan.ops) if self.keep_picture else None
        return SyncResult(plan=the_plan, full=full)
