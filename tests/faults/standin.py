"""The stand-in Kubernetes API server (tests/kubernetes/apiserver.py) as the fault
runner's ``StandInApi``: the API server the ``api-outage`` fault takes away. Used by the
fault-injection test and by bench/faults.py."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType

import yaml

from tests.kubernetes import k8sobjects as k
from tests.kubernetes.apiserver import ServerThread

__all__ = ["StandInKube"]

#: Seconds to wait for the server's own loop (it answers in milliseconds; the VM is slow).
CALL_TIMEOUT = 60.0


class StandInKube:
    """A stand-in API server on its own thread, with a kubeconfig pointing at it."""

    def __init__(self, directory: Path) -> None:
        self._thread = ServerThread()
        self._kubeconfig = directory / "kubeconfig"
        self._nodes: dict[str, str] = {}

    def __enter__(self) -> StandInKube:
        self._thread.__enter__()
        self._kubeconfig.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "stand-in", "cluster": {"server": self._thread.server.url}}],
                    "users": [{"name": "director", "user": {"token": "t0ken"}}],
                    "contexts": [{"name": "c", "context": {"cluster": "stand-in", "user": "director"}}],
                    "current-context": "c",
                }
            )
        )
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._thread.__exit__(exc_type, exc, tb)

    @property
    def kubeconfig(self) -> Path:
        return self._kubeconfig

    def publish(self, nodes: Mapping[str, str], services: Mapping[str, str], port: int) -> None:
        """Nodes (name -> InternalIP); Services (name -> external IP) on ``port`` with one
        ready endpoint on every node published so far. The store takes them while the
        server is stopped too (the watches get them when it is back)."""
        self._nodes.update(nodes)
        objects = [k.node(name, ip) for name, ip in nodes.items()]
        ports = [("web", "TCP", port)]
        for name, ip in services.items():
            endpoints = [k.endpoint(node, f"10.230.{i}.5") for i, node in enumerate(self._nodes, start=1)]
            objects += [
                k.service(name, external_ips=[ip], ports=ports),
                k.endpointslice(name, endpoints, ports=ports),
            ]

        def put_all() -> None:
            for obj in objects:
                self._thread.server.put(obj)

        self._run(put_all)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._thread.server.stop(), self._thread.loop).result(CALL_TIMEOUT)

    def start(self) -> None:
        asyncio.run_coroutine_threadsafe(self._thread.server.start(), self._thread.loop).result(CALL_TIMEOUT)

    def _run(self, fn: Callable[[], None]) -> None:
        """``fn`` on the server's loop: its store is not thread-safe."""

        async def call() -> None:
            fn()

        asyncio.run_coroutine_threadsafe(call(), self._thread.loop).result(CALL_TIMEOUT)
