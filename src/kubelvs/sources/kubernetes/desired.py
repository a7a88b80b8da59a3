"""Kubernetes as a source of the director's desired state (``sources.desired``).

    API server (list + watch) or kubectl -o yaml files -> Store -> Mapper (O(changed))
        + the config file's own services, timeouts and sysctls -> DesiredUpdate
    after each sync: Service status and Events (only while this director holds the Lease)

The Mapper reports which virtual services it changed since the snapshot it mapped
before, so a Service edit costs O(that Service) from the store to the kernel. The
config file's static services win over mapped ones of the same key (a warning says so).
While the API server is away the store keeps its objects, so every update repeats the
same state and the kernel keeps it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path

from ...model import DesiredState, ServiceKey
from ..config import Config, to_desired
from ..desired import DesiredUpdate, Happening, SourceGauges, SyncOutcome
from ..file import config_guard
from .api import KubeApi
from .leader import LeaderElector
from .mapping import Mapper, MappingResult, Snapshot
from .objects import EventSpec
from .settings import KubeSettings, parse_kubernetes
from .source import ObjectSource
from .writer import StatusWriter

__all__ = ["KubernetesSource", "identity"]

log = logging.getLogger("kubelvs.kubernetes")


def identity() -> str:
    """This director's name in the Lease and in Events: the pod (Downward API) or host."""
    return os.environ.get("POD_NAME") or socket.gethostname()


class KubernetesSource:
    """Services, EndpointSlices and Nodes (from ``api``, a kubeconfig or ``manifests``),
    mapped to virtual services and merged with ``config``'s own part."""

    def __init__(
        self,
        config: Config,
        *,
        settings: KubeSettings | None = None,  # None: from config's kubernetes: section
        kubeconfig: Path | None = None,
        manifests: Path | None = None,
        api: KubeApi | None = None,  # an API client already made (tests: KubeApi.for_url)
        poll_seconds: float = 1.0,
        write_status: bool = True,  # False for a dry run: read only
        notes: bool = False,  # True for a dry run: DesiredUpdate.notes (a line per Service)
        name: str | None = None,  # the identity in the Lease and Events (default: identity())
    ) -> None:
        self.config = config
        self.base = to_desired(config)
        self.settings = settings or parse_kubernetes(
            config.kubernetes, self.base.ownership, multi_director=config.bgp is not None
        )
        self.objects = ObjectSource(
            self.settings, kubeconfig=kubeconfig, manifests=manifests, poll=poll_seconds, api=api
        )
        self.description = f"Kubernetes objects in {manifests}" if manifests else "the Kubernetes API"
        self.resync_seconds = self.settings.resync_seconds
        self.coalesce_seconds = self.settings.coalesce_seconds
        self.write_status = write_status
        self.notes = notes
        self.identity = name or identity()
        self.mapper = Mapper(self.settings)
        self.writer: StatusWriter | None = None
        self.elector: LeaderElector | None = None
        self.last_result: MappingResult | None = None
        self._last_snapshot: Snapshot | None = None
        self._started = False

    async def open(self) -> None:
        await self.objects.open()
        api = self.objects.api
        if api is None or not self.write_status:
            return
        self.writer = StatusWriter(api, identity=self.identity)
        s = self.settings
        if s.leader_enabled:
            self.elector = LeaderElector(
                api,
                namespace=s.leader_namespace,
                name=s.leader_name,
                identity=self.identity,
                lease_seconds=s.lease_seconds,
                renew_seconds=s.renew_seconds,
            )

    @property
    def ready(self) -> bool:
        return self.objects.store.initialized

    def start(self, stop: asyncio.Event, wake: Callable[[], None]) -> list[asyncio.Task[None]]:
        self._started = True
        self.objects.store.on_change = wake
        tasks = self.objects.start(stop)
        if self.elector is not None:
            self.elector.on_elected = wake  # the new leader writes status at once
            tasks.append(asyncio.create_task(self.elector.run(stop)))
        return tasks

    def current(self, *, full: bool) -> DesiredUpdate:
        snap = self.objects.store.snapshot(take_changes=True)  # the mapping reads only what changed
        result = self.mapper.map(snap, full=full)
        services = dict(result.desired.services)
        for key, vs in self.base.services.items():
            if key in services:
                log.warning(
                    "%s is in the config file and in Kubernetes (%s); the config file wins",
                    key,
                    services[key].name,
                )
            services[key] = vs
        health = dict(result.desired.health)
        if self.base.services:  # the config file's services win here too, with their own checks
            for key in self.base.services:
                health.pop(key, None)
            health.update(self.base.health)
        desired = DesiredState(
            services=services,
            timeouts=self.base.timeouts,
            sysctls=self.base.sysctls,
            ownership=self.settings.ownership,
            health=health,
            drain_timeout=self.settings.drain_timeout_seconds,
            drain_timeouts=self.base.drain_timeouts,
        )
        self.last_result, self._last_snapshot = result, snap
        # The config file's services never change while we run: they are no change.
        changed = (
            None
            if result.changed is None
            else frozenset(k for k in result.changed if k not in self.base.services)
        )
        return DesiredUpdate(
            desired,
            changed,
            recommended_sysctls=self.config.recommended_sysctls,
            graceful=self.config.graceful,
            deletion_guard=config_guard(self.config),
            vrrp=self.config.vrrp,
            bgp=self.config.bgp,
            # A line per Service, O(all Services): only for the dry run's report.
            notes=_notes(result) if self.notes else (),
            realserver_names=self.mapper.node_names(),
        )

    def gauges(self) -> SourceGauges:
        return SourceGauges(
            watch_restarts={kind: max(st.watches - 1, 0) for kind, st in self.objects.stats.items()},
            ipam=self.mapper.ipam_usage(),
        )

    async def after_sync(self, outcome: SyncOutcome) -> None:
        result, snap = self.last_result, self._last_snapshot
        if self.writer is None or result is None or snap is None:
            return
        if outcome.happenings:  # this director's own decisions: posted by every director
            await self.writer.post(_own_events(outcome.happenings, result, snap))
        if self.elector is not None:
            if not self._started:  # --once: take the Lease for this one write
                await self.elector.try_acquire_or_renew()
            if not self.elector.is_leader:
                return
        events = result.events + _failure_events(outcome, result, snap)
        await self.writer.write(replace(result, events=events), snap.services)

    async def close(self) -> None:
        if self.elector is not None:
            await self.elector.release()
        await self.objects.close()


def _failure_events(outcome: SyncOutcome, result: MappingResult, snap: Snapshot) -> tuple[EventSpec, ...]:
    """Events on the Services: a virtual service the kernel refuses (Warning SyncFailed),
    a real server that went down (Warning RealServerDown) or came back (RealServerUp),
    and a virtual service whose every real server fails its check (NoHealthyRealServer)."""
    out: list[EventSpec] = []

    def event(key: ServiceKey, reason: str, message: str, type_: str = "Warning") -> None:
        spec = _service_event(result, snap, key, reason, message, type_)
        if spec is not None:
            out.append(spec)

    for key, reason in sorted(outcome.failing.items(), key=lambda kv: ServiceKey.sort_key(kv[0])):
        event(
            key,
            "SyncFailed",
            f"{key} is not fully programmed: the kernel refused it ({reason}); retrying with backoff",
        )
    for key, change, text in outcome.health_changes:
        if change == "down":
            event(key, "RealServerDown", f"{key}: {text}; it gets no new connections")
        else:
            event(key, "RealServerUp", f"{key}: {text}", "Normal")
    for key in sorted(outcome.no_healthy, key=ServiceKey.sort_key):
        event(
            key,
            "NoHealthyRealServer",
            f"{key}: every real server fails its health check; traffic goes to all of them (fail open)",
        )
    return tuple(out)


def _service_event(
    result: MappingResult, snap: Snapshot, key: ServiceKey, reason: str, message: str, type_: str
) -> EventSpec | None:
    """An Event on the Service that owns ``key``; None when it is gone (nobody to tell)."""
    owner = result.owners.get(key)
    svc = snap.services.get(owner) if owner is not None else None
    return None if svc is None else EventSpec(svc.namespace, svc.name, svc.uid, reason, message, type_)


def _own_events(happenings: Iterable[Happening], result: MappingResult, snap: Snapshot) -> list[EventSpec]:
    events = (_service_event(result, snap, h.key, h.reason, h.message, h.type) for h in happenings)
    return [e for e in events if e is not None]


def _notes(result: MappingResult) -> tuple[str, ...]:
    lines = [f"# {ev.type} {ev.namespace}/{ev.name} {ev.reason}: {ev.message}" for ev in result.events]
    for (ns, name), ips in sorted(result.status.items()):
        lines.append(f"# status {ns}/{name} loadBalancer.ingress = {', '.join(ips) or '(none)'}")
    return tuple(lines)
