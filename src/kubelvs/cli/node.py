"""``kubelvs node``: run the node agent (real-server side of LVS-DR/TUN).

    kubelvs node --vip 10.240.0.201 --interface eth0 --once
    kubelvs node -f lab.yaml --netns kubelvs-lab-node1          # keep following the file
    kubelvs node --kubernetes -f config.yaml --node-name node1  # the DaemonSet (NODE_NAME)
    kubelvs node --from-manifests DIR -f config.yaml --node-name node1
    kubelvs node --revert --netns kubelvs-lab-node1             # undo what it set

VIPs come from ``--vip``, from the director's YAML config (services with a DR/TUN
real server at one of this node's addresses), or from Kubernetes: the director's own
mapping, asked which VIPs this node serves (``app.node``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path

from ..app.logs import setup_logging
from ..app.metrics import DEFAULT_NODE_ADDRESS, parse_address
from ..app.node import (
    FileNodeSource,
    KubernetesNodeSource,
    NodeOptions,
    NodeSource,
    NodeWant,
    StaticNodeSource,
    make_agent,
    run_node,
)
from ..app.signals import stop_on_signals
from ..errors import NodeError
from ..roles.node import STATE_DIR, Change
from ..sources.config import load_config
from . import exit_codes
from .args import add_log_args, add_metrics_args

__all__ = ["cmd_node", "register"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "node", help="node agent: VIPs on lo, arp_ignore/arp_announce, rp_filter, IPIP (DR/TUN real server)"
    )
    p.add_argument(
        "--vip", action="append", default=[], metavar="ADDR", help="a VIP this node serves (repeatable)"
    )
    p.add_argument(
        "-f",
        "--file",
        "--config",
        dest="file",
        type=Path,
        help="director YAML config: its services' VIPs; with --kubernetes also its kubernetes: section",
    )
    p.add_argument(
        "--interface", metavar="IFACE", help="the L2 interface (default: the default route's device)"
    )
    p.add_argument("--mode", choices=("dr", "tun"), help="dr (default) or tun; with -f taken from the config")
    p.add_argument(
        "--vip-device",
        choices=("auto", "lo", "dummy"),
        default="auto",
        help="where VIPs go: a dummy device kubelvs0 where the kernel has one (auto), or lo",
    )
    p.add_argument("--netns", metavar="NAME", help="configure this network namespace (ip netns)")
    p.add_argument(
        "--state-dir", type=Path, default=STATE_DIR, help=f"where the record of changes is kept ({STATE_DIR})"
    )
    p.add_argument("--once", action="store_true", help="configure once and exit (default: follow the source)")
    p.add_argument("--revert", action="store_true", help="remove what the agent set and exit")
    p.add_argument("--poll", type=float, default=1.0, help="seconds between checks of the file (default 1)")
    p.add_argument(
        "--settle",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="a changed file is read once it stayed the same this long",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="print the VIPs this node would hold, touch nothing"
    )
    p.add_argument("-o", "--output", choices=("text", "json"), default="text")
    add_metrics_args(p, DEFAULT_NODE_ADDRESS)
    add_log_args(p)
    k = p.add_argument_group("Kubernetes (the node agent as a DaemonSet)")
    objects = k.add_mutually_exclusive_group()
    objects.add_argument(
        "--kubernetes",
        action="store_true",
        help="VIPs from the Kubernetes API (Services, EndpointSlices, Nodes)",
    )
    objects.add_argument(
        "--from-manifests", type=Path, metavar="DIR", help="VIPs from kubectl -o yaml/json files (watched)"
    )
    k.add_argument("--kubeconfig", type=Path, help="kubeconfig (default: in-cluster, then ~/.kube/config)")
    k.add_argument("--node-name", metavar="NAME", help="this node's Node name (default: $NODE_NAME)")
    k.add_argument(
        "--resync",
        type=float,
        metavar="SECONDS",
        help="seconds between full re-checks of the node (default 60; kubernetes.resync_seconds)",
    )
    p.set_defaults(func=cmd_node)


def _source(args: argparse.Namespace) -> NodeSource:
    if args.file is not None and str(args.file) == "-":
        raise NodeError("-f: the node agent follows the director's config file: give a path, not - (stdin)")
    kubernetes = args.kubernetes or args.from_manifests is not None
    if kubernetes:
        if args.vip:
            raise NodeError(
                "--vip: cannot be combined with --kubernetes or --from-manifests "
                "(the VIPs come from the Services)"
            )
        if args.file is None:
            raise NodeError(
                "-f/--config: required with --kubernetes or --from-manifests (the director's config file, "
                "whose kubernetes: section the mapping reads)"
            )
        node = (args.node_name or os.environ.get("NODE_NAME") or "").strip()
        if not node:
            raise NodeError(
                "node-name: give --node-name or set NODE_NAME (the DaemonSet sets it from spec.nodeName)"
            )
        return KubernetesNodeSource(
            load_config(args.file),
            node,
            netns=args.netns,
            kubeconfig=args.kubeconfig,
            manifests=args.from_manifests,
            poll_seconds=args.poll,
        )
    if args.file is not None:
        return FileNodeSource(
            args.file,
            netns=args.netns,
            extra=list(args.vip),
            poll_seconds=args.poll,
            settle_seconds=args.settle,
            resync_seconds=args.resync or 60.0,
        )
    if args.vip:
        return StaticNodeSource(list(args.vip), args.mode or "dr")
    raise NodeError(
        "give the VIPs with --vip, a config with -f, or --kubernetes / --from-manifests (or --revert)"
    )


def _options(args: argparse.Namespace) -> NodeOptions:
    return NodeOptions(
        interface=args.interface,
        mode=args.mode,
        netns=args.netns,
        vip_device=args.vip_device,
        state_dir=args.state_dir,
        resync_seconds=args.resync,
        metrics_address=None if args.once else parse_address(args.metrics_address),
    )


def cmd_node(args: argparse.Namespace) -> int:
    setup_logging(args.log_level, args.log_format)
    if args.dry_run and args.revert:
        raise NodeError("--dry-run: cannot be combined with --revert")
    options = _options(args)
    if args.revert:
        _report(args, [], make_agent(options).revert())
        return exit_codes.OK
    source = _source(args)
    if args.dry_run:
        return asyncio.run(_dry_run(args, source))

    def report(want: NodeWant, changes: list[Change]) -> None:
        extra = {"node": want.node} if want.node is not None else {}
        _report(args, list(want.vips), changes, mode=want.mode, **extra)

    async def main() -> None:
        # VIPs given only on the command line are configured once (nothing to follow).
        once = args.once or isinstance(source, StaticNodeSource)
        await run_node(options, source, report, stop_on_signals(), once=once)

    asyncio.run(main())
    return exit_codes.OK


async def _dry_run(args: argparse.Namespace, source: NodeSource) -> int:
    await source.open()
    try:
        want = await asyncio.to_thread(source.current)
    finally:
        await source.close()
    if args.output == "json":
        print(json.dumps(want.as_dict()), flush=True)
        return exit_codes.OK
    for vip in want.vips:
        print(vip)
    where = f"node {want.node}: " if want.node is not None else ""
    missing = "" if want.found else " (no Node object of that name)"
    print(f"# {where}mode {want.mode}{missing}", flush=True)
    return exit_codes.OK


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
