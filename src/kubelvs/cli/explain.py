"""``kubelvs explain CLIENT_IP[:PORT] VIP:PORT[/PROTO]``: which real server a flow goes
to, and why, on either backend: an entry of the connection state wins (IPVS: the flow's
connection or the client's persistence template; nftables NAT: its conntrack entry);
otherwise the scheduler's choice computed the way the kernel computes it
(``Backend.predict``). docs/observability.md."""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import ConfigError, FieldError
from ..formats.explain import render_explanation
from ..model import ServiceKey, parse_address, split_hostport
from . import exit_codes
from .args import add_backend_args

__all__ = ["parse_client", "parse_service", "register"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("explain", help="which real server a client's flow goes to, and why")
    p.add_argument("client", metavar="CLIENT_IP[:PORT]")
    p.add_argument("service", metavar="VIP:PORT[/PROTO]")
    p.add_argument("-o", "--output", choices=("text", "json"), default="text")
    add_backend_args(p)
    p.set_defaults(func=cmd_explain)


def parse_client(text: str) -> tuple[str, int | None]:
    """``CLIENT_IP[:PORT]``: an IPv4 address (the data planes hash IPv4 flows only)."""
    host, _, port = text.partition(":")
    try:
        address = parse_address(host)
    except ValueError:
        address = None
    if address is None or address.version != 4:
        raise ConfigError([FieldError("CLIENT", f"{text!r}: not an IPv4 address[:port]")])
    if not port:
        return host, None
    if port.isdigit() and 0 < int(port) < 65536:
        return host, int(port)
    raise ConfigError([FieldError("CLIENT", f"{text!r}: the port is not 1-65535")])


def parse_service(text: str) -> ServiceKey:
    where, _, proto = text.partition("/")
    try:
        split_hostport(where)  # says what is wrong with it
        return ServiceKey.parse(f"{(proto or 'tcp').upper()} {where}")
    except ValueError as exc:
        raise ConfigError([FieldError("VIP:PORT[/PROTO]", f"{text!r}: {exc}")]) from exc


def cmd_explain(args: argparse.Namespace) -> int:
    from ..backends import open_backend
    from ..backends.explain import explain_flow

    client, client_port = parse_client(args.client)
    key = parse_service(args.service)
    with open_backend(args.backend, netns=args.netns) as backend:
        doc = explain_flow(backend, client, client_port, key)
    if args.output == "json":
        json.dump(doc, sys.stdout, indent=1)
        print()
    else:
        print(render_explanation(doc))
    return exit_codes.OK
