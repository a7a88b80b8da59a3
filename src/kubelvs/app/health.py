"""The director's health checker: one probe per target per interval, on a fixed schedule.

Targets come from the desired state (``roles.health.HealthOverlay``): one per real-server
address and check, however many virtual services use it. The checker keeps a heap of
due times; each target's next probe is due ``interval`` after its previous *due* time,
not after its previous probe ended, so a slow probe or a busy loop does not make the
interval drift (the benchmark measures the real intervals). New targets start at an
offset spread over their interval (derived from the target, so the same on every
director), so that 1,000 targets with a 1 s interval are 1,000 evenly spread probes a
second, not a burst. A state change (up, down) calls ``on_change`` with the targets
that changed; the director turns them into one batch of weight changes.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
import zlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from ..errors import KubelvsError
from ..model import DesiredState, Forward, HealthCheck, ServiceKey
from ..probes.direct import probe_direct
from ..probes.vip import SynProbe, VipProber, syn_probe_for
from ..roles.health import HealthOverlay, Status, TargetKey, TargetState, record

__all__ = ["DirectorHealth", "HealthChecker", "Probe"]

log = logging.getLogger("kubelvs.health")

#: Runs one probe of a target: (ok, what was seen). Must respect the check's timeout.
Probe = Callable[[TargetKey], Awaitable[tuple[bool, str]]]


@dataclass(order=True)
class _Due:
    at: float
    seq: int
    target: TargetKey = field(compare=False)


class HealthChecker:
    def __init__(
        self,
        probe: Probe,
        on_change: Callable[[set[TargetKey]], None],
        *,
        clock: Callable[[], float] = time.monotonic,
        max_in_flight: int = 256,
    ) -> None:
        self.probe = probe
        self.on_change = on_change
        self.clock = clock
        self.states: dict[TargetKey, TargetState] = {}
        self._heap: list[_Due] = []
        self._seq = 0
        self._wakeup = asyncio.Event()
        self._slots = asyncio.Semaphore(max_in_flight)
        self.lateness: list[float] = []  # how late each probe started (s), for the benchmark
        self.probes = 0

    def set_targets(self, targets: Iterable[TargetKey]) -> None:
        """Probe exactly ``targets`` from now on (new ones are scheduled, gone ones dropped)."""
        wanted = set(targets)
        now = self.clock()
        for gone in set(self.states) - wanted:
            del self.states[gone]
        for new in wanted - set(self.states):
            self.states[new] = TargetState(since=now)
            interval = new.check.interval
            offset = (zlib.crc32(str(new).encode()) % 1000) / 1000 * interval
            self._push(new, now + min(offset, interval))
        self._heap = [d for d in self._heap if d.target in self.states]
        heapq.heapify(self._heap)
        self._wakeup.set()

    def _push(self, target: TargetKey, at: float) -> None:
        self._seq += 1
        heapq.heappush(self._heap, _Due(at, self._seq, target))

    def status(self, target: TargetKey) -> Status:
        state = self.states.get(target)
        return state.status if state is not None else Status.UNKNOWN

    async def run(self, stop: asyncio.Event) -> None:
        running: set[asyncio.Task[None]] = set()
        try:
            while not stop.is_set():
                now = self.clock()
                while self._heap and self._heap[0].at <= now:
                    due = heapq.heappop(self._heap)
                    if due.target not in self.states:
                        continue
                    interval = due.target.check.interval
                    # Next due time from this one: no drift. A checker that fell more than an
                    # interval behind skips the missed slots instead of bursting through them.
                    nxt = due.at + interval
                    if nxt <= now:
                        nxt = now + interval - ((now - due.at) % interval)
                    self._push(due.target, nxt)
                    self.lateness.append(now - due.at)
                    task = asyncio.create_task(self._one(due.target))
                    running.add(task)
                    task.add_done_callback(running.discard)
                delay = (self._heap[0].at - self.clock()) if self._heap else 1.0
                self._wakeup.clear()
                waiter = asyncio.create_task(self._wakeup.wait())
                stopper = asyncio.create_task(stop.wait())
                await asyncio.wait(
                    {waiter, stopper}, timeout=max(0.0, delay), return_when=asyncio.FIRST_COMPLETED
                )
                for t in (waiter, stopper):
                    t.cancel()
        finally:
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)

    async def _one(self, target: TargetKey) -> None:
        async with self._slots:
            try:
                ok, detail = await self.probe(target)
            except Exception as exc:  # a probe must never stop the checker; a bug shows as a failure
                ok, detail = False, f"probe error: {exc!r}"
        state = self.states.get(target)
        if state is None:
            return  # dropped while the probe ran
        self.probes += 1
        new = record(state, ok, detail, target.check, self.clock())
        self.states[target] = new
        if new.status is not state.status:
            level = logging.WARNING if new.status is Status.DOWN else logging.INFO
            log.log(level, "%s is %s: %s", target, new.status, detail)
            self.on_change({target})


class DirectorHealth:
    """Health checking for one director: the overlay (targets, weights), the checker,
    and the probes, in the director's network namespace.

    ``apply`` runs in the director's step (a worker thread): it follows the desired
    state's real servers, hands the checker its targets, and gives back the desired
    state with the weights health says, plus the services whose weights a state change
    touched since the last step. The checker runs on the event loop; a state change
    marks its targets and wakes the director's loop."""

    def __init__(
        self, netns: str | None, *, wake: Callable[[], None], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.netns = netns
        self.wake = wake
        self.clock = clock
        self.overlay = HealthOverlay()
        self.checker = HealthChecker(self._probe, self._changed, clock=clock)
        self._dirty: set[TargetKey] = set()
        self._transitions: list[tuple[TargetKey, Status, str]] = []
        self._registered: frozenset[TargetKey] = frozenset()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._vip: VipProber | None = None
        self._routes: dict[tuple[str, str, int, bool], SynProbe] = {}
        self.layout = 0  # changes whenever targets or their users change (for the state file)
        self._services_doc: tuple[int, dict[str, object]] = (-1, {})

    # ------------------------------------------------------------------ the director's step

    def apply(self, raw: DesiredState, keys: set[ServiceKey] | None) -> tuple[DesiredState, set[ServiceKey]]:
        self.overlay.refresh(raw, keys)
        targets = frozenset(self.overlay.users)
        if targets != self._registered or keys is None:
            self.layout += 1
        if targets != self._registered:
            self._registered = targets
            if self._loop is not None:
                self._loop.call_soon_threadsafe(self.checker.set_targets, targets)
            else:  # no loop yet (the first step, or a test driving steps itself)
                self.checker.set_targets(targets)
        dirty, self._dirty = self._dirty, set()
        now = self.clock()
        ramping, _ = self.overlay.ramps_due(now)
        health_keys = (self.overlay.affected(dirty) | ramping) & raw.services.keys()
        recompute = None if keys is None else keys | health_keys
        desired = self.overlay.apply(raw, recompute, dict(self.checker.states), now)
        return desired, health_keys

    def next_due(self) -> float | None:
        """While a real server ramps up (slow start), its weight moves every second."""
        _, until_end = self.overlay.ramps_due(self.clock())
        return None if until_end is None else min(1.0, until_end)

    def _changed(self, targets: set[TargetKey]) -> None:
        self._dirty |= targets
        for t in targets:
            state = self.checker.states.get(t)
            if state is not None:
                self._transitions.append((t, state.status, state.detail))
        self.wake()

    def changes(self, limit: int = 100) -> tuple[list[tuple[ServiceKey, str, str]], int]:
        """What went down or came back since the last call, per virtual service that uses
        it: (service, "down" | "up", what), at most ``limit`` (a node used by 10,000
        services is not 10,000 Events), and how many more there were."""
        transitions, self._transitions = self._transitions, []
        out: list[tuple[ServiceKey, str, str]] = []
        more = 0
        for target, status, detail in transitions:
            if status is Status.UNKNOWN:
                continue
            word = "down" if status is Status.DOWN else "up"
            text = (
                f"real server {target.address}:{target.port} is {word} ({target.check.kind} check: {detail})"
            )
            users = self.overlay.users.get(target, ())
            room = limit - len(out)
            # The first ones in order, not all 10,000 users of a node sorted.
            first = heapq.nsmallest(room, users, key=ServiceKey.sort_key) if room > 0 else []
            out += [(key, word, text) for key in first]
            more += len(users) - len(first)
        return out, more

    # ------------------------------------------------------------------ probing

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """From now on targets are handed to the checker on ``loop`` (steps run in threads)."""
        self._loop = loop

    async def run(self, stop: asyncio.Event) -> None:
        self.checker.set_targets(self._registered)
        await self.checker.run(stop)

    async def _probe(self, target: TargetKey) -> tuple[bool, str]:
        check = target.check
        if target.vip is None:
            return await probe_direct(target.address, target.port, check, netns=self.netns)
        try:
            return await asyncio.wait_for(self._probe_vip(target), check.timeout)
        except TimeoutError:
            return False, f"no answer within {check.timeout:g} s"

    async def _probe_vip(self, target: TargetKey) -> tuple[bool, str]:
        assert target.vip is not None
        tunnel = target.forward is Forward.TUN
        route_key = (str(target.address), str(target.vip), target.port, tunnel)
        syn = self._routes.get(route_key)
        if syn is None:
            try:
                syn = await asyncio.to_thread(
                    syn_probe_for,
                    self.netns,
                    str(target.vip),
                    target.port,
                    str(target.address),
                    tunnel=tunnel,
                )
            except KubelvsError as exc:
                return False, str(exc)
            self._routes[route_key] = syn
        if self._vip is None:
            self._vip = VipProber(self.netns)
        ok, detail = await self._vip.probe(syn, target.check.timeout)
        if not ok:
            self._routes.pop(route_key, None)  # resolve the route and MAC again next time
        return ok, detail

    def close(self) -> None:
        if self._vip is not None:
            self._vip.close()
            self._vip = None

    # ------------------------------------------------------------------ what status shows

    def document(self) -> dict[str, object]:
        """Each checked real server's health, for the state file (``kubelvs status``): the
        targets with their state (by name), and which check each service uses, from which
        ``kubelvs status`` names the target of each of its real servers (``target_name``).
        O(targets + checked services), not O(real servers)."""
        now_mono, now_wall = self.clock(), time.time()
        targets = {
            str(t): {
                "status": str(st.status),
                "since": round(now_wall - (now_mono - st.since), 3),
                "detail": st.detail,
            }
            for t, st in list(self.checker.states.items())
        }
        layout, services = self._services_doc
        if layout != self.layout:  # O(checked services): only when the layout changed
            checks: dict[HealthCheck, int] = {}
            by_service: dict[str, int] = {}
            for key, pairs in self.overlay.pairs().items():
                if pairs:
                    by_service[str(key)] = checks.setdefault(pairs[0][1].check, len(checks))
            listed = [{"kind": str(c.kind), "port": c.port, "mode": str(c.mode)} for c in checks]
            services = {"checks": listed, "services": by_service}
            self._services_doc = (self.layout, services)
        return {"targets": targets, **services}
