"""What a source of the director's desired state looks like to the program running it.

Two sources implement it: ``sources.file.ConfigFileSource`` (the YAML file, for plain LVS
users) and ``sources.kubernetes.desired.KubernetesSource`` (Services, EndpointSlices and
Nodes from the API server or from ``kubectl -o yaml`` files). The director program
(``kubelvs.app.director``) drives either the same way:

    await source.open()                        # the first complete desired state, or an error
    tasks = source.start(stop, wake)           # keep it current; ``wake()`` after each change
    update = source.current(full=...)          # the desired state now (in a worker thread)
    await source.after_sync(result)            # e.g. Service status and Events
    await source.close()

Sources never touch the kernel and never decide what to change: they say what is wanted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from ..model import DesiredState, ServiceKey
from .bgp import BgpSpec
from .vrrp import VrrpSpec

__all__ = ["DesiredSource", "DesiredUpdate", "Happening", "SourceGauges", "SyncOutcome"]


@dataclass(frozen=True, slots=True)
class DesiredUpdate:
    """The desired state at one moment, and what a source knows of how it changed."""

    desired: DesiredState
    changed: frozenset[ServiceKey] | None = None
    """Keys whose virtual service may differ from the previous update's; None: unknown
    (the director then compares every service)."""
    recommended_sysctls: bool = True
    """The config's ``recommended_sysctls``: the director adds its backend's."""
    graceful: bool | None = None
    """The config's ``graceful`` (drain real servers that leave: weight 0 first, delete once
    without connections or after the drain timeout); None: the director's default (yes)."""
    deletion_guard: tuple[float, float] | None = None
    """The config's ``deletion_guard`` (max_share, settle_seconds); None: the director's defaults."""
    vrrp: VrrpSpec | None = None
    """The config's ``vrrp:``: the director has keepalived hold the VIPs on the master."""
    bgp: BgpSpec | None = None
    """The config's ``bgp:``: the director announces the VIPs it serves (bird)."""
    notes: tuple[str, ...] = ()
    """Lines for a dry run: Events the source would post, status it would write."""
    realserver_names: Mapping[str, str] = field(default_factory=dict)
    """Real servers' addresses -> what users call them (Kubernetes: the Node's name), for
    ``kubelvs top`` and ``status``."""


@dataclass(frozen=True, slots=True)
class Happening:
    """A decision of this director that users must know of, about one virtual service:
    a Kubernetes Event on its Service (``reason``, ``message``, ``type``) and a log line.
    Each director reports its own (its VIP announcements, its drains), leader or not."""

    key: ServiceKey
    reason: str  # VIPAnnounced, VIPWithdrawn, DrainFinished
    message: str
    type: str = "Normal"


@dataclass(frozen=True, slots=True)
class SyncOutcome:
    """What the director did with the last update, for a source that reports it back
    (Service status, Events). ``failing``: services the kernel refused, with the reason;
    ``health_changes``: real servers that went down or came back since the last one."""

    synced: bool
    failing: dict[ServiceKey, str]
    held_back: frozenset[ServiceKey] = frozenset()
    held_message: str = ""
    health_changes: tuple[tuple[ServiceKey, str, str], ...] = ()  # (service, "down" | "up", what)
    no_healthy: frozenset[ServiceKey] = frozenset()  # every checked real server down (fail open)
    happenings: tuple[Happening, ...] = ()  # this director's own, since the last outcome


@dataclass(frozen=True, slots=True)
class SourceGauges:
    """What a source shows on ``/metrics`` (the config file: nothing)."""

    watch_restarts: Mapping[str, int] = field(default_factory=dict)  # per kind of object
    ipam: Mapping[str, tuple[int, int]] = field(default_factory=dict)  # pool -> (in use, free)


class DesiredSource(Protocol):
    description: str
    """How the source is named in logs, e.g. ``config file lb.yaml``."""
    resync_seconds: float
    """Seconds between full syncs with the kernel, unless the command line says otherwise."""
    coalesce_seconds: float
    """The least time between two reconciles that changes cause (``app.loop.Coalescer``):
    a change after a quiet spell is reconciled at once, later ones together."""

    async def open(self) -> None:
        """Load the first complete desired state. Raises the project's errors (a bad
        config, an unreachable API server): the program then starts nothing."""
        ...

    @property
    def ready(self) -> bool:
        """The desired state is complete (Kubernetes: every kind listed once)."""
        ...

    def start(self, stop: asyncio.Event, wake: Callable[[], None]) -> list[asyncio.Task[None]]:
        """Keep the desired state current until ``stop``; call ``wake()`` after a change."""
        ...

    def current(self, *, full: bool) -> DesiredUpdate:
        """The desired state now. ``full``: compute it whole (the periodic full sync also
        checks the source's incremental bookkeeping). Runs in a worker thread."""
        ...

    async def after_sync(self, outcome: SyncOutcome) -> None:
        """Called on the event loop after every sync, failed or not."""
        ...

    def gauges(self) -> SourceGauges:
        """For ``/metrics``, read at scrape time from another thread: cheap, no I/O."""
        ...

    async def close(self) -> None: ...
