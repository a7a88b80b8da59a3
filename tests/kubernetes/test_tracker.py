"""The store (previous/current per object, no-ops dropped) and the bounded coalescer."""

from __future__ import annotations

import asyncio
import time

from kubelvs.app.loop import Coalescer
from kubelvs.sources.kubernetes.objects import Service
from kubelvs.sources.kubernetes.tracker import Store

from . import k8sobjects as k


def test_heartbeat_and_resource_version_churn_are_no_ops() -> None:
    pokes = []
    store = Store(on_change=lambda: pokes.append(1))
    node = k.node("node1", "10.240.0.101")
    assert store.apply("Node", "ADDED", node)
    beat = k.with_rv(node, "2")
    beat["status"]["conditions"][1]["lastHeartbeatTime"] = "2026-11-26T06:00:10Z"
    assert not store.apply("Node", "MODIFIED", beat)
    assert len(pokes) == 1


def test_previous_current_and_back_to_start_drops_out() -> None:
    store = Store()
    svc = k.service("a", external_ips=["10.240.0.201"])
    store.apply("Service", "ADDED", svc)
    store.take_changes()
    edited = k.service("a", external_ips=["10.240.0.202"])
    store.apply("Service", "MODIFIED", edited)
    store.apply("Service", "MODIFIED", k.service("a", external_ips=["10.240.0.203"]))
    [change] = store.take_changes()
    assert isinstance(change.previous, Service) and change.previous.external_ips == ("10.240.0.201",)
    assert isinstance(change.current, Service) and change.current.external_ips == ("10.240.0.203",)
    store.apply("Service", "MODIFIED", edited)
    store.apply("Service", "MODIFIED", k.service("a", external_ips=["10.240.0.203"]))
    assert store.take_changes() == []  # went back to where it was


def _initialized(store: Store) -> bool:
    """Read through a call: mypy would carry the narrowing of ``store.initialized`` from one
    assert to the next across the calls that change it."""
    return store.initialized


def test_relist_finds_deletions_and_initialization() -> None:
    store = Store()
    store.replace("Node", [k.node("a", "10.240.0.101"), k.node("b", "10.240.0.102")])
    assert not _initialized(store)
    store.replace("Service", [])
    store.replace("EndpointSlice", [])
    assert _initialized(store)
    store.take_changes()
    assert store.replace("Node", [k.node("b", "10.240.0.102")]) == 1
    [change] = store.take_changes()
    assert change.id == ("", "a") and change.current is None


def test_coalescer_takes_a_change_after_a_quiet_spell_at_once() -> None:
    async def body() -> list[float]:
        c = Coalescer(0.2)
        waits = []
        for _ in range(2):  # the first change ever, then one long after the last step
            c.poke()
            t = time.monotonic()
            assert await c.wait(timeout=1)
            waits.append(time.monotonic() - t)
            c.stepped()
            await asyncio.sleep(0.25)
        return waits

    waits = asyncio.run(body())
    assert all(w < 0.05 for w in waits), waits


def test_coalescer_spaces_steps_and_bounds_the_delay_under_continuous_churn() -> None:
    async def body() -> tuple[list[float], int]:
        c = Coalescer(0.1)
        stop = False

        async def churn() -> None:
            while not stop:
                c.poke()
                await asyncio.sleep(0.01)

        task = asyncio.create_task(churn())
        gaps = []  # from the end of one step to the next wakeup
        assert await c.wait(timeout=1)  # the first change: at once
        for _ in range(3):
            c.stepped()
            t = time.monotonic()
            assert await c.wait(timeout=1)
            gaps.append(time.monotonic() - t)
        stop = True
        await task
        return gaps, c.wakeups

    gaps, wakeups = asyncio.run(body())
    # Each step waits the delay after the last one, never longer (a debounce that
    # restarted on every change would never have fired under this churn).
    assert all(0.09 <= g < 0.5 for g in gaps) and wakeups == 4, gaps
