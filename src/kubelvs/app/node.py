"""``kubelvs node``: the node agent program (the real-server side of LVS-DR and TUN).

    a NodeSource (``--vip`` | the director's config file | Kubernetes)  -> NodeWant
        -> roles.node.NodeAgent.sync(vips)   (VIPs on lo, arp_ignore/arp_announce,
                                              rp_filter, tunl0), reading the node back
        -> a report per change (text or JSON lines)

The Kubernetes source runs the same watches and the same ``Mapper`` with the same config
file as the directors, so both sides compute the same real servers. The node holds the
VIP of every DR/TUN virtual service in which it is a real server (weight 0 included),
with one deliberate difference (``mapping.holding_view``): its own NotReady, cordoned or
being-deleted state does not take the VIPs away (docs/kubernetes.md). The config file's
static ``services`` count as well: the director programs them too.

While its source is unavailable (API server away, config file rejected) the node keeps
what it has; on exit it stays configured (a restarting DaemonSet pod must not cut
traffic); ``kubelvs node --revert`` undoes it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ..errors import NodeError
from ..model import Forward
from ..roles.node import (
    STATE_DIR,
    Change,
    Mode,
    NodeAgent,
    default_interface,
    node_addresses,
    sorted_addresses,
)
from ..roles.node import vips_for_node as config_vips_for_node
from ..sources.config import Config, to_desired
from ..sources.file import ConfigFileSource
from ..sources.kubernetes.mapping import Mapper, Snapshot, holding_view, vips_for_node
from ..sources.kubernetes.settings import KubeSettings, parse_kubernetes
from .loop import ReconcileLoop
from .metrics import MetricsServer, NodeCollector, ProgramMetrics

__all__ = [
    "FileNodeSource",
    "KubernetesNodeSource",
    "NodeOptions",
    "NodeProgram",
    "NodeSource",
    "NodeVips",
    "NodeWant",
    "StaticNodeSource",
    "run_node",
    "start_node",
]

log = logging.getLogger("kubelvs.node")


@dataclass(frozen=True, slots=True)
class NodeWant:
    """What this node must hold."""

    vips: tuple[str, ...]  # IPv4 then IPv6, sorted
    mode: Mode  # "tun" when any of them is served by TUN
    node: str | None = None  # the Node's name (Kubernetes source)
    found: bool = True  # the Node object exists (Kubernetes source)

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"vips": list(self.vips), "mode": self.mode}
        if self.node is not None:
            out.update(node=self.node, found=self.found)
        return out


class NodeSource(Protocol):
    description: str
    resync_seconds: float
    coalesce_seconds: float

    async def open(self) -> None: ...

    @property
    def ready(self) -> bool: ...

    def start(self, stop: asyncio.Event, wake: Callable[[], None]) -> list[asyncio.Task[None]]: ...

    def current(self) -> NodeWant:
        """What the node must hold now (runs in a worker thread)."""
        ...

    async def close(self) -> None: ...


def _want(vips: set[str], mode: Mode, **extra: object) -> NodeWant:
    """The VIPs in order; text that is no address goes last, for the agent to refuse
    with its own message."""
    return NodeWant(vips=tuple(_sorted(vips)), mode=mode, **extra)  # type: ignore[arg-type]


def _version(text: str) -> int | None:
    try:
        return ipaddress.ip_address(text).version
    except ValueError:
        return None


def _sorted(texts: set[str]) -> list[str]:
    good = [t for t in texts if _version(t) is not None]
    return sorted_addresses(good) + sorted(texts - set(good))


class StaticNodeSource:
    """``--vip`` on the command line: a fixed set."""

    coalesce_seconds = 0.0
    resync_seconds = 60.0

    def __init__(self, vips: list[str], mode: Mode) -> None:
        self.description = "the command line"
        self.want = _want(set(vips), mode)
        self.ready = True

    async def open(self) -> None:
        pass

    def start(self, stop: asyncio.Event, wake: Callable[[], None]) -> list[asyncio.Task[None]]:
        return []

    def current(self) -> NodeWant:
        return self.want

    async def close(self) -> None:
        pass


class FileNodeSource:
    """The director's config file (followed as it changes, with its settle time): the
    VIPs of services with a DR or TUN real server at one of this node's addresses, plus
    ``extra`` from ``--vip``."""

    coalesce_seconds = 0.0

    def __init__(
        self,
        path: Path,
        *,
        netns: str | None,
        extra: list[str] = [],  # noqa: B006 - read only
        poll_seconds: float = 1.0,
        settle_seconds: float = 1.0,
        resync_seconds: float = 60.0,
    ) -> None:
        self.file = ConfigFileSource(
            path, poll_seconds=poll_seconds, settle_seconds=settle_seconds, resync_seconds=resync_seconds
        )
        self.netns = netns
        self.extra = list(extra)
        self.description = self.file.description
        self.resync_seconds = resync_seconds

    async def open(self) -> None:
        await self.file.open()

    @property
    def ready(self) -> bool:
        return self.file.ready

    def start(self, stop: asyncio.Event, wake: Callable[[], None]) -> list[asyncio.Task[None]]:
        return self.file.start(stop, wake)

    def current(self) -> NodeWant:
        assert self.file.config is not None, "open() first"
        vips, mode = config_vips_for_node(self.file.config, node_addresses(self.netns))
        return _want(set(vips) | set(self.extra), mode)

    async def close(self) -> None:
        await self.file.close()


class NodeVips:
    """Snapshot -> the VIPs node ``node_name`` must hold, through the director's Mapper."""

    def __init__(
        self, settings: KubeSettings, config: Config, node_name: str, *, netns: str | None = None
    ) -> None:
        self.mapper = Mapper(settings)
        self.config = config
        self.node_name = node_name
        self.netns = netns

    def compute(self, snap: Snapshot) -> NodeWant:
        name = self.node_name
        result = self.mapper.map(holding_view(snap, name))
        vips = {str(v) for v in vips_for_node(result, name)}
        tun = bool(vips_for_node(result, name, forwards=(Forward.TUN,)))
        if any(svc.vip is not None for svc in self.config.services):
            # The director programs the config file's services as well; they name their
            # real servers by address, so they are matched against this node's addresses.
            static, static_mode = config_vips_for_node(self.config, node_addresses(self.netns))
            vips |= set(static)
            tun = tun or static_mode == "tun"
        return _want(vips, "tun" if tun else "dr", node=name, found=("", name) in snap.nodes)


class KubernetesNodeSource:
    """The VIPs the director's own mapping gives node ``node_name`` (API server or
    ``kubectl -o yaml`` files)."""

    def __init__(
        self,
        config: Config,
        node_name: str,
        *,
        netns: str | None,
        kubeconfig: Path | None = None,
        manifests: Path | None = None,
        poll_seconds: float = 1.0,
    ) -> None:
        from ..sources.kubernetes.source import ObjectSource  # the API client is imported only here

        self.settings = parse_kubernetes(config.kubernetes, to_desired(config).ownership)
        self.objects = ObjectSource(
            self.settings, kubeconfig=kubeconfig, manifests=manifests, poll=poll_seconds
        )
        self.vips = NodeVips(self.settings, config, node_name, netns=netns)
        self.description = f"Kubernetes objects in {manifests}" if manifests else "the Kubernetes API"
        self.resync_seconds = self.settings.resync_seconds
        self.coalesce_seconds = self.settings.coalesce_seconds

    async def open(self) -> None:
        await self.objects.open()

    @property
    def ready(self) -> bool:
        return self.objects.store.initialized

    def start(self, stop: asyncio.Event, wake: Callable[[], None]) -> list[asyncio.Task[None]]:
        self.objects.store.on_change = wake
        return self.objects.start(stop)

    def current(self) -> NodeWant:
        return self.vips.compute(self.objects.store.snapshot(take_changes=True))

    async def close(self) -> None:
        await self.objects.close()


#: Prints one result: (what the node must hold, the changes made).
Report = Callable[[NodeWant, list[Change]], None]


@dataclass(frozen=True, slots=True)
class NodeOptions:
    interface: str | None = None  # None: the default route's device
    mode: Mode | None = None  # None: from the source (tun when any VIP is served by TUN)
    netns: str | None = None  # None: the namespace the program runs in
    vip_device: str = "auto"  # auto | lo | dummy
    state_dir: Path = field(default=STATE_DIR)
    resync_seconds: float | None = None  # None: the source's
    metrics_address: tuple[str, int] | None = None  # --metrics-address; None: no /metrics server


def make_agent(options: NodeOptions) -> NodeAgent:
    """The agent for ``options``; a clear error when the node has no interface to use."""
    interface = options.interface or default_interface(options.netns)
    if interface is None:
        raise NodeError("interface: no default route to take it from; give --interface")
    return NodeAgent(
        interface=interface,
        mode=options.mode or "dr",
        netns=options.netns,
        vip_device=options.vip_device,  # type: ignore[arg-type]
        state_dir=options.state_dir,
    )


class NodeProgram:
    def __init__(self, options: NodeOptions, source: NodeSource, agent: NodeAgent, report: Report) -> None:
        self.options = options
        self.source = source
        self.agent = agent
        self.report = report
        self.last: NodeWant | None = None
        self.metrics = ProgramMetrics()
        self.metrics.registry.register(NodeCollector(self._vips_held))
        address = options.metrics_address
        self.metrics_server = MetricsServer(self.metrics, *address) if address is not None else None
        self.loop = ReconcileLoop(
            self.step,
            ready=lambda: source.ready,
            resync=options.resync_seconds or source.resync_seconds,
            coalesce=source.coalesce_seconds,
            check=self._drifted,  # a VIP or a sysctl changed behind the agent: repaired at once
            observer=self.metrics,
        )

    def _vips_held(self) -> int:
        last = self.last
        return len(last.vips) if last is not None else 0

    def _drifted(self) -> bool:
        last = self.last
        return last is not None and self.agent.drifted(last.vips)

    def step(self, full: bool) -> None:
        """Make the node hold what the source wants (every step reads the node back, so a
        VIP or sysctl changed behind the agent is repaired)."""
        want = self.source.current()
        _warn_changes(self.last, want)
        self.agent.mode = self.options.mode or want.mode
        changes = self.agent.sync(want.vips)
        self.metrics.count_operations(c.action for c in changes)
        if changes or want != self.last:
            self.report(want, changes)
        self.last = want
        return None

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop``, holding the namespace's agent lock: a second agent, or a
        ``kubelvs node --revert`` meanwhile, is refused instead of fighting this one."""
        with self.agent.hold():
            tasks = [*self.source.start(stop, self.loop.wake), asyncio.create_task(self.loop.run(stop))]
            if self.metrics_server is not None:
                tasks.append(asyncio.create_task(self.metrics_server.serve(stop)))
            await stop.wait()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def close(self) -> None:
        await self.source.close()


def _warn_changes(last: NodeWant | None, want: NodeWant) -> None:
    if want.node is not None and not want.found and (last is None or last.found):
        log.warning("node %r is not in the cluster (no Node object of that name): it holds no VIP", want.node)


async def start_node(
    options: NodeOptions, source: NodeSource, report: Report, *, agent: NodeAgent | None = None
) -> NodeProgram:
    """Make the agent first (a wrong interface fails before the source is contacted),
    then open the source."""
    agent = agent or make_agent(options)
    await source.open()
    return NodeProgram(options, source, agent, report)


async def run_node(
    options: NodeOptions, source: NodeSource, report: Report, stop: asyncio.Event, *, once: bool = False
) -> None:
    agent = make_agent(options)
    if once:
        program = await start_node(options, source, report, agent=agent)
        try:
            await asyncio.to_thread(program.step, True)
        finally:
            await program.close()
        return
    with agent.hold():  # before the source is opened: a second agent fails at once
        program = await start_node(options, source, report, agent=agent)
        try:
            await program.run(stop)
        finally:
            await program.close()
    # The node stays configured on exit: a restarting agent must not cut traffic (--revert undoes).
