"""The watch client against the stand-in API server: list pages, watch streams,
bookmarks, 410 Gone, dropped connections, 500s and an outage."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from kubelvs.sources.kubernetes.api import ApiError, KubeApi
from kubelvs.sources.kubernetes.tracker import Store
from kubelvs.sources.kubernetes.watch import WatchStats, list_kind, watch_kind

from . import k8sobjects as k
from .apiserver import FakeApiServer


async def until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        if loop.time() > end:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


def run_with_server(body: Callable[[FakeApiServer, KubeApi], Awaitable[Any]], **kw: Any) -> Any:
    async def main() -> Any:
        server = FakeApiServer(**kw)
        await server.start()
        api = KubeApi.for_url(server.url)
        try:
            return await body(server, api)
        finally:
            await api.close()
            await server.close()

    return asyncio.run(main())


class Watching:
    """Runs watch_kind for one kind in the background."""

    def __init__(self, api: KubeApi, kind: str, store: Store, **kw: Any) -> None:
        self.stats = WatchStats()
        self.stop = asyncio.Event()
        kw.setdefault("backoff_max", 0.05)
        self.task = asyncio.create_task(watch_kind(api, kind, store, stats=self.stats, stop=self.stop, **kw))

    async def close(self) -> None:
        self.stop.set()
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


def test_list_in_pages_and_resource_version() -> None:
    async def body(server: FakeApiServer, api: KubeApi) -> None:
        for i in range(1234):
            server.put(k.service(f"s{i:04d}", external_ips=["10.240.0.201"]))
        store = Store()
        stats = WatchStats()
        rv = await list_kind(api, "Service", store, stats)
        assert rv == str(server.rv) and store.count("Service") == 1234 and stats.list_pages == 3
        assert ("GET", "/api/v1/services?limit=500") in server.requests

    run_with_server(body)


def test_watch_applies_events_and_bookmarks_move_resource_version() -> None:
    async def body(server: FakeApiServer, api: KubeApi) -> None:
        server.put(k.node("node1", "10.240.0.101"))
        store = Store()
        w = Watching(api, "Node", store)
        await until(lambda: store.count("Node") == 1 and w.stats.watches == 1)
        server.put(k.node("node2", "10.240.0.102"))
        await until(lambda: store.count("Node") == 2)
        server.delete("Node", "", "node1")
        await until(lambda: store.count("Node") == 1)
        await until(lambda: w.stats.bookmarks >= 2)
        assert w.stats.resource_version == str(server.rv)
        watch_q = [q for m, q in server.requests if "watch=true" in q]
        assert "allowWatchBookmarks=true" in watch_q[0] and "resourceVersion=" in watch_q[0]
        await w.close()

    run_with_server(body, bookmark_interval=0.05)


def test_stream_end_rewatches_from_last_resource_version_without_relist() -> None:
    async def body(server: FakeApiServer, api: KubeApi) -> None:
        server.put(k.node("node1", "10.240.0.101"))
        store = Store()
        w = Watching(api, "Node", store, timeout_seconds=1)
        await until(lambda: w.stats.watches >= 2, timeout=4)
        assert w.stats.lists == 1 and w.stats.errors == 0
        server.put(k.node("node2", "10.240.0.102"))
        await until(lambda: store.count("Node") == 2)
        await w.close()

    run_with_server(body)


def test_a_new_list_sees_deletions_missed_while_away() -> None:
    async def body(server: FakeApiServer, api: KubeApi) -> None:
        server.put(k.node("node1", "10.240.0.101"))
        server.put(k.node("node2", "10.240.0.102"))
        store = Store()
        w = Watching(api, "Node", store)
        await until(lambda: w.stats.watches == 1)
        # While we are disconnected, node1 goes away and the history is compacted.
        server.bookmark_interval = 10  # no bookmark may save us
        server.delete("Node", "", "node1")
        w.stats.resource_version = ""
        server.compact()
        server.put(k.node("node3", "10.240.0.103"))
        await w.close()
        # A fresh loop lists: node1, deleted while nobody watched, leaves the store.
        w2 = Watching(api, "Node", store)
        await until(lambda: set(n for _, n in store.snapshot().nodes) == {"node2", "node3"})
        await w2.close()

    run_with_server(body)


def test_410_from_an_expired_watch_resource_version() -> None:
    async def body(server: FakeApiServer, api: KubeApi) -> None:
        server.bookmark_interval = 10
        server.put(k.node("node1", "10.240.0.101"))
        store = Store()
        w = Watching(api, "Node", store)
        await until(lambda: w.stats.watches == 1)
        server.compact()
        server.delete("Node", "", "node1")  # history after compaction: fine
        server.compact()
        server.drop_watches()  # reconnect with the old resourceVersion
        await until(lambda: w.stats.gone >= 1)
        await until(lambda: store.count("Node") == 0 and w.stats.lists >= 2)
        await w.close()

    run_with_server(body)


def test_410_as_http_status() -> None:
    async def body(server: FakeApiServer, api: KubeApi) -> None:
        server.gone_as_http = True
        server.bookmark_interval = 10
        server.put(k.node("node1", "10.240.0.101"))
        store = Store()
        w = Watching(api, "Node", store)
        await until(lambda: w.stats.watches == 1)
        server.compact()
        server.drop_watches()
        await until(lambda: w.stats.gone >= 1 and w.stats.lists >= 2)
        await w.close()

    run_with_server(body)


def test_500s_back_off_then_recover() -> None:
    async def body(server: FakeApiServer, api: KubeApi) -> None:
        server.put(k.node("node1", "10.240.0.101"))
        server.fail_next(3, 500)
        store = Store()
        w = Watching(api, "Node", store)
        await until(lambda: store.count("Node") == 1)
        assert w.stats.errors == 3 and len(w.stats.backoffs) == 3
        assert "500 InternalError: injected failure" in w.stats.last_error
        await w.close()

    run_with_server(body)


def test_dropped_connection_rewatches_from_resource_version() -> None:
    async def body(server: FakeApiServer, api: KubeApi) -> None:
        server.bookmark_interval = 10
        server.put(k.node("node1", "10.240.0.101"))
        store = Store()
        w = Watching(api, "Node", store)
        await until(lambda: w.stats.watches == 1)
        server.drop_watches()
        server.put(k.node("node2", "10.240.0.102"))  # happens while disconnected
        await until(lambda: store.count("Node") == 2)
        assert w.stats.lists == 1  # re-watched from the resourceVersion, no re-list
        await w.close()

    run_with_server(body)


def test_outage_keeps_the_store_then_converges() -> None:
    async def body(server: FakeApiServer, api: KubeApi) -> None:
        server.put(k.node("node1", "10.240.0.101"))
        server.put(k.node("node2", "10.240.0.102"))
        store = Store()
        w = Watching(api, "Node", store)
        await until(lambda: w.stats.watches == 1)
        await server.stop()
        await until(lambda: w.stats.errors >= 3)
        assert store.count("Node") == 2  # nothing forgotten while the API is away
        server.delete("Node", "", "node2")
        await server.start()
        await until(lambda: store.count("Node") == 1)
        await w.close()

    run_with_server(body)


def test_garbage_on_the_stream_is_an_error_not_a_crash() -> None:
    async def body(server: FakeApiServer, api: KubeApi) -> None:
        try:
            async for _ in api.stream("/api/v1/nowhere", {"watch": "true"}, read_timeout=2):
                pass
        except ApiError as exc:
            assert exc.status == 404 and exc.reason == "NotFound"
        else:
            raise AssertionError("no error")

    run_with_server(body)
