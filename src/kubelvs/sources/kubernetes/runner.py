"""``kubelvs director --kubernetes | --from-manifests``: the long-running loop.

    watches (or the manifest poller) -> Store -> Coalescer (bounded delay)
        -> Reconciler (map, diff, sync only what changed) -> kernel
        -> StatusWriter (only while this director holds the Lease)

The list + watch plumbing (``source``) and the loop (``loop``) are shared with the node
agent (``noderunner``). The data plane never waits for the API server or for
leadership: while the API is away the store keeps the last objects, so the kernel keeps
its state; a full sync runs every ``resync_seconds`` and after any failure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import socket
import sys
from collections.abc import Mapping

from ...backends import open_backend
from ...cli import exit_codes
from ...cli.render import status_document
from ...model import (
    DesiredState,
    Forward,
    ServiceKey,
    VirtualService,
    kernel_version,
    recommended_sysctls,
)
from ...roles.director import Director
from ..config import Config, load_config, to_desired
from .leader import LeaderElector
from .loop import ReconcileLoop
from .mapping import MappingResult, Snapshot
from .reconciler import Reconciler
from .settings import KubeSettings, parse_kubernetes
from .source import ObjectSource, stop_on_signals
from .tracker import Store
from .writer import StatusWriter

__all__ = ["DirectorLoop", "RecommendedSysctls", "identity", "render_text", "run"]

log = logging.getLogger("kubelvs.kubernetes")


def identity() -> str:
    """This director's name in the Lease and in Events: the pod (Downward API) or host."""
    return os.environ.get("POD_NAME") or socket.gethostname()


def run(args: argparse.Namespace) -> int:
    if not logging.getLogger().handlers:
        logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = load_config(args.file)
    base = to_desired(config)
    settings = parse_kubernetes(config.kubernetes, base.ownership)
    return asyncio.run(_main(args, config, base, settings))


def render_text(result: MappingResult, desired: DesiredState) -> str:
    lines = []
    for key in sorted(desired.services, key=ServiceKey.sort_key):
        vs = desired.services[key]
        extra = f" persistent {vs.persistence}" if vs.persistence else ""
        lines.append(f"{key} {vs.scheduler}{extra}  {vs.name}".rstrip())
        for rs in vs.realservers:
            lines.append(f"  -> {rs.key} {rs.forward} w={rs.weight}")
    for ev in result.events:
        lines.append(f"# {ev.type} {ev.namespace}/{ev.name} {ev.reason}: {ev.message}")
    for (ns, name), ips in sorted(result.status.items()):
        lines.append(f"# status {ns}/{name} loadBalancer.ingress = {', '.join(ips) or '(none)'}")
    return "\n".join(lines) + "\n"


async def _main(args: argparse.Namespace, config: Config, base: DesiredState, settings: KubeSettings) -> int:
    stop = stop_on_signals()
    source = ObjectSource(settings, kubeconfig=args.kubeconfig, manifests=args.from_manifests, poll=args.poll)
    try:
        await source.open()
        store, api = source.store, source.api

        if args.dry_run:
            result, desired = Reconciler(settings, base=base).compute(store.snapshot())
            if args.output == "json":
                json.dump(status_document(desired, result.names(), counters=False), sys.stdout, indent=2)
                print()
            else:
                sys.stdout.write(render_text(result, desired))
            for ev in result.events:
                log.warning("%s %s/%s %s: %s", ev.type, ev.namespace, ev.name, ev.reason, ev.message)
            return exit_codes.OK

        backend = open_backend(args.backend, netns=args.netns)
        try:
            director = Director(backend, graceful=args.graceful or config.graceful)
            kernel = kernel_version(os.uname().release)

            extra = RecommendedSysctls(backend.name, kernel) if config.recommended_sysctls else None
            reconciler = Reconciler(settings, base=base, director=director, extra_sysctls=extra)
            writer = StatusWriter(api, identity=identity()) if api is not None else None
            elector = (
                LeaderElector(
                    api,
                    namespace=settings.leader_namespace,
                    name=settings.leader_name,
                    identity=identity(),
                    lease_seconds=settings.lease_seconds,
                    renew_seconds=settings.renew_seconds,
                )
                if api is not None and settings.leader_enabled
                else None
            )
            if args.once:
                snap = store.snapshot()
                reconciler.reconcile(snap, full=True)
                if writer is not None and reconciler.last_result is not None:
                    if elector is None or await elector.try_acquire_or_renew():
                        await writer.write(reconciler.last_result, snap.services)
                    if elector is not None:
                        await elector.release()
                return exit_codes.OK

            dl = DirectorLoop(store, reconciler, settings, writer=writer, elector=elector, resync=_resync(args, settings))
            if elector is not None:
                elector.on_elected = dl.coalescer.poke
            tasks = [asyncio.create_task(dl.run(stop)), *source.start(stop)]
            if elector is not None:
                tasks.append(asyncio.create_task(elector.run(stop)))
            await stop.wait()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if elector is not None:
                await elector.release()
            return exit_codes.OK
        finally:
            backend.close()
    finally:
        await source.close()


class RecommendedSysctls:
    """``recommended_sysctls`` for the reconciler, kept up to date per changed service.

    They depend on the services only through "does any real server use NAT", and
    answering that by scanning every real server (100,000 at 10,000 Services, and all
    of them whenever none uses NAT) cost about 60 ms on every reconcile. So the keys of
    the services that use NAT are kept, and only those services are handed over."""

    def __init__(self, backend: str, kernel: tuple[int, int]) -> None:
        self.backend = backend
        self.kernel = kernel
        self.nat: set[ServiceKey] = set()

    def __call__(
        self, services: Mapping[ServiceKey, VirtualService], changed: frozenset[ServiceKey] | None
    ) -> dict[str, int]:
        if changed is None:
            self.nat = {k for k, vs in services.items() if _uses_nat(vs)}
        else:
            for k in changed:
                vs = services.get(k)
                if vs is not None and _uses_nat(vs):
                    self.nat.add(k)
                else:
                    self.nat.discard(k)
        return recommended_sysctls(self.backend, self.kernel, (services[k] for k in self.nat))


def _uses_nat(vs: VirtualService) -> bool:
    return any(rs.forward is Forward.NAT for rs in vs.realservers)


def _resync(args: argparse.Namespace, settings: KubeSettings) -> float:
    # --resync has a default (60) in the shared director parser: the config's
    # kubernetes.resync_seconds wins unless the flag was given another value.
    flag = getattr(args, "resync", None)
    return float(flag) if flag not in (None, 60.0) else settings.resync_seconds


class DirectorLoop(ReconcileLoop):
    """Maps and syncs the director's kernel after each coalesced burst of changes and on
    the resync timer; the Lease holder then writes Service status and Events."""

    def __init__(
        self,
        store: Store,
        reconciler: Reconciler,
        settings: KubeSettings,
        *,
        writer: StatusWriter | None = None,
        elector: LeaderElector | None = None,
        resync: float | None = None,
    ) -> None:
        super().__init__(store, settings, resync=resync)
        self.reconciler = reconciler
        self.writer = writer
        self.elector = elector

    def step(self, snap: Snapshot, *, full: bool) -> None:
        self.reconciler.reconcile(snap, full=full)

    async def after(self, snap: Snapshot) -> None:
        leader = self.elector is None or self.elector.is_leader
        if self.writer is not None and self.reconciler.last_result is not None and leader:
            await self.writer.write(self.reconciler.last_result, snap.services)
