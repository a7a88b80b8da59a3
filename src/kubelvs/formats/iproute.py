"""iproute2 output: ``ip addr`` (text or ``-j``, with or without ``-d``), ``ip route``, ``ip rule``.

Only what kubelvs doctor reasons about is kept: per interface its name, flags,
link type (``ether``, ``loopback``, ``ipip``, ``none``...), kind when ``-d`` showed
it (``dummy``, ``bridge``, ``ipip``, ``veth``...) and addresses with their scope
and the line they were printed on.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass, field

__all__ = [
    "Interface",
    "Address",
    "Route",
    "parse_ip_addr",
    "format_ip_addr_json",
    "format_ip_addr",
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


_HEAD = re.compile(r"^(\d+):\s+([^:@\s]+)(?:@(\S+?))?:\s+<([^>]*)>(.*)$")


def parse_ip_addr(text: str, *, source: str = "ip addr") -> tuple[list[Interface], list[str]]:
    """Interfaces and problems; JSON (``ip -j addr``) is recognised by its first character."""
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            return _parse_json(json.loads(stripped)), []
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            return [], [f"{source}: not the JSON ip -j addr prints: {exc}"]
    interfaces: list[Interface] = []
    problems: list[str] = []
    current: Interface | None = None
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip("\r\n ")
        if not line.strip():
            continue
        m = _HEAD.match(line)
        if m:
            current = Interface(name=m.group(2), index=int(m.group(1)), flags=tuple(m.group(4).split(",")), lineno=lineno)
            interfaces.append(current)
            continue
        words = line.split()
        if current is None:
            problems.append(f"{source}:{lineno}: line before any interface: {line.strip()!r}")
            continue
        if words[0].startswith("link/"):
            current.link_type = words[0][5:]
            current.mac = words[1] if len(words) > 1 else ""
        elif words[0] in ("inet", "inet6") and len(words) > 1:
            try:
                iface = ipaddress.ip_interface(words[1])
            except ValueError:
                problems.append(f"{source}:{lineno}: bad address {words[1]!r}")
                continue
            scope = words[words.index("scope") + 1] if "scope" in words and words.index("scope") + 1 < len(words) else "global"
            label = words[-1] if words[0] == "inet" and not words[-1].isdigit() and words[-1] not in ("noprefixroute", "dynamic", "secondary", "permanent", "nodad") else ""
            current.addresses.append(Address(iface, scope, label if label != scope else "", lineno, line.strip()))
        elif words[0] in ("dummy", "bridge", "ipip", "veth", "vxlan", "macvlan", "gre", "tun", "bond", "ip6tnl", "sit", "wireguard", "vlan", "geneve"):
            current.kind = words[0]  # -d detail line
    return interfaces, problems


def _parse_json(data: list[dict[str, object]]) -> list[Interface]:
    out = []
    for entry in data:
        if not isinstance(entry, dict) or "ifname" not in entry:
            continue
        linkinfo = entry.get("linkinfo")
        kind = str(linkinfo.get("info_kind", "")) if isinstance(linkinfo, dict) else ""
        iface = Interface(
            name=str(entry["ifname"]),
            index=int(str(entry.get("ifindex", 0))),
            flags=tuple(str(f) for f in entry.get("flags", []) or []),  # type: ignore[union-attr]
            link_type=str(entry.get("link_type", "")),
            kind=kind,
            mac=str(entry.get("address", "")),
        )
        for info in entry.get("addr_info", []) or []:  # type: ignore[union-attr]
            if not isinstance(info, dict) or "local" not in info:
                continue
            net = ipaddress.ip_interface(f"{info['local']}/{info.get('prefixlen', 32)}")
            iface.addresses.append(
                Address(net, str(info.get("scope", "global")), str(info.get("label", "")), 0,
                        f"{iface.name}: {'inet' if net.version == 4 else 'inet6'} {net} scope {info.get('scope', 'global')}")
            )
        out.append(iface)
    return out


def format_ip_addr_json(interfaces: list[Interface]) -> str:
    """Interfaces in the shape ``ip -j -d addr`` prints (what live mode builds from netlink)."""
    data = []
    for i in interfaces:
        entry: dict[str, object] = {"ifindex": i.index, "ifname": i.name, "flags": list(i.flags), "link_type": i.link_type,
                                    "address": i.mac, "addr_info": []}
        if i.kind:
            entry["linkinfo"] = {"info_kind": i.kind}
        for a in i.addresses:
            info = {"family": "inet" if a.ip.version == 4 else "inet6", "local": str(a.ip),
                    "prefixlen": a.interface.network.prefixlen, "scope": a.scope}
            if a.label:
                info["label"] = a.label
            entry["addr_info"].append(info)  # type: ignore[attr-defined]
        data.append(entry)
    return json.dumps(data)


def format_ip_addr(interfaces: list[Interface]) -> str:
    """Interfaces as ``ip addr`` text (round-trip tests; not every field ip prints)."""
    out = []
    for i in interfaces:
        out.append(f"{i.index}: {i.name}: <{','.join(i.flags)}> mtu 1500 qdisc noqueue state UNKNOWN group default")
        out.append(f"    link/{i.link_type} {i.mac or '00:00:00:00:00:00'} brd ff:ff:ff:ff:ff:ff")
        if i.kind:
            out.append(f"    {i.kind} ")
        for a in i.addresses:
            fam = "inet" if a.ip.version == 4 else "inet6"
            out.append(f"    {fam} {a.interface.with_prefixlen} scope {a.scope}" + (f" {a.label}" if a.label else ""))
            out.append("       valid_lft forever preferred_lft forever")
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
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            data = json.loads(stripped)
            return [Route(str(r.get("dst", "")), str(r.get("dev", "")), str(r.get("gateway", "")),
                          str(r.get("table", "main")), json.dumps(r)) for r in data if isinstance(r, dict)], []
        except ValueError as exc:
            return [], [f"{source}: not JSON: {exc}"]
    routes = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        words = raw.split()
        if not words or raw[0].isspace():  # nexthop continuation lines
            continue
        dst = words[0]
        if dst in ("local", "broadcast", "unreachable", "blackhole", "prohibit", "throw", "multicast", "anycast") and len(words) > 1:
            dst = f"{words[0]} {words[1]}"
        r = Route(dst, line=raw.strip(), lineno=lineno)
        for key in ("dev", "via", "table"):
            if key in words and words.index(key) + 1 < len(words):
                setattr(r, key if key != "via" else "via", words[words.index(key) + 1])
        routes.append(r)
    return routes, []


def parse_ip_rule(text: str, *, source: str = "ip rule") -> tuple[list[tuple[int, str]], list[str]]:
    """``(priority, rest)`` per rule."""
    rules, problems = [], []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        prio, sep, rest = line.partition(":")
        if not sep or not prio.isdigit():
            problems.append(f"{source}:{lineno}: not 'PRIORITY: selector action': {line!r}")
            continue
        rules.append((int(prio), rest.strip()))
    return rules, problems
