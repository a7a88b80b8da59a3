"""``ipvsadm -Sn`` save format: parse it into the model, and write the model as it.

Lines look like (ipvsadm 1.26-1.31):

    -A -t 10.240.0.201:80 -s mh -b mh-port
    -a -t 10.240.0.201:80 -r 10.240.0.101:80 -g -w 1
    -A -f 100 -6 -s rr -p 300
    -A --sctp-service [2001:db8::1]:9 -s wlc -p 300 -M 64

Field order and spelling follow ipvsadm 1.31 (Debian 12) exactly; the tests compare
with its real output. Only numeric output (``-Sn``) is accepted: ``-S`` without ``-n`` prints host and
service names that cannot be turned back into addresses without lookups.
"""

from __future__ import annotations

import ipaddress
import shlex
from collections.abc import Iterable

from ..errors import ParseError
from ..model import (
    SCHED_FLAGS,
    Forward,
    Protocol,
    RealServer,
    ServiceKey,
    VirtualService,
    parse_address,
)

__all__ = ["parse_save", "format_save"]

_PROTO_SWITCH = {"-t": Protocol.TCP, "--tcp-service": Protocol.TCP, "-u": Protocol.UDP, "--udp-service": Protocol.UDP,
                 "--sctp-service": Protocol.SCTP}
_SWITCH_OF = {Protocol.TCP: "-t", Protocol.UDP: "-u", Protocol.SCTP: "--sctp-service"}
_FWD_SWITCH = {"-g": Forward.DR, "--gatewaying": Forward.DR, "-m": Forward.NAT, "--masquerading": Forward.NAT,
               "-i": Forward.TUN, "--ipip": Forward.TUN}
_SWITCH_OF_FWD = {Forward.DR: "-g", Forward.LOCAL: "-g", Forward.NAT: "-m", Forward.TUN: "-i"}


def _hostport(text: str, source: str, line: int) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
    try:
        return parse_address(host), int(port) if sep else 0
    except ValueError:
        raise ParseError(source, line, f"{text!r} is not ADDRESS:PORT in numbers (save with ipvsadm -Sn, not -S)") from None


def parse_save(text: str, *, source: str = "ipvsadm -Sn") -> list[VirtualService]:
    """Services with their real servers, in file order."""
    services: dict[ServiceKey, VirtualService] = {}
    realservers: dict[ServiceKey, list[RealServer]] = {}
    for lineno, raw in enumerate(text.replace("\r", "").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            args = shlex.split(line)
        except ValueError as exc:
            raise ParseError(source, lineno, str(exc)) from None
        verb, rest = args[0], args[1:]
        if verb not in ("-A", "--add-service", "-a", "--add-server"):
            raise ParseError(source, lineno, f"expected -A or -a, got {verb!r}")
        opts = _options(rest, source, lineno)
        key = _service_key(opts, source, lineno)
        if verb in ("-A", "--add-service"):
            if key in services:
                raise ParseError(source, lineno, f"service {key} declared twice")
            scheduler = opts.get("-s", opts.get("--scheduler", "wlc"))
            flags = set(filter(None, opts.get("-b", opts.get("--sched-flags", "")).split(",")))
            if "-o" in opts or "--ops" in opts:
                flags.add("ops")
            persistence = opts.get("-p", opts.get("--persistent"))
            netmask_text = opts.get("-M", opts.get("--netmask"))
            netmask = None
            if netmask_text is not None:
                netmask = (
                    int(netmask_text)
                    if netmask_text.isdigit()
                    else ipaddress.IPv4Network(f"0.0.0.0/{netmask_text}").prefixlen
                )
                if netmask == (32 if key.family == 4 else 128):
                    netmask = None
            services[key] = VirtualService(
                key=key,
                scheduler=scheduler,
                persistence=int(persistence or 300) if persistence is not None else 0,
                netmask=netmask,
                flags=frozenset(flags),
            )
            realservers[key] = []
        else:
            if key not in services:
                raise ParseError(source, lineno, f"real server for {key}, which was not declared with -A before")
            target = opts.get("-r", opts.get("--real-server"))
            if target is None:
                raise ParseError(source, lineno, "-a without -r ADDRESS:PORT")
            address, port = _hostport(target, source, lineno)
            forward = next((f for s, f in _FWD_SWITCH.items() if s in opts), Forward.DR)
            try:
                realservers[key].append(
                    RealServer(
                        address=address,
                        port=port or (key.port if forward is not Forward.NAT else 0),
                        weight=int(opts.get("-w", opts.get("--weight", "1"))),
                        forward=forward,
                        u_thresh=int(opts.get("-x", opts.get("--u-threshold", "0"))),
                        l_thresh=int(opts.get("-y", opts.get("--l-threshold", "0"))),
                    )
                )
            except ValueError as exc:
                raise ParseError(source, lineno, f"not a number: {exc}") from None
    return [svc.with_realservers(realservers[key]) for key, svc in services.items()]


_TAKES_VALUE = {"-t", "--tcp-service", "-u", "--udp-service", "--sctp-service", "-f", "--fwmark-service", "-s",
                "--scheduler", "-b", "--sched-flags", "-M", "--netmask", "-r", "--real-server", "-w", "--weight",
                "-x", "--u-threshold", "-y", "--l-threshold", "--pe", "--tun-type", "--tun-port"}


def _options(args: list[str], source: str, line: int) -> dict[str, str]:
    opts: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in ("-p", "--persistent"):
            # -p takes an optional value (default 300 s)
            if i + 1 < len(args) and args[i + 1].isdigit():
                opts[arg] = args[i + 1]
                i += 2
            else:
                opts[arg] = ""
                i += 1
            continue
        if arg in _TAKES_VALUE:
            if i + 1 >= len(args):
                raise ParseError(source, line, f"{arg} needs a value")
            opts[arg] = args[i + 1]
            i += 2
            continue
        if arg.startswith("-"):
            opts[arg] = ""
            i += 1
            continue
        raise ParseError(source, line, f"unexpected argument {arg!r}")
    return opts


def _service_key(opts: dict[str, str], source: str, line: int) -> ServiceKey:
    family = 6 if ("-6" in opts or "--ipv6" in opts) else 4
    fwmark = opts.get("-f", opts.get("--fwmark-service"))
    if fwmark is not None:
        try:
            return ServiceKey.for_fwmark(int(fwmark, 0), family)
        except ValueError:
            raise ParseError(source, line, f"fwmark {fwmark!r} is not a number") from None
    for switch, protocol in _PROTO_SWITCH.items():
        if switch in opts:
            address, port = _hostport(opts[switch], source, line)
            return ServiceKey(address.version, protocol, address, port)
    raise ParseError(source, line, "no service given (-t, -u, --sctp-service or -f)")


def _service_switch(key: ServiceKey) -> str:
    if key.fwmark:
        return f"-f {key.fwmark}" + (" -6" if key.family == 6 else "")
    assert key.address is not None
    host = f"[{key.address}]" if key.family == 6 else str(key.address)
    return f"{_SWITCH_OF[key.protocol]} {host}:{key.port}"


def format_save(services: Iterable[VirtualService]) -> str:
    """The services as ``ipvsadm -Sn`` prints them (feed it to ``ipvsadm -R``)."""
    lines = []
    for svc in services:
        # Field order of ipvsadm 1.31's print_service_entry: -s, -p [-M], -b, -o.
        head = f"-A {_service_switch(svc.key)} -s {svc.scheduler}"
        if svc.persistence:
            head += f" -p {svc.persistence}"
            if svc.netmask is not None:
                head += " -M " + (
                    str(ipaddress.IPv4Network(f"0.0.0.0/{svc.netmask}").netmask) if svc.key.family == 4 else str(svc.netmask)
                )
        sched_flags = [f for f in svc.flags if f != "ops"]
        if sched_flags:
            named = SCHED_FLAGS.get(svc.scheduler, frozenset())
            head += " -b " + ",".join(sorted(sched_flags, key=lambda f: (f not in named, f)))
        if "ops" in svc.flags:
            head += " -o"
        lines.append(head)
        for rs in svc.realservers:
            host = f"[{rs.address}]" if rs.address.version == 6 else str(rs.address)
            line = f"-a {_service_switch(svc.key)} -r {host}:{rs.port} {_SWITCH_OF_FWD[rs.forward]} -w {rs.weight}"
            if rs.forward is Forward.TUN:
                line += " --tun-type ipip"
            # ipvsadm -S never prints thresholds (they are lost in its save files);
            # we keep them, and ipvsadm -R reads them back.
            if rs.u_thresh:
                line += f" -x {rs.u_thresh}"
            if rs.l_thresh:
                line += f" -y {rs.l_thresh}"
            lines.append(line)
    return "".join(line + "\n" for line in lines)
