"""List + watch of one kind, forever: the wire protocol handled on purpose.

    list (chunked with limit/continue)  -> Store.replace, remember the list's resourceVersion
    watch from it (allowWatchBookmarks)  -> Store.apply per event; BOOKMARK only moves the
                                             resourceVersion; the stream ends at timeoutSeconds
                                             and is re-opened from the last resourceVersion
    410 Gone (HTTP status or ERROR event) -> re-list at once
    any other error (500, refused, a dropped stream, garbage) -> back off (0.5 s doubling,
                                             capped, with jitter), then re-watch from the last
                                             resourceVersion; a list that fails is retried whole
    every ``relist_seconds``              -> a full re-list (the periodic resync)

While the API server is away nothing is removed from the store: the kernel keeps
serving what it had, and converges once the watch is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field

from ...retry import Backoff
from .api import PATHS, ApiError, Gone, KubeApi
from .tracker import Store

__all__ = ["Backoff", "WatchStats", "list_kind", "watch_kind"]  # Backoff: re-exported from kubelvs.retry

log = logging.getLogger("kubelvs.kubernetes.watch")

LIST_CHUNK = 500


@dataclass(slots=True)
class WatchStats:
    """What one kind's loop did (for logs, tests and metrics)."""

    lists: int = 0
    list_pages: int = 0
    watches: int = 0
    events: int = 0
    bookmarks: int = 0
    gone: int = 0
    errors: int = 0
    resource_version: str = ""
    last_error: str = ""
    backoffs: list[float] = field(default_factory=list)


async def list_kind(api: KubeApi, kind: str, store: Store, stats: WatchStats) -> str:
    """List every object of ``kind`` in pages; replace the store's; return the list's
    resourceVersion. A continue token that expired (410) restarts the list."""
    while True:
        items: list[dict] = []  # type: ignore[type-arg]
        params: dict[str, str] = {"limit": str(LIST_CHUNK)}
        try:
            while True:
                page = await api.get(PATHS[kind], params)
                stats.list_pages += 1
                items += page.get("items") or []
                meta = page.get("metadata") or {}
                token = meta.get("continue")
                if not token:
                    break
                params = {"limit": str(LIST_CHUNK), "continue": token}
        except Gone:
            stats.gone += 1
            continue  # the continue token expired mid-list: start over
        rv = str(meta.get("resourceVersion") or "")
        store.replace(kind, items)
        stats.lists += 1
        stats.resource_version = rv
        return rv


async def watch_kind(
    api: KubeApi,
    kind: str,
    store: Store,
    *,
    stats: WatchStats | None = None,
    timeout_seconds: int = 300,
    relist_seconds: float = 900.0,
    backoff_max: float = 30.0,
    stop: asyncio.Event | None = None,
    listed_rv: str = "",
) -> None:
    """Keep ``store``'s objects of ``kind`` current until ``stop`` is set (or cancelled).

    ``listed_rv``: the resourceVersion of a list the caller has just put into ``store``;
    the watch starts from it instead of listing again."""
    stats = stats if stats is not None else WatchStats()
    stop = stop or asyncio.Event()
    backoff = Backoff(backoff_max)
    rv = listed_rv
    listed_at = time.monotonic() if listed_rv else 0.0
    while not stop.is_set():
        try:
            if not rv or time.monotonic() - listed_at >= relist_seconds:
                rv = await list_kind(api, kind, store, stats)
                listed_at = time.monotonic()
            params = {
                "watch": "true",
                "resourceVersion": rv,
                "allowWatchBookmarks": "true",
                "timeoutSeconds": str(timeout_seconds),
            }
            stats.watches += 1
            # No byte for this long means a dead connection (bookmarks keep a live one busy).
            async for event in api.stream(PATHS[kind], params, read_timeout=timeout_seconds + 30):
                etype = event["type"]
                obj = event["object"]
                if etype == "ERROR":
                    code = int(obj.get("code") or 0)
                    err_cls = Gone if code == 410 else ApiError
                    raise err_cls(code, str(obj.get("reason") or "Error"), str(obj.get("message") or ""))
                new_rv = str((obj.get("metadata") or {}).get("resourceVersion") or rv)
                if etype == "BOOKMARK":
                    stats.bookmarks += 1
                elif etype in ("ADDED", "MODIFIED", "DELETED"):
                    stats.events += 1
                    store.apply(kind, etype, obj)
                rv = new_rv
                stats.resource_version = rv
                backoff.reset()
            backoff.reset()  # the server ended the stream (timeoutSeconds): re-watch at once
        except Gone as exc:
            stats.gone += 1
            log.info("%s: resourceVersion %s expired (%s); re-listing", kind, rv, exc.message or exc.reason)
            rv = ""
        except ApiError as exc:
            stats.errors += 1
            stats.last_error = str(exc)
            delay = backoff.next()
            stats.backoffs.append(delay)
            log.warning("%s: %s; retrying in %.1f s (the kernel keeps its state)", kind, exc, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
