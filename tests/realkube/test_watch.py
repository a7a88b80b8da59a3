"""Watches against a real kube-apiserver: it is killed mid-watch (the director keeps its
table and converges once it is back), and etcd's history is compacted while it is away, so
that the director's resourceVersion is gone when it watches again (410, a relist); and its
bookmarks, which it sends 2 s before a watch's ``timeoutSeconds`` ends."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from kubelvs.sources.kubernetes.api import KubeApi
from kubelvs.sources.kubernetes.tracker import Store
from kubelvs.sources.kubernetes.watch import WatchStats, list_kind

from ..kubernetes import k8sobjects as k
from ..kubernetes.helpers import WHOAMI_SECTION, settings
from ..kubernetes.stack import DirectorStack
from ..kubernetes.test_watch import Watching, until
from .cluster import Cluster

pytestmark = pytest.mark.real_apiserver

WHOAMI = "TCP 10.240.0.201:80"


def configmaps(prefix: str, count: int) -> list[dict[str, Any]]:
    """Writes no Service watch sees: they move etcd's revision past the Services'."""
    return [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": f"{prefix}-{i}", "namespace": "default"},
            "data": {"i": str(i)},
        }
        for i in range(count)
    ]


def test_outage_and_compaction_then_converges(kube: Cluster) -> None:
    kube.create_all(k.whoami_objects())

    async def main() -> None:
        api = await KubeApi.connect(kube.kubeconfig)
        d = DirectorStack(api, settings(WHOAMI_SECTION), identity="director-a", resync=0.5)
        await d.start()
        try:
            await until(lambda: WHOAMI in d.backend.table(), timeout=20)
            # One list per kind: the watches start from the start-up list's resourceVersion.
            assert {kind: s.lists for kind, s in d.stats.items()} == {
                "Service": 1,
                "EndpointSlice": 1,
                "Node": 1,
            }
            table = d.backend.table()
            lists = d.stats["Service"].lists
            await asyncio.to_thread(kube.create_all, configmaps("filler", 5))
            await asyncio.to_thread(kube.kill_apiserver)
            await until(lambda: sum(s.errors for s in d.stats.values()) >= 3, timeout=20)
            await asyncio.sleep(1.0)  # resyncs while it is away
            assert d.backend.table() == table and d.loop.failures == 0
            revision = await asyncio.to_thread(kube.etcd_compact)
            assert revision > int(d.stats["Service"].resource_version)
            await asyncio.to_thread(kube.start)
            await until(lambda: d.stats["Service"].gone >= 1 and d.stats["Service"].lists > lists, timeout=30)
            # Converges on an edit made after the outage.
            await asyncio.to_thread(
                kube.merge_patch, "/api/v1/nodes/node2", {"spec": {"unschedulable": True}}
            )
            await until(lambda: d.backend.table()[WHOAMI] == [("10.240.0.101", 80, 1, "dr")], timeout=20)
        finally:
            await d.close()

    asyncio.run(main())


def test_bookmarks_move_a_quiet_watch_past_the_clusters_writes(kube: Cluster) -> None:
    """A real bookmark: the watch cache sends one 2 s before a watch's timeoutSeconds, when
    its revision is past the watch's (here etcd's progress notifications carry the writes of
    other kinds into the Services' cache). The watch loop counts it, resumes from its
    resourceVersion without a list, and an edit after still arrives."""
    kube.create_all(k.whoami_objects())

    async def main() -> None:
        api = await KubeApi.connect(kube.kubeconfig)
        store, listed = Store(), WatchStats()
        rv = await list_kind(api, "Service", store, listed)
        w = Watching(api, "Service", store, timeout_seconds=4, listed_rv=rv)
        try:
            await asyncio.to_thread(kube.create_all, configmaps("bookmark", 3))
            await until(lambda: w.stats.bookmarks >= 1, timeout=20)
            assert w.stats.events == 0 and int(w.stats.resource_version) > int(rv)
            await until(lambda: w.stats.watches >= 2, timeout=10)  # resumed from the bookmark
            assert w.stats.lists == 0 and w.stats.errors == 0 and w.stats.gone == 0
            await asyncio.to_thread(
                kube.merge_patch,
                "/api/v1/namespaces/default/services/whoami",
                {"metadata": {"labels": {"edited": "yes"}}},
            )
            await until(lambda: w.stats.events >= 1, timeout=10)
        finally:
            await w.close()
            await api.close()

    asyncio.run(main())
