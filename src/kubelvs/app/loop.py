"""The control loop every long-running kubelvs program runs (director and node agent).

    source changes -> wake() -> Coalescer (at once after a quiet spell, else bounded delay)
        -> step(full) in a worker thread -> after() on the event loop -> wait

Nothing runs before the source is ready (Kubernetes: every kind listed once; a missing
object then means "not seen yet", not "deleted"). A step that raises a project error is
retried as a full one with backoff; a full step also runs every ``resync`` seconds, and
at once when ``check()`` says the kernel was changed behind the program's back (asked
every ``check_seconds`` while waiting; it must be cheap). A step may ask to run again
sooner (a retry or a held deletion that comes due) by returning the delay.

``observer`` hears of each step (for /metrics): whether it was full, how long it took,
and how long since the first change it carries was seen (None when no change woke it:
the resync timer, a retry).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from ..errors import KubelvsError
from ..retry import Backoff

__all__ = ["Coalescer", "ReconcileLoop", "StepObserver"]

log = logging.getLogger("kubelvs.loop")


class Coalescer:
    """Spaces the steps that changes cause, as kube-proxy's ``minSyncPeriod`` does: a
    change after a quiet spell wakes the loop at once (a node going NotReady, one
    Service edit: nothing is gained by waiting for more); changes that come less than
    ``delay`` seconds after the last step ended wait until ``delay`` has passed since
    then, and all of them go into one step. A burst is so at most two steps (its first
    change, then the rest), and churn at most one step per ``delay`` plus a step's time.
    (A debounce that restarts its timer on every change could postpone a step forever
    under churn; this one bounds it.)"""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self._event = asyncio.Event()
        self._last_step = -float("inf")  # time.monotonic() when the last step ended
        self.wakeups = 0

    def poke(self) -> None:
        self._event.set()

    def stepped(self) -> None:
        """A step ended: changes from now on wait until ``delay`` has passed."""
        self._last_step = time.monotonic()

    async def wait(self, timeout: float | None = None) -> bool:
        """True when changes came in (once ``delay`` has passed since the last step),
        False on timeout."""
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
        except TimeoutError:
            return False
        hold = self._last_step + self.delay - time.monotonic()
        if hold > 0:
            await asyncio.sleep(hold)
        self._event.clear()
        self.wakeups += 1
        return True


#: One step: ``full`` -> seconds until it must run again at the latest (None: only on
#: changes and the resync timer). Runs in a worker thread; raises KubelvsError on failure.
Step = Callable[[bool], float | None]


class StepObserver(Protocol):
    def step_done(self, full: bool, seconds: float, since_change: float | None) -> None: ...

    def step_failed(self, exc: KubelvsError) -> None: ...


class ReconcileLoop:
    def __init__(
        self,
        step: Step,
        *,
        ready: Callable[[], bool],
        resync: float,
        coalesce: float = 0.0,
        backoff_max: float = 30.0,
        check: Callable[[], bool] | None = None,
        check_seconds: float = 1.0,
        after: Callable[[], Awaitable[None]] | None = None,
        fatal_at_start: tuple[type[KubelvsError], ...] = (),
        observer: StepObserver | None = None,
    ) -> None:
        """``fatal_at_start``: errors that end ``run`` when the FIRST step raises them (the
        director cannot do what its config asks at all: exit instead of retrying forever);
        later they are logged and retried like any other."""
        self.step = step
        self.ready = ready
        self.resync = resync
        self.coalescer = Coalescer(coalesce)
        self.backoff_max = min(backoff_max, resync)
        self.check = check
        self.check_seconds = check_seconds
        self.after = after
        self.fatal_at_start = fatal_at_start
        self.steps = 0
        self.failures = 0
        self.tamper_resyncs = 0  # full steps run because check() said so
        self.last_programmed = 0.0  # time.monotonic() when the last step succeeded
        self.observer = observer
        self._changed_at: float | None = None  # the first change not yet taken by a step

    def wake(self) -> None:
        """A change came in: run a step (at once after a quiet spell; see ``Coalescer``)."""
        if self._changed_at is None:
            self._changed_at = time.monotonic()
        self.coalescer.poke()

    async def run(self, stop: asyncio.Event) -> None:
        while not self.ready() and not stop.is_set():
            await self._sleep(stop, 0.2)
        backoff = Backoff(self.backoff_max)
        full = True
        last_full = time.monotonic()
        while not stop.is_set():
            if time.monotonic() - last_full >= self.resync:
                full = True
            changed_at, self._changed_at = self._changed_at, None  # later changes: the next step's
            started = time.monotonic()
            try:
                again = await asyncio.to_thread(self.step, full)
                self.steps += 1
                self.last_programmed = time.monotonic()
                if self.observer is not None:
                    self.observer.step_done(
                        full,
                        self.last_programmed - started,
                        None if changed_at is None else self.last_programmed - changed_at,
                    )
                if full:
                    last_full = time.monotonic()
                full = False
                backoff.reset()
                wait = max(0.0, self.resync - (time.monotonic() - last_full))
                if again is not None:
                    wait = min(wait, again)
            except KubelvsError as exc:
                if not self.steps and isinstance(exc, self.fatal_at_start):
                    raise
                self.failures += 1
                if self.observer is not None:
                    self.observer.step_failed(exc)
                if changed_at is not None and self._changed_at is None:
                    self._changed_at = changed_at  # not programmed yet: still pending
                full = True
                wait = backoff.next()
                log.error("sync failed, full sync again in %.1f s: %s", wait, exc)
            self.coalescer.stepped()
            if self.after is not None:
                await self.after()
            if await self._wait(stop, wait):
                full = True

    async def _wait(self, stop: asyncio.Event, timeout: float) -> bool:
        """Until a change (after coalescing), ``stop`` or ``timeout``. True when the
        kernel was changed elsewhere (the next step must be full)."""
        deadline = time.monotonic() + timeout
        while not stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            piece = left if self.check is None else min(left, self.check_seconds)
            waiter = asyncio.create_task(self.coalescer.wait(timeout=piece))
            stopper = asyncio.create_task(stop.wait())
            await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            for t in (waiter, stopper):
                t.cancel()
            results = await asyncio.gather(waiter, stopper, return_exceptions=True)
            if results[0] is True:
                return False
            if self.check is not None and not stop.is_set():
                try:
                    changed = await asyncio.to_thread(self.check)
                except KubelvsError as exc:
                    log.warning("checking the kernel for outside changes: %s", exc)
                    changed = True
                if changed:
                    self.tamper_resyncs += 1
                    log.warning("the kernel's table was changed by someone else: full sync now")
                    return True
        return False

    @staticmethod
    async def _sleep(stop: asyncio.Event, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)
