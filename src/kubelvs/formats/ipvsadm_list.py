"""``ipvsadm -L`` listings and ``/proc/net/ip_vs``: parse into the model, write back.

Accepted (ipvsadm 1.26-1.31, CRLF or LF, with or without the header lines, so
``ipvsadm | grep -2 VIP`` output works too):

    IP Virtual Server version 1.2.1 (size=4096)
    Prot LocalAddress:Port Scheduler Flags
      -> RemoteAddress:Port           Forward Weight ActiveConn InActConn
    TCP  10.108.152.210:6379 rr
      -> 172.26.6.185:http            Masq    1      0          0
    TCP  10.0.0.1:80 sh (sh-port) persistent 300 mask 255.255.255.0 ops
    FWM  100 mh
    UDP  [2001:db8::1]:53 rr

- ``-L`` without ``-n`` prints service names for ports (``http``); they are turned
  back into numbers from a built-in table and /etc/services. Host names cannot be
  turned back without DNS: such lines are skipped and reported in ``problems``.
- ``--stats`` / ``--rate`` listings (``Conns InPkts ...``) fill ``stats``; numbers
  may carry the K/M/G suffixes ipvsadm prints without ``--exact``.
- ``/proc/net/ip_vs`` is the same listing with addresses and ports in hex.
- ``ipvsadm -L --timeout`` prints ``Timeout (tcp tcpfin udp): 900 120 300``.

Unparsable lines never raise: they are counted in ``Listing.bad_lines``, the first
few quoted in ``Listing.problems`` with their line number, and the rest of the listing
is kept. Every field is read strictly (``tokens``): any text in, a listing out.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass, field

from ..model import (
    NO_TRAFFIC,
    Forward,
    Protocol,
    RealServer,
    RealServerKey,
    RealServerStats,
    ServiceKey,
    Timeouts,
    VirtualService,
)
from .tokens import MAX_PROBLEMS, decimal, hexadecimal, ip_address, lines, quote

__all__ = [
    "Listing",
    "format_listing",
    "format_proc_ip_vs",
    "format_timeout",
    "parse_listing",
    "parse_proc_ip_vs",
    "parse_timeout",
    "port_number",
]

_FORWARD = {"masq": Forward.NAT, "route": Forward.DR, "tunnel": Forward.TUN, "local": Forward.LOCAL}
_FORWARD_NAME = {Forward.NAT: "Masq", Forward.DR: "Route", Forward.TUN: "Tunnel", Forward.LOCAL: "Local"}
_PROTO = {"TCP": Protocol.TCP, "UDP": Protocol.UDP, "SCTP": Protocol.SCTP}

# Names ipvsadm prints without -n for the ports Kubernetes users meet most; /etc/services
# (socket.getservbyname) covers the rest when present.
_SERVICES = {
    "http": 80,
    "https": 443,
    "www": 80,
    "www-http": 80,
    "domain": 53,
    "ssh": 22,
    "smtp": 25,
    "ftp": 21,
    "mysql": 3306,
    "postgresql": 5432,
    "redis": 6379,
    "http-alt": 8080,
    "webcache": 8080,
    "webmin": 10000,
    "ldap": 389,
    "ldaps": 636,
    "imap": 143,
    "imaps": 993,
    "pop3": 110,
    "pop3s": 995,
    "ntp": 123,
    "snmp": 161,
    "syslog": 514,
    "kerberos": 88,
    "memcache": 11211,
    "mongodb": 27017,
    "amqp": 5672,
    "sip": 5060,
    "rtsp": 554,
    "telnet": 23,
    "submission": 587,
    "domain-s": 853,
    "tproxy": 8081,
    "irc": 194,
    "nfs": 2049,
    "bgp": 179,
    "etcd-client": 2379,
    "etcd-server": 2380,
    "zookeeper": 2181,
    "xmpp-client": 5222,
    "kubernetes": 6443,
    "sun-answerbook": 8888,
}


_SERVICE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,31}")  # what /etc/services names look like
_COUNTER = re.compile(r"([0-9]{1,20})([KMGT]?)")
_HEX_IPV4 = re.compile(r"[0-9A-Fa-f]{8}")
_MAX_FWMARK = 2**32 - 1


def port_number(text: str) -> int | None:
    """``80`` -> 80, ``http`` -> 80, ``0050`` (hex, /proc) handled by the caller; None if unknown."""
    value = decimal(text, high=65535)
    if value is not None or (text.isascii() and text.isdigit()):
        return value
    if text in _SERVICES:
        return _SERVICES[text]
    if not _SERVICE_NAME.fullmatch(text):
        return None  # getservbyname raises ValueError on NUL bytes; and no service is named so
    try:
        return socket.getservbyname(text)
    except OSError:
        return None


@dataclass
class Listing:
    """A parsed listing. ``lines`` maps a service key (or (service, real server)) to its
    (line number, line text) so findings can quote their evidence."""

    services: list[VirtualService] = field(default_factory=list)
    stats: dict[tuple[ServiceKey, RealServerKey], RealServerStats] = field(default_factory=dict)
    service_stats: dict[ServiceKey, RealServerStats] = field(default_factory=dict)
    lines: dict[object, tuple[int, str]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # the first MAX_PROBLEMS, with line numbers
    bad_lines: int = 0  # every line that could not be read
    version: str | None = None  # "1.2.1 (size=4096)" from the first line, when present
    kind: str = "list"  # "list", "stats" or "rate": which counters the rows carry
    source: str = ""  # where the text came from (file name), for evidence lines

    def service(self, key: ServiceKey) -> VirtualService | None:
        return next((s for s in self.services if s.key == key), None)

    def problem(self, lineno: int, why: str, line: str) -> None:
        self.bad_lines += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(f"{self.source}:{lineno}: {why}: {quote(line)}")


def _number(text: str) -> int:
    """ipvsadm's counters: ``123``, ``12K``, ``3M``, ``1G`` (powers of 1000, as ipvsadm prints)."""
    m = _COUNTER.fullmatch(text)
    if m is None:
        raise ValueError(f"counter {text[:30]!r} is not a number")
    return int(m.group(1)) * {"": 1, "K": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4}[m.group(2)]


def _count(text: str, what: str) -> int:
    value = decimal(text)
    if value is None:
        raise ValueError(f"{what} {text[:30]!r} is not a number")
    return value


def _split_hostport(text: str) -> tuple[str, str]:
    if text.startswith("["):
        host, _, port = text[1:].partition("]:")
        return host, port
    host, _, port = text.rpartition(":")
    return host, port


def _hex_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if ":" in text:  # /proc prints IPv6 as %pI6: full groups, colons
        address = ip_address(text)
        if address is None or address.version != 6:
            raise ValueError(f"{text[:50]!r} is not an IPv6 address")
        return address
    if not _HEX_IPV4.fullmatch(text):
        raise ValueError(f"{text[:50]!r} is not an IPv4 address in hex")
    return ipaddress.IPv4Address(int(text, 16))


def _address_port(text: str, hexa: bool) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    host, port_text = _split_hostport(text)
    if not port_text:
        raise ValueError(f"{text[:60]!r} has no :PORT")
    if hexa:
        port = hexadecimal(port_text, high=0xFFFF)
        if port is None:
            raise ValueError(f"port {port_text[:30]!r} is not a port in hex")
        return _hex_address(host), port
    address = ip_address(host)
    if address is None:
        raise ValueError(f"{host[:60]!r} is a host name, not an address (list with ipvsadm -Ln)")
    port = port_number(port_text)
    if port is None:
        raise ValueError(f"unknown service name {port_text[:30]!r} (list with ipvsadm -Ln)")
    return address, port


def parse_listing(text: str, *, source: str = "ipvsadm -Ln", hexa: bool = False) -> Listing:
    """Parse ``ipvsadm -L[n] [--stats|--rate]`` (or ``/proc/net/ip_vs`` with ``hexa``)."""
    out = Listing(source=source)
    current: ServiceKey | None = None
    svc_heads: dict[ServiceKey, VirtualService] = {}
    members: dict[ServiceKey, dict[RealServerKey, RealServer]] = {}
    for lineno, raw in enumerate(lines(text), 1):
        stripped = raw.strip()
        if not stripped or stripped == "--":
            continue
        words = stripped.split()
        head = words[0]
        if head == "IP" and stripped.startswith("IP Virtual Server version"):
            out.version = stripped[len("IP Virtual Server version") :].strip()
            continue
        if head == "Prot":
            if "Conns" in words:
                out.kind = "stats"
            elif "CPS" in words:
                out.kind = "rate"
            continue
        if head == "->":
            if len(words) >= 2 and words[1].startswith("RemoteAddress"):
                continue
            if current is None:
                out.problem(lineno, "real server line before any service", stripped)
                continue
            try:
                rs, stats = _parse_dest(words[1:], out.kind, hexa)
            except (ValueError, IndexError) as exc:
                out.problem(lineno, str(exc), stripped)
                continue
            if stats is not None:
                out.stats[(current, rs.key)] = stats
            if rs.key in members[current]:
                continue  # the counters of a duplicate row are kept; the real server once
            members[current][rs.key] = rs
            out.lines[(current, rs.key)] = (lineno, stripped)
            continue
        if head in _PROTO or head == "FWM":
            try:
                svc, stats = _parse_service(words, out.kind, hexa)
            except (ValueError, IndexError) as exc:
                out.problem(lineno, str(exc), stripped)
                current = None
                continue
            current = svc.key
            if current not in svc_heads:
                svc_heads[current] = svc
                members[current] = {}
                out.lines[current] = (lineno, stripped)
            if stats is not None:
                out.service_stats[current] = stats
            continue
        out.problem(lineno, "not an ipvsadm listing line", stripped)
    out.services = [svc.with_realservers(members[key].values()) for key, svc in svc_heads.items()]
    return out


def parse_proc_ip_vs(text: str, *, source: str = "/proc/net/ip_vs") -> Listing:
    return parse_listing(text, source=source, hexa=True)


#: /proc/net/ip_vs prints a persistent service's timeout in kernel ticks (``svc->timeout``
#: is seconds * CONFIG_HZ; netlink and ipvsadm give seconds). The ticks per second are
#: not in any capture; 250 is Debian's and Ubuntu's generic kernels' (RHEL's is 1000).
PROC_HZ = 250
_HEX_MASK = re.compile(r"[0-9A-Fa-f]{8}")


def _netmask(text: str, family: int) -> int:
    if text.isascii() and text.isdigit():
        value = decimal(text, high=32 if family == 4 else 128)
    else:
        try:
            dotted = family == 4 and len(text) <= 15
            value = ipaddress.IPv4Network(f"0.0.0.0/{text}").prefixlen if dotted else None
        except ValueError:
            value = None
    if value is None:
        raise ValueError(f"mask {text[:40]!r} is not a netmask")
    return value


def _parse_service(words: list[str], kind: str, hexa: bool) -> tuple[VirtualService, RealServerStats | None]:
    head = words[0]
    if head == "FWM":
        fwmark = hexadecimal(words[1]) if hexa else decimal(words[1])
        if fwmark is None or not 1 <= fwmark <= _MAX_FWMARK:
            raise ValueError(f"fwmark {words[1][:30]!r} is not a mark 1-{_MAX_FWMARK}")
        rest = words[2:]
        family = 4
        if rest and rest[0] == "IPv6":
            family, rest = 6, rest[1:]
        key = ServiceKey.for_fwmark(fwmark, family)
    else:
        address, port = _address_port(words[1], hexa)
        key = ServiceKey(address.version, _PROTO[head], address, port)
        rest = words[2:]
    if kind != "list":
        counters = [_number(w) for w in rest[:5]]
        if len(counters) != 5:
            raise ValueError("expected 5 counters")
        return VirtualService(key=key), _stats(counters, kind)
    if not rest:
        raise ValueError("no scheduler")
    scheduler, rest = rest[0], rest[1:]
    if not _SERVICE_NAME.fullmatch(scheduler):
        raise ValueError(f"scheduler {scheduler[:30]!r} is not a scheduler name")
    flags: set[str] = set()
    persistence = 0
    netmask: int | None = None
    i = 0
    while i < len(rest):
        word = rest[i]
        if word.startswith("("):  # scheduler flags: "(sh-fallback,sh-port)"
            flags.update(f for f in word.strip("()").split(",") if f)
        elif word == "persistent":
            persistence = _count(rest[i + 1], "persistence")
            i += 1
            if hexa:  # /proc/net/ip_vs: the timeout in kernel ticks, then the netmask in hex
                persistence = max(1, round(persistence / PROC_HZ))
                if i + 1 < len(rest) and _HEX_MASK.fullmatch(rest[i + 1]):
                    mask = hexadecimal(rest[i + 1]) or 0
                    # IPv4: the mask itself; IPv6: the kernel keeps (and prints) the prefix length
                    prefix = bin(mask).count("1") if key.family == 4 else mask
                    netmask = None if prefix == (32 if key.family == 4 else 128) else prefix
                    i += 1
        elif word == "mask":
            netmask = _netmask(rest[i + 1], key.family)
            if netmask == (32 if key.family == 4 else 128):
                netmask = None
            i += 1
        elif word == "pe":
            i += 1  # persistence engine (sip): not modelled
        elif word == "ops":
            flags.add("ops")
        else:
            flags.update(f for f in word.split(",") if f)
        i += 1
    return VirtualService(
        key=key, scheduler=scheduler, persistence=persistence, netmask=netmask, flags=frozenset(flags)
    ), None


def _parse_dest(words: list[str], kind: str, hexa: bool) -> tuple[RealServer, RealServerStats | None]:
    address, port = _address_port(words[0], hexa)
    if kind != "list":
        counters = [_number(w) for w in words[1:6]]
        if len(counters) != 5:
            raise ValueError("expected 5 counters")
        return RealServer(address=address, port=port), _stats(counters, kind)
    if len(words) < 5:
        raise ValueError("expected ADDRESS:PORT FORWARD WEIGHT ACTIVECONN INACTCONN (truncated line?)")
    forward = _FORWARD.get(words[1].lower())
    if forward is None:
        raise ValueError(f"unknown forwarding method {words[1][:30]!r}")
    weight = _count(words[2], "weight")
    active, inactive = _count(words[3], "ActiveConn"), _count(words[4], "InActConn")
    return (
        RealServer(address=address, port=port, weight=weight, forward=forward),
        RealServerStats(active_conns=active, inactive_conns=inactive),
    )


def _stats(c: list[int], kind: str) -> RealServerStats:
    # --stats: Conns InPkts OutPkts InBytes OutBytes; --rate: CPS InPPS OutPPS InBPS OutBPS
    return RealServerStats(conns=c[0], in_packets=c[1], out_packets=c[2], in_bytes=c[3], out_bytes=c[4])


def _fmt_hostport(address: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int, hexa: bool) -> str:
    if hexa:
        if address.version == 6:
            full = address.exploded
            return f"[{full}]:{port:04X}"
        return f"{int(address):08X}:{port:04X}"
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"


def _fmt_service_key(key: ServiceKey, hexa: bool) -> str:
    if key.fwmark:
        mark = f"{key.fwmark:08X}" if hexa else str(key.fwmark)
        return f"FWM  {mark}" + (" IPv6" if key.family == 6 else "")
    assert key.address is not None
    return f"{key.protocol.upper():<4} {_fmt_hostport(key.address, key.port, hexa)}"


def format_listing(listing: Listing, *, hexa: bool = False) -> str:
    """The listing as ``ipvsadm -Ln`` (or ``/proc/net/ip_vs`` with ``hexa``) prints it."""
    lines = [
        f"IP Virtual Server version {listing.version or '1.2.1 (size=4096)'}",
        "Prot LocalAddress:Port Scheduler Flags",
        "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn",
    ]
    for svc in listing.services:
        head = f"{_fmt_service_key(svc.key, hexa)} {svc.scheduler}"
        sched_flags = sorted(f for f in svc.flags if f != "ops")
        if sched_flags:
            head += " (" + ",".join(sched_flags) + ")"
        if svc.persistence and hexa:  # as the kernel prints it: ticks, then the mask in hex
            mask = (
                int(ipaddress.IPv4Network(f"0.0.0.0/{svc.effective_netmask}").netmask)
                if svc.key.family == 4
                else svc.effective_netmask
            )
            head += f" persistent {svc.persistence * PROC_HZ} {mask:08X}"
        elif svc.persistence:
            head += f" persistent {svc.persistence}"
            if svc.netmask is not None:
                head += " mask " + (
                    str(ipaddress.IPv4Network(f"0.0.0.0/{svc.netmask}").netmask)
                    if svc.key.family == 4
                    else str(svc.netmask)
                )
        if "ops" in svc.flags:
            head += " ops"
        lines.append(head)
        for rs in svc.realservers:
            st = listing.stats.get((svc.key, rs.key), NO_TRAFFIC)
            lines.append(
                f"  -> {_fmt_hostport(rs.address, rs.port, hexa):<28} {_FORWARD_NAME[rs.forward]:<7} "
                f"{rs.weight:<6} {st.active_conns:<10} {st.inactive_conns}"
            )
    return "".join(line + "\n" for line in lines)


def format_proc_ip_vs(listing: Listing) -> str:
    return format_listing(listing, hexa=True)


def parse_timeout(text: str) -> Timeouts | None:
    """``Timeout (tcp tcpfin udp): 900 120 300`` -> Timeouts; None when absent or garbled."""
    for raw in lines(text):
        line = raw.strip()
        if line.startswith("Timeout") and ":" in line:
            values = [decimal(v) for v in line.rsplit(":", 1)[1].split()]
            if len(values) == 3 and None not in values:
                tcp, tcpfin, udp = values
                assert tcp is not None and tcpfin is not None and udp is not None  # for mypy
                return Timeouts(tcp, tcpfin, udp)
    return None


def format_timeout(timeouts: Timeouts) -> str:
    return f"Timeout (tcp tcpfin udp): {timeouts.tcp} {timeouts.tcpfin} {timeouts.udp}\n"
