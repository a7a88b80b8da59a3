"""``kubelvs node --kubernetes | --from-manifests``: the node agent fed by Kubernetes.

    watches (or the manifest poller) -> Store -> Coalescer      (``source``, ``loop``:
                                                                  the director's own)
        -> Mapper (the director's mapping, same config) -> vips_for_node(NODE_NAME)
        -> NodeAgent.sync(vips)  (VIPs on lo, arp_ignore/arp_announce, rp_filter, tunl0)

The node runs the same watches and the same ``Mapper`` with the same config file as
the directors, so both sides compute the same real servers. The node holds the VIP of
every DR/TUN virtual service in which it is a real server (weight 0 included), with
one deliberate difference (``mapping.holding_view``): its own NotReady, cordoned or
being-deleted state does not take the VIPs away; see docs/kubernetes.md. The config
file's static ``services`` count as well, as ``kubelvs node -f`` counts them: the
director programs them too.

The agent's semantics are kept: while the API server is away the store keeps its
objects, so every step computes the same VIPs and the node keeps them; on exit the
node stays configured (a restarting DaemonSet pod must not cut traffic); ``--revert``
undoes it.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

from ...cli import exit_codes
from ...model import Forward
from ...roles.node import (
    Change,
    Mode,
    NodeAgent,
    NodeError,
    default_interface,
    node_addresses,
    sorted_addresses,
)
from ...roles.node import vips_for_node as config_vips_for_node
from ..config import Config, load_config, to_desired
from .loop import ReconcileLoop
from .mapping import Mapper, Snapshot, holding_view, vips_for_node
from .settings import KubeSettings, parse_kubernetes
from .source import ObjectSource, stop_on_signals
from .tracker import Store

__all__ = ["NodeLoop", "NodeVips", "NodeWant", "Report", "run_node"]

log = logging.getLogger("kubelvs.kubernetes.node")

#: Prints one result: (the VIPs wanted, the changes made).
Report = Callable[["NodeWant", list[Change]], None]


@dataclass(frozen=True, slots=True)
class NodeWant:
    """What this node must hold."""

    node: str
    found: bool  # the Node object exists
    vips: tuple[str, ...]  # IPv4, sorted
    mode: Mode  # "tun" when any of them is served by TUN
    ipv6: tuple[str, ...] = ()  # IPv6 VIPs it would serve: the agent holds IPv4 only

    def as_dict(self) -> dict[str, object]:
        return {"node": self.node, "found": self.found, "vips": list(self.vips), "mode": self.mode, "ipv6_not_held": list(self.ipv6)}


class NodeVips:
    """Snapshot -> the VIPs node ``node_name`` must hold, through the director's Mapper."""

    def __init__(self, settings: KubeSettings, config: Config, node_name: str, *, netns: str | None = None) -> None:
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
        v4 = {v for v in vips if ipaddress.ip_address(v).version == 4}
        return NodeWant(
            node=name,
            found=("", name) in snap.nodes,
            vips=tuple(sorted_addresses(v4)),
            mode="tun" if tun else "dr",
            ipv6=tuple(sorted_addresses(vips - v4)),
        )


class NodeLoop(ReconcileLoop):
    """Syncs the node agent after each coalesced burst of changes and on the resync timer
    (each sync reads the node back, so a VIP or sysctl changed behind it is repaired)."""

    def __init__(
        self,
        store: Store,
        settings: KubeSettings,
        vips: NodeVips,
        agent: NodeAgent,
        *,
        report: Report,
        mode: Mode | None = None,  # --mode: overrides the computed one
        resync: float | None = None,
    ) -> None:
        super().__init__(store, settings, resync=resync)
        self.vips = vips
        self.agent = agent
        self.report = report
        self.mode = mode
        self.last: NodeWant | None = None

    def step(self, snap: Snapshot, *, full: bool) -> None:
        want = self.vips.compute(snap)
        _warn_changes(self.last, want)
        self.agent.mode = self.mode or want.mode
        changes = self.agent.sync(want.vips)
        if changes or want != self.last:
            self.report(want, changes)
        self.last = want


def _warn_changes(last: NodeWant | None, want: NodeWant) -> None:
    if not want.found and (last is None or last.found):
        log.warning("node %r is not in the cluster (no Node object of that name): it holds no VIP", want.node)
    if want.ipv6 and (last is None or last.ipv6 != want.ipv6):
        log.warning("IPv6 VIPs not held (the node agent handles IPv4 only): %s", ", ".join(want.ipv6))


def _check(args: argparse.Namespace) -> str:
    """The node name; a clear error for flags that do not fit together."""
    if args.kubernetes and args.from_manifests is not None:
        raise NodeError("--kubernetes and --from-manifests: give one source of objects, not both")
    if args.vip:
        raise NodeError("--vip: cannot be combined with --kubernetes or --from-manifests (the VIPs come from the Services)")
    if args.file is None:
        raise NodeError(
            "-f/--config: required with --kubernetes or --from-manifests (the director's config file, "
            "whose kubernetes: section the mapping reads)"
        )
    node = args.node_name or os.environ.get("NODE_NAME") or ""
    if not node.strip():
        raise NodeError("node-name: give --node-name or set NODE_NAME (the DaemonSet sets it from spec.nodeName)")
    return node.strip()


def run_node(args: argparse.Namespace, report: Report) -> int:
    """``kubelvs node --kubernetes | --from-manifests`` (``--revert`` is handled before)."""
    if not logging.getLogger().handlers:
        logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    node = _check(args)
    config = load_config(args.file)
    settings = parse_kubernetes(config.kubernetes, to_desired(config).ownership)
    agent: NodeAgent | None = None
    if not args.dry_run:
        # Before contacting the API server: a wrong interface fails at once.
        interface = args.interface or default_interface(args.netns)
        if interface is None:
            raise NodeError("interface: no default route to take it from; give --interface")
        agent = NodeAgent(
            interface=interface, mode=args.mode or "dr", netns=args.netns, vip_device=args.vip_device, state_dir=args.state_dir
        )
    return asyncio.run(_main(args, config, settings, node, agent, report))


async def _main(
    args: argparse.Namespace, config: Config, settings: KubeSettings, node: str, agent: NodeAgent | None, report: Report
) -> int:
    stop = stop_on_signals()
    source = ObjectSource(settings, kubeconfig=args.kubeconfig, manifests=args.from_manifests, poll=args.poll)
    try:
        await source.open()
        vips = NodeVips(settings, config, node, netns=args.netns)
        if agent is None:  # --dry-run
            want = vips.compute(source.store.snapshot())
            _warn_changes(None, want)
            if args.output == "json":
                print(json.dumps(want.as_dict()), flush=True)
            else:
                for v in want.vips:
                    print(v)
                print(f"# node {want.node}: mode {want.mode}" + ("" if want.found else " (no Node object of that name)"), flush=True)
            return exit_codes.OK
        if args.once:
            want = vips.compute(source.store.snapshot())
            _warn_changes(None, want)
            agent.mode = args.mode or want.mode
            report(want, agent.sync(want.vips))
            return exit_codes.OK
        loop = NodeLoop(source.store, settings, vips, agent, report=report, mode=args.mode, resync=args.resync)
        tasks = [asyncio.create_task(loop.run(stop)), *source.start(stop)]
        await stop.wait()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # The node stays configured: a restarting agent must not cut traffic (--revert undoes).
        return exit_codes.OK
    finally:
        await source.close()
