"""The core commands: validate, diff, apply, status, export, import, director."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import yaml_rs

from ..backends import Backend, open_backend
from ..errors import BackendUnavailable, ConfigError, KubelvsError
from ..model import (
    DesiredState,
    ServiceKey,
    VirtualService,
    kernel_version,
    recommended_sysctls,
)
from ..planner import AddRealServer, AddService, Operation, changed_services, describe
from ..roles.director import Director
from ..sources.config import Config, load_config, parse_config, to_desired
from . import exit_codes
from .render import status_document, status_table
from .shutdown import StopFlag

# json and the ipvsadm save format are imported by the commands that use them: every
# import is start-up time of a one-shot `kubelvs apply`, which is compared with
# `ipvsadm -R` (bench/ipvs_sync.py; cli.main imports only the command's module).

__all__ = ["applied_lines", "desired_for", "register", "service_names"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    def backend_args(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--backend",
            choices=("auto", "ipvs", "nftables"),
            default="auto",
            help="kernel data plane (auto: IPVS when the kernel has it, else nftables)",
        )
        p.add_argument("--netns", metavar="NAME", help="operate inside this network namespace (ip netns)")

    p = sub.add_parser("validate", help="check a config file; exit 0 if valid, 2 with the errors")
    p.add_argument("-f", "--file", required=True, type=Path, help="YAML config file")
    backend_args(p)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("diff", help="print the plan, change nothing; exit 0 if in sync, 1 if changes, 2 on error")
    p.add_argument("-f", "--file", required=True, type=Path)
    p.add_argument("--graceful", action="store_true", help="plan weight 0 before deleting a real server")
    backend_args(p)
    p.set_defaults(func=cmd_diff)

    p = sub.add_parser("apply", help="reconcile the kernel to the config once and print what was done")
    p.add_argument("-f", "--file", required=True, type=Path)
    p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    p.add_argument("--graceful", action="store_true", help="weight 0 first; delete once without connections")
    backend_args(p)
    p.set_defaults(func=cmd_apply)

    p = sub.add_parser("status", help="show the kernel's table like ipvsadm -Ln --stats")
    p.add_argument("-o", "--output", choices=("table", "json"), default="table")
    p.add_argument("-f", "--file", type=Path, help="config file whose service names to show")
    backend_args(p)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("export", help="print the kernel's owned services (or a config's, with -f) as ipvsadm -Sn")
    p.add_argument("--format", choices=("ipvsadm",), default="ipvsadm")
    p.add_argument("-f", "--file", type=Path, help="export this config instead of the kernel")
    backend_args(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("import", help="turn an ipvsadm -Sn save file into a kubelvs YAML config (stdout)")
    p.add_argument("--format", choices=("ipvsadm",), default="ipvsadm")
    p.add_argument("source", type=Path, help="file with ipvsadm -Sn output ('-' for stdin)")
    p.add_argument(
        "--owned-cidr",
        action="append",
        default=[],
        metavar="CIDR",
        help="owned_cidrs of the new config (default: one /32 or /128 per VIP)",
    )
    p.set_defaults(func=cmd_import)

    p = sub.add_parser(
        "director", help="run the director: keep the kernel converged to a config file or to Kubernetes"
    )
    p.add_argument("-f", "--file", "--config", dest="file", required=True, type=Path, help="YAML config file")
    p.add_argument("--kubernetes", action="store_true", help="desired state from the Kubernetes API")
    p.add_argument("--kubeconfig", type=Path, help="kubeconfig (default: in-cluster, then ~/.kube/config)")
    p.add_argument("--from-manifests", type=Path, metavar="DIR", help="desired state from kubectl -o yaml/json files")
    p.add_argument("--dry-run", action="store_true", help="compute the desired state, touch nothing")
    p.add_argument("-o", "--output", choices=("text", "json"), default="text")
    p.add_argument("--once", action="store_true", help="reconcile once and exit")
    p.add_argument("--graceful", action="store_true")
    p.add_argument("--poll", type=float, default=1.0, help="seconds between checks of the file (default 1)")
    p.add_argument("--resync", type=float, default=60.0, help="seconds between full syncs with the kernel (default 60)")
    backend_args(p)
    p.set_defaults(func=cmd_director)


# ---------------------------------------------------------------- helpers


def desired_for(config: Config, backend: Backend | None, desired: DesiredState | None = None) -> DesiredState:
    """The config's desired state (``desired``, when already built from it), plus the
    recommended sysctls of ``backend`` (see docs/config.md)."""
    if desired is None:
        desired = to_desired(config)
    if backend is None or not config.recommended_sysctls:
        return desired
    extra = recommended_sysctls(backend.name, kernel_version(os.uname().release), desired.services.values())
    return replace(desired, sysctls={**extra, **desired.sysctls})


def service_names(desired: DesiredState) -> dict[ServiceKey, str]:
    return {k: s.name for k, s in desired.services.items() if s.name}


def _open(args: argparse.Namespace) -> Backend:
    return open_backend(args.backend, netns=args.netns)


def applied_lines(ops: Iterable[Operation]) -> list[str]:
    """What ``apply`` prints: a line per operation, as ``diff`` does, except that a
    service added whole is one line with the number of its real servers, as
    ``kubectl apply`` prints an object, not its fields (``kubelvs diff`` lists each)."""
    lines = []
    added: set[ServiceKey] = set()
    for op in ops:
        if type(op) is AddRealServer and op.service in added:
            continue
        if type(op) is AddService:
            added.add(op.service.key)
            lines.append(f"{describe(op)} with {len(op.service.realservers)} real server(s)")
        else:
            lines.append(describe(op))
    return lines


def _print_plan(lines: list[str], foreign: int, draining: int) -> None:
    if lines:
        sys.stdout.write("\n".join(lines) + "\n")  # one write: a cold sync's plan is 110,000 lines
    if foreign:
        print(f"# {foreign} virtual service(s) outside owned ranges left alone (foreign)")
    if draining:
        print(f"# {draining} real server(s) draining (weight 0, waiting for 0 connections)")


# ---------------------------------------------------------------- commands


def cmd_validate(args: argparse.Namespace) -> int:
    config = load_config(args.file)
    desired = to_desired(config)
    try:
        backend = _open(args)
    except (BackendUnavailable, PermissionError, OSError) as exc:
        # Validation of the file itself needs no kernel; say what was not checked.
        print(f"{args.file}: valid ({len(desired.services)} services); backend capabilities not checked: {exc}")
        return exit_codes.OK
    try:
        Director(backend).check(desired_for(config, backend, desired))
    finally:
        backend.close()
    print(f"{args.file}: valid ({len(desired.services)} services, backend {backend.name})")
    return exit_codes.OK


def cmd_diff(args: argparse.Namespace) -> int:
    config = load_config(args.file)
    backend = _open(args)
    try:
        desired = desired_for(config, backend)
        result = Director(backend, graceful=args.graceful or config.graceful).sync(desired, dry_run=True)
    finally:
        backend.close()
    _print_plan([describe(op) for op in result.plan.ops], len(result.plan.foreign), len(result.plan.draining))
    return exit_codes.CHANGES if result.plan else exit_codes.OK


def cmd_apply(args: argparse.Namespace) -> int:
    config = load_config(args.file)
    backend = _open(args)
    try:
        desired = desired_for(config, backend)
        director = Director(backend, graceful=args.graceful or config.graceful, keep_picture=False)
        result = director.sync(desired, dry_run=args.dry_run)
    finally:
        backend.close()
    _print_plan(applied_lines(result.plan.ops), len(result.plan.foreign), len(result.plan.draining))
    verb = "would apply" if args.dry_run else "applied"
    print(f"# {verb} {len(result.plan)} change(s) with backend {backend.name}")
    return exit_codes.OK


def cmd_status(args: argparse.Namespace) -> int:
    names: dict[ServiceKey, str] = {}
    if args.file:
        names = service_names(to_desired(load_config(args.file)))
    backend = _open(args)
    try:
        observed = backend.read()
    finally:
        backend.close()
    if args.output == "json":
        import json  # imported where used: see the note at the imports

        json.dump(status_document(observed, names), sys.stdout, indent=2)
        print()
    else:
        sys.stdout.write(status_table(observed, names))
    return exit_codes.OK


def cmd_export(args: argparse.Namespace) -> int:
    if args.file:
        services = to_desired(load_config(args.file)).services
    else:
        backend = _open(args)
        try:
            services = backend.read().services
        finally:
            backend.close()
    from ..formats.ipvsadm_save import format_save  # imported where used: see the note at the imports

    sys.stdout.write(format_save(services[k] for k in sorted(services, key=ServiceKey.sort_key)))
    return exit_codes.OK


def cmd_import(args: argparse.Namespace) -> int:
    text = sys.stdin.read() if str(args.source) == "-" else args.source.read_text()
    from ..formats.ipvsadm_save import parse_save  # imported where used: see the note at the imports

    services = parse_save(text, source=str(args.source))
    owned = args.owned_cidr or sorted(
        {f"{s.key.address}/{s.key.address.max_prefixlen}" for s in services if s.key.address is not None}
    )
    fwmarks = sorted({s.key.fwmark for s in services if s.key.fwmark})
    doc: dict[str, object] = {"owned_cidrs": owned}
    if fwmarks:
        doc["owned_fwmarks"] = [str(m) for m in fwmarks]
    doc["services"] = [_service_yaml(s) for s in services]
    # Check that what we print is a valid config before printing it.
    to_desired(parse_config(doc, source="imported config"))
    sys.stdout.write(yaml_rs.dumps(doc))
    return exit_codes.OK


def _service_yaml(svc: VirtualService) -> dict[str, object]:
    out: dict[str, object] = {}
    key = svc.key
    if key.fwmark:
        out["fwmark"] = key.fwmark
        if key.family == 6:
            out["family"] = 6
    else:
        out.update(vip=str(key.address), port=key.port, protocol=str(key.protocol))
    out["scheduler"] = svc.scheduler
    if svc.flags:
        out["flags"] = sorted(svc.flags)
    if svc.persistence:
        out["persistence"] = svc.persistence
    if svc.netmask is not None:
        out["netmask"] = svc.netmask
    out["realservers"] = [
        {
            "address": str(rs.address),
            "port": rs.port,
            "weight": rs.weight,
            "forward": str(rs.forward),
            **({"u_thresh": rs.u_thresh} if rs.u_thresh else {}),
            **({"l_thresh": rs.l_thresh} if rs.l_thresh else {}),
        }
        for rs in svc.realservers
    ]
    return out


def cmd_director(args: argparse.Namespace) -> int:
    """Poll the file; on a change reconcile only the services that changed; fully
    resync every ``--resync`` seconds. A bad edit is reported and the kernel keeps
    the last good state. With --kubernetes or --from-manifests the Kubernetes source runs."""
    if args.kubernetes or args.from_manifests:
        from ..sources.kubernetes.runner import run as run_kubernetes

        return run_kubernetes(args)
    backend = _open(args)
    stopping = StopFlag()
    try:
        config = load_config(args.file)
        director = Director(backend, graceful=args.graceful or config.graceful)
        desired = desired_for(config, backend)
        result = director.sync(desired)
        _log(f"full sync: {len(result.plan)} change(s)", result.plan.ops)
        if args.once:
            return exit_codes.OK
        stamp = _stamp(args.file)
        last_full = time.monotonic()
        retry_full = False
        while not stopping:
            time.sleep(args.poll)
            try:
                keys: set[ServiceKey] | None = set()
                new_stamp = _stamp(args.file)
                if new_stamp != stamp:
                    stamp = new_stamp
                    if new_stamp is None:
                        _log(f"{args.file} is missing, the kernel keeps the last good state", ())
                    else:
                        new = desired_for(load_config(args.file), backend)
                        # Timeouts, sysctls and owned ranges are global: compare everything then.
                        same_globals = (new.timeouts, new.sysctls, new.ownership) == (
                            desired.timeouts, desired.sysctls, desired.ownership)
                        keys = changed_services(desired, new) if same_globals else None
                        desired = new
                if retry_full or time.monotonic() - last_full >= args.resync:
                    keys = None
                if keys is None:
                    last_full = time.monotonic()
                if keys is None or keys:
                    result = director.sync(desired, changed=keys)
                    retry_full = False
                    if result.plan:
                        _log(f"{'full' if result.full else 'incremental'} sync: {len(result.plan)} change(s)", result.plan.ops)
            except ConfigError as exc:
                _log("config rejected, the kernel keeps the last good state:\n  " + str(exc).replace("\n", "\n  "), ())
            except KubelvsError as exc:
                retry_full = True  # the director dropped its picture of the kernel
                _log(f"sync failed, retrying with a full sync: {exc}", ())
        return exit_codes.OK
    finally:
        backend.close()


def _stamp(path: Path) -> tuple[int, int] | None:
    """When the file last changed; None while it is missing (an editor or a config
    manager replacing it by rename): the director then keeps what it has."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_mtime_ns, st.st_size)


def _log(message: str, ops: Iterable[Operation]) -> None:
    print(time.strftime("%H:%M:%S"), message, flush=True)
    for op in ops:
        print("   ", describe(op), flush=True)
