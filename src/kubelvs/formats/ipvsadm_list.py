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

Unparsable lines never raise: they are collected in ``Listing.problems`` with
their line number, and the rest of the listing is kept.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field

from ..model import Forward, Protocol, RealServer, RealServerKey, RealServerStats, ServiceKey, Timeouts, VirtualService

__all__ = [
    "Listing",
    "parse_listing",
    "parse_proc_ip_vs",
    "format_listing",
    "format_proc_ip_vs",
    "parse_timeout",
    "format_timeout",
    "port_number",
]

_FORWARD = {"masq": Forward.NAT, "route": Forward.DR, "tunnel": Forward.TUN, "local": Forward.LOCAL}
_FORWARD_NAME = {Forward.NAT: "Masq", Forward.DR: "Route", Forward.TUN: "Tunnel", Forward.LOCAL: "Local"}
_PROTO = {"TCP": Protocol.TCP, "UDP": Protocol.UDP, "SCTP": Protocol.SCTP}

# Names ipvsadm prints without -n for the ports Kubernetes users meet most; /etc/services
# (socket.getservbyname) covers the rest when present.
_SERVICES = {
    "http": 80, "https": 443, "www": 80, "www-http": 80, "domain": 53, "ssh": 22, "smtp": 25, "ftp": 21,
    "mysql": 3306, "postgresql": 5432, "redis": 6379, "http-alt": 8080, "webcache": 8080, "webmin": 10000,
    "ldap": 389, "ldaps": 636, "imap": 143, "imaps": 993, "pop3": 110, "pop3s": 995, "ntp": 123,
    "snmp": 161, "syslog": 514, "kerberos": 88, "memcache": 11211, "mongodb": 27017, "amqp": 5672,
    "sip": 5060, "rtsp": 554, "telnet": 23, "submission": 587, "domain-s": 853, "tproxy": 8081,
    "irc": 194, "nfs": 2049, "bgp": 179, "etcd-client": 2379, "etcd-server": 2380, "zookeeper": 2181,
    "xmpp-client": 5222, "kubernetes": 6443, "sun-answerbook": 8888,
}


def port_number(text: str) -> int | None:
    """``80`` -> 80, ``http`` -> 80, ``0050`` (hex, /proc) handled by the caller; None if unknown."""
    if text.isdigit():
        value = int(text)
        return value if value < 65536 else None
    if text in _SERVICES:
        return _SERVICES[text]
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
    problems: list[str] = field(default_factory=list)
    version: str | None = None  # "1.2.1 (size=4096)" from the first line, when present
    kind: str = "list"  # "list", "stats" or "rate": which counters the rows carry
    source: str = ""  # where the text came from (file name), for evidence lines

    def service(self, key: ServiceKey) -> VirtualService | None:
        return next((s for s in self.services if s.key == key), None)


def _number(text: str) -> int:
    """ipvsadm's counters: ``123``, ``12K``, ``3M``, ``1G`` (powers of 1000, as ipvsadm prints)."""
    mult = {"K": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4}.get(text[-1:], 1)
    return int(text[:-1] if mult != 1 else text) * mult


def _split_hostport(text: str) -> tuple[str, str]:
    if text.startswith("["):
        host, _, port = text[1:].partition("]:")
        return host, port
    host, _, port = text.rpartition(":")
    return host, port


def _hex_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if ":" in text:  # /proc prints IPv6 as %pI6: full groups, colons
        return ipaddress.IPv6Address(text)
    return ipaddress.IPv4Address(int(text, 16))


def _address_port(text: str, hexa: bool) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    host, port_text = _split_hostport(text)
    if not port_text:
        raise ValueError(f"{text!r} has no :PORT")
    if hexa:
        return _hex_address(host), int(port_text, 16)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{host!r} is a host name, not an address (list with ipvsadm -Ln)") from None
    port = port_number(port_text)
    if port is None:
        raise ValueError(f"unknown service name {port_text!r} (list with ipvsadm -Ln)")
    return address, port


def parse_listing(text: str, *, source: str = "ipvsadm -Ln", hexa: bool = False) -> Listing:
    """Parse ``ipvsadm -L[n] [--stats|--rate]`` (or ``/proc/net/ip_vs`` with ``hexa``)."""
    out = Listing(source=source)
    current: ServiceKey | None = None
    svc_heads: dict[ServiceKey, VirtualService] = {}
    members: dict[ServiceKey, list[RealServer]] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip("\r\n ")
        stripped = line.strip()
        if not stripped or stripped == "--":
            continue
        words = stripped.split()
        head = words[0]
        if head == "IP" and stripped.startswith("IP Virtual Server version"):
            out.version = stripped[len("IP Virtual Server version"):].strip()
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
                out.problems.append(f"{source}:{lineno}: real server line before any service: {stripped!r}")
                continue
            try:
                rs, stats = _parse_dest(words[1:], current, out.kind, hexa)
            except (ValueError, IndexError) as exc:
                out.problems.append(f"{source}:{lineno}: {exc}: {stripped!r}")
                continue
            if stats is not None:
                out.stats[(current, rs.key)] = stats
            if rs.key in {r.key for r in members[current]}:
                continue  # the counters of a duplicate row are kept; the real server once
            members[current].append(rs)
            out.lines[(current, rs.key)] = (lineno, stripped)
            continue
        if head in _PROTO or head == "FWM":
            try:
                svc, stats = _parse_service(words, out.kind, hexa)
            except (ValueError, IndexError) as exc:
                out.problems.append(f"{source}:{lineno}: {exc}: {stripped!r}")
                current = None
                continue
            current = svc.key
            if current not in svc_heads:
                svc_heads[current] = svc
                members[current] = []
                out.lines[current] = (lineno, stripped)
            if stats is not None:
                out.service_stats[current] = stats
            continue
        out.problems.append(f"{source}:{lineno}: not an ipvsadm listing line: {stripped!r}")
    out.services = [svc.with_realservers(members[key]) for key, svc in svc_heads.items()]
    return out


def parse_proc_ip_vs(text: str, *, source: str = "/proc/net/ip_vs") -> Listing:
    return parse_listing(text, source=source, hexa=True)


def _parse_service(words: list[str], kind: str, hexa: bool) -> tuple[VirtualService, RealServerStats | None]:
    head = words[0]
    if head == "FWM":
        fwmark = int(words[1], 16) if hexa else int(words[1])
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
    flags: set[str] = set()
    persistence = 0
    netmask: int | None = None
    i = 0
    while i < len(rest):
        word = rest[i]
        if word.startswith("("):  # scheduler flags: "(sh-fallback,sh-port)"
            flags.update(f for f in word.strip("()").split(",") if f)
        elif word == "persistent":
            persistence = int(rest[i + 1])
            i += 1
        elif word == "mask":
            mask = rest[i + 1]
            netmask = int(mask) if mask.isdigit() else ipaddress.IPv4Network(f"0.0.0.0/{mask}").prefixlen
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
    return VirtualService(key=key, scheduler=scheduler, persistence=persistence, netmask=netmask, flags=frozenset(flags)), None


def _parse_dest(words: list[str], svc: ServiceKey, kind: str, hexa: bool) -> tuple[RealServer, RealServerStats | None]:
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
        raise ValueError(f"unknown forwarding method {words[1]!r}")
    weight, active, inactive = int(words[2]), int(words[3]), int(words[4])
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
        if svc.persistence:
            head += f" persistent {svc.persistence}"
            if svc.netmask is not None:
                head += " mask " + (
                    str(ipaddress.IPv4Network(f"0.0.0.0/{svc.netmask}").netmask) if svc.key.family == 4 else str(svc.netmask)
                )
        if "ops" in svc.flags:
            head += " ops"
        lines.append(head)
        for rs in svc.realservers:
            st = listing.stats.get((svc.key, rs.key), RealServerStats())
            lines.append(
                f"  -> {_fmt_hostport(rs.address, rs.port, hexa):<28} {_FORWARD_NAME[rs.forward]:<7} "
                f"{rs.weight:<6} {st.active_conns:<10} {st.inactive_conns}"
            )
    return "".join(line + "\n" for line in lines)


def format_proc_ip_vs(listing: Listing) -> str:
    return format_listing(listing, hexa=True)


def parse_timeout(text: str) -> Timeouts | None:
    """``Timeout (tcp tcpfin udp): 900 120 300`` -> Timeouts; None when absent or garbled."""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("Timeout") and ":" in line:
            values = line.rsplit(":", 1)[1].split()
            if len(values) == 3 and all(v.isdigit() for v in values):
                return Timeouts(int(values[0]), int(values[1]), int(values[2]))
    return None


def format_timeout(timeouts: Timeouts) -> str:
    return f"Timeout (tcp tcpfin udp): {timeouts.tcp} {timeouts.tcpfin} {timeouts.udp}\n"
