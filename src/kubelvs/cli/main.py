"""The ``kubelvs`` command line: builds the parser from feature modules and maps
errors to exit codes. Errors print as one line per problem; a traceback only with
``--debug``."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from .. import __version__
from ..bulk import no_gc
from ..errors import ApplyError, CapabilityError, ConfigError, KubelvsError
from . import exit_codes

__all__ = ["COMMAND_MODULES", "build_parser", "main"]

#: Modules that add subcommands through ``register(subparsers)``, with the commands each
#: adds. Only the module of the command being run is imported (pip's lazy registry):
#: start-up is a visible share of a one-shot ``kubelvs apply``, and far more on a slow
#: filesystem, e.g. the VM tier's 9p root where every file an import looks at costs a
#: round trip. ``kubelvs --help`` imports them all.
COMMAND_MODULES: dict[str, tuple[str, ...]] = {
    "kubelvs.cli.commands": ("validate", "diff", "apply", "status", "export", "import"),
    "kubelvs.cli.director": ("director",),
    "kubelvs.cli.node": ("node",),
    "kubelvs.cli.doctor": ("doctor",),
    "kubelvs.cli.lab": ("lab", "demo"),
    "kubelvs.cli.top": ("top",),
    "kubelvs.cli.explain": ("explain",),
}


#: Commands that do one piece of work and exit; the others run for long.
ONE_SHOT = frozenset({"validate", "diff", "apply", "status", "export", "import", "explain"})


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubelvs",
        description="LVS (IPVS) and nftables load balancing for Kubernetes Services on bare metal.",
    )
    parser.add_argument("--debug", action="store_true", help="print tracebacks of errors")
    parser.add_argument("--version", action="version", version=f"kubelvs {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    wanted = next((a for a in (argv or ()) if not a.startswith("-")), None)
    modules = [m for m, names in COMMAND_MODULES.items() if wanted in names] or list(COMMAND_MODULES)
    for name in modules:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        if args.command in ONE_SHOT:
            with no_gc():  # short-lived: load, plan, apply, exit (see kubelvs.bulk)
                return func(args)
        return func(args)
    except KeyboardInterrupt:
        return exit_codes.INTERRUPTED
    except (KubelvsError, PermissionError) as exc:
        if args.debug:
            import traceback  # only here: every import is start-up time of a one-shot command

            traceback.print_exc()
        title, lines = _describe(exc)
        print(f"kubelvs: {title}:", file=sys.stderr)
        for line in lines:
            print(f"  {line}", file=sys.stderr)
        return exit_codes.ERROR


def _describe(exc: Exception) -> tuple[str, list[str]]:
    if isinstance(exc, ConfigError):
        return "invalid configuration (nothing was changed)", [str(e) for e in exc.errors]
    if isinstance(exc, CapabilityError):
        return "the backend cannot do this (nothing was changed)", [str(p) for p in exc.problems]
    if isinstance(exc, ApplyError):
        return "apply stopped", [
            str(exc),
            "the kernel may hold part of the plan; once the cause is fixed, apply again: "
            "it re-reads the kernel",
        ]
    if isinstance(exc, PermissionError):
        return "error", [f"{exc} (kubelvs needs root for netlink, network namespaces and sysctls)"]
    return "error", [str(exc)]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
