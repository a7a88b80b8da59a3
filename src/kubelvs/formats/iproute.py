"""iproute2 output: ``ip addr`` (text or ``-j``, with or without ``-d``), ``ip route``, ``ip rule``,
``ip -6 neigh show proxy``.

Only what kubelvs doctor reasons about is kept: per interface its name, flags,
link type (``ether``, ``loopback``, ``ipip``, ``none``...), kind when ``-d`` showed
it (``dummy``, ``bridge``, ``ipip``, ``veth``...) and addresses with their scope
and the line they were printed on.

Nothing raises: a line (or JSON entry) that cannot be read is skipped and named in the
problems returned beside the result; JSON nested past the parser's limit, or of the
wrong type, is a problem too.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass, field

from .tokens import MAX_PROBLEMS, decimal, ip_address, lines, quote

__all__ = [
    "Address",
    "Interface",
    "ProxyNeighbour",
    "Route",
    "format_ip_addr",
    "format_ip_addr_json",
    "parse_ip_addr",
    "parse_ip_neigh_proxy",
    "parse_ip_route",
    "parse_ip_rule",
]


@dataclass
class Address:
    interface: ipaddress.IPv4Interface | ipaddress.IPv6Interface
    scope: str = "global"
    label: str = ""
    lineno: int = 0
    line: str = ""
    #: IPv6: preferred lifetime over (``preferred_lft 0``): never chosen as a source address
    #: while another one is preferred, still accepted as a destination.
    deprecated: bool = False

    @property
    def ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        return self.interface.ip


@dataclass
class Interface:
    name: str
    index: int = 0
    flags: tuple[str, ...] = ()
    link_type: str = ""  # "ether", "loopback", "ipip", "none", "void" (ip's link/<type>)
    kind: str = ""  # from -d: "dummy", "bridge", "ipip", "veth", "vxlan"... ("" unknown)
    mac: str = ""
    addresses: list[Address] = field(default_factory=list)
    lineno: int = 0

    @property
    def up(self) -> bool:
        return "UP" in self.flags


_HEAD = re.compile(r"^([0-9]{1,10}):\s+([^:@\s]+)(?:@(\S+?))?:\s+<([^>]*)>(.*)$")
_KINDS = frozenset(
    {
        "dummy",
        "bridge",
        "ipip",
        "veth",
        "vxlan",
        "macvlan",
        "gre",
        "tun",
        "bond",
        "ip6tnl",
        "sit",
        "wireguard",
        "vlan",
        "geneve",
    }
)
_NOT_LABELS = frozenset({"noprefixroute", "dynamic", "secondary", "permanent", "nodad", "deprecated"})


class _Problems(list[str]):
    """Problems of one file: the first MAX_PROBLEMS quoted, then one line counting the rest."""

    def __init__(self, source: str) -> None:
        super().__init__()
        self.source = source
        self.total = 0

    def add(self, text: str) -> None:
        self.total += 1
        if self.total <= MAX_PROBLEMS:
            self.append(text)

    def done(self) -> list[str]:
        if self.total > MAX_PROBLEMS:
            self.append(f"{self.source}: {self.total - MAX_PROBLEMS} more line(s) could not be read")
        return list(self)


def _load_json(text: str, source: str, what: str, problems: _Problems) -> object:
    """The document, or None with the reason in ``problems`` (a truncated file, or nesting
    deeper than the parser's recursion limit: json raises RecursionError, not ValueError)."""
    try:
        return json.loads(text)
    except ValueError as exc:
        problems.add(f"{source}: not the JSON {what} prints: {exc}")
    except RecursionError:
        problems.add(f"{source}: not the JSON {what} prints: nested too deeply")
    return None


def parse_ip_addr(text: str, *, source: str = "ip addr") -> tuple[list[Interface], list[str]]:
    """Interfaces and problems; JSON (``ip -j addr``) is recognised by its first character."""
    problems = _Problems(source)
    stripped = text.lstrip()
    if stripped.startswith("["):
        data = _load_json(stripped, source, "ip -j addr", problems)
        return (_parse_json(data, source, problems) if data is not None else []), problems.done()
    interfaces: list[Interface] = []
    current: Interface | None = None
    for lineno, raw in enumerate(lines(text), 1):
        line = raw.rstrip()
        if not line.strip():
            continue
        m = _HEAD.match(line)
        if m:
            current = Interface(
                name=m.group(2), index=int(m.group(1)), flags=tuple(m.group(4).split(",")), lineno=lineno
            )
            interfaces.append(current)
            continue
        words = line.split()
        if current is None:
            problems.add(f"{source}:{lineno}: line before any interface: {quote(line)}")
            continue
        if words[0].startswith("link/"):
            current.link_type = words[0][5:]
            current.mac = words[1] if len(words) > 1 else ""
        elif words[0] in ("inet", "inet6") and len(words) > 1:
            address = _interface(words[1])
            if address is None:
                problems.add(f"{source}:{lineno}: bad address {quote(words[1], 60)}")
                continue
            scope = words[words.index("scope") + 1] if "scope" in words[:-1] else "global"
            label = (
                words[-1]
                if words[0] == "inet" and not words[-1].isdigit() and words[-1] not in _NOT_LABELS
                else ""
            )
            current.addresses.append(
                Address(
                    address,
                    scope,
                    label if label != scope else "",
                    lineno,
                    line.strip(),
                    deprecated="deprecated" in words,
                )
            )
        elif words[0] in _KINDS:
            current.kind = words[0]  # -d detail line
    return interfaces, problems.done()


def _interface(text: str) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface | None:
    """``10.0.0.1/24`` (or ``10.0.0.1`` peer forms without a prefix) -> interface; None if not one."""
    address, _, prefix = text.partition("/")
    ip = ip_address(address)
    length = (
        decimal(prefix, high=ip.max_prefixlen)
        if ip is not None and prefix
        else (ip.max_prefixlen if ip else None)
    )
    if ip is None or length is None:
        return None
    return ipaddress.ip_interface(f"{ip}/{length}")


def _parse_json(data: object, source: str, problems: _Problems) -> list[Interface]:
    """``ip -j addr``: a list of interfaces. An entry of the wrong shape is skipped with a
    problem naming it; the others are kept."""
    if not isinstance(data, list):
        problems.add(
            f"{source}: not the JSON ip -j addr prints: a {type(data).__name__}, not a list of interfaces"
        )
        return []
    out = []
    for n, entry in enumerate(data):
        where = f"{source}: interface [{n}]"
        if not isinstance(entry, dict):
            problems.add(f"{where}: a {type(entry).__name__}, not an object")
            continue
        name, index = entry.get("ifname"), entry.get("ifindex", 0)
        if not isinstance(name, str) or not name:
            problems.add(f"{where}: no ifname")
            continue
        if not isinstance(index, int) or isinstance(index, bool):
            problems.add(f"{where} ({quote(name, 30)}): ifindex {quote(str(index), 30)} is not a number")
            continue
        flags, linkinfo = entry.get("flags", []), entry.get("linkinfo")
        kind = linkinfo.get("info_kind", "") if isinstance(linkinfo, dict) else ""
        iface = Interface(
            name=name,
            index=index,
            flags=tuple(f for f in flags if isinstance(f, str)) if isinstance(flags, list) else (),
            link_type=_text(entry.get("link_type")),
            kind=_text(kind),
            mac=_text(entry.get("address")),
        )
        addr_info = entry.get("addr_info", [])
        for info in addr_info if isinstance(addr_info, list) else []:
            if not isinstance(info, dict) or "local" not in info:
                continue
            local, prefixlen = info.get("local"), info.get("prefixlen", 32)
            net = (
                _interface(f"{local}/{prefixlen}")
                if isinstance(local, str) and isinstance(prefixlen, int)
                else None
            )
            if net is None:
                bad = f"{quote(str(local), 60)}/{quote(str(prefixlen), 20)}"
                problems.add(f"{where} ({quote(name, 30)}): bad address {bad}")
                continue
            scope = _text(info.get("scope", "global")) or "global"
            deprecated = info.get("deprecated") is True
            iface.addresses.append(
                Address(
                    net,
                    scope,
                    _text(info.get("label")),
                    0,
                    f"{iface.name}: {'inet' if net.version == 4 else 'inet6'} {net} scope {scope}"
                    + (" deprecated" if deprecated else ""),
                    deprecated=deprecated,
                )
            )
        out.append(iface)
    return out


def _text(value: object) -> str:
    """A JSON string field; anything else (absent, a number, an object) reads as empty."""
    return value if isinstance(value, str) else ""


def format_ip_addr_json(interfaces: list[Interface]) -> str:
    """Interfaces in the shape ``ip -j -d addr`` prints (what live mode builds from netlink)."""
    data = []
    for i in interfaces:
        entry: dict[str, object] = {
            "ifindex": i.index,
            "ifname": i.name,
            "flags": list(i.flags),
            "link_type": i.link_type,
            "address": i.mac,
            "addr_info": [],
        }
        if i.kind:
            entry["linkinfo"] = {"info_kind": i.kind}
        for a in i.addresses:
            info = {
                "family": "inet" if a.ip.version == 4 else "inet6",
                "local": str(a.ip),
                "prefixlen": a.interface.network.prefixlen,
                "scope": a.scope,
            }
            if a.label:
                info["label"] = a.label
            if a.deprecated:
                info["deprecated"] = True
            entry["addr_info"].append(info)  # type: ignore[attr-defined]
        data.append(entry)
    return json.dumps(data)


def format_ip_addr(interfaces: list[Interface]) -> str:
    """Interfaces as ``ip addr`` text (round-trip tests; not every field ip prints)."""
    out = []
    for i in interfaces:
        out.append(
            f"{i.index}: {i.name}: <{','.join(i.flags)}> mtu 1500 qdisc noqueue state UNKNOWN group default"
        )
        out.append(f"    link/{i.link_type} {i.mac or '00:00:00:00:00:00'} brd ff:ff:ff:ff:ff:ff")
        if i.kind:
            out.append(f"    {i.kind} ")
        for a in i.addresses:
            fam = "inet" if a.ip.version == 4 else "inet6"
            out.append(
                f"    {fam} {a.interface.with_prefixlen} scope {a.scope}"
                + (" deprecated" if a.deprecated else "")
                + (f" {a.label}" if a.label else "")
            )
            out.append(f"       valid_lft forever preferred_lft {'0sec' if a.deprecated else 'forever'}")
    return "\n".join(out) + "\n"


@dataclass
class Route:
    dst: str  # "default", "10.0.0.0/24", "local 10.0.0.1"...
    dev: str = ""
    via: str = ""
    table: str = "main"
    line: str = ""
    lineno: int = 0


def parse_ip_route(text: str, *, source: str = "ip route") -> tuple[list[Route], list[str]]:
    problems = _Problems(source)
    stripped = text.lstrip()
    if stripped.startswith("["):
        data = _load_json(stripped, source, "ip -j route", problems)
        if data is not None and not isinstance(data, list):
            problems.add(
                f"{source}: not the JSON ip -j route prints: a {type(data).__name__}, not a list of routes"
            )
        routes = []
        for r in data if isinstance(data, list) else []:
            if not isinstance(r, dict):
                continue
            route = Route(
                _text(r.get("dst")),
                _text(r.get("dev")),
                _text(r.get("gateway")),
                _text(r.get("table")) or "main",
            )
            route.line = " ".join(
                f"{k} {v}" for k, v in (("dst", route.dst), ("via", route.via), ("dev", route.dev)) if v
            )
            routes.append(route)
        return routes, problems.done()
    routes = []
    for lineno, raw in enumerate(lines(text), 1):
        words = raw.split()
        if not words or raw[0].isspace():  # nexthop continuation lines
            continue
        dst = words[0]
        if dst in _ROUTE_TYPES and len(words) > 1:
            dst = f"{words[0]} {words[1]}"
        if not _destination(dst.split()[-1]):
            problems.add(f"{source}:{lineno}: not 'DESTINATION [via GATEWAY] dev DEVICE ...': {quote(raw)}")
            continue
        r = Route(dst, line=raw.strip(), lineno=lineno)
        for key in ("dev", "via", "table"):
            if key in words[:-1]:
                setattr(r, key, words[words.index(key) + 1])
        routes.append(r)
    return routes, problems.done()


_ROUTE_TYPES = frozenset(
    {
        "local",
        "broadcast",
        "unreachable",
        "blackhole",
        "prohibit",
        "throw",
        "multicast",
        "anycast",
        "unicast",
        "nat",
    }
)


def _destination(text: str) -> bool:
    """``default``, an address or a prefix: what starts a route line after its type."""
    return text == "default" or _interface(text) is not None


def parse_ip_rule(text: str, *, source: str = "ip rule") -> tuple[list[tuple[int, str]], list[str]]:
    """``(priority, rest)`` per rule."""
    rules: list[tuple[int, str]] = []
    problems = _Problems(source)
    for lineno, raw in enumerate(lines(text), 1):
        line = raw.strip()
        if not line:
            continue
        prio, sep, rest = line.partition(":")
        priority = decimal(prio, high=2**32 - 1)
        if not sep or priority is None:
            problems.add(f"{source}:{lineno}: not 'PRIORITY: selector action': {quote(line)}")
            continue
        rules.append((priority, rest.strip()))
    return rules, problems.done()


@dataclass(frozen=True)
class ProxyNeighbour:
    """A proxy neighbour entry: this host answers neighbour solicitations for ``address``
    on ``device`` (every device when ""), when proxying is enabled there."""

    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    device: str
    lineno: int
    line: str


def parse_ip_neigh_proxy(
    text: str, *, source: str = "ip -6 neigh show proxy"
) -> tuple[list[ProxyNeighbour], list[str]]:
    """``ADDRESS [dev DEVICE] [router] proxy`` per line."""
    entries: list[ProxyNeighbour] = []
    problems = _Problems(source)
    for lineno, raw in enumerate(lines(text), 1):
        line = raw.strip()
        if not line:
            continue
        words = line.split()
        address = ip_address(words[0])
        device = words[words.index("dev") + 1] if "dev" in words[:-1] else ""
        if address is None or "proxy" not in words or ("dev" in words and not device):
            problems.add(f"{source}:{lineno}: not 'ADDRESS dev DEVICE proxy': {quote(line)}")
            continue
        entries.append(ProxyNeighbour(address, device, lineno, line))
    return entries, problems.done()
