"""The IPVS connection table: ``ipvsadm -Lnc`` and ``/proc/net/ip_vs_conn``.

    IPVS connection entries
    pro expire state       source             virtual            destination
    TCP 00:48  SYN_RECV    192.168.58.36:57964 10.111.99.131:80  172.26.8.17:80

    Pro FromIP   FPrt ToIP     TPrt DestIP   DPrt State       Expires PEName PEData
    TCP C0A83A24 E26C 0A6F6383 0050 AC1A0811 0050 SYN_RECV         48

Tables reach millions of rows on a busy director, so rows stay as plain tuples of
strings ``(proto, expire_seconds, state, client, virtual, destination)`` with
``ADDRESS:PORT`` text in ipvsadm's notation; a whole million-row table parses in
about a second (bench/doctor_parse.py). Lines that do not parse are counted and the
first few quoted in ``problems``; they never raise. Expiry times, addresses and ports
are read strictly (``tokens``); each distinct text once, so strictness costs nothing.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from dataclasses import dataclass, field

from .tokens import MAX_PROBLEMS, decimal, hexadecimal, ip_address, lines, quote

__all__ = ["ConnTable", "Row", "format_conn_list", "format_proc_conn", "parse_conn_list", "parse_proc_conn"]

Row = tuple[str, int, str, str, str, str]  # proto, expire s, state, client, virtual, destination

_EXPIRE = re.compile(r"([0-9]{1,9})(?::([0-9]{2}))?")  # ipvsadm's mm:ss (minutes beyond 99 too)
_HEX_IPV4 = re.compile(r"[0-9A-Fa-f]{8}")


@dataclass
class ConnTable:
    rows: list[Row] = field(default_factory=list)
    linenos: list[int] = field(default_factory=list)  # source line of each row
    problems: list[str] = field(default_factory=list)
    bad_lines: int = 0
    source: str = ""

    def states(self) -> Counter[str]:
        return Counter(r[2] for r in self.rows)

    def by_destination(self, state: str | None = None) -> Counter[str]:
        if state is None:
            return Counter(r[5] for r in self.rows)
        return Counter(r[5] for r in self.rows if r[2] == state)


def _expire(text: str) -> int:
    m = _EXPIRE.fullmatch(text)
    if m is None:
        raise ValueError(text)
    minutes, seconds = m.groups()
    return int(minutes) * 60 + int(seconds) if seconds is not None else int(minutes)


def _bad(table: ConnTable, source: str, lineno: int, line: str, why: str) -> None:
    table.bad_lines += 1
    if len(table.problems) < MAX_PROBLEMS:
        table.problems.append(f"{source}:{lineno}: {why}: {quote(line)}")


def parse_conn_list(text: str, *, source: str = "ipvsadm -Lnc") -> ConnTable:
    """Parse ``ipvsadm -Lnc`` (also ``-Lc``: names are kept as printed)."""
    table = ConnTable(source=source)
    rows, linenos = table.rows, table.linenos
    append_row, append_no = rows.append, linenos.append
    protos = {"TCP", "UDP", "SCTP", "IP"}
    expires: dict[str, int] = {}  # a table has a few thousand distinct mm:ss values: parse each once
    lineno = 0
    for line in lines(text):
        lineno += 1
        parts = line.split()
        if len(parts) == 6 and parts[0] in protos:
            seconds = expires.get(parts[1])
            if seconds is None:
                try:
                    seconds = expires[parts[1]] = _expire(parts[1])
                except ValueError:
                    _bad(table, source, lineno, line, "expire is not mm:ss")
                    continue
            parts[1] = seconds  # type: ignore[call-overload]
            append_row(tuple(parts))  # type: ignore[arg-type]
            append_no(lineno)
            continue
        if not parts or parts[0] in ("pro", "IPVS") or parts == ["--"]:
            continue
        _bad(table, source, lineno, line, "not a connection entry (truncated?)")
    return table


def parse_proc_conn(text: str, *, source: str = "/proc/net/ip_vs_conn") -> ConnTable:
    """Parse ``/proc/net/ip_vs_conn`` into the same rows as ``ipvsadm -Lnc``."""
    table = ConnTable(source=source)
    # Addresses and ports repeat across rows (VIPs, real servers): convert each hex text once.
    addrs: dict[str, str] = {}
    ports: dict[str, str] = {}
    seconds: dict[str, int] = {}  # and each expiry text

    def hostport(addr: str, port: str) -> str:
        a = addrs.get(addr)
        if a is None:
            a = addrs[addr] = _proc_address(addr)
        p = ports.get(port)
        if p is None:
            number = hexadecimal(port, high=0xFFFF)
            if number is None:
                raise ValueError(f"port {port[:20]!r} is not a port in hex")
            p = ports[port] = str(number)
        return f"{a}:{p}"

    rows, linenos = table.rows, table.linenos
    lineno = 0
    for line in lines(text):
        lineno += 1
        parts = line.split()
        if not parts or parts[0] == "Pro":
            continue
        if len(parts) < 9:
            _bad(table, source, lineno, line, "too few columns (truncated?)")
            continue
        expires = seconds.get(parts[8])
        if expires is None:
            expires = decimal(parts[8])
            if expires is not None:
                seconds[parts[8]] = expires
        if expires is None:
            _bad(table, source, lineno, line, "expires is not a number of seconds")
            continue
        try:
            rows.append(
                (
                    parts[0],
                    expires,
                    parts[7],
                    hostport(parts[1], parts[2]),
                    hostport(parts[3], parts[4]),
                    hostport(parts[5], parts[6]),
                )
            )
            linenos.append(lineno)
        except ValueError as exc:
            _bad(table, source, lineno, line, str(exc))
    return table


def _proc_address(text: str) -> str:
    """``C0A83A24`` -> ``192.168.58.36``; IPv6 (%pI6, with colons) -> ``[2001:db8::1]``."""
    if _HEX_IPV4.fullmatch(text):
        return str(ipaddress.IPv4Address(int(text, 16)))
    address = ip_address(text) if ":" in text else None
    if address is None or address.version != 6:
        raise ValueError(f"{text[:50]!r} is not an address as /proc/net/ip_vs_conn prints it")
    return f"[{address}]"


def format_conn_list(table: ConnTable) -> str:
    out = [
        "IPVS connection entries",
        "pro expire state       source             virtual            destination",
    ]
    for proto, expire, state, client, virtual, dest in table.rows:
        out.append(
            f"{proto} {expire // 60:02d}:{expire % 60:02d}  {state:<11} {client:<18} {virtual:<18} {dest}"
        )
    return "\n".join(out) + "\n"


def _proc_fmt(hostport: str) -> str:
    if hostport.startswith("["):
        host, _, port = hostport[1:].partition("]:")
        return f"{ipaddress.IPv6Address(host).exploded} {int(port):04X}"
    host, _, port = hostport.rpartition(":")
    return f"{int(ipaddress.IPv4Address(host)):08X} {int(port):04X}"


def format_proc_conn(table: ConnTable) -> str:
    out = ["Pro FromIP   FPrt ToIP     TPrt DestIP   DPrt State       Expires PEName PEData"]
    for proto, expire, state, client, virtual, dest in table.rows:
        out.append(
            f"{proto} {_proc_fmt(client)} {_proc_fmt(virtual)} {_proc_fmt(dest)} {state:<11} {expire:>7}"
        )
    return "\n".join(out) + "\n"
