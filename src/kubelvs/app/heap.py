"""CPython's cyclic garbage collector around a director's bulk load.

Building the state of 10,000 Services (the initial list, its decoding and mapping, the
first sync) allocates millions of objects that live as long as the program, and the
collector, triggered by allocations, scans the growing heap again and again meanwhile:
~0.9 s of a ~4 s first reconcile on this machine (bench/k8s_reconcile.py). So it is
paused from the source's opening until the first sync is over; then one collection frees
whatever cycles the load left, and what survives is frozen (``gc.freeze``: left out of
later collections, which then scan only what changed since; frozen objects are still
freed by reference counting, only a cycle among them would wait for ``release``). The
same idea as Instagram's ``gc.freeze`` after start-up.
"""

from __future__ import annotations

import gc

__all__ = ["BulkLoad"]


class BulkLoad:
    """``begin`` before the bulk load, ``end`` after it, ``release`` when the program
    closes (a process that runs several programs, like the tests, collects their cycles
    again)."""

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
