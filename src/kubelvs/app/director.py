"""``kubelvs director``: the director program, assembled from its parts.

    DesiredSource (config file | Kubernetes)  -> DesiredUpdate
        + the backend's recommended sysctls    (model.RecommendedSysctls, O(changed))
        -> roles.director.Director.sync        (plan against its picture, apply, retries,
                                                 deletion guard)
        -> source.after_sync                    (Kubernetes: status and Events, leader only)
        -> the state file                       (what ``kubelvs status`` shows of the director)
        -> the announcers                       (``vrrp:``: keepalived holds the VIPs on the
                                                 master; ``bgp:``: bird announces the VIPs
                                                 served; both only after the first sync)

    ReconcileLoop runs it: on changes (coalesced: app.loop.Coalescer), on the resync timer,
    when a failing service's retry comes due, and at once when the backend says its table
    was changed behind the director's back.

The CLI turns arguments into ``DirectorOptions`` and a source, and calls
``run_director``; the tests build the same program with ``start_director``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..backends import Backend, BackendName, open_backend
from ..bulk import BulkLoad, no_gc
from ..errors import BackendError, CapabilityError
from ..model import (
    ACTIVE_ACTIVE_IPVS,
    ConnectionSync,
    DesiredState,
    RealServerKey,
    RecommendedSysctls,
    ServiceKey,
    kernel_version,
)
from ..planner import changed_services, describe
from ..roles.director import Director, SyncResult
from ..roles.guard import GuardSettings
from ..roles.health import Status
from ..sources.bgp import BgpSpec
from ..sources.desired import DesiredSource, DesiredUpdate, Happening, SyncOutcome
from ..sources.vrrp import VrrpSpec
from .bgp import BgpAnnouncer
from .bird import announceable
from .health import DirectorHealth
from .loop import ReconcileLoop
from .metrics import DirectorCollector, MetricsServer, ProgramMetrics
from .state import DirectorStateFile, daemons_dir, drains_to_restore
from .vrrp import VrrpAnnouncer

__all__ = ["DirectorOptions", "DirectorProgram", "run_director", "start_director"]

log = logging.getLogger("kubelvs.director")

#: Happenings (Events) kept for one after_sync: a VIP withdrawn from 10,000 services is
#: logged 10,000 times but posted as this many Events.
MAX_HAPPENINGS = 100
#: Operations logged one per line after a sync; the rest are counted.
LOGGED_OPERATIONS = 50
#: Up to this many virtual services the director reads the kernel back every second to
#: notice changes made behind its back (a read of 200 services takes a few ms); above
#: it, only the backend's cheap signal and the resync timer.
VERIFY_LIMIT = 200


@dataclass(frozen=True, slots=True)
class DirectorOptions:
    backend: BackendName = "auto"
    netns: str | None = None  # None: the network namespace the program runs in
    graceful: bool | None = None  # --graceful / --no-graceful; None: the config's, else drain
    resync_seconds: float | None = None  # None: the source's (config file 60 s; kubernetes.resync_seconds)
    check_seconds: float = 1.0
    """How often the backend is asked whether its table was changed behind the director's
    back (nftables: the ruleset generation id); a change triggers a full sync at once."""
    guard: GuardSettings = field(default_factory=GuardSettings)
    state_file: Path | None = None  # None: no state file (tests, dry runs)
    vrrp_priority: int | None = None  # --vrrp-priority: replaces the config's vrrp.priority
    metrics_address: tuple[str, int] | None = None  # --metrics-address; None: no /metrics server


#: Seconds the garbage collector may stay paused for the initial load (bulk.BulkLoad) when the
#: first step does not come: a source still waiting for its API server, say.
BULK_LOAD_LIMIT = 60.0


class DirectorProgram:
    """One director: a source, a backend and the loop between them."""

    def __init__(
        self,
        options: DirectorOptions,
        source: DesiredSource,
        backend: Backend,
        *,
        bulk: BulkLoad | None = None,
    ) -> None:
        self.options = options
        self._bulk = bulk  # the collector paused for the initial load: resumed after the first step
        self.source = source
        self.backend = backend
        self.director = Director(backend, graceful=options.graceful is not False, guard=options.guard)
        if options.state_file is not None:  # drains a previous run started go on (and time out) as before
            self.director.restore_drains(drains_to_restore(options.state_file, self.director.clock()))
        self.sysctls = RecommendedSysctls(backend.name, kernel_version(os.uname().release))
        self._sysctls_current = False  # the tracker saw every update so far
        self.state_file = DirectorStateFile(
            options.state_file, backend=backend.name, source=source.description
        )
        self.metrics = ProgramMetrics()
        self.collector = DirectorCollector(self, self._open_reader)
        self.metrics.registry.register(self.collector)
        self.metrics.pages.append(self.collector.render_kernel)
        address = options.metrics_address
        self.metrics_server = MetricsServer(self.metrics, *address) if address is not None else None
        self.loop = ReconcileLoop(
            self.step,
            ready=lambda: source.ready,
            resync=options.resync_seconds or source.resync_seconds,
            coalesce=source.coalesce_seconds,
            check=self._changed_elsewhere,
            check_seconds=options.check_seconds,
            after=self._after,
            fatal_at_start=(CapabilityError,),  # e.g. a scheduler the backend lacks: exit 2, say why
            observer=self.metrics,
        )
        self.last_synced: DesiredState | None = None  # as the source gave it (health not applied)
        self._last_source_state: DesiredState | None = None  # the source's value behind last_synced
        self.last_result: SyncResult | None = None
        self.last_compared = 0  # virtual services the last step compared (all, or the changed ones)
        self._outcome = SyncOutcome(synced=False, failing={})
        self.health = DirectorHealth(options.netns, wake=self.loop.wake)
        self._vrrp_spec: VrrpSpec | None = None
        self._sync_ensured: ConnectionSync | None = None  # the connection sync last made sure of
        self._bgp_spec: BgpSpec | None = None
        self.served_vips: frozenset[str] = frozenset()  # VIPs programmed with a real server to take traffic
        self.realserver_names: Mapping[str, str] = {}
        self._happenings: list[Happening] = []  # for the next after_sync (Events) since the last
        self._vrrp_roles: dict[str, str] = {}  # keepalived instance -> the state last reported
        self._names: tuple[DesiredState | None, Mapping[str, str], dict[str, object]] = (None, {}, {})
        self.bgp = BgpAnnouncer(
            _runtime_dir(options.state_file), netns=options.netns, on_change=self._daemon_changed
        )
        self.vrrp = VrrpAnnouncer(
            _runtime_dir(options.state_file),
            netns=options.netns,
            priority=options.vrrp_priority,
            router_id=f"kubelvs_{options.netns or socket.gethostname()}",
            on_change=self._daemon_changed,
        )

    # ------------------------------------------------------------------ one step

    def step(self, full: bool) -> float | None:
        """Sync once (``full``: read the kernel and compare everything). Returns the
        seconds until the director must run again (a retry or a held deletion)."""
        # The whole step, mapping included: a node change remaps and replans every
        # Service, ~a million short-lived objects and no cycle (kubelvs.bulk).
        with no_gc():
            return self._step(full)

    def _step(self, full: bool) -> float | None:
        self._outcome = SyncOutcome(synced=False, failing=self._failing())
        update = self.source.current(full=full)
        self._vrrp_spec, self._bgp_spec = update.vrrp, update.bgp
        self.realserver_names = update.realserver_names
        self._sync_connections(update.vrrp, full)
        same = update.desired is self._last_source_state and not full  # nothing new from the source
        self._last_source_state = update.desired
        raw = self.last_synced if same and self.last_synced is not None else self._with_sysctls(update, full)
        keys = set() if same and self.last_synced is not None else self._changed_keys(update, raw, full)
        # Health: the targets follow the real servers; the weights follow the targets.
        desired, health_keys = self.health.apply(raw, keys)
        if keys is not None:
            keys |= health_keys
        self.last_compared = len(desired.services) if keys is None else len(keys)
        graceful = self.options.graceful if self.options.graceful is not None else update.graceful
        self.director.graceful = graceful is not False  # a running director drains unless told not to
        if self.director.guard is not None and update.deletion_guard is not None:
            max_share, settle = update.deletion_guard
            self.director.guard.settings = replace(
                self.options.guard, max_share=max_share, settle_seconds=settle
            )
        due = _earliest(self.director.next_due(), self.health.next_due())
        if keys is not None and not keys and (due is None or due > 0):  # nothing changed, nothing due
            self.last_synced = raw
            self._outcome = SyncOutcome(synced=True, failing=self._failing())
            return due
        result = self.director.sync(desired, changed=keys)
        if update.bgp is not None:
            # Not announced: a service the kernel refused, or whose every real server failed
            # its checks (kept in the table, fail open, but another director may do better).
            unserved = self.director.failures.keys() | self.health.overlay.no_healthy
            served = announceable(update.bgp, _served_vips(desired, unserved))
            if served != self.served_vips:
                self._announced(desired, served - self.served_vips, self.served_vips - served, "BGP")
            self.served_vips = served
        for key, rs, why, seconds in result.drains_finished:
            self._happened(
                Happening(
                    key,
                    "DrainFinished",
                    f"{key}: real server {rs} removed after draining {seconds:.0f} s ({why})",
                )
            )
        self.last_synced = raw
        self.last_result = result
        self.metrics.applied(result.applied)
        self.metrics.error("refused", len(result.new_failures))
        self._log(result)
        held = result.held
        changes, more = self.health.changes()
        if more:
            log.info("%d more real-server health changes not reported as Events", more)
        self._outcome = SyncOutcome(
            synced=True,
            failing=self._failing(),
            held_back=held.keys if held is not None else frozenset(),
            held_message=held.describe() if held is not None else "",
            health_changes=tuple(changes),
            no_healthy=frozenset(self.health.overlay.no_healthy),
        )
        return _earliest(self.director.next_due(), self.health.next_due())

    def _sync_connections(self, spec: VrrpSpec | None, full: bool) -> None:
        """The config's ``vrrp.sync_daemon``: started once, looked at again on full syncs
        (before the VIPs are held: a takeover must find the peers' connections)."""
        wanted = spec.connection_sync() if spec is not None else None
        if wanted is None or (wanted == self._sync_ensured and not full):
            return
        try:
            started = self.backend.sync_connections(wanted)
        except CapabilityError as exc:
            if self._sync_ensured != wanted:
                log.info("connection sync: %s", exc)
            self._sync_ensured = wanted
            return
        except BackendError as exc:
            log.error("connection sync: %s", exc)
            return
        for line in started:
            log.info("started the %s", line)
        self._sync_ensured = wanted

    def _changed_elsewhere(self) -> bool:
        """Asked every second between steps: did someone else change the table? The
        backend's own cheap answer first (nftables: the ruleset generation id); a small
        table (IPVS has no such id) is read and compared with the director's picture,
        its sysctls too, which no generation id covers. A large one waits for the resync."""
        if self.backend.changed_elsewhere():
            return True
        picture = self.director.observed
        if picture is None or len(picture.services) > VERIFY_LIMIT:
            return False
        kernel = self.backend.read(sysctls=picture.sysctls.keys())
        owns = self.last_synced.ownership.owns if self.last_synced is not None else None
        if owns is None:
            return False
        ours = {k: v for k, v in kernel.services.items() if owns(k)}
        pictured = {k: v for k, v in picture.services.items() if owns(k)}
        return (
            ours != pictured
            or kernel.timeouts != picture.timeouts
            or dict(kernel.sysctls) != dict(picture.sysctls)
        )

    def _failing(self) -> dict[ServiceKey, str]:
        return {k: f"{f.operation}: {f.reason}" for k, f in self.director.failures.items()}

    def _with_sysctls(self, update: DesiredUpdate, full: bool) -> DesiredState:
        desired = update.desired
        if not update.recommended_sysctls:
            self._sysctls_current = False
            return desired
        changed = update.changed if self._sysctls_current and not full else None
        self._sysctls_current = False  # until the call below returns
        extra = self.sysctls(desired.services, changed)
        if update.bgp is not None and self.backend.name == "ipvs":
            extra = {**extra, **ACTIVE_ACTIVE_IPVS}
        self._sysctls_current = True
        return replace(desired, sysctls={**extra, **desired.sysctls})

    def _changed_keys(
        self, update: DesiredUpdate, desired: DesiredState, full: bool
    ) -> set[ServiceKey] | None:
        """The services to compare: None (all) on a full step or when a global setting
        changed; the source's own account of the change when it has one; otherwise a
        comparison of the two desired states (no kernel read either way)."""
        last = self.last_synced
        if full or last is None:
            return None
        if (last.timeouts, last.sysctls, last.ownership) != (
            desired.timeouts,
            desired.sysctls,
            desired.ownership,
        ):
            return None
        if update.changed is not None:
            return set(update.changed)
        return changed_services(last, desired) | {
            k
            for k in last.health.keys() | desired.health.keys()
            if last.health.get(k) != desired.health.get(k)
        }

    def _log(self, result: SyncResult) -> None:
        kind = "full" if result.full else "incremental"
        if result.applied or result.full:
            log.info("%s sync: %d change(s)", kind, len(result.applied))
            for op in result.applied[:LOGGED_OPERATIONS]:
                log.info("    %s", describe(op))
            if len(result.applied) > LOGGED_OPERATIONS:
                log.info("    ... and %d more", len(result.applied) - LOGGED_OPERATIONS)
        for line in result.new_failures:
            log.error("not applied: %s", line)
        if result.held is not None:
            log.warning("%s", result.held.describe())
        if result.failures and not result.new_failures:
            log.warning("%d virtual service(s) still failing, retried with backoff", len(result.failures))

    async def _after(self) -> None:
        # After the step, not in it: the kernel is programmed already, and writing the
        # state file (10,000 services' checks) must not delay that. The VIPs are held
        # (VRRP) only once the kernel forwards them.
        if self._bulk is not None:
            self._bulk.end()  # the first step, done or failed, ends the bulk load
        if self._outcome.synced and self.last_synced is not None:
            vips = (
                {str(k.address) for k in self.last_synced.services if k.address is not None}
                if self._vrrp_spec is not None  # O(services): only when VRRP is configured
                else ()
            )
            self.vrrp.update(self._vrrp_spec, vips)
            self.bgp.update(self._bgp_spec, self.served_vips)
        await asyncio.to_thread(self._write_state)
        happenings, self._happenings = tuple(self._happenings), []
        await self.source.after_sync(replace(self._outcome, happenings=happenings))

    def _write_state(self) -> None:
        extra: dict[str, Any] = {"names": self._names_document()}
        if self._vrrp_spec is not None:
            extra["vrrp"] = self.vrrp.document()
        if self._bgp_spec is not None:
            extra["bgp"] = self.bgp.document()
        self.state_file.write(self.director, self.health, extra)

    def _names_document(self) -> dict[str, object]:
        """What users call the services and real servers (``kubelvs top``, ``status``):
        built again only when the desired state or the names changed."""
        desired, nodes, doc = self._names
        if desired is not self.last_synced or nodes is not self.realserver_names:
            services = self.last_synced.services if self.last_synced is not None else {}
            doc = {
                "services": {str(k): vs.name for k, vs in services.items() if vs.name},
                "realservers": dict(self.realserver_names),
            }
            self._names = (self.last_synced, self.realserver_names, doc)
        return doc

    def _daemon_changed(self) -> None:  # keepalived's role, bird's sessions: for kubelvs status
        self._vrrp_changed()
        asyncio.get_running_loop().create_task(asyncio.to_thread(self._write_state))

    # ------------------------------------------------------------------ what users are told

    def _happened(self, happening: Happening) -> None:
        """An Event on the Service (Kubernetes source) and a log line, whatever the source."""
        log.info(
            "%s",
            happening.message,
            extra={"reason": happening.reason, "service": str(happening.key), "event_type": happening.type},
        )
        if len(self._happenings) < MAX_HAPPENINGS:
            self._happenings.append(happening)

    def _announced(
        self, desired: DesiredState, added: Iterable[str], removed: Iterable[str], via: str
    ) -> None:
        """VIPs this director started or stopped announcing: said on each of their services."""
        by_vip: dict[str, list[ServiceKey]] = {}
        for key in desired.services:
            if key.address is not None:
                by_vip.setdefault(str(key.address), []).append(key)
        last = self.last_synced.services if self.last_synced is not None else {}
        for key in last:  # a withdrawn VIP's services may have left the desired state
            if key.address is not None and key not in desired.services:
                by_vip.setdefault(str(key.address), []).append(key)
        for vip in sorted(added):
            for key in by_vip.get(vip, ()):
                self._happened(Happening(key, "VIPAnnounced", f"{vip} announced by this director ({via})"))
        for vip in sorted(removed):
            for key in by_vip.get(vip, ()):
                self._happened(
                    Happening(key, "VIPWithdrawn", f"{vip} withdrawn by this director ({via})", "Warning")
                )

    def _vrrp_changed(self) -> None:
        """keepalived became master of an instance (it holds its VIPs) or stopped being it."""
        desired = self.last_synced
        if desired is None:
            return
        vips = self.vrrp.vips_of_instances()
        for name, (state, _) in list(self.vrrp.roles.items()):
            before = self._vrrp_roles.get(name)
            self._vrrp_roles[name] = state
            was, now = before == "MASTER", state == "MASTER"
            if was != now:
                held = vips.get(name, ())
                self._announced(desired, held if now else (), () if now else held, f"VRRP {state.lower()}")

    # ------------------------------------------------------------------ what /metrics shows

    def _open_reader(self) -> Backend:
        """The metrics' own backend on the same table (the in-memory one of the tests
        cannot be opened twice: it is shared)."""
        name = self.backend.name
        if name in ("ipvs", "nftables"):
            return open_backend(name, netns=self.options.netns)  # type: ignore[arg-type]
        return self.backend

    def health_by_realserver(self) -> dict[tuple[ServiceKey, RealServerKey], int | None]:
        """Checked real servers: 1 up, 0 down, None not known yet."""
        states = dict(self.health.checker.states)
        verdicts = {Status.UP: 1, Status.DOWN: 0}
        out: dict[tuple[ServiceKey, RealServerKey], int | None] = {}
        for key, pairs in self.health.overlay.pairs().items():
            for rs_key, target in pairs:
                state = states.get(target)
                out[(key, rs_key)] = None if state is None else verdicts.get(state.status)
        return out

    # ------------------------------------------------------------------ running

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop``: keep the kernel converged to the source (and probe the real servers)."""
        self.health.bind(asyncio.get_running_loop())
        if self._bulk is not None:  # a source that is never ready must not keep the collector paused
            asyncio.get_running_loop().call_later(BULK_LOAD_LIMIT, self._bulk.end)
        loop = asyncio.create_task(self.loop.run(stop))
        tasks = [
            *self.source.start(stop, self.loop.wake),
            loop,
            asyncio.create_task(self.health.run(stop)),
            asyncio.create_task(self.vrrp.run(stop)),
            asyncio.create_task(self.bgp.run(stop)),
        ]
        if self.metrics_server is not None:
            tasks.append(asyncio.create_task(self.metrics_server.serve(stop)))
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({stopped, loop}, return_when=asyncio.FIRST_COMPLETED)
        for task in [*tasks, stopped]:
            task.cancel()
        await asyncio.gather(*tasks, stopped, return_exceptions=True)
        if loop.done() and not loop.cancelled() and loop.exception() is not None:
            raise loop.exception()  # type: ignore[misc]  # fatal at start: the CLI says why, exit 2

    async def sync_once(self) -> SyncResult | None:
        """One full sync, then the source's ``after_sync`` (``--once``)."""
        await asyncio.to_thread(self.step, True)
        await self._after()
        return self.last_result

    async def close(self) -> None:
        try:
            await self.source.close()
        finally:
            if self._bulk is not None:
                self._bulk.release()
            self.health.close()
            self.collector.close()
            self.backend.close()


def _served_vips(desired: DesiredState, unserved: Iterable[ServiceKey]) -> frozenset[str]:
    """The VIPs worth announcing: programmed, with at least one healthy real server that
    takes new connections (weight above 0: health checks applied). A VIP shared by
    several services (ports) is announced while any of them is served."""
    bad = set(unserved)
    return frozenset(
        str(key.address)
        for key, vs in desired.services.items()
        if key.address is not None and key not in bad and any(rs.weight > 0 for rs in vs.realservers)
    )


def _runtime_dir(state_file: Path | None) -> Path:
    """The helper daemons' files (keepalived, bird): next to the state file."""
    if state_file is None:
        return Path(tempfile.gettempdir()) / f"kubelvs-daemons-{os.getpid()}"
    return daemons_dir(state_file)


def _earliest(*delays: float | None) -> float | None:
    known = [d for d in delays if d is not None]
    return min(known) if known else None


async def start_director(
    options: DirectorOptions, source: DesiredSource, *, backend: Backend | None = None
) -> DirectorProgram:
    """Open the source (its first complete desired state), then the backend (``None``: the
    one ``options`` names), and assemble the program. Nothing touches the kernel yet.
    The garbage collector pauses from here to the end of the first step (bulk.BulkLoad)."""
    bulk = BulkLoad()
    bulk.begin()
    opened = False
    try:
        await source.open()
        opened = True
        if backend is None:
            backend = open_backend(options.backend, netns=options.netns)
        return DirectorProgram(options, source, backend, bulk=bulk)
    except BaseException:
        bulk.release()  # never leave the collector paused
        if opened:
            await source.close()
        raise


async def run_director(
    options: DirectorOptions, source: DesiredSource, stop: asyncio.Event, *, once: bool = False
) -> None:
    """``kubelvs director``: start, then run until ``stop`` (or sync once)."""
    program = await start_director(options, source)
    try:
        if once:
            await program.sync_once()
        else:
            await program.run(stop)
    finally:
        await program.close()
