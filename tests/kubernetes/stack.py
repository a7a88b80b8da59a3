"""A whole director (watches, store, mapping, director, leader, status writer) on one
event loop, against the stand-in API server, with the in-memory data plane: assembled
by ``kubelvs.app.director.start_director``, the same builder the CLI uses. The real
kube-apiserver tier (tests/realkube) gives it a client of its own (TLS, a token)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any, Protocol

from kubelvs.app.director import DirectorOptions, DirectorProgram, start_director
from kubelvs.backends.memory import MemoryBackend
from kubelvs.roles.guard import GuardSettings
from kubelvs.sources.config import Config
from kubelvs.sources.kubernetes.api import KubeApi
from kubelvs.sources.kubernetes.desired import KubernetesSource
from kubelvs.sources.kubernetes.settings import KubeSettings


class ApiUnderTest(Protocol):
    """What a test does to the API server its director watches: the stand-in
    (tests/kubernetes/apiserver.py) or a real kube-apiserver (tests/realkube/cluster.py)."""

    def put(self, obj: dict[str, Any]) -> Any: ...  # create, or update an object got from it
    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any]: ...
    def delete(self, kind: str, namespace: str, name: str) -> None: ...
    async def stop(self) -> None: ...  # an outage (a crash)
    async def start(self) -> None: ...
    async def client(self) -> KubeApi: ...  # a client for the director, with its credentials


class DirectorStack:
    def __init__(
        self,
        url: str | KubeApi,
        settings: KubeSettings,
        *,
        identity: str,
        backend: Any = None,
        resync: float = 30.0,
        guard: GuardSettings | None = None,
    ) -> None:
        self.api = KubeApi.for_url(url) if isinstance(url, str) else url
        self.backend = backend or MemoryBackend()
        self.settings = replace(settings, lease_seconds=2, renew_seconds=0.2)
        self.source = KubernetesSource(Config(), settings=self.settings, api=self.api, name=identity)
        self.options = DirectorOptions(resync_seconds=resync, guard=guard or GuardSettings())
        self.program: DirectorProgram | None = None
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.program = await start_director(self.options, self.source, backend=self.backend)
        self.task = asyncio.create_task(self.program.run(self.stop))

    @property
    def loop(self) -> Any:
        assert self.program is not None
        return self.program.loop

    @property
    def director(self) -> Any:
        assert self.program is not None
        return self.program.director

    @property
    def stats(self) -> Any:
        return self.source.objects.stats

    @property
    def elector(self) -> Any:
        return self.source.elector

    async def close(self) -> None:
        self.stop.set()
        if self.task is not None:
            await self.task
        if self.program is not None:
            await self.program.close()
