"""``kubelvs director --kubernetes | --from-manifests``: the long-running loop.

    watches (or the manifest poller) -> Store -> Coalescer (bounded delay)
        -> Reconciler (map, diff, sync only what changed) -> kernel
        -> StatusWriter (only while this director holds the Lease)

The data plane never waits for the API server or for leadership: while the API is
away the store keeps the last objects, so the kernel keeps its state; a full sync
runs every ``resync_seconds`` and after any failure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from ...backends import open_backend
from ...cli import exit_codes
from ...cli.render import status_document
from ...errors import KubelvsError
from ...model import DesiredState, ServiceKey, VirtualService, kernel_version, recommended_sysctls
from ...roles.director import Director
from ..config import Config, load_config, to_desired
from .api import ApiError, KubeApi
from .leader import LeaderElector
from .manifests import load_into, watch_manifests
from .mapping import MappingResult
from .reconciler import Reconciler
from .settings import KubeSettings, parse_kubernetes
from .tracker import KINDS, Coalescer, Store
from .watch import Backoff, WatchStats, list_kind, watch_kind
from .writer import StatusWriter

__all__ = ["run", "identity", "render_text", "DirectorLoop"]

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


async def _initial_list(api: KubeApi, store: Store, stats: dict[str, WatchStats], settings: KubeSettings) -> None:
    backoff = Backoff(settings.backoff_max_seconds)
    for kind in KINDS:
        for attempt in range(5):
            try:
                await list_kind(api, kind, store, stats[kind])
                break
            except ApiError as exc:
                if attempt == 4:
                    raise
                log.warning("listing %s: %s; retrying", kind, exc)
                await asyncio.sleep(backoff.next())


async def _main(args: argparse.Namespace, config: Config, base: DesiredState, settings: KubeSettings) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    store = Store()
    stats = {kind: WatchStats() for kind in KINDS}
    api: KubeApi | None = None
    manifests: Path | None = args.from_manifests
    try:
        if manifests is not None:
            load_into(store, manifests)
        else:
            api = await KubeApi.connect(args.kubeconfig)
            await _initial_list(api, store, stats, settings)

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

            def extra(services: Mapping[ServiceKey, VirtualService]) -> dict[str, int]:
                if not config.recommended_sysctls:
                    return {}
                return recommended_sysctls(backend.name, kernel, services.values())

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
            tasks = [asyncio.create_task(dl.run(stop))]
            if manifests is not None:
                tasks.append(asyncio.create_task(watch_manifests(store, manifests, poll=args.poll, stop=stop)))
            else:
                assert api is not None
                for kind in KINDS:
                    tasks.append(
                        asyncio.create_task(
                            watch_kind(
                                api, kind, store, stats=stats[kind], timeout_seconds=settings.watch_timeout_seconds,
                                relist_seconds=settings.relist_seconds, backoff_max=settings.backoff_max_seconds, stop=stop,
                            )
                        )
                    )
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
        if api is not None:
            await api.close()


def _resync(args: argparse.Namespace, settings: KubeSettings) -> float:
    # --resync has a default (60) in the shared director parser: the config's
    # kubernetes.resync_seconds wins unless the flag was given another value.
    flag = getattr(args, "resync", None)
    return float(flag) if flag not in (None, 60.0) else settings.resync_seconds


class DirectorLoop:
    """Reconciles after each coalesced burst of changes and on the resync timer."""

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
        self.store = store
        self.reconciler = reconciler
        self.writer = writer
        self.elector = elector
        self.resync = resync or settings.resync_seconds
        self.coalescer = Coalescer(settings.coalesce_seconds)
        store.on_change = self.coalescer.poke
        self.reconciles = 0
        self.failures = 0
        self.last_programmed = 0.0  # time.monotonic() when the kernel was last programmed

    async def run(self, stop: asyncio.Event) -> None:
        while not self.store.initialized and not stop.is_set():
            await self.coalescer.wait(timeout=0.5)
        backoff = Backoff(self.resync)
        full = True
        last_full = time.monotonic()
        while not stop.is_set():
            if time.monotonic() - last_full >= self.resync:
                full = True
            snap = self.store.snapshot()
            self.store.take_changes()
            try:
                # In a thread: a large sync must not starve the watches of the event loop.
                await asyncio.to_thread(self.reconciler.reconcile, snap, full=full)
                self.reconciles += 1
                self.last_programmed = time.monotonic()
                if full:
                    last_full = time.monotonic()
                full = False
                backoff.reset()
                wait = max(0.0, self.resync - (time.monotonic() - last_full))
            except KubelvsError as exc:
                self.failures += 1
                full = True
                wait = backoff.next()
                log.error("sync failed, full sync again in %.1f s: %s", wait, exc)
            if self.writer is not None and self.reconciler.last_result is not None:
                if self.elector is None or self.elector.is_leader:
                    await self.writer.write(self.reconciler.last_result, snap.services)
            waiter = asyncio.create_task(self.coalescer.wait(timeout=wait))
            stopper = asyncio.create_task(stop.wait())
            await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            for t in (waiter, stopper):
                t.cancel()
            await asyncio.gather(waiter, stopper, return_exceptions=True)
