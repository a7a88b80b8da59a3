"""``kubelvs explain CLIENT_IP[:PORT] VIP:PORT[/PROTO]``: which real server a flow goes
to, and why, on either backend: an existing connection entry wins (IPVS); otherwise the
scheduler's choice computed the way the kernel computes it (``Backend.predict``)."""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import ConfigError, FieldError
from ..model import ServiceKey, split_hostport
from . import exit_codes
from .args import add_backend_args

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("explain", help="which real server a client's flow goes to, and why")
    p.add_argument("client", metavar="CLIENT_IP[:PORT]")
    p.add_argument("service", metavar="VIP:PORT[/PROTO]")
    p.add_argument("-o", "--output", choices=("text", "json"), default="text")
    add_backend_args(p)
    p.set_defaults(func=cmd_explain)


def _client(text: str) -> tuple[str, int | None]:
    if text.count(":") == 1:
        host, port = text.split(":")
        if port.isdigit() and 0 < int(port) < 65536:
            return host, int(port)
        raise ConfigError([FieldError("CLIENT", f"{text!r}: the port is not 1-65535")])
    return text, None


def _service(text: str) -> ServiceKey:
    where, _, proto = text.partition("/")
    try:
        split_hostport(where)  # says what is wrong with it
        return ServiceKey.parse(f"{(proto or 'tcp').upper()} {where}")
    except ValueError as exc:
        raise ConfigError([FieldError("VIP:PORT[/PROTO]", f"{text!r}: {exc}")]) from exc


def cmd_explain(args: argparse.Namespace) -> int:
    from ..backends import open_backend

    client, client_port = _client(args.client)
    key = _service(args.service)
    with open_backend(args.backend, netns=args.netns) as backend:
        existing = backend.connection_of(key, client, client_port) if client_port is not None else None
        guess = backend.predict(key, client, client_port)
        name = backend.name
    doc = {
        "backend": name,
        "client": args.client,
        "service": str(key),
        "connection": existing,
        "prediction": {
            "realserver": guess.realserver,
            "predictable": guess.predictable,
            "why": guess.why,
            "slot": guess.slot,
            "slots": guess.slots,
        },
        "realserver": existing or guess.realserver,
    }
    if args.output == "json":
        json.dump(doc, sys.stdout, indent=1)
        print()
        return exit_codes.OK
    print(f"{args.client} -> {key} ({name}):")
    if existing is not None:
        agree = (
            "" if guess.realserver in (None, existing) else f" (a new flow would go to {guess.realserver})"
        )
        print(f"  an existing connection entry sends it to {existing}{agree}")
    print(f"  {'new flows: ' if existing else ''}{guess.why}")
    return exit_codes.OK
