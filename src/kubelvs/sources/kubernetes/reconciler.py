"""From the store's snapshot to the kernel: map, merge with the config file's static
part, and sync only the virtual services that changed.

The director keeps its picture of the kernel between syncs (``roles.director``), so an
incremental reconcile is O(changed services) in the kernel too; a full sync (read the
kernel, compare everything) runs at start, on a timer and after any failure.
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
        extra_sysctls: Callable[[Mapping[ServiceKey, VirtualService]], dict[str, int]] | None = None,
    ) -> None:
        self.settings = settings
        self.base = base
        self.director = director
        self.extra_sysctls = extra_sysctls
        self.mapper = Mapper(settings)
        self.last_desired: DesiredState | None = None
        self.last_result: MappingResult | None = None

    def compute(self, snap: Snapshot) -> tuple[MappingResult, DesiredState]:
        result = self.mapper.map(snap)
        services = dict(result.desired.services)
        for key, vs in self.base.services.items():
            if key in services:
                log.warning("%s is in the config file and in Kubernetes (%s); the config file wins", key, services[key].name)
            services[key] = vs
        sysctls = {**(self.extra_sysctls(services) if self.extra_sysctls else {}), **self.base.sysctls}
        desired = DesiredState(services=services, timeouts=self.base.timeouts, sysctls=sysctls, ownership=self.base.ownership)
        self.last_result = result
        return result, desired

    def reconcile(self, snap: Snapshot, *, full: bool = False) -> ReconcileReport:
        """Compute and (with a director) sync. Raises what ``Director.sync`` raises."""
        t0 = time.perf_counter()
        result, desired = self.compute(snap)
        last = self.last_desired
        keys: set[ServiceKey] | None = None
        if not full and last is not None and (last.timeouts, last.sysctls, last.ownership) == (
            desired.timeouts,
            desired.sysctls,
            desired.ownership,
        ):
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
