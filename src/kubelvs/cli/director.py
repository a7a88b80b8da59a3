"""``kubelvs director``: arguments -> DirectorOptions and a source -> ``app.director``."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path

from ..app.director import DirectorOptions, run_director
from ..app.logs import setup_logging
from ..app.metrics import DEFAULT_DIRECTOR_ADDRESS, parse_address
from ..app.signals import stop_on_signals
from ..app.state import state_path
from ..errors import ConfigError, FieldError
from ..model import ServiceKey
from ..roles.guard import GuardSettings
from ..sources.config import load_config
from ..sources.desired import DesiredSource, DesiredUpdate
from ..sources.file import ConfigFileSource
from . import exit_codes
from .args import add_backend_args, add_log_args, add_metrics_args
from .render import status_document

__all__ = ["register", "render_text"]

log = logging.getLogger("kubelvs.director")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "director", help="run the director: keep the kernel converged to a config file or to Kubernetes"
    )
    p.add_argument("-f", "--file", "--config", dest="file", required=True, type=Path, help="YAML config file")
    objects = p.add_mutually_exclusive_group()
    objects.add_argument("--kubernetes", action="store_true", help="desired state from the Kubernetes API")
    objects.add_argument(
        "--from-manifests", type=Path, metavar="DIR", help="desired state from kubectl -o yaml/json files"
    )
    p.add_argument("--kubeconfig", type=Path, help="kubeconfig (default: in-cluster, then ~/.kube/config)")
    p.add_argument("--dry-run", action="store_true", help="print the desired state, touch nothing")
    p.add_argument("-o", "--output", choices=("text", "json"), default="text")
    p.add_argument("--once", action="store_true", help="reconcile once and exit")
    p.add_argument(
        "--graceful",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="drain real servers that leave: weight 0 first, delete once without connections or after "
        "the drain timeout (default: yes, unless the config says graceful: false)",
    )
    p.add_argument("--poll", type=float, default=1.0, help="seconds between checks of the file (default 1)")
    p.add_argument(
        "--settle",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="a changed file is read once it stayed the same this long (default 1; 0 with atomic renames)",
    )
    p.add_argument(
        "--resync",
        type=float,
        metavar="SECONDS",
        help="seconds between full syncs with the kernel (default 60; kubernetes.resync_seconds)",
    )
    p.add_argument(
        "--allow-mass-delete",
        action="store_true",
        help="no deletion guard: delete more than half of the owned services at once without waiting",
    )
    p.add_argument(
        "--state-file",
        type=Path,
        metavar="PATH",
        help="where the director publishes its state for kubelvs status",
    )
    p.add_argument(
        "--vrrp-priority",
        type=int,
        choices=range(1, 255),
        metavar="1-254",
        help="this director's VRRP priority (replaces the config's vrrp.priority: one config, "
        "one number apart on each director)",
    )
    add_backend_args(p)
    add_metrics_args(p, DEFAULT_DIRECTOR_ADDRESS)
    add_log_args(p)
    p.set_defaults(func=cmd_director)


def _source(args: argparse.Namespace, *, dry_run: bool) -> DesiredSource:
    if str(args.file) == "-":
        raise ConfigError(
            [FieldError("-f", "the director follows its config file: give a path, not - (stdin)")]
        )
    if args.kubernetes or args.from_manifests is not None:
        from ..sources.kubernetes.desired import KubernetesSource  # the API client is imported only here

        return KubernetesSource(
            load_config(args.file),
            kubeconfig=args.kubeconfig,
            manifests=args.from_manifests,
            poll_seconds=args.poll,
            write_status=not dry_run,
            notes=dry_run,
        )
    return ConfigFileSource(args.file, poll_seconds=args.poll, settle_seconds=args.settle)


def cmd_director(args: argparse.Namespace) -> int:
    """Follow the source; on a change reconcile only the services that changed; fully
    resync every ``--resync`` seconds. A bad edit is reported and the kernel keeps the
    last good state."""
    setup_logging(args.log_level, args.log_format)
    if args.dry_run:
        return asyncio.run(_dry_run(args))
    guard = GuardSettings(enabled=not args.allow_mass_delete)
    options = DirectorOptions(
        backend=args.backend,
        netns=args.netns,
        graceful=args.graceful,
        resync_seconds=args.resync,
        guard=guard,
        state_file=args.state_file or state_path(args.netns),
        vrrp_priority=args.vrrp_priority,
        metrics_address=None if args.once else parse_address(args.metrics_address),
    )

    async def main() -> None:
        await run_director(options, _source(args, dry_run=False), stop_on_signals(), once=args.once)

    asyncio.run(main())
    return exit_codes.OK


async def _dry_run(args: argparse.Namespace) -> int:
    source = _source(args, dry_run=True)
    await source.open()
    try:
        update = source.current(full=True)
    finally:
        await source.close()
    if args.output == "json":
        names = {k: s.name for k, s in update.desired.services.items()}
        json.dump(status_document(update.desired, names, counters=False), sys.stdout, indent=2)
        print()
    else:
        sys.stdout.write(render_text(update))
    for note in update.notes:
        if note.startswith("# Warning"):
            log.warning("%s", note[2:])
    return exit_codes.OK


def render_text(update: DesiredUpdate) -> str:
    """The desired state like ``ipvsadm -Ln`` without counters, then the source's notes."""
    lines = []
    desired = update.desired
    for key in sorted(desired.services, key=ServiceKey.sort_key):
        vs = desired.services[key]
        extra = f" persistent {vs.persistence}" if vs.persistence else ""
        lines.append(f"{key} {vs.scheduler}{extra}  {vs.name}".rstrip())
        for rs in vs.realservers:
            lines.append(f"  -> {rs.key} {rs.forward} w={rs.weight}")
    lines += update.notes
    return "\n".join(lines) + "\n"
