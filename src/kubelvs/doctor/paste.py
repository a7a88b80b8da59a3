"""Paste mode: one text with several command outputs mixed together, as people paste them
into an issue thread, split into the files of a bundle.

    read_paste(text) -> Paste(texts={bundle file name: text}, sections, unplaced)

Each section is recognised by the prompt line before it (``$ ipvsadm -Ln``,
``root@node1:~# sysctl -a | grep rp_filter``, ``[root@lb ~]# cat /proc/net/ip_vs``) when
there is one, else by its shape (``IP Virtual Server version``, ``net.x.y = v``, ``Ip:``
followed by indented counters...). Blank lines, code fences and a common indentation are
ignored; a section continues while its lines fit its shape, so outputs pasted back to back
without prompts are still told apart. Lines that fit no section are kept as ``unplaced``,
with their line numbers, so that the report can say what it could not use.

A few outputs are rewritten into the form the bundle reads: ``nstat`` into
``/proc/net/netstat`` (its TcpExt, IpExt and MPTcpExt counters), single values (``sysctl -n KEY``,
``cat /proc/sys/...``, ``grep . /proc/sys/...``, ``conntrack -C``) into ``sysctl`` lines,
and ``uname -a`` into the release. The line map (``origin``) takes every line of every
produced file back to its line in the paste, for the evidence the findings quote.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field, replace

from ..formats.tokens import printable
from .analyse import analyse
from .bundle import FILES, Bundle
from .checks_site import check_directors_agree
from .findings import Finding

__all__ = ["Paste", "Section", "analyse_paste", "describe", "read_paste", "relocate"]

#: Recognised and shown, but no check reads them yet.
UNUSED = "unused"
#: Outputs that are a whole IPVS table: each pasted one may be another director's.
_TABLE_FILES = ("ipvsadm-Ln.txt", "proc-net-ip_vs.txt")

_PROMPT = re.compile(
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

_FENCE = re.compile(r"^\s*(```|~~~)")
#: The first line of an output: a second one begins a new section (two listings back to back).
_HEADER = re.compile(r"^(IP Virtual Server version|IPVS connection entries|Pro\s+FromIP\s|#kernel\s*$)")
_LISTING_START = re.compile(r"^(IP Virtual Server version|Prot\s+LocalAddress:Port)")
# A virtual service line: its scheduler (-Ln) or its counters (--stats, --rate).
_SERVICE = re.compile(r"^(TCP|UDP|SCTP|FWM)\s+\S+\s+([a-z]{2,5}\b|\d+\s+\d+)")
_LISTING = re.compile(rf"{_LISTING_START.pattern}|{_SERVICE.pattern}|^\s*->\s")
_HEX_SERVICE = re.compile(r"^(TCP|UDP|SCTP)\s+[0-9A-F]{8}:[0-9A-F]{4}\s")
_CONN_START = re.compile(r"^(IPVS connection entries|pro\s+expire\s+state)")
_CONN = re.compile(rf"{_CONN_START.pattern}|^(TCP|UDP|SCTP|IP|ICMP)\s+\d\d:\d\d\s+[A-Z_]+\s")
_PROC_CONN_START = re.compile(r"^Pro\s+FromIP\s")
_PROC_CONN = re.compile(
    rf"{_PROC_CONN_START.pattern}|^(TCP|UDP|SCTP|IP)\s+[0-9A-Fa-f:]{{8,}}\s+[0-9A-F]{{4}}\s"
)
_TIMEOUT = re.compile(r"^Timeout \(tcp tcpfin udp\):")
_SAVE = re.compile(r"^-[AaEe]\s+-[tuf]\s")
_SYSCTL = re.compile(r"^\s*[a-z][\w-]*(\.[\w@:/-]+)+\s*=|^sysctl: ")
_PROC_SYS = re.compile(r"^/proc/sys/(?P<path>[\w/.@:-]+):(?P<value>.*)$")
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
    r"^(default|local|broadcast|unreachable|blackhole|prohibit|throw|anycast|multicast|unicast)\s"
    rf"|^[0-9.]+(/\d+)?\s+{_ROUTE_WORDS}\b|^[0-9a-fA-F:]+:[0-9a-fA-F:]*(/\d+)?\s+{_ROUTE_WORDS}\b"
)
_IP_ROUTE = re.compile(rf"{_IP_ROUTE_START.pattern}|^\s+nexthop\s")
_RELEASE = re.compile(r"^\d{1,4}\.\d{1,4}\.\d{1,4}[\w.+~-]{0,100}$")
_UNAME_A = re.compile(r"^Linux\s+\S+\s+(?P<release>\d{1,4}\.\d{1,4}\S*)\s")
_YAML_START = re.compile(r"^(apiVersion:\s|kind:\s*List\b|items:\s*$)")
_YAML = re.compile(
    r"^(apiVersion|kind|metadata|items|spec|status|data|type):|^\s+\S|^-\s|^-$|^---\s*$|^\.\.\.\s*$"
)
_SS = re.compile(
    r"^(Total:\s+\d+|TCP:\s+\d+\s+\(estab|Transport\s+Total\s+IP\s+IPv6|RAW\s+\d|UDP\s+\d|INET\s+\d|FRAG\s+\d)"
)


@dataclass(frozen=True, slots=True)
class _Kind:
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
_LISTING_KIND = "listing"  # ipvsadm -Ln / --stats / --rate or /proc/net/ip_vs: decided by its header
_NSTAT_KIND = "nstat"
_VALUE_KIND = "value"  # one value of a known sysctl (sysctl -n, cat /proc/sys/..., conntrack -C)
_PROC_SYS_KIND = "proc-sys"  # grep . /proc/sys/...: path:value lines
_UNAME_KIND = "uname"
_JSON_KIND = "json"
_JSON = _Kind(_JSON_KIND, "json", None, None)

#: By shape, in the order tried: the most specific first.
_SHAPES: tuple[_Kind, ...] = (
    _Kind(_LISTING_KIND, "ipvsadm -Ln", _LISTING, _LISTING),
    _Kind("ipvsadm-Lnc.txt", "ipvsadm -Lnc", _CONN, _CONN),
    _Kind("proc-net-ip_vs_conn.txt", "/proc/net/ip_vs_conn", _PROC_CONN, _PROC_CONN),
    _Kind("ipvsadm-timeout.txt", "ipvsadm -L --timeout", _TIMEOUT, _TIMEOUT),
    _Kind("ipvsadm-Sn.txt", "ipvsadm -Sn", _SAVE, _SAVE),
    _Kind(_PROC_SYS_KIND, "grep . /proc/sys/...", _PROC_SYS, _PROC_SYS),
    _Kind("sysctl.txt", "sysctl", _SYSCTL, _SYSCTL),
    _Kind("proc-net-netstat.txt", "/proc/net/netstat", _PROC_NETSTAT, _PROC_NETSTAT),
    _Kind("proc-net-snmp.txt", "/proc/net/snmp", _PROC_SNMP, _PROC_SNMP),
    _Kind("netstat-s.txt", "netstat -s", _NETSTAT_S_START, _NETSTAT_S),
    _Kind(_NSTAT_KIND, "nstat", _NSTAT_START, _NSTAT),
    _Kind("ip-addr.txt", "ip addr", _IP_ADDR_START, _IP_ADDR),
    _Kind("ip-rule.txt", "ip rule", _IP_RULE, _IP_RULE),
    _Kind("ip-route.txt", "ip route", _IP_ROUTE_START, _IP_ROUTE),
    _Kind(_UNAME_KIND, "uname", re.compile(f"{_RELEASE.pattern}|{_UNAME_A.pattern}"), None),
    _Kind("kubectl.yaml", "kubectl -o yaml", _YAML_START, _YAML),
    _Kind(UNUSED, "ss -s", _SS, _SS),
)
_BY_NAME = {k.name: k for k in _SHAPES}


@dataclass(frozen=True, slots=True)
class Section:
    """One recognised section of the paste."""

    name: str  # the bundle file it went into, or UNUSED
    what: str  # the command it is the output of
    first: int  # its first and last line in the paste (1-based)
    last: int
    by: str  # "prompt" (a prompt line named the command) or "shape"

    def to_json(self) -> dict[str, object]:
        return {"file": self.name, "command": self.what, "lines": [self.first, self.last], "by": self.by}


@dataclass(frozen=True)
class Paste:
    texts: dict[str, str]
    sections: tuple[Section, ...]
    unplaced: tuple[tuple[int, str], ...]  # (paste line, text) of lines no section took
    #: file -> the paste line of each of its lines (1-based both), for the evidence
    origin: dict[str, tuple[int, ...]] = field(default_factory=dict)
    #: every IPVS table pasted (ipvsadm -Ln, /proc/net/ip_vs), with its lines: two or more
    #: are compared as the tables of directors of the same VIPs
    tables: tuple[tuple[Section, tuple[tuple[int, str], ...]], ...] = ()

    def bundle(self) -> Bundle:
        return Bundle(self.texts, origin="paste")

    def directors(self) -> dict[str, Bundle]:
        """One director per pasted table ("lines 3-9"), when there are two or more."""
        if len(self.tables) < 2:
            return {}
        return {
            _table_name(section): Bundle(
                {section.name: "\n".join(t for _, t in lines) + "\n", "role.txt": "director\n"},
                origin="paste",
            )
            for section, lines in self.tables
        }

    def paste_line(self, name: str, line: int) -> int | None:
        lines = self.origin.get(name, ())
        return lines[line - 1] if 0 < line <= len(lines) else None

    def to_json(self) -> dict[str, object]:
        return {
            "sections": [s.to_json() for s in self.sections],
            "unplaced": [{"line": n, "text": t} for n, t in self.unplaced],
        }


@dataclass
class _Open:
    kind: _Kind
    by: str
    lines: list[tuple[int, str]] = field(default_factory=list)
    command: str = ""  # the prompt's command as typed


def read_paste(text: str) -> Paste:
    """Split ``text`` into bundle files; never raises."""
    builder = _Builder()
    raw = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    indent = _common_indent(raw)
    numbered = [(n, line[indent:].rstrip()) for n, line in enumerate(raw, 1)]
    i = 0
    while i < len(numbered):
        n, line = numbered[i]
        i += 1
        if not line.strip() or _FENCE.match(line):
            continue
        prompt = _PROMPT.match(line)
        if prompt is not None and (kind := _command_kind(prompt.group("command"))) is not None:
            builder.close()
            builder.open(kind, "prompt", command=prompt.group("command"))
            continue
        current = builder.current
        # A JSON document right after its prompt is that command's output (kubectl -o json,
        # nft -j, ip -j addr); any other is named by its content.
        awaited = (
            current is not None
            and current.by == "prompt"
            and not current.lines
            and (current.kind.name == _JSON_KIND or current.kind.name in FILES)
        )
        if line.startswith(("{", "[")) and (awaited or not builder.fits(line)):
            consumed, document = _json_lines(numbered, i - 1)
            if consumed:
                if not awaited:
                    builder.close()
                    builder.open(replace(_JSON, hint=_json_name(document)), "shape")
                builder.take(consumed)
                builder.close()
                i += len(consumed) - 1
                continue
        if current is not None and builder.fits(line) and not (current.lines and _HEADER.match(line)):
            current.lines.append((n, line))
            continue
        shape = next((k for k in _SHAPES if k.start is not None and k.start.match(line)), None)
        if shape is not None:
            builder.close()
            builder.open(shape, "shape")
            builder.take([(n, line)])
            continue
        builder.unplaced.append((n, line))
    builder.close()
    return builder.result()


def _json_name(document: object) -> str:
    if isinstance(document, dict) and "nftables" in document:
        return "nft.json"
    if isinstance(document, dict) and "apiVersion" in document and "kind" in document:
        return "kubectl.json"
    return UNUSED  # ip -j, ...


class _Builder:
    def __init__(self) -> None:
        self.current: _Open | None = None
        self.texts: dict[str, list[str]] = {}
        self.origin: dict[str, list[int]] = {}
        self.sections: list[Section] = []
        self.unplaced: list[tuple[int, str]] = []
        self.tables: list[tuple[Section, tuple[tuple[int, str], ...]]] = []

    def open(self, kind: _Kind, by: str, *, command: str = "") -> None:
        self.current = _Open(kind, by, command=command.strip()[:80])

    def take(self, lines: list[tuple[int, str]]) -> None:
        assert self.current is not None
        self.current.lines.extend(lines)

    def fits(self, line: str) -> bool:
        """Does ``line`` continue the open section? An output known only from its prompt
        (``cat /etc/...``) takes any line until one that starts a recognisable section;
        a single value takes one line."""
        current = self.current
        if current is None:
            return False
        if current.kind.fits is not None:
            return bool(current.kind.fits.match(line))
        if not current.lines:
            return True
        if current.kind.name in (_VALUE_KIND, _UNAME_KIND) or line.startswith(("{", "[")):
            return False  # one line only; a JSON document is an output of its own
        return not any(k.start is not None and k.name != UNUSED and k.start.match(line) for k in _SHAPES)

    def close(self) -> None:
        section, self.current = self.current, None
        if section is None or not section.lines:
            return
        name, lines = _finish(section)
        what = section.command or FILES.get(name, section.kind.what)
        self.sections.append(Section(name, what, section.lines[0][0], section.lines[-1][0], section.by))
        if name not in FILES:
            return
        self.texts.setdefault(name, []).extend(text for _, text in lines)
        self.origin.setdefault(name, []).extend(n for n, _ in lines)
        if name in _TABLE_FILES:
            self.tables.append((self.sections[-1], tuple(lines)))

    def result(self) -> Paste:
        texts = {name: "\n".join(lines) + "\n" for name, lines in self.texts.items()}
        origin = {name: tuple(lines) for name, lines in self.origin.items()}
        return Paste(texts, tuple(self.sections), tuple(self.unplaced), origin, tuple(self.tables))


def _finish(section: _Open) -> tuple[str, list[tuple[int, str]]]:
    """The bundle file a closed section becomes, and its lines in that file's form."""
    kind, lines, hinted = section.kind.name, section.lines, section.kind.hint
    if kind == _LISTING_KIND:
        if hinted:
            return hinted, lines
        texts = [t for _, t in lines]
        if any(t.startswith("Prot") and "CPS" in t.split() for t in texts):
            return UNUSED, lines  # --rate: no check reads rates
        if any(t.startswith("Prot") and "Conns" in t.split() for t in texts):
            return "ipvsadm-Ln-stats.txt", lines
        if any(_HEX_SERVICE.match(t) for t in texts):
            return "proc-net-ip_vs.txt", lines
        return "ipvsadm-Ln.txt", lines
    if kind == "sysctl.txt" and hinted == "sysctl-conf.txt":
        return hinted, lines
    if kind == _NSTAT_KIND:
        return _nstat(lines)
    if kind == _PROC_SYS_KIND:
        return "sysctl.txt", [_proc_sys_line(n, t) for n, t in lines]
    if kind == _VALUE_KIND:
        n, value = lines[0]
        return "sysctl.txt", [(n, f"{hinted} = {value.strip()}")]
    if kind == _UNAME_KIND:
        n, line = lines[0]
        match = _UNAME_A.match(line)
        return "uname.txt", [(n, match.group("release") if match else line.strip())]
    if kind == _JSON_KIND:
        return hinted, lines
    return kind, lines


# ---------------------------------------------------------------------- prompts


def _command_kind(command: str) -> _Kind | None:
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
            return _BY_NAME["ipvsadm-timeout.txt"]
        if "S" in flags or "--save" in args:
            return _BY_NAME["ipvsadm-Sn.txt"]
        if "c" in flags or "--connection" in args:
            return _BY_NAME["ipvsadm-Lnc.txt"]
        if "--rate" in args:
            return _Kind(UNUSED, "ipvsadm -Ln --rate", None, _LISTING)
        if "--stats" in args:
            return _Kind(_LISTING_KIND, "ipvsadm -Ln --stats", None, _LISTING, "ipvsadm-Ln-stats.txt")
        return _Kind(_LISTING_KIND, "ipvsadm -Ln", None, _LISTING)
    if program == "sysctl":
        keys = [a for a in args if not a.startswith("-")]
        quiet = any(a.startswith("-") and not a.startswith("--") and "n" in a for a in args)
        if quiet and len(keys) == 1 and "=" not in keys[0]:
            return _Kind(_VALUE_KIND, f"sysctl -n {keys[0]}", None, None, keys[0].replace("/", "."))
        return _BY_NAME["sysctl.txt"]
    if program == "netstat" and ("-s" in args or "--statistics" in args):
        return _BY_NAME["netstat-s.txt"]
    if program == "nstat":
        return _BY_NAME[_NSTAT_KIND]
    if program == "ip":
        objects = [a for a in args if not a.startswith("-")]
        obj = objects[0] if objects else ""
        if obj and "addr".startswith(obj[:1]) and "address".startswith(obj):
            return _BY_NAME["ip-addr.txt"]
        if obj and "route".startswith(obj):
            return _BY_NAME["ip-route.txt"]
        if obj and "rule".startswith(obj) and len(obj) >= 2:
            return _BY_NAME["ip-rule.txt"]
        return _Kind(UNUSED, f"ip {joined}".strip(), None, None)
    if program == "uname":
        return _BY_NAME[_UNAME_KIND]
    if program == "conntrack" and ("-C" in args or "--count" in args):
        return _Kind(_VALUE_KIND, "conntrack -C", None, None, "net.netfilter.nf_conntrack_count")
    if program == "kubectl":
        if "json" in joined:
            return replace(_JSON, what="kubectl -o json", hint="kubectl.json")
        if "yaml" in joined:
            return _BY_NAME["kubectl.yaml"]
    if program == "nft" and ("-j" in args or "--json" in args):
        return replace(_JSON, what="nft -j list ruleset", hint="nft.json")
    return _Kind(UNUSED, command.strip()[:80], None, None)


_IP_OBJECTS = ("address", "route", "rule", "link", "neighbour", "netns", "tunnel", "maddress", "monitor")
_VERBS = {"kubectl": ("get", "describe"), "nft": ("list",)}


def _plausible(program: str, first: str) -> bool:
    """Does ``first`` look like the first argument of ``program`` typed at a shell?"""
    if first.startswith(("-", "/", "~", "$", "'", '"')) or any(c in first for c in ".=*"):
        return True
    if program == "ip":
        return any(o.startswith(first) for o in _IP_OBJECTS)
    return first in _VERBS.get(program, ()) or program in _WRAPPERS


def _reader_kind(program: str, args: list[str]) -> _Kind | None:
    """``cat``, ``grep``, ``head``... of a file whose content the bundle knows."""
    if program not in ("cat", "grep", "egrep", "head", "tail", "less", "more"):
        return None
    paths = [a for a in args if a.startswith("/")]
    if not paths:
        return _Kind(UNUSED, f"{program} {' '.join(args)}"[:80], None, None)
    path = paths[0]
    if program in ("grep", "egrep") and path.startswith("/proc/sys/"):
        return _BY_NAME[_PROC_SYS_KIND]
    if path.startswith("/proc/sys/") and "*" not in path:
        return _Kind(_VALUE_KIND, f"cat {path}", None, None, path[len("/proc/sys/") :].replace("/", "."))
    by_path: dict[str, str] = {
        "/proc/net/ip_vs": "proc-net-ip_vs.txt",
        "/proc/net/ip_vs_conn": "proc-net-ip_vs_conn.txt",
        "/proc/net/netstat": "proc-net-netstat.txt",
        "/proc/net/snmp": "proc-net-snmp.txt",
    }
    if path in by_path:
        name = by_path[path]
        kind = _BY_NAME.get(name) or _BY_NAME[_LISTING_KIND]
        return replace(kind, what=f"cat {path}", hint=name)
    if path.startswith(("/etc/sysctl.conf", "/etc/sysctl.d/", "/usr/lib/sysctl.d/", "/run/sysctl.d/")):
        return _Kind("sysctl.txt", f"cat {path}", _SYSCTL, _SYSCTL_CONF, "sysctl-conf.txt")
    return _Kind(UNUSED, f"{program} {path}"[:80], None, None)


# ---------------------------------------------------------------------- rewrites


def _proc_sys_line(n: int, text: str) -> tuple[int, str]:
    match = _PROC_SYS.match(text)
    if match is None:
        return n, text
    return n, f"{match.group('path').replace('/', '.')} = {match.group('value').strip()}"


#: nstat names are the /proc/net/netstat section and the field run together.
_EXT = ("TcpExt", "IpExt", "MPTcpExt")


def _nstat(lines: list[tuple[int, str]]) -> tuple[str, list[tuple[int, str]]]:
    """``nstat -az`` as ``/proc/net/netstat`` (the TcpExt counters the checks read)."""
    fields: dict[str, list[tuple[str, str]]] = {}
    first = lines[0][0]
    for _, text in lines:
        words = text.split()
        if len(words) < 2 or not words[1].isdigit():
            continue
        section = next((s for s in _EXT if words[0].startswith(s) and len(words[0]) > len(s)), None)
        if section is not None:
            fields.setdefault(section, []).append((words[0][len(section) :], words[1]))
    out: list[tuple[int, str]] = []
    for section, pairs in fields.items():
        out.append((first, f"{section}: " + " ".join(name for name, _ in pairs)))
        out.append((first, f"{section}: " + " ".join(value for _, value in pairs)))
    return "proc-net-netstat.txt", out


def _json_lines(numbered: list[tuple[int, str]], start: int) -> tuple[list[tuple[int, str]], object]:
    """The lines from ``start`` that hold one whole JSON document, and the document; no
    lines when they do not hold one.
    One pass over the characters (strings and escapes skipped) finds where the outermost
    bracket closes; the document is parsed once, there."""
    depth, in_string, escaped = 0, False, False
    for j in range(start, len(numbered)):
        for char in numbered[j][1]:
            if in_string:
                if escaped:
                    escaped = False
                elif char == "\\":
                    escaped = True
                elif char == '"':
                    in_string = False
            elif char == '"':
                in_string = True
            elif char in "{[":
                depth += 1
            elif char in "}]":
                depth -= 1
                if depth == 0:
                    document = "\n".join(line for _, line in numbered[start : j + 1])
                    try:
                        return numbered[start : j + 1], json.loads(document)
                    except (ValueError, RecursionError):  # RecursionError: nested too deep
                        return [], None
    return [], None


def _common_indent(lines: list[str]) -> int:
    widths = [len(line) - len(line.lstrip(" \t")) for line in lines if line.strip()]
    return min(widths, default=0)


# ---------------------------------------------------------------------- the report

_EVIDENCE = re.compile(
    r"^(?:(?P<table>lines \d+-\d+): )?(?P<file>[\w.-]+\.(?:txt|json|yaml))(?::(?P<line>\d+))?: (?P<rest>.*)$",
    re.DOTALL,
)


def _table_name(section: Section) -> str:
    return f"lines {section.first}-{section.last}"


def analyse_paste(paste: Paste, bundle: Bundle | None = None) -> list[Finding]:
    """The findings of a paste as one host (``bundle``: its bundle, if already made), plus,
    when it holds two or more IPVS tables, the comparison of those tables as the directors
    of the same VIPs; evidence pointing into the paste."""
    findings = analyse(bundle if bundle is not None else paste.bundle())
    seen = set()
    for found in check_directors_agree(paste.directors()).values():
        for f in found:
            if f.summary not in seen:
                seen.add(f.summary)
                findings.append(f)
    findings.sort(key=Finding.sort_key)
    return relocate(paste, findings)


def relocate(paste: Paste, findings: list[Finding]) -> list[Finding]:
    """The findings with their evidence pointing into the paste ("line 12 (ipvsadm -Ln): ...")
    instead of into the bundle files the paste was split into."""

    tables = {_table_name(section): lines for section, lines in paste.tables}

    def one(evidence: str) -> str:
        match = _EVIDENCE.match(evidence)
        if match is None or match.group("file") not in paste.texts:
            return evidence
        name, rest = match.group("file"), match.group("rest")
        number = int(match.group("line") or 1)
        if match.group("table") in tables:  # a line of one pasted table
            own = tables[match.group("table")]
            line = own[number - 1][0] if 0 < number <= len(own) else None
        else:
            line = paste.paste_line(name, number)
        section = next((s for s in paste.sections if line is not None and s.first <= line <= s.last), None)
        if section is None:
            return evidence
        return f"line {line} ({section.what}): {rest}"

    return [replace(f, evidence=tuple(one(e) for e in f.evidence)) for f in findings]


def describe(paste: Paste, *, unplaced_shown: int = 20) -> str:
    """What the paste was read as: each section with its lines, and the lines not placed."""
    out = [f"paste: {len(paste.sections)} section(s) recognised, {len(paste.unplaced)} line(s) not placed"]
    for s in paste.sections:
        how = "not analysed" if s.name not in FILES else f"by {s.by}"
        span = f"line {s.first}" if s.first == s.last else f"lines {s.first}-{s.last}"
        out.append(f"  {span}: {printable(s.what, limit=80)} ({how})")
    if paste.unplaced:
        out.append("  not placed (no known output looks like them):")
        out.extend(f"    line {n}: {printable(t, limit=120)}" for n, t in paste.unplaced[:unplaced_shown])
        if len(paste.unplaced) > unplaced_shown:
            out.append(f"    ... and {len(paste.unplaced) - unplaced_shown} more")
    return "\n".join(out) + "\n"
