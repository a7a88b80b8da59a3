"""The control loop shared by the director and the node agent.

    Store (fed by the watches or the manifests poller) -> Coalescer (bounded delay)
        -> ``step(snapshot, full)`` in a thread -> ``after(snapshot)`` on the event loop

Nothing runs before every kind has been listed once (a missing object then means "not
seen yet", not "deleted"). A failed step is retried as a full one with backoff; a full
step also runs every ``resync`` seconds. While the API server is away the store keeps
its objects, so each step computes the same state again and the kernel keeps it.

What a step does is the role's business: ``runner.DirectorLoop`` maps and syncs the
director's kernel and writes Service status; ``noderunner.NodeLoop`` computes the
node's VIPs and syncs the node agent.
"""

from __future__ import annotations

import asyncio
import logging
import time

from ...errors import KubelvsError
from .mapping import Snapshot
from .settings import KubeSettings
from .tracker import Coalescer, Store
from .watch import Backoff

__all__ = ["ReconcileLoop"]

log = logging.getLogger("kubelvs.kubernetes")


class ReconcileLoop:
    """Runs ``step`` after each coalesced burst of changes and on the resync timer.
    Subclasses implement ``step`` (blocking; it runs in a thread so a large sync does
    not starve the watches) and may implement ``after`` (on the event loop)."""

    def __init__(self, store: Store, settings: KubeSettings, *, resync: float | None = None) -> None:
        self.store = store
        self.resync = resync or settings.resync_seconds
        self.coalescer = Coalescer(settings.coalesce_seconds)
        store.on_change = self.coalescer.poke
        self.reconciles = 0
        self.failures = 0
        self.last_programmed = 0.0  # time.monotonic() when the kernel was last programmed

    def step(self, snap: Snapshot, *, full: bool) -> None:
        raise NotImplementedError

    async def after(self, snap: Snapshot) -> None:
        """Runs after every step, failed or not (the director writes status here)."""

    async def run(self, stop: asyncio.Event) -> None:
        while not self.store.initialized and not stop.is_set():
            await self.coalescer.wait(timeout=0.5)
        backoff = Backoff(self.resync)
        full = True
        last_full = time.monotonic()
        while not stop.is_set():
            if time.monotonic() - last_full >= self.resync:
                full = True
            snap = self.store.snapshot(take_changes=True)  # the mapping reads only what changed
            try:
                await asyncio.to_thread(self.step, snap, full=full)
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
            await self.after(snap)
            waiter = asyncio.create_task(self.coalescer.wait(timeout=wait))
            stopper = asyncio.create_task(stop.wait())
            await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            for t in (waiter, stopper):
                t.cancel()
            await asyncio.gather(waiter, stopper, return_exceptions=True)
