"""The one-shot commands: validate, diff, apply, status, export, import."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import yaml_rs

from ..backends import Backend, open_backend
from ..errors import BackendUnavailable, ConfigError, FieldError
from ..model import (
    DesiredState,
    Ownership,
    ServiceKey,
    kernel_version,
    recommended_sysctls,
)
from ..planner import AddRealServer, AddService, Operation, describe
from ..roles.director import Director
from ..sources.config import Config, load_config, parse_config, to_desired
from . import exit_codes
from .args import add_backend_args
from .render import director_lines, status_document, status_table

# json and the ipvsadm save format are imported by the commands that use them: every
# import is start-up time of a one-shot `kubelvs apply`, which is compared with
# `ipvsadm -R` (bench/ipvs_sync.py; cli.main imports only the command's module).

__all__ = ["applied_lines", "desired_for", "register", "service_names"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    backend_args = add_backend_args
    p = sub.add_parser("validate", help="check a config file; exit 0 if valid, 2 with the errors")
    p.add_argument("-f", "--file", required=True, type=Path, help="YAML config file")
    backend_args(p)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser(
        "diff", help="print the plan, change nothing; exit 0 if in sync, 1 if changes, 2 on error"
    )
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
    p.add_argument("--state-file", type=Path, metavar="PATH", help="the running director's state file")
    backend_args(p)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser(
        "export", help="print the kernel's owned services (or a config's, with -f) as ipvsadm -Sn"
    )
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
        print(
            f"{args.file}: valid ({len(desired.services)} services); backend capabilities not checked: {exc}"
        )
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
        result = Director(backend, graceful=bool(args.graceful or config.graceful)).sync(
            desired, dry_run=True
        )
    finally:
        backend.close()
    _print_plan([describe(op) for op in result.plan.ops], len(result.plan.foreign), len(result.plan.draining))
    return exit_codes.CHANGES if result.plan else exit_codes.OK


def cmd_apply(args: argparse.Namespace) -> int:
    config = load_config(args.file)
    with _open(args) as backend:
        desired = desired_for(config, backend)
        director = Director(backend, graceful=bool(args.graceful or config.graceful), keep_picture=False)
        result = director.sync(desired, dry_run=args.dry_run)
    done = result.plan.ops if args.dry_run else result.applied
    _print_plan(applied_lines(done), len(result.plan.foreign), len(result.plan.draining))
    verb = "would apply" if args.dry_run else "applied"
    print(f"# {verb} {len(done)} change(s) with backend {backend.name}")
    if result.new_failures:
        # A refusal affects only its service: everything else above was applied.
        print(
            f"kubelvs: apply incomplete: {len(result.new_failures)} operation(s) not applied:",
            file=sys.stderr,
        )
        for line in result.new_failures:
            print(f"  {line}", file=sys.stderr)
        print("  once the cause is fixed, apply again: it re-reads the kernel and converges", file=sys.stderr)
        return exit_codes.ERROR
    return exit_codes.OK


def cmd_status(args: argparse.Namespace) -> int:
    names: dict[ServiceKey, str] = {}
    if args.file:
        names = service_names(to_desired(load_config(args.file)))
    with _open(args) as backend:
        observed = backend.read()
    from ..app.state import (
        read_director_state,
        state_path,
    )  # imported where used: see the note at the imports

    director = read_director_state(args.state_file or state_path(args.netns))
    if not names and director is not None:  # the running director's names (Kubernetes: namespace/name)
        named = (director.get("names") or {}).get("services") or {}
        names = {ServiceKey.parse(k): v for k, v in named.items()}
    if args.output == "json":
        import json  # imported where used: see the note at the imports

        doc = status_document(observed, names, director=director)
        summary = None if director is None else {k: v for k, v in director.items() if k != "health"}
        json.dump({**doc, "director": summary}, sys.stdout, indent=2)
        print()
    else:
        sys.stdout.write(status_table(observed, names, director))
        if director is not None:
            sys.stdout.write(director_lines(director))
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
    # Imported where used: see the note at the imports.
    import ipaddress

    from ..formats.ipvsadm_save import parse_save
    from ..formats.textfile import read_text_file, source_name
    from ..sources.config import config_document

    services = parse_save(read_text_file(args.source), source=source_name(args.source))
    owned = args.owned_cidr or sorted(
        {f"{s.key.address}/{s.key.address.max_prefixlen}" for s in services if s.key.address is not None}
    )
    try:
        cidrs = tuple(ipaddress.ip_network(c, strict=False) for c in owned)
    except ValueError as exc:
        raise ConfigError([FieldError("--owned-cidr", str(exc))]) from None
    fwmarks = tuple(range(m, m + 1) for m in sorted({s.key.fwmark for s in services if s.key.fwmark}))
    state = DesiredState(
        services={s.key: s for s in services}, ownership=Ownership(cidrs=cidrs, fwmarks=fwmarks)
    )
    doc = config_document(state)
    # Check that what we print is a valid config before printing it.
    to_desired(parse_config(doc, source="imported config"))
    sys.stdout.write(yaml_rs.dumps(doc))
    return exit_codes.OK
