"""Bulk work in Python: the cyclic garbage collector paused around it."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

__all__ = ["BulkLoad", "no_gc"]


@contextlib.contextmanager
def no_gc() -> Iterator[None]:
    """Python's cyclic garbage collector paused for the block.

    Loading, planning and applying 10,000 services allocates over a million small
    objects (addresses, real servers, operations, tuples), none of them in a cycle;
    every 700 allocations the collector walks the young ones and, ever more often,
    everything: ~40% of the CPU time of a one-shot ``kubelvs apply`` of 10,000
    services. Memory is still freed by reference counting.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class BulkLoad:
    """The collector paused across a long-running program's initial load, which spans
    several steps (``no_gc`` covers one block): ``begin`` before it, ``end`` after it,
    ``release`` when the program closes.

    A director's first reconcile of 10,000 Services (the initial list, its decoding and
    mapping, the first sync) builds millions of objects that live as long as the program,
    and the collector scanned the growing heap again and again meanwhile (~0.9 s of a ~4 s
    first reconcile here). ``end`` runs one collection for whatever cycles the load left
    and freezes what survives (``gc.freeze``: left out of later collections, which then
    scan only what changed since; frozen objects are still freed by reference counting,
    only a cycle among them waits for ``release``, so that a process running several
    programs, like the tests, collects their cycles again)."""

    def __init__(self) -> None:
        self._paused = False
        self._froze = False

    def begin(self) -> None:
        if gc.isenabled():  # another program's load may have paused it already: its to resume
            gc.disable()
            self._paused = True

    def end(self) -> None:
        if self._paused:
            self._paused = False
            gc.collect()
            gc.freeze()
            self._froze = True
            gc.enable()

    def release(self) -> None:
        self.end()
        if self._froze:
            self._froze = False
            gc.unfreeze()
