"""What each output a paste may hold looks like (its shape), and which output a prompt's
command prints (``paste.py`` reads pastes with them).

A kind is the bundle file an output becomes (or a pseudo kind rewritten into one when its
section closes: a listing decided by its header, ``nstat``, single values, ``uname -a``,
JSON named by its content), with the pattern of its first line and of the lines that
continue it. Patterns are anchored and bounded: a paste can hold anything.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, replace

__all__ = [
    "BY_NAME",
    "CUT_SHORT",
    "EMPTY_IS_OUTPUT",
    "FENCE",
    "HEADER",
    "HEX_SERVICE",
    "JSON",
    "JSON_KIND",
    "LISTING_KIND",
    "NSTAT_KIND",
    "PROC_SYS",
    "PROC_SYS_KIND",
    "PROMPT",
    "SHAPES",
    "UNAME_A",
    "UNAME_KIND",
    "UNUSED",
    "VALUE_KIND",
    "Kind",
    "command_kind",
]

#: Recognised and shown, but no check reads them yet.
UNUSED = "unused"

PROMPT = re.compile(
    r"^(?:\([\w.-]+\)\s*)?"  # (venv)
    r"(?:\[[^\]\n]{1,80}\]\s*|[\w.-]{1,64}@[\w.-]{1,64}(?::[^\s$#]{0,200})?\s*|[\w.-]{1,64}\s*)?"
    r"[$#%]\s*(?P<command>\S.*)$"
)
_COMMANDS = frozenset(
    {
        "ipvsadm",
        "sysctl",
        "cat",
        "grep",
        "egrep",
        "head",
        "tail",
        "less",
        "more",
        "netstat",
        "nstat",
        "ip",
        "uname",
        "ss",
        "conntrack",
        "kubectl",
        "nft",
        "iptables",
        "iptables-save",
        "watch",
        "sudo",
    }
)
_WRAPPERS = frozenset({"sudo", "watch", "doas", "sh", "bash"})

FENCE = re.compile(r"^\s*(```|~~~)")
#: The first line of an output: a second one begins a new section (two listings back to back).
HEADER = re.compile(r"^(IP Virtual Server version|IPVS connection entries|Pro\s+FromIP\s|#kernel\s*$)")
_LISTING_START = re.compile(r"^(IP Virtual Server version|Prot\s+LocalAddress:Port)")
# A virtual service line: its scheduler (-Ln) or its counters (--stats, --rate).
_SERVICE = re.compile(r"^(TCP|UDP|SCTP|FWM)\s+\S+\s+([a-z]{2,5}\b|\d+(\s|$))")
#: A wrap may leave a row's first word alone: an IPv6 address does not fit beside it.
_LISTING = re.compile(rf"{_LISTING_START.pattern}|{_SERVICE.pattern}|^\s*->(\s|$)|^(TCP|UDP|SCTP|FWM)\s*$")
#: A /proc/net/ip_vs service line: ``TCP  0A600A0A:0050 rr``, IPv6 ``TCP  [fd00:0096:...:0060]:0050 rr``.
HEX_SERVICE = re.compile(r"^(TCP|UDP|SCTP)\s+(?:[0-9A-F]{8}|\[[0-9a-f:]{39}\]):[0-9A-F]{4}\s")
_CONN_START = re.compile(r"^(IPVS connection entries|pro\s+expire\s+state)")
_CONN = re.compile(rf"{_CONN_START.pattern}|^(TCP|UDP|SCTP|IP|ICMP)\s+\d{{1,9}}:\d\d\s+[A-Z_]+\s")
_PROC_CONN_START = re.compile(r"^Pro\s+FromIP\s")
_PROC_CONN = re.compile(  # a wrapped IPv6 row may start with its first address alone
    rf"{_PROC_CONN_START.pattern}|^(TCP|UDP|SCTP|IP)\s+[0-9A-Fa-f:]{{8,}}(\s+[0-9A-F]{{4}}\s|\s*$)"
)
_TIMEOUT = re.compile(r"^Timeout \(tcp tcpfin udp\):")
_SAVE = re.compile(r"^-[AaEe]\s+-[tuf]\s")
_SYSCTL = re.compile(r"^\s*[a-z][\w-]*(\.[\w@:/-]+)+\s*=|^sysctl: ")
PROC_SYS = re.compile(r"^/proc/sys/(?P<path>[\w/.@:-]+):(?P<value>.*)$")
_SYSCTL_CONF = re.compile(rf"{_SYSCTL.pattern}|^\s*[#;]")
# A heading (Ip:, TcpExt:) or a counter line of an excerpt ("    17855 packets rejects ...").
_NETSTAT_S_START = re.compile(r"^[A-Z][A-Za-z0-9]{1,15}:\s*$|^\s+\d+\s+[a-zA-Z][\w ,/()-]*$")
_NETSTAT_S = re.compile(rf"{_NETSTAT_S_START.pattern}|^\s+\S")
_PROC_NETSTAT = re.compile(r"^(TcpExt|IpExt|MPTcpExt):\s+\S")
_PROC_SNMP = re.compile(r"^(Ip|Icmp|IcmpMsg|Tcp|Udp|UdpLite):\s+\S")
_NSTAT_START = re.compile(r"^#kernel\s*$")
_NSTAT = re.compile(rf"{_NSTAT_START.pattern}|^[A-Z][A-Za-z0-9]+\s+\d+\s+[\d.]+\s*$")
_IP_ADDR_START = re.compile(r"^\d+:\s+[^\s:]+(@\S+)?:\s+<")
_IP_ADDR = re.compile(rf"{_IP_ADDR_START.pattern}|^\s+\S")
_IP_RULE = re.compile(r"^\d+:\s+(not\s+)?from\s")
_ROUTE_WORDS = r"(via|dev|proto|scope|src|table|nhid|metric|nexthop)"
_IP_ROUTE_START = re.compile(
    r"^(?!.*\sproxy\s*$)"  # ip -6 neigh show proxy: "fd00::1 dev eth1 proxy"
    r"(?:(default|local|broadcast|unreachable|blackhole|prohibit|throw|anycast|multicast|unicast)\s"
    rf"|[0-9.]+(/\d+)?\s+{_ROUTE_WORDS}\b|[0-9a-fA-F:]+:[0-9a-fA-F:]*(/\d+)?\s+{_ROUTE_WORDS}\b)"
)
_IP_ROUTE = re.compile(rf"{_IP_ROUTE_START.pattern}|^\s+nexthop\s")
_IP_NEIGH_PROXY = re.compile(r"^[0-9a-fA-F:.]{2,45}\s+(dev\s+\S+\s+)?(router\s+)?proxy\s*$")
_RELEASE = re.compile(r"^\d{1,4}\.\d{1,4}\.\d{1,4}[\w.+~-]{0,100}$")
UNAME_A = re.compile(r"^Linux\s+\S+\s+(?P<release>\d{1,4}\.\d{1,4}\S*)\s")
_YAML_START = re.compile(r"^(apiVersion:\s|kind:\s*List\b|items:\s*$)")
_YAML = re.compile(
    r"^(apiVersion|kind|metadata|items|spec|status|data|type):|^\s+\S|^-\s|^-$|^---\s*$|^\.\.\.\s*$"
)
_SS = re.compile(
    r"^(Total:\s+\d+|TCP:\s+\d+\s+\(estab|Transport\s+Total\s+IP\s+IPv6|RAW\s+\d|UDP\s+\d|INET\s+\d|FRAG\s+\d)"
)


@dataclass(frozen=True, slots=True)
class Kind:
    """A kind of section: the bundle file it becomes, how its first line and its other
    lines look (None: any line, for outputs known only from their prompt)."""

    name: str  # a bundle file name, or a pseudo kind below
    what: str  # the command that produced it, for the report
    start: re.Pattern[str] | None
    fits: re.Pattern[str] | None
    #: What the prompt tells that the shape cannot: the file (``/proc/net/ip_vs``, a
    #: sysctl.conf, ``--stats``), or the sysctl a single value is of.
    hint: str = ""


# Pseudo kinds, turned into bundle files when their section closes.
LISTING_KIND = "listing"  # ipvsadm -Ln / --stats / --rate or /proc/net/ip_vs: decided by its header
NSTAT_KIND = "nstat"
VALUE_KIND = "value"  # one value of a known sysctl (sysctl -n, cat /proc/sys/..., conntrack -C)
PROC_SYS_KIND = "proc-sys"  # grep . /proc/sys/...: path:value lines
UNAME_KIND = "uname"
JSON_KIND = "json"
JSON = Kind(JSON_KIND, "json", None, None)

#: By shape, in the order tried: the most specific first.
SHAPES: tuple[Kind, ...] = (
    Kind(LISTING_KIND, "ipvsadm -Ln", _LISTING, _LISTING),
    Kind("ipvsadm-Lnc.txt", "ipvsadm -Lnc", _CONN, _CONN),
    Kind("proc-net-ip_vs_conn.txt", "/proc/net/ip_vs_conn", _PROC_CONN, _PROC_CONN),
    Kind("ipvsadm-timeout.txt", "ipvsadm -L --timeout", _TIMEOUT, _TIMEOUT),
    Kind("ipvsadm-Sn.txt", "ipvsadm -Sn", _SAVE, _SAVE),
    Kind(PROC_SYS_KIND, "grep . /proc/sys/...", PROC_SYS, PROC_SYS),
    Kind("sysctl.txt", "sysctl", _SYSCTL, _SYSCTL),
    Kind("proc-net-netstat.txt", "/proc/net/netstat", _PROC_NETSTAT, _PROC_NETSTAT),
    Kind("proc-net-snmp.txt", "/proc/net/snmp", _PROC_SNMP, _PROC_SNMP),
    Kind("netstat-s.txt", "netstat -s", _NETSTAT_S_START, _NETSTAT_S),
    Kind(NSTAT_KIND, "nstat", _NSTAT_START, _NSTAT),
    Kind("ip-addr.txt", "ip addr", _IP_ADDR_START, _IP_ADDR),
    Kind("ip-rule.txt", "ip rule", _IP_RULE, _IP_RULE),
    Kind("ip-route.txt", "ip route", _IP_ROUTE_START, _IP_ROUTE),
    Kind("ip-neigh-proxy.txt", "ip -6 neigh show proxy", _IP_NEIGH_PROXY, _IP_NEIGH_PROXY),
    Kind(UNAME_KIND, "uname", re.compile(f"{_RELEASE.pattern}|{UNAME_A.pattern}"), None),
    Kind("kubectl.yaml", "kubectl -o yaml", _YAML_START, _YAML),
    Kind(UNUSED, "ss -s", _SS, _SS),
)
BY_NAME = {k.name: k for k in SHAPES}
#: Outputs that may be empty and still say something (no proxy entries): a prompt with
#: nothing after it is such an output, an empty file.
EMPTY_IS_OUTPUT = frozenset({"ip-neigh-proxy.txt"})

#: Lines that a hard wrap (a text area, an email) cut short, by kind: such a line takes the
#: next line when that one fits nothing else. A real-server row needs its forward, weight
#: and counters (or its counters), a service row with counters all five, a header its last
#: word, a connection its six (ten) fields, a sysctl its value.
CUT_SHORT = {
    LISTING_KIND: re.compile(
        r"^\s*->\s*$|^(TCP|UDP|SCTP|FWM)\s*$"  # an IPv6 address (/proc: 47 characters) went on alone
        r"|^\s*->\s+(?!RemoteAddress)\S+(\s+\S+){0,3}\s*$"
        r"|^\s*->\s+RemoteAddress:Port\s+(?!.*InActConn\s*$)\S.*$"
        r"|^Prot\s+LocalAddress:Port(?!.*(Flags|OutBytes|OutBPS)\s*$).*$"
        r"|^(TCP|UDP|SCTP|FWM)\s+\S+(\s+\d+){1,4}\s*$"
        # /proc/net/ip_vs: a persistent service's mask went on the next line
        r"|^(TCP|UDP|SCTP)\s+(?:[0-9A-F]{8}|\[[0-9a-f:]{39}\]):[0-9A-F]{4}\s+\S+\s+persistent\s+\d+\s*$"
    ),
    "ipvsadm-Lnc.txt": re.compile(
        r"^(TCP|UDP|SCTP|IP|ICMP)(\s+\S+){0,4}\s*$|^pro\s+expire(?!.*destination\s*$).*$"
    ),
    "proc-net-ip_vs_conn.txt": re.compile(
        r"^(TCP|UDP|SCTP|IP)(\s+\S+){0,7}\s*$|^Pro\s+FromIP(?!.*PEData\s*$).*$"
    ),
    "sysctl.txt": re.compile(r"^\s*[a-z][\w.@:/-]*\s*=\s*$"),
}


# ---------------------------------------------------------------------- prompts


def command_kind(command: str) -> Kind | None:
    """The kind of output a prompt's command prints; None when it is not a command this
    module knows (then the line is not a prompt: ``# comment`` in a sysctl.conf)."""
    first = command.split("|")[0].split(";")[0].split("&&")[0]
    try:
        words = shlex.split(first)
    except ValueError:
        words = first.split()
    while words and (words[0] in _WRAPPERS or (words[0].startswith("-") and words[0] != "-")):
        words = words[1:]  # sudo, watch -n1, ...
    if not words or words[0].rsplit("/", 1)[-1] not in _COMMANDS:
        return None
    program, args = words[0].rsplit("/", 1)[-1], words[1:]
    if args and not _plausible(program, args[0]):
        return None  # "# sysctl settings for the load balancer": a comment, not a command
    joined = " ".join(args)
    reader = _reader_kind(program, args)
    if reader is not None:
        return reader
    if program == "ipvsadm":
        flags = "".join(a for a in args if a.startswith("-") and not a.startswith("--"))
        if "--timeout" in args:
            return BY_NAME["ipvsadm-timeout.txt"]
        if "S" in flags or "--save" in args:
            return BY_NAME["ipvsadm-Sn.txt"]
        if "c" in flags or "--connection" in args:
            return BY_NAME["ipvsadm-Lnc.txt"]
        if "--rate" in args:
            return Kind(UNUSED, "ipvsadm -Ln --rate", None, _LISTING)
        if "--stats" in args:
            return Kind(LISTING_KIND, "ipvsadm -Ln --stats", None, _LISTING, "ipvsadm-Ln-stats.txt")
        return Kind(LISTING_KIND, "ipvsadm -Ln", None, _LISTING)
    if program == "sysctl":
        keys = [a for a in args if not a.startswith("-")]
        quiet = any(a.startswith("-") and not a.startswith("--") and "n" in a for a in args)
        if quiet and len(keys) == 1 and "=" not in keys[0]:
            return Kind(VALUE_KIND, f"sysctl -n {keys[0]}", None, None, keys[0].replace("/", "."))
        return BY_NAME["sysctl.txt"]
    if program == "netstat" and ("-s" in args or "--statistics" in args):
        return BY_NAME["netstat-s.txt"]
    if program == "nstat":
        return BY_NAME[NSTAT_KIND]
    if program == "ip":
        objects = [a for a in args if not a.startswith("-")]
        obj = objects[0] if objects else ""
        if obj and "addr".startswith(obj[:1]) and "address".startswith(obj):
            return BY_NAME["ip-addr.txt"]
        if obj and "route".startswith(obj):
            return BY_NAME["ip-route.txt"]
        if obj and "rule".startswith(obj) and len(obj) >= 2:
            return BY_NAME["ip-rule.txt"]
        if obj and ("neighbour".startswith(obj) or "neighbor".startswith(obj)) and "proxy" in objects:
            return BY_NAME["ip-neigh-proxy.txt"]
        return Kind(UNUSED, f"ip {joined}".strip(), None, None)
    if program == "uname":
        return BY_NAME[UNAME_KIND]
    if program == "conntrack" and ("-C" in args or "--count" in args):
        return Kind(VALUE_KIND, "conntrack -C", None, None, "net.netfilter.nf_conntrack_count")
    if program == "kubectl":
        if "json" in joined:
            return replace(JSON, what="kubectl -o json", hint="kubectl.json")
        if "yaml" in joined:
            return BY_NAME["kubectl.yaml"]
    if program == "nft" and ("-j" in args or "--json" in args):
        return replace(JSON, what="nft -j list ruleset", hint="nft.json")
    return Kind(UNUSED, command.strip()[:80], None, None)


_IP_OBJECTS = ("address", "route", "rule", "link", "neighbour", "netns", "tunnel", "maddress", "monitor")
_VERBS = {"kubectl": ("get", "describe"), "nft": ("list",)}


def _plausible(program: str, first: str) -> bool:
    """Does ``first`` look like the first argument of ``program`` typed at a shell?"""
    if first.startswith(("-", "/", "~", "$", "'", '"')) or any(c in first for c in ".=*"):
        return True
    if program == "ip":
        return any(o.startswith(first) for o in _IP_OBJECTS)
    return first in _VERBS.get(program, ()) or program in _WRAPPERS


def _reader_kind(program: str, args: list[str]) -> Kind | None:
    """``cat``, ``grep``, ``head``... of a file whose content the bundle knows."""
    if program not in ("cat", "grep", "egrep", "head", "tail", "less", "more"):
        return None
    paths = [a for a in args if a.startswith("/")]
    if not paths:
        return Kind(UNUSED, f"{program} {' '.join(args)}"[:80], None, None)
    path = paths[0]
    if program in ("grep", "egrep") and path.startswith("/proc/sys/"):
        return BY_NAME[PROC_SYS_KIND]
    if path.startswith("/proc/sys/") and "*" not in path:
        return Kind(VALUE_KIND, f"cat {path}", None, None, path[len("/proc/sys/") :].replace("/", "."))
    by_path: dict[str, str] = {
        "/proc/net/ip_vs": "proc-net-ip_vs.txt",
        "/proc/net/ip_vs_conn": "proc-net-ip_vs_conn.txt",
        "/proc/net/netstat": "proc-net-netstat.txt",
        "/proc/net/snmp": "proc-net-snmp.txt",
    }
    if path in by_path:
        name = by_path[path]
        kind = BY_NAME.get(name) or BY_NAME[LISTING_KIND]
        return replace(kind, what=f"cat {path}", hint=name)
    if path.startswith(("/etc/sysctl.conf", "/etc/sysctl.d/", "/usr/lib/sysctl.d/", "/run/sysctl.d/")):
        return Kind("sysctl.txt", f"cat {path}", _SYSCTL, _SYSCTL_CONF, "sysctl-conf.txt")
    return Kind(UNUSED, f"{program} {path}"[:80], None, None)
