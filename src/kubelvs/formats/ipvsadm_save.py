"""``ipvsadm -Sn`` save format: parse it into the model, and write the model as it.

Lines look like (ipvsadm 1.26-1.31):

    -A -t 10.240.0.201:80 -s mh -b mh-port
    -a -t 10.240.0.201:80 -r 10.240.0.101:80 -g -w 1
    -A -f 100 -6 -s rr -p 300
    -A --sctp-service [2001:db8::1]:9 -s wlc -p 300 -M 64

Field order and spelling follow ipvsadm 1.31 (Debian 12) exactly; the tests compare
with its real output. Only numeric output (``-Sn``) is accepted: ``-S`` without ``-n`` prints host and
service names that cannot be turned back into addresses without lookups.

The reader is strict, as ``ipvsadm -R`` is: a rules file is a whole desired state, and
an option silently dropped would change what gets programmed. Every bad input raises
``ParseError`` naming the source, the line and the option: unknown options, options of
the other verb, missing or bad values (addresses, ports, weights, thresholds, timeouts,
netmasks, schedulers and their flags), a real server of a service not declared before,
a service or real server declared twice, ipvsadm features the model does not hold
(``--pe``, GUE/GRE tunnels), binary data and over-long lines. Short options take their
value attached (``-w3``) and long ones after ``=`` (``--weight=3``), as popt allows.

One cohesive thing (over 500 lines): the reader and the writer of one format, kept
together so that they cannot drift apart.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import shlex
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import ParseError
from ..model import (
    KNOWN_SCHEDULERS,
    MAX_TIMEOUT,
    MAX_WEIGHT,
    SCHED_FLAGS,
    Forward,
    Protocol,
    RealServer,
    RealServerKey,
    ServiceKey,
    VirtualService,
)

__all__ = ["MAX_LINE", "format_save", "parse_save"]

#: Longest line accepted. The longest line ipvsadm -Sn prints (an SCTP service over two
#: full IPv6 addresses with every -a option) is under 200 characters; a longer one is
#: not a rules file (a binary, a log), and the error says so instead of going on.
MAX_LINE = 1024
_MAX_THRESH = 2**31 - 1  # ipvsadm: string_to_number(optarg, 0, INT_MAX)
_MAX_FWMARK = 2**32 - 1

_SWITCH_OF = {Protocol.TCP: "-t", Protocol.UDP: "-u", Protocol.SCTP: "--sctp-service"}
_SWITCH_OF_FWD = {Forward.DR: "-g", Forward.LOCAL: "-g", Forward.NAT: "-m", Forward.TUN: "-i"}

# Binary data: C0/C1 controls other than tab, DEL, the replacement character a decoder
# puts for bytes that are not UTF-8, and lone surrogates (surrogateescape's bytes).
_BINARY = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\ufffd\ud800-\udfff]")
_DIGITS = re.compile(r"[0-9]{1,20}")
_HEX = re.compile(r"0[xX][0-9A-Fa-f]{1,16}")

_ADD_SERVICE, _ADD_SERVER = "-A (add service)", "-a (add server)"
_VERBS = {"-A": _ADD_SERVICE, "--add-service": _ADD_SERVICE, "-a": _ADD_SERVER, "--add-server": _ADD_SERVER}


@dataclass(frozen=True)
class _Opt:
    key: str  # canonical name: options of one key are exclusive ("service", "forward")
    value: str  # "none", "required" or "optional" (-p: the timeout may be left out)
    verbs: frozenset[str]


_BOTH = frozenset({_ADD_SERVICE, _ADD_SERVER})
_SVC = frozenset({_ADD_SERVICE})
_RS = frozenset({_ADD_SERVER})
_OPTIONS: dict[str, _Opt] = {
    **{
        n: _Opt("service", "required", _BOTH)
        for n in ("-t", "--tcp-service", "-u", "--udp-service", "--sctp-service", "-f", "--fwmark-service")
    },
    **{n: _Opt("ipv6", "none", _BOTH) for n in ("-6", "--ipv6")},
    **{n: _Opt("scheduler", "required", _SVC) for n in ("-s", "--scheduler")},
    **{n: _Opt("persistent", "optional", _SVC) for n in ("-p", "--persistent")},
    **{n: _Opt("netmask", "required", _SVC) for n in ("-M", "--netmask")},
    **{n: _Opt("sched-flags", "required", _SVC) for n in ("-b", "--sched-flags")},
    **{n: _Opt("ops", "none", _SVC) for n in ("-o", "--ops")},
    "--pe": _Opt("pe", "required", _SVC),
    **{n: _Opt("real-server", "required", _RS) for n in ("-r", "--real-server")},
    **{
        n: _Opt("forward", "none", _RS)
        for n in ("-g", "--gatewaying", "-m", "--masquerading", "-i", "--ipip")
    },
    **{n: _Opt("weight", "required", _RS) for n in ("-w", "--weight")},
    **{n: _Opt("u-threshold", "required", _RS) for n in ("-x", "--u-threshold")},
    **{n: _Opt("l-threshold", "required", _RS) for n in ("-y", "--l-threshold")},
    "--tun-type": _Opt("tun-type", "required", _RS),
    "--tun-port": _Opt("tun-port", "required", _RS),
    **{n: _Opt("tun-csum", "none", _RS) for n in ("--tun-nocsum", "--tun-csum", "--tun-remcsum")},
}
# ipvsadm options that exist but belong to other commands than -A/-a (a better message
# than "unknown" for a file of mixed commands).
_OTHER = frozenset(
    {
        "-E",
        "--edit-service",
        "-D",
        "--delete-service",
        "-C",
        "--clear",
        "-R",
        "--restore",
        "-S",
        "--save",
        "-e",
        "--edit-server",
        "-d",
        "--delete-server",
        "-L",
        "-l",
        "--list",
        "-Z",
        "--zero",
        "--set",
        "--start-daemon",
        "--stop-daemon",
        "-h",
        "--help",
        "-v",
        "--version",
        "-n",
        "--numeric",
        "-c",
        "--connection",
        "--exact",
        "--stats",
        "--rate",
        "--thresholds",
        "--persistent-conn",
        "--nosort",
        "--sort",
        "--timeout",
        "--daemon",
        "--mcast-interface",
        "--syncid",
    }
)
_PROTOCOL_OF = {
    "-t": Protocol.TCP,
    "--tcp-service": Protocol.TCP,
    "-u": Protocol.UDP,
    "--udp-service": Protocol.UDP,
    "--sctp-service": Protocol.SCTP,
}
_FORWARD_OF = {
    "-g": Forward.DR,
    "--gatewaying": Forward.DR,
    "-m": Forward.NAT,
    "--masquerading": Forward.NAT,
    "-i": Forward.TUN,
    "--ipip": Forward.TUN,
}


class _Line:
    """One rule line: its options by canonical key, and errors that name the line."""

    def __init__(self, source: str, lineno: int) -> None:
        self.source, self.lineno = source, lineno
        self.opts: dict[str, tuple[str, str]] = {}  # key -> (option as written, value)

    def error(self, reason: str) -> ParseError:
        return ParseError(self.source, self.lineno, reason)

    def get(self, key: str) -> tuple[str, str] | None:
        return self.opts.get(key)

    def number(self, key: str, low: int, high: int, what: str, default: int) -> int:
        found = self.opts.get(key)
        if found is None:
            return default
        option, text = found
        value = int(text) if _DIGITS.fullmatch(text) else None
        if value is None:
            raise self.error(f"{option} {text!r}: not a number ({what}: {low}-{high})")
        if not low <= value <= high:
            raise self.error(f"{option} {text!r}: out of range ({what}: {low}-{high})")
        return value


def parse_save(text: str, *, source: str = "ipvsadm -Sn") -> list[VirtualService]:
    """Services with their real servers, in file order. Raises ParseError on any bad line."""
    services: dict[ServiceKey, VirtualService] = {}
    declared: dict[ServiceKey, int] = {}  # service -> the line declaring it
    realservers: dict[ServiceKey, dict[RealServerKey, tuple[RealServer, int]]] = {}
    for lineno, raw in enumerate(text.split("\n"), 1):
        line = raw.removesuffix("\r")
        if not _checked_text(line, source, lineno):
            continue
        rule = _Line(source, lineno)
        verb = _read_options(line, rule)
        key = _service_key(rule)
        if verb == _ADD_SERVICE:
            if key in services:
                raise rule.error(f"service {key} declared twice (first on line {declared[key]})")
            services[key] = _service(rule, key)
            declared[key] = lineno
            realservers[key] = {}
            continue
        if key not in services:
            raise rule.error(f"real server for {key}, which was not declared with -A before")
        rs = _realserver(rule, key)
        if rs.key in realservers[key]:
            first = realservers[key][rs.key][1]
            raise rule.error(f"real server {rs.key} of {key} declared twice (first on line {first})")
        realservers[key][rs.key] = (rs, lineno)
    return [svc.with_realservers(rs for rs, _ in realservers[key].values()) for key, svc in services.items()]


def _checked_text(line: str, source: str, lineno: int) -> bool:
    """False for a blank or comment line; raises on binary data, non-ASCII rules and
    over-long lines (before any splitting, so the column is the file's)."""
    if len(line) > MAX_LINE:
        raise ParseError(
            source,
            lineno,
            f"line is {len(line)} characters long (at most {MAX_LINE}; ipvsadm -Sn lines "
            "are under 200): not an ipvsadm -Sn file?",
        )
    bad = _BINARY.search(line)
    if bad is not None:
        char = bad.group()
        what = (
            "bytes that are not UTF-8 text"
            if char == "\ufffd" or "\ud800" <= char <= "\udfff"
            else "a control character"
        )
        raise ParseError(
            source, lineno, f"column {bad.start() + 1}: {what} ({char!a}): binary data, not ipvsadm rules"
        )
    stripped = line.strip()
    if not stripped or stripped.startswith("#"):
        return False
    if not stripped.isascii():
        column, char = next((i, c) for i, c in enumerate(line, 1) if not c.isascii())
        raise ParseError(
            source,
            lineno,
            f"column {column}: {char!r} ({char!a}) is not ASCII: ipvsadm -Sn prints ASCII only",
        )
    return True


def _read_options(line: str, rule: _Line) -> str:
    """Split the line, check every option against the verb, fill ``rule.opts``; the verb."""
    if "'" in line or '"' in line or "\\" in line:
        try:
            args = shlex.split(line)
        except ValueError as exc:
            raise rule.error(f"{exc} (quotes do not pair up)") from None
    else:
        args = line.split()  # what ipvsadm -Sn prints: no quoting; shlex would take 3/4 of the time
    verb = _VERBS.get(args[0])
    if verb is None:
        raise rule.error(f"expected -A or -a (the lines ipvsadm -Sn prints), got {args[0]!r}")
    i = 1
    while i < len(args):
        option, attached = _split_option(args[i])
        spec = _OPTIONS.get(option)
        if spec is None:
            if option in _VERBS:
                raise rule.error(f"{option}: a second command on one line")
            if option in _OTHER:
                raise rule.error(
                    f"{option}: an ipvsadm option, but not one of -A/-a lines (ipvsadm -Sn prints no such)"
                )
            if option.startswith("-"):
                raise rule.error(f"unknown option {option!r}")
            raise rule.error(f"unexpected argument {option!r} (a value without its option?)")
        if verb not in spec.verbs:
            other = next(iter(spec.verbs))
            raise rule.error(f"{option} is an option of {other}, not of {verb}")
        i += 1
        value = ""
        if attached is not None:
            if spec.value == "none":
                raise rule.error(f"{option} takes no value, got {attached!r}")
            value = attached
        elif spec.value == "required":
            if i >= len(args) or args[i].startswith("-"):
                got = f", got option {args[i]!r}" if i < len(args) else ""
                raise rule.error(f"{option} needs a value{got}")
            value, i = args[i], i + 1
        elif spec.value == "optional" and i < len(args) and not args[i].startswith("-"):
            value, i = args[i], i + 1
        if spec.key in rule.opts:
            first = rule.opts[spec.key][0]
            same = "given twice" if first == option else f"conflicts with {first}"
            raise rule.error(f"{option}: {same}")
        rule.opts[spec.key] = (option, value)
    return verb


def _split_option(arg: str) -> tuple[str, str | None]:
    """``--weight=3`` -> (``--weight``, ``3``); ``-w3`` -> (``-w``, ``3``); else (arg, None)."""
    if arg.startswith("--"):
        name, sep, value = arg.partition("=")
        return (name, value) if sep else (arg, None)
    if len(arg) > 2 and arg.startswith("-") and arg[:2] in _OPTIONS:
        return arg[:2], arg[2:]
    return arg, None


@functools.lru_cache(maxsize=1 << 16)
def _ipv4(text: str) -> ipaddress.IPv4Address | None:
    """Dotted quad only, through the C parser (as strict as ipaddress's, several times
    faster: a 100,000-line file names each VIP on 11 lines); cached."""
    try:
        return ipaddress.IPv4Address(socket.inet_pton(socket.AF_INET, text))
    except (OSError, ValueError):
        return None


def _ipv6(text: str) -> ipaddress.IPv6Address | None:
    if "%" in text:  # ipaddress takes a scope (fe80::1%eth0); IPVS has no such addresses
        return None
    try:
        return ipaddress.IPv6Address(text)
    except ValueError:
        return None


def _address(rule: _Line, option: str, text: str, host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if host.startswith("[") and host.endswith("]"):
        v6 = _ipv6(host[1:-1])
        if v6 is not None:
            return v6
    else:
        v4 = _ipv4(host)
        if v4 is not None:
            return v4
        if _ipv6(host) is not None:
            raise rule.error(f"{option} {text!r}: an IPv6 address goes in brackets: [ADDRESS]:PORT")
        if ":" in host:
            raise rule.error(f"{option} {text!r}: not ADDRESS:PORT")
    raise rule.error(
        f"{option} {text!r}: {host!r} is not an IP address (save with ipvsadm -Sn, not -S: -S prints "
        "host names)"
    )


def _hostport(rule: _Line, key: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int | None]:
    """``10.0.0.1:80``, ``[2001:db8::1]:80``, or the address alone (port None)."""
    option, text = rule.opts[key]
    if text.startswith("["):
        close = text.find("]")
        host, rest = (text[: close + 1], text[close + 1 :]) if close > 0 else (text, "")
    elif text.count(":") == 1:
        host, rest = text.split(":")[0], text[text.index(":") :]
    else:
        host, rest = text, ""
    if rest and not rest.startswith(":"):
        raise rule.error(f"{option} {text!r}: not ADDRESS:PORT")
    address = _address(rule, option, text, host)
    if not rest:
        return address, None
    port = int(rest[1:]) if _DIGITS.fullmatch(rest[1:]) else None
    if port is None or port > 65535:
        raise rule.error(
            f"{option} {text!r}: {rest[1:]!r} is not a port number 0-65535 (save with ipvsadm -Sn, not "
            "-S: -S prints service names)"
        )
    return address, port


def _service_key(rule: _Line) -> ServiceKey:
    found = rule.get("service")
    if found is None:
        raise rule.error("no service given (-t, -u, --sctp-service or -f)")
    option, text = found
    ipv6 = rule.get("ipv6")
    if option in ("-f", "--fwmark-service"):
        mark = int(text) if _DIGITS.fullmatch(text) else int(text, 16) if _HEX.fullmatch(text) else None
        if mark is None or not 1 <= mark <= _MAX_FWMARK:
            raise rule.error(f"{option} {text!r}: not a firewall mark 1-{_MAX_FWMARK}")
        return ServiceKey.for_fwmark(mark, 6 if ipv6 else 4)
    if ipv6:
        raise rule.error(
            f"{ipv6[0]}: only for -f (fwmark) services; the address of {option} gives its family"
        )
    address, port = _hostport(rule, "service")
    return ServiceKey(address.version, _PROTOCOL_OF[option], address, port or 0)


def _service(rule: _Line, key: ServiceKey) -> VirtualService:
    if rule.get("pe"):
        raise rule.error("--pe (persistence engine): not supported by kubelvs")
    scheduler_opt = rule.get("scheduler")
    scheduler = scheduler_opt[1] if scheduler_opt else "wlc"
    if scheduler not in KNOWN_SCHEDULERS:
        raise rule.error(
            f"{scheduler_opt[0] if scheduler_opt else '-s'} {scheduler!r}: unknown scheduler "
            f"(known: {', '.join(sorted(KNOWN_SCHEDULERS))})"
        )
    flags: set[str] = set()
    found = rule.get("sched-flags")
    if found is not None:
        option, text = found
        allowed = SCHED_FLAGS.get(scheduler, frozenset()) | {"flag-1", "flag-2", "flag-3"}
        for flag in text.split(","):
            if flag not in allowed:
                raise rule.error(
                    f"{option} {text!r}: {flag!r} is not a flag of scheduler {scheduler} "
                    f"(its flags: {', '.join(sorted(allowed))})"
                )
            flags.add(flag)
    if rule.get("ops"):
        if key.protocol is not Protocol.UDP and not key.fwmark:
            raise rule.error(
                f"{rule.opts['ops'][0]}: one-packet scheduling is only for UDP (and fwmark) services"
            )
        flags.add("ops")
    persistence = 0
    if rule.get("persistent"):
        text = rule.opts["persistent"][1]
        persistence = (
            rule.number("persistent", 1, MAX_TIMEOUT, "persistence timeout in seconds", 300) if text else 300
        )
    netmask = _netmask(rule, key, persistence)
    return VirtualService(
        key=key, scheduler=scheduler, persistence=persistence, netmask=netmask, flags=frozenset(flags)
    )


def _netmask(rule: _Line, key: ServiceKey, persistence: int) -> int | None:
    found = rule.get("netmask")
    if found is None:
        return None
    option, text = found
    if not persistence:
        raise rule.error(
            f"{option} {text!r}: a netmask groups the clients of a persistent service; this one has no -p"
        )
    full = 32 if key.family == 4 else 128
    if _DIGITS.fullmatch(text):
        value = int(text)
    else:
        try:
            value = (
                ipaddress.IPv4Network(f"0.0.0.0/{text}").prefixlen
                if key.family == 4 and "/" not in text
                else -1
            )
        except ValueError:
            value = -1
    if not 0 <= value <= full:
        what = (
            "a netmask (255.255.255.0) or a prefix length 0-32"
            if key.family == 4
            else "a prefix length 0-128"
        )
        raise rule.error(f"{option} {text!r}: not {what}")
    return None if value == full else value


def _realserver(rule: _Line, key: ServiceKey) -> RealServer:
    if rule.get("real-server") is None:
        raise rule.error("-a without -r ADDRESS:PORT")
    address, port = _hostport(rule, "real-server")
    switch = rule.get("forward")
    forward = _FORWARD_OF[switch[0]] if switch else Forward.DR
    tun_type = rule.get("tun-type")
    if tun_type is not None:
        if forward is not Forward.TUN:
            raise rule.error(f"{tun_type[0]} {tun_type[1]!r}: only with -i (tunnel forwarding)")
        if tun_type[1] != "ipip":
            raise rule.error(f"{tun_type[0]} {tun_type[1]!r}: kubelvs supports ipip tunnels only")
    for extra in ("tun-port", "tun-csum"):
        if rule.get(extra):
            raise rule.error(f"{rule.opts[extra][0]}: for GUE/GRE tunnels, which kubelvs does not support")
    return RealServer(
        address=address,
        # ipvsadm: without a port (or port 0) a DR/TUN real server gets the service's port
        port=port or (key.port if forward is not Forward.NAT else 0),
        weight=rule.number("weight", 0, MAX_WEIGHT, "weight", 1),
        forward=forward,
        u_thresh=rule.number("u-threshold", 0, _MAX_THRESH, "upper connection threshold", 0),
        l_thresh=rule.number("l-threshold", 0, _MAX_THRESH, "lower connection threshold", 0),
    )


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
                    str(ipaddress.IPv4Network(f"0.0.0.0/{svc.netmask}").netmask)
                    if svc.key.family == 4
                    else str(svc.netmask)
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
            line = (
                f"-a {_service_switch(svc.key)} -r {host}:{rs.port} {_SWITCH_OF_FWD[rs.forward]} "
                f"-w {rs.weight}"
            )
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
