"""Where the director and the node agent get their objects: the API server (list +
watch of Services, EndpointSlices and Nodes) or a directory of ``kubectl -o yaml``
files. Both feed one ``Store``; the roles read nothing else.

    source = ObjectSource(settings, kubeconfig=..., manifests=None)
    await source.open()                 # the first complete list (or the files)
    tasks = source.start(stop)          # watches (or the directory poller) until ``stop``
    ...
    await source.close()
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from .api import ApiError, KubeApi
from .manifests import load_into, watch_manifests
from .settings import KubeSettings
from .tracker import KINDS, Store
from .watch import Backoff, WatchStats, list_kind, watch_kind

__all__ = ["ObjectSource", "initial_list"]

log = logging.getLogger("kubelvs.kubernetes")


async def initial_list(
    api: KubeApi, store: Store, stats: dict[str, WatchStats], settings: KubeSettings
) -> None:
    """List every kind once, retrying a few times; raises the last ``ApiError``."""
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


class ObjectSource:
    def __init__(
        self,
        settings: KubeSettings,
        *,
        kubeconfig: Path | None = None,
        manifests: Path | None = None,
        poll: float = 1.0,
        api: KubeApi | None = None,  # a client already made (tests); None: from the kubeconfig
    ) -> None:
        self.settings = settings
        self.kubeconfig = kubeconfig
        self.manifests = manifests
        self.poll = poll
        self.store = Store()
        self.stats = {kind: WatchStats() for kind in KINDS}
        self.api: KubeApi | None = api

    async def open(self) -> None:
        """Load the files, or connect and list every kind once."""
        if self.manifests is not None:
            load_into(self.store, self.manifests)
            return
        if self.api is None:
            self.api = await KubeApi.connect(self.kubeconfig)
        await initial_list(self.api, self.store, self.stats, self.settings)

    def start(self, stop: asyncio.Event) -> list[asyncio.Task[None]]:
        """Keep the store current until ``stop``: one watch per kind, or the poller."""
        if self.manifests is not None:
            return [
                asyncio.create_task(watch_manifests(self.store, self.manifests, poll=self.poll, stop=stop))
            ]
        assert self.api is not None, "open() first"
        s = self.settings
        return [
            asyncio.create_task(
                watch_kind(
                    self.api,
                    kind,
                    self.store,
                    stats=self.stats[kind],
                    timeout_seconds=s.watch_timeout_seconds,
                    relist_seconds=s.relist_seconds,
                    backoff_max=s.backoff_max_seconds,
                    stop=stop,
                    listed_rv=self.stats[kind].resource_version,  # open() listed: watch from there
                )
            )
            for kind in KINDS
        ]

    async def close(self) -> None:
        if self.api is not None:
            await self.api.close()
            self.api = None
