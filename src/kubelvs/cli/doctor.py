"""``kubelvs doctor [--bundle DIR | --paste FILE] [-o text|json]`` and ``kubelvs doctor collect DIR``."""

from __future__ import annotations

import argparse
import json
import os
import sys

from ..doctor.analyse import analyse, analyse_site
from ..doctor.bundle import FILES, ROLES, Bundle
from ..doctor.examined import Examined, examine
from ..doctor.findings import Finding
from ..doctor.live import collect, live_bundle
from ..doctor.paste import analyse_paste, describe, read_paste
from ..doctor.report import exit_code, render_json, render_markdown, render_text
from . import exit_codes

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "doctor", help="find LVS/IPVS failure modes on this host or in a captured bundle"
    )
    _configure(p)


def _configure(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--bundle",
        metavar="DIR",
        help="analyse this bundle (a directory of captured outputs, or a "
        "directory of such directories, one per host); default: the live host",
    )
    p.add_argument(
        "--paste",
        metavar="FILE",
        help="analyse command outputs pasted into one text (FILE, or - for stdin), e.g. from "
        "an issue thread: each section is recognised by its prompt line or its shape",
    )
    p.add_argument("--netns", metavar="NAME", help="analyse the live network namespace NAME")
    p.add_argument(
        "-o",
        "--output",
        choices=("text", "json", "markdown"),
        default="text",
        help="markdown: ready to paste into an issue thread",
    )
    p.add_argument(
        "--backend",
        choices=("auto", "ipvs", "nftables"),
        default="auto",
        help="accepted for symmetry with other commands; doctor reads every data plane it finds",
    )
    p.set_defaults(func=run_doctor)
    sub = p.add_subparsers(dest="doctor_command")
    c = sub.add_parser("collect", help="capture a bundle from the live host into DIR")
    c.add_argument("directory", metavar="DIR")
    c.add_argument("--netns", metavar="NAME", help="collect inside network namespace NAME")
    c.add_argument("--role", choices=ROLES, help="write role.txt (otherwise doctor infers the role)")
    c.add_argument("--no-kubectl", action="store_true", help="do not ask the Kubernetes API")
    c.set_defaults(func=run_collect)


def _is_bundle(path: str) -> bool:
    return any(os.path.isfile(os.path.join(path, name)) for name in FILES)


def run_doctor(args: argparse.Namespace) -> int:
    if args.paste is not None:
        if args.bundle or args.netns:
            print("kubelvs doctor: --paste: not with --bundle or --netns", file=sys.stderr)
            return exit_codes.ERROR
        return _run_paste(args.paste, args.output)
    try:
        if args.bundle:
            if not os.path.isdir(args.bundle):
                print(f"kubelvs doctor: {args.bundle}: not a directory", file=sys.stderr)
                return exit_codes.ERROR
            if not _is_bundle(args.bundle):
                return _run_site(args.bundle, args.output)
            bundle, origin, live = Bundle.load(args.bundle), f"bundle {args.bundle}", False
        else:
            bundle = live_bundle(args.netns)
            origin = f"live namespace {args.netns}" if args.netns else "live host"
            live = True
    except OSError as exc:
        print(f"kubelvs doctor: {exc}", file=sys.stderr)
        return exit_codes.ERROR
    findings = analyse(bundle)
    _report(findings, examine(bundle, origin=origin, live=live, found=findings), args.output)
    return exit_code(findings)


def _run_site(directory: str, output: str) -> int:
    hosts = sorted(d for d in os.listdir(directory) if _is_bundle(os.path.join(directory, d)))
    if not hosts:
        expected = ", ".join(list(FILES)[:3])
        print(
            f"kubelvs doctor: {directory}: no bundle files in it (expected e.g. {expected})", file=sys.stderr
        )
        return exit_codes.ERROR
    bundles = {h: Bundle.load(os.path.join(directory, h)) for h in hosts}
    site = analyse_site(bundles)
    examined = {
        h: examine(b, origin=f"bundle {os.path.join(directory, h)}", found=site[h])
        for h, b in bundles.items()
    }
    if output == "json":
        _emit(render_json(site, examined=examined) + "\n")
    elif output == "markdown":
        _emit(render_markdown(site, examined=examined))
    else:
        _emit("\n".join(render_text(fs, host=h, examined=examined[h]) for h, fs in site.items()))
    return max(exit_code(fs) for fs in site.values())


def _report(findings: list[Finding], examined: Examined, output: str, *, preamble: str = "") -> None:
    if output == "json":
        _emit(render_json(findings, examined=examined) + "\n")
    elif output == "markdown":
        _emit(render_markdown(findings, examined=examined, preamble=preamble.splitlines()))
    else:
        _emit(preamble + ("\n" if preamble else "") + render_text(findings, examined=examined))


#: Read at most this much of a paste (a paste is what fits in a terminal or a ticket).
MAX_PASTE = 64 * 1024 * 1024


def _run_paste(source: str, output: str) -> int:
    try:
        if source == "-":
            data = sys.stdin.buffer.read(MAX_PASTE + 1)
        else:
            with open(source, "rb") as f:
                data = f.read(MAX_PASTE + 1)
    except OSError as exc:
        print(f"kubelvs doctor: --paste: {exc}", file=sys.stderr)
        return exit_codes.ERROR
    if len(data) > MAX_PASTE:
        print(f"kubelvs doctor: --paste {source}: larger than {MAX_PASTE} bytes", file=sys.stderr)
        return exit_codes.ERROR
    paste = read_paste(data.decode("utf-8", errors="replace"))
    if not paste.texts:
        _emit(describe(paste))
        print(
            f"kubelvs doctor: --paste {source}: no output in it that the doctor reads (e.g. ipvsadm -Ln, "
            "ipvsadm -Lnc, ipvsadm -L --timeout, sysctl -a, netstat -s, ip addr)",
            file=sys.stderr,
        )
        return exit_codes.ERROR
    bundle = paste.bundle()
    findings = analyse_paste(paste, bundle)
    examined = examine(bundle, origin="paste", found=findings)
    if output == "json":
        report = json.loads(render_json(findings, examined=examined))
        _emit(json.dumps({"paste": paste.to_json(), **report}, indent=2) + "\n")
    else:
        _report(findings, examined, output, preamble=describe(paste))
    return exit_code(findings)


def _emit(text: str) -> None:
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:  # `kubelvs doctor | head`: the reader is gone, not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def run_collect(args: argparse.Namespace) -> int:
    try:
        written = collect(
            args.directory, netns=args.netns, role=args.role, kubectl=False if args.no_kubectl else None
        )
    except OSError as exc:
        print(f"kubelvs doctor collect: {exc}", file=sys.stderr)
        return exit_codes.ERROR
    print(f"wrote {len(written)} files to {args.directory}: {' '.join(written)}")
    return exit_codes.OK
