"""``kubelvs node``: run the node agent (real-server side of LVS-DR/TUN).

    kubelvs node --vip 10.240.0.201 --interface eth0 --once
    kubelvs node -f lab.yaml --netns kubelvs-lab-node1          # keep following the file
    kubelvs node --kubernetes -f config.yaml --node-name node1  # the DaemonSet (NODE_NAME)
    kubelvs node --from-manifests DIR -f config.yaml --node-name node1
    kubelvs node --revert --netns kubelvs-lab-node1             # undo what it set

VIPs come from ``--vip``, from the director's YAML config (services with a DR/TUN
real server at one of this node's addresses), or from Kubernetes: the director's own
mapping, asked which VIPs this node serves (``sources.kubernetes.noderunner``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ..cli import exit_codes
from ..cli.shutdown import StopFlag
from ..errors import KubelvsError
from ..sources.config import load_config
from .node import (
    STATE_DIR,
    Change,
    Mode,
    NodeAgent,
    NodeError,
    default_interface,
    node_addresses,
    vips_for_node,
)

__all__ = ["cmd_node", "register"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("node", help="node agent: VIPs on lo, arp_ignore/arp_announce, rp_filter, IPIP (DR/TUN real server)")
    p.add_argument("--vip", action="append", default=[], metavar="ADDR", help="a VIP this node serves (repeatable)")
    p.add_argument("-f", "--file", "--config", dest="file", type=Path, help="director YAML config: its services' VIPs; with --kubernetes also its kubernetes: section")
    p.add_argument("--interface", metavar="IFACE", help="the L2 interface (default: the default route's device)")
    p.add_argument("--mode", choices=("dr", "tun"), help="dr (default) or tun; with -f taken from the config")
    p.add_argument("--vip-device", choices=("auto", "lo", "dummy"), default="auto",
                   help="where VIPs go: a dummy device kubelvs0 where the kernel has one (auto), or lo")
    p.add_argument("--netns", metavar="NAME", help="configure this network namespace (ip netns)")
    p.add_argument("--state-dir", type=Path, default=STATE_DIR, help=f"where the record of changes is kept ({STATE_DIR})")
    p.add_argument("--once", action="store_true", help="configure once and exit (default: follow the file)")
    p.add_argument("--revert", action="store_true", help="remove what the agent set and exit")
    p.add_argument("--poll", type=float, default=1.0, help="seconds between checks of the file (default 1)")
    p.add_argument("--dry-run", action="store_true", help="print the VIPs this node would hold, touch nothing")
    p.add_argument("-o", "--output", choices=("text", "json"), default="text")
    k = p.add_argument_group("Kubernetes (the node agent as a DaemonSet)")
    k.add_argument("--kubernetes", action="store_true", help="VIPs from the Kubernetes API (Services, EndpointSlices, Nodes)")
    k.add_argument("--kubeconfig", type=Path, help="kubeconfig (default: in-cluster, then ~/.kube/config)")
    k.add_argument("--from-manifests", type=Path, metavar="DIR", help="VIPs from kubectl -o yaml/json files (watched)")
    k.add_argument("--node-name", metavar="NAME", help="this node's Node name (default: $NODE_NAME)")
    k.add_argument("--resync", type=float, metavar="SECONDS",
                   help="seconds between full re-checks of the node (default: kubernetes.resync_seconds)")
    p.set_defaults(func=cmd_node)


def _report(args: argparse.Namespace, vips: list[str], changes: list[Change], **extra: object) -> None:
    if args.output == "json":
        doc = {"netns": args.netns, **extra, "vips": vips, "changes": [c.as_dict() for c in changes]}
        print(json.dumps(doc), flush=True)
        return
    stamp = time.strftime("%H:%M:%S")
    if not changes:
        print(f"{stamp} node: in sync ({len(vips)} VIP(s))", flush=True)
    for c in changes:
        print(f"{stamp} node: {c}", flush=True)


def _wanted(args: argparse.Namespace) -> tuple[list[str], Mode]:
    vips = list(args.vip)
    mode: Mode = args.mode or "dr"
    if args.file is not None:
        from_file, file_mode = vips_for_node(load_config(args.file), node_addresses(args.netns))
        vips += [v for v in from_file if v not in vips]
        mode = args.mode or file_mode
    return vips, ("tun" if mode == "tun" else "dr")


def cmd_node(args: argparse.Namespace) -> int:
    if (args.kubernetes or args.from_manifests is not None) and not args.revert:
        from ..sources.kubernetes.noderunner import NodeWant, run_node

        def report(want: NodeWant, changes: list[Change]) -> None:
            _report(args, list(want.vips), changes, node=want.node, mode=want.mode)

        return run_node(args, report)
    if not args.vip and args.file is None and not args.revert:
        raise NodeError("give the VIPs with --vip, a config with -f, or --kubernetes / --from-manifests (or --revert)")
    if args.dry_run and args.revert:
        raise NodeError("--dry-run: cannot be combined with --revert")
    if args.dry_run:
        vips, mode = _wanted(args)
        if args.output == "json":
            print(json.dumps({"vips": vips, "mode": mode}))
        else:
            print("\n".join([*vips, f"# mode {mode}"]))
        return exit_codes.OK
    interface = args.interface or default_interface(args.netns)
    if interface is None:
        raise NodeError("interface: no default route to take it from; give --interface")
    vips, mode = _wanted(args) if not args.revert else ([], "tun" if args.mode == "tun" else "dr")
    agent = NodeAgent(interface=interface, mode=mode, netns=args.netns, vip_device=args.vip_device, state_dir=args.state_dir)
    if args.revert:
        _report(args, [], agent.revert())
        return exit_codes.OK
    _report(args, vips, agent.sync(vips))
    if args.once or args.file is None:
        return exit_codes.OK
    stopping = StopFlag()
    last = vips
    while not stopping:
        time.sleep(args.poll)
        try:
            vips, mode = _wanted(args)
            agent.mode = mode
            changes = agent.sync(vips)
            if changes or vips != last:
                _report(args, vips, changes)
            last = vips
        except KubelvsError as exc:
            # A bad edit of the file: keep what the node has and say why.
            print(f"{time.strftime('%H:%M:%S')} node: not applied: {exc}", file=sys.stderr, flush=True)
    # Leaving the node configured on exit is deliberate: a restarting agent must not
    # cut traffic. Use --revert to undo.
    return exit_codes.OK
