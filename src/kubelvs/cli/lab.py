"""``kubelvs lab up|down|status|exec|scenario`` and ``kubelvs demo``."""

from __future__ import annotations

import argparse
import json
import os
import sys

from ..errors import LabError
from ..lab.spec import AGENT_METRICS_PORT, METRICS_PORT
from ..lab.topology import DEFAULT_PREFIX, LabSpec, build, down, lab_namespaces, load_info
from ..model import hostport
from . import exit_codes

__all__ = ["register"]


def _spec_args(p: argparse.ArgumentParser, *, prefix: str) -> None:
    p.add_argument("--prefix", default=prefix, help=f"namespace prefix (default {prefix})")
    p.add_argument(
        "--topology",
        choices=("dr", "nat", "tun"),
        default="dr",
        help="forwarding method (tun: kernels with ipip)",
    )
    p.add_argument("--nodes", type=int, default=2, help="worker nodes (default 2)")
    p.add_argument("--pods", type=int, default=2, help="whoami pods per node (default 2)")
    p.add_argument(
        "--directors", type=int, default=1, help="directors (more than one needs --router: ECMP, or --vrrp)"
    )
    p.add_argument(
        "--router", action="store_true", help="put the client behind a router namespace (always for nat)"
    )
    p.add_argument(
        "--bgp",
        action="store_true",
        help="the directors announce the VIP to the router by BGP (bird); the router spreads flows by ECMP",
    )
    p.add_argument(
        "--vrrp",
        action="store_true",
        help="the directors move the VIP with VRRP (keepalived): one master holds it, the others take over",
    )
    p.add_argument(
        "--metrics",
        action="store_true",
        help=f"directors serve Prometheus metrics on :{METRICS_PORT}/metrics, node agents on "
        f":{AGENT_METRICS_PORT}, in their namespaces",
    )
    p.add_argument("--vip", default="10.240.0.201")
    p.add_argument(
        "--ip-family",
        choices=("ipv4", "ipv6", "dual"),
        default="ipv4",
        help="the Service's address families (ipv6, dual: the DR segment with one director)",
    )
    p.add_argument("--vip6", default="fd00:240::201", help="the Service's IPv6 VIP (--ip-family ipv6|dual)")
    p.add_argument("--scheduler", default="rr")
    p.add_argument(
        "--backend",
        choices=("auto", "ipvs", "nftables"),
        default="auto",
        help="the director's data plane (auto: IPVS when the kernel has it, else nftables)",
    )


def _spec(args: argparse.Namespace, **overrides: object) -> LabSpec:
    values: dict[str, object] = {
        "prefix": args.prefix,
        "topology": args.topology,
        "nodes": args.nodes,
        "pods": args.pods,
        "directors": args.directors,
        "router": args.router,
        "vrrp": args.vrrp,
        "bgp": args.bgp,
        "metrics": args.metrics,
        "vip": args.vip,
        "ip_family": args.ip_family,
        "vip6": args.vip6,
        "scheduler": args.scheduler,
        "backend": args.backend,
    }
    values.update(overrides)
    return LabSpec(**values)  # type: ignore[arg-type]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    lab = sub.add_parser(
        "lab", help="a network-namespace lab of an LVS-DR external IP (client, directors, nodes, pods)"
    )
    lsub = lab.add_subparsers(dest="lab_command", metavar="ACTION", required=True)

    p = lsub.add_parser("up", help="build the lab and start director, node agents and pods")
    _spec_args(p, prefix=DEFAULT_PREFIX)
    p.add_argument("--no-director", action="store_true", help="do not start kubelvs director")
    p.add_argument("--no-agents", action="store_true", help="do not start kubelvs node on the workers")
    p.set_defaults(func=cmd_up)

    p = lsub.add_parser(
        "down", help="remove the lab: namespaces, links, processes (by prefix; also after a crash)"
    )
    p.add_argument("--prefix", default=DEFAULT_PREFIX)
    p.set_defaults(func=cmd_down)

    p = lsub.add_parser("status", help="show the lab's hosts, addresses and processes")
    p.add_argument("--prefix", default=DEFAULT_PREFIX)
    p.add_argument("-o", "--output", choices=("text", "json"), default="text")
    p.set_defaults(func=cmd_status)

    p = lsub.add_parser(
        "exec", help="run a command in a lab host: kubelvs lab exec client -- curl http://10.240.0.201"
    )
    p.add_argument("--prefix", default=DEFAULT_PREFIX)
    p.add_argument("host", help="client, router, dir1, node1, node1-pod1 or whoami-node1-1")
    p.add_argument("argv", nargs=argparse.REMAINDER, help="the command (after --)")
    p.set_defaults(func=cmd_exec)

    p = lsub.add_parser(
        "scenario",
        help=(
            "reproduce one of the production incidents (or a node failure), then fix it (exit 0 = both shown)"
        ),
    )
    p.add_argument("name", nargs="?", help="scenario name (see --list)")
    p.add_argument("--list", action="store_true", help="list the scenarios")
    p.add_argument("--prefix", default="kubelvs-scn")
    p.add_argument("--backend", choices=("auto", "ipvs", "nftables"), default="auto")
    p.add_argument("-o", "--output", choices=("text", "json"), default="text")
    p.add_argument(
        "--no-doctor", action="store_true", help="do not run kubelvs doctor on the lab in each phase"
    )
    p.set_defaults(func=cmd_scenario)

    p = lsub.add_parser(
        "explain", help="which real server a client's flow goes to, and why, on every director of the lab"
    )
    p.add_argument("client", metavar="CLIENT_IP[:PORT]")
    p.add_argument("service", metavar="VIP:PORT[/PROTO]")
    p.add_argument("--prefix", default=DEFAULT_PREFIX)
    p.add_argument("-o", "--output", choices=("text", "json"), default="text")
    p.set_defaults(func=cmd_explain)

    p = lsub.add_parser(
        "doctor", help="run kubelvs doctor on every director and worker of the lab (as one site)"
    )
    p.add_argument("--prefix", default=DEFAULT_PREFIX)
    p.add_argument(
        "--host", action="append", metavar="HOST", help="only this host (dir1, node1, ...); repeatable"
    )
    p.add_argument("-o", "--output", choices=("text", "json"), default="text")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("demo", help="lab up, 30 requests to the VIP, who answered, proof of DR, lab down")
    _spec_args(p, prefix="kubelvs-demolab")
    p.add_argument("-n", "--requests", type=int, default=30)
    p.add_argument("-o", "--output", choices=("text", "json"), default="text")
    p.set_defaults(func=cmd_demo)


def _err(message: str) -> int:
    print(f"kubelvs: {message}", file=sys.stderr)
    return exit_codes.ERROR


def cmd_up(args: argparse.Namespace) -> int:
    try:
        running = build(_spec(args, director=not args.no_director, agents=not args.no_agents))
    except LabError as exc:
        return _err(str(exc))
    info = running.info
    print(f"lab {info.spec.prefix} is up ({info.spec.topology}, director backend {info.backend})")
    vips = ", ".join(hostport(vip, info.spec.port) for vip in info.spec.vips)
    print(f"  client {_both(info.client_ip, info.client_ip6)}    VIP {vips}")
    for name, ip in info.director_ips.items():
        print(f"  {name} {ip}")
    for node in info.nodes:
        print(
            f"  {node.name} {_both(node.ip, node.ip6)}  pods: "
            + ", ".join(f"{p.name} {_both(p.ip, p.ip6)}" for p in node.pods)
        )
    for vip in info.spec.vips:
        print(
            "  try: kubelvs lab exec client -- python3 -m kubelvs.lab.servers probe --target "
            f"{hostport(vip, info.spec.port)} --count 6"
        )
    print(f"  state and logs: {info.state_dir}; remove with: kubelvs lab down --prefix {info.spec.prefix}")
    return exit_codes.OK


def _both(ip: str, ip6: str) -> str:
    return f"{ip} {ip6}" if ip6 else ip


def cmd_down(args: argparse.Namespace) -> int:
    try:
        removed = down(args.prefix)
    except LabError as exc:
        return _err(str(exc))
    namespaces = sum(1 for r in removed if r.startswith("namespace"))
    processes = sum(1 for r in removed if r.startswith("process"))
    print(
        f"lab {args.prefix} removed: {namespaces} namespace(s), {processes} process(es)"
        if removed
        else f"no lab {args.prefix}: nothing to remove"
    )
    return exit_codes.OK


def cmd_status(args: argparse.Namespace) -> int:
    present = lab_namespaces(args.prefix)
    try:
        info = load_info(args.prefix)
    except LabError as exc:
        if present:
            print(
                f"lab {args.prefix}: no record, but {len(present)} namespace(s) are left over; "
                f"run: kubelvs lab down --prefix {args.prefix}"
            )
            return exit_codes.CHANGES
        return _err(str(exc))
    procs = {key: _alive(pid) for key, pid in info.pids.items()}
    missing = sorted(set(info.namespaces) - set(present))
    if args.output == "json":
        json.dump(
            {
                "prefix": args.prefix,
                "topology": info.spec.topology,
                "backend": info.backend,
                "namespaces": sorted(present),
                "missing": missing,
                "processes": procs,
            },
            sys.stdout,
            indent=2,
        )
        print()
    else:
        print(
            f"lab {args.prefix}: {info.spec.topology}, director backend {info.backend}, VIP "
            + ", ".join(hostport(vip, info.spec.port) for vip in info.spec.vips)
        )
        for role in info.roles():
            print(
                f"  {role:<14} {info.netns_of(role)}"
                + ("" if info.netns_of(role) in present else "   MISSING")
            )
        for key, alive in sorted(procs.items()):
            print(f"  {key:<28} pid {info.pids[key]:<8} {'running' if alive else 'NOT RUNNING'}")
    healthy = not missing and all(procs.values())
    return exit_codes.OK if healthy else exit_codes.CHANGES


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def cmd_exec(args: argparse.Namespace) -> int:
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not argv:
        return _err("exec: give the command after --")
    try:
        netns = load_info(args.prefix).netns_of(args.host)
    except LabError as exc:
        return _err(str(exc))
    os.execvp("ip", ["ip", "netns", "exec", netns, *argv])


def cmd_scenario(args: argparse.Namespace) -> int:
    from ..lab.scenarios import SCENARIOS, run_scenario

    if args.list or not args.name:
        for name, scn in SCENARIOS.items():
            print(f"{name:<18} {scn.summary}" + (f"   [{scn.needs}]" if scn.needs else ""))
        return exit_codes.OK
    if args.name not in SCENARIOS:
        return _err(f"scenario: {args.name!r} is not one of {', '.join(SCENARIOS)}")
    try:
        result = run_scenario(
            args.name,
            prefix=args.prefix,
            backend=args.backend,
            log=None if args.output == "json" else print,
            doctor=not args.no_doctor,
        )
    except LabError as exc:
        return _err(str(exc))
    if args.output == "json":
        json.dump(result.as_json(), sys.stdout, indent=2)
        print()
    else:
        print(result.render())
    return exit_codes.OK if result.ok else exit_codes.CHANGES


def cmd_doctor(args: argparse.Namespace) -> int:
    from ..doctor import analyse_site, examine, exit_code, render_json, render_text
    from ..lab.doctor import lab_bundles

    try:
        info = load_info(args.prefix)
        known = [*info.directors, *(n.name for n in info.nodes)]
        for host in args.host or []:
            if host not in known:
                return _err(f"host: {host!r} is not one of {', '.join(known)}")
        bundles = lab_bundles(info, hosts=args.host)
        site = analyse_site(bundles)
    except LabError as exc:
        return _err(str(exc))
    examined = {h: examine(b, origin=b.origin, live=True) for h, b in bundles.items()}
    if args.output == "json":
        print(render_json(site, examined=examined))
    else:
        print("\n".join(render_text(fs, host=h, examined=examined[h]) for h, fs in site.items()), end="")
    return max((exit_code(fs) for fs in site.values()), default=exit_codes.OK)


def cmd_explain(args: argparse.Namespace) -> int:
    from ..formats.explain import render_site
    from ..lab.explain import explain_directors
    from .explain import parse_client, parse_service

    client, client_port = parse_client(args.client)
    key = parse_service(args.service)
    try:
        doc = explain_directors(load_info(args.prefix), client, client_port, key)
    except LabError as exc:
        return _err(str(exc))
    if args.output == "json":
        print(json.dumps(doc, indent=1))
    else:
        print(render_site(doc))
    return exit_codes.OK


def cmd_demo(args: argparse.Namespace) -> int:
    from ..lab.demo import print_result, run_demo

    if args.requests < 1:
        return _err(f"requests: {args.requests} must be at least 1")
    log = None if args.output == "json" else (lambda m: print(f"# {m}", flush=True))
    try:
        result = run_demo(_spec(args), args.requests, log=log)
    except LabError as exc:
        return _err(str(exc))
    print_result(result, args.output)
    return exit_codes.OK if result.ok else exit_codes.CHANGES
