"""From the store's snapshot to the kernel: map, merge with the config file's static
part, and sync only the virtual services that changed.

Given a snapshot carrying the store's changes, the Mapper maps and reports only what
changed, and the director keeps its picture of the kernel between syncs
(``roles.director``), so an incremental reconcile is O(changed services) from the
store to the kernel; a full one (map everything, read the kernel, compare
everything) runs at start, on a timer and after any failure.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ...model import DesiredState, ServiceKey, VirtualService
from ...planner import changed_services, describe
from ...roles.director import Director
from .mapping import Mapper, MappingResult, Snapshot
from .settings import KubeSettings

__all__ = ["Reconciler", "ReconcileReport"]

log = logging.getLogger("kubelvs.kubernetes.reconciler")


@dataclass(frozen=True, slots=True)
class ReconcileReport:
    full: bool
    changed: int  # virtual services compared (None -> all)
    ops: int
    recomputed: int  # Services whose mapping was recomputed
    seconds: float


class Reconciler:
    def __init__(
        self,
        settings: KubeSettings,
        *,
        base: DesiredState,
        director: Director | None = None,  # None: compute only (dry run)
        # Called with the desired services and the keys changed since its previous call
        # (None: any may have), so that it can stay O(changed) too.
        extra_sysctls: Callable[[Mapping[ServiceKey, VirtualService], frozenset[ServiceKey] | None], dict[str, int]]
        | None = None,
    ) -> None:
        self.settings = settings
        self.base = base
        self.director = director
        self.extra_sysctls = extra_sysctls
        self.mapper = Mapper(settings)
        self.last_desired: DesiredState | None = None  # the last desired state synced
        self.last_result: MappingResult | None = None
        self._computed: DesiredState | None = None  # the last one computed (synced or not)
        self._extra_current = False  # extra_sysctls saw every compute so far

    def compute(self, snap: Snapshot, *, full: bool = False) -> tuple[MappingResult, DesiredState]:
        result = self.mapper.map(snap, full=full)
        services = dict(result.desired.services)
        for key, vs in self.base.services.items():
            if key in services:
                log.warning("%s is in the config file and in Kubernetes (%s); the config file wins", key, services[key].name)
            services[key] = vs
        extra: dict[str, int] = {}
        if self.extra_sysctls is not None:
            changed = result.changed if self._extra_current else None
            self._extra_current = False
            extra = self.extra_sysctls(services, changed)
            self._extra_current = True
        sysctls = {**extra, **self.base.sysctls}
        desired = DesiredState(services=services, timeouts=self.base.timeouts, sysctls=sysctls, ownership=self.base.ownership)
        self.last_result = result
        return result, desired

    def reconcile(self, snap: Snapshot, *, full: bool = False) -> ReconcileReport:
        """Compute and (with a director) sync. Raises what ``Director.sync`` raises."""
        t0 = time.perf_counter()
        previous = self._computed
        result, desired = self.compute(snap, full=full)
        self._computed = desired
        last = self.last_desired
        keys: set[ServiceKey] | None = None
        if not full and last is not None and (last.timeouts, last.sysctls, last.ownership) == (
            desired.timeouts,
            desired.sysctls,
            desired.ownership,
        ):
            if result.changed is not None and last is previous:
                # The mapper knows what it changed since the state we synced last: no
                # comparison of every service. The config file's services win over any
                # mapped one and never change while we run.
                keys = {k for k in result.changed if k not in self.base.services}
            else:
                keys = changed_services(last, desired)
        ops = 0
        if self.director is not None and (keys is None or keys):
            sync = self.director.sync(desired, changed=keys)
            ops = len(sync.plan)
            for op in sync.plan.ops[:50]:
                log.info("  %s", describe(op))
            if len(sync.plan.ops) > 50:
                log.info("  ... and %d more", len(sync.plan.ops) - 50)
        self.last_desired = desired
        report = ReconcileReport(
            full=keys is None,
            changed=len(desired.services) if keys is None else len(keys),
            ops=ops,
            recomputed=self.mapper.recomputed,
            seconds=time.perf_counter() - t0,
        )
        if ops or report.full:
            log.info(
                "%s reconcile: %d service(s) compared, %d change(s), %d Service(s) re-mapped, %.3f s",
                "full" if report.full else "incremental", report.changed, ops, report.recomputed, report.seconds,
            )
        return report
