"""A whole director (watches, store, coalescer, reconciler, leader, writer) on one
event loop, against the stand-in API server, with an in-memory data plane."""

from __future__ import annotations

import asyncio
from typing import Any

from kubelvs.model import DesiredState
from kubelvs.roles.director import Director
from kubelvs.sources.kubernetes.api import KubeApi
from kubelvs.sources.kubernetes.leader import LeaderElector
from kubelvs.sources.kubernetes.reconciler import Reconciler
from kubelvs.sources.kubernetes.runner import DirectorLoop
from kubelvs.sources.kubernetes.settings import KubeSettings
from kubelvs.sources.kubernetes.tracker import KINDS, Store
from kubelvs.sources.kubernetes.watch import WatchStats, watch_kind
from kubelvs.sources.kubernetes.writer import StatusWriter

from .memory_backend import MemoryBackend


class DirectorStack:
    def __init__(self, url: str, settings: KubeSettings, *, identity: str, backend: Any = None, resync: float = 30.0) -> None:
        self.api = KubeApi.for_url(url)
        self.backend = backend or MemoryBackend()
        self.store = Store()
        self.stats = {k: WatchStats() for k in KINDS}
        self.reconciler = Reconciler(settings, base=DesiredState(ownership=settings.ownership), director=Director(self.backend))
        self.writer = StatusWriter(self.api, identity=identity)
        self.elector = LeaderElector(self.api, namespace="kube-system", name="kubelvs-director", identity=identity, lease_seconds=2, renew_seconds=0.2)
        self.loop = DirectorLoop(self.store, self.reconciler, settings, writer=self.writer, elector=self.elector, resync=resync)
        self.elector.on_elected = self.loop.coalescer.poke
        self.settings = settings
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self.tasks.append(asyncio.create_task(self.loop.run(self.stop)))
        for kind in KINDS:
            self.tasks.append(
                asyncio.create_task(
                    watch_kind(self.api, kind, self.store, stats=self.stats[kind], timeout_seconds=30, backoff_max=0.1, stop=self.stop)
                )
            )
        self.tasks.append(asyncio.create_task(self.elector.run(self.stop)))

    async def close(self) -> None:
        self.stop.set()
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.elector.release()
        await self.api.close()
