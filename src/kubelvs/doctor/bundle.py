"""A bundle: the captured outputs of one host, parsed on first use.

A bundle is a directory with one file per command output (names in ``FILES``),
or the same texts gathered from the live host (``live.py``). Every file is
optional. Parse problems are collected, never raised: ``problems`` holds the lines
that could not be read (file name first) and ``bad_lines`` counts them per file;
``unreadable`` names the files of which nothing could be used, with the reason. A view
of an unreadable file is None, as for a file not captured, and the next source is
tried (``/proc/net/ip_vs`` after ``ipvsadm -Ln``...); ``inputs.py`` tells the checks
that needed it apart from the ones that did not, so none reports "healthy" from
nothing. ``parse_all`` parses every file once, so a broken file is reported even when
no check happened to need it.

One cohesive thing (over 500 lines): one lazily parsed view per captured file, each a
few lines; splitting them would scatter the fallback order.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from typing import TypeVar

from ..errors import ParseError
from ..formats.iproute import (
    Interface,
    ProxyNeighbour,
    Route,
    parse_ip_addr,
    parse_ip_neigh_proxy,
    parse_ip_route,
    parse_ip_rule,
)
from ..formats.ipvs_conn import ConnTable, parse_conn_list, parse_proc_conn
from ..formats.ipvsadm_list import Listing, parse_listing, parse_timeout
from ..formats.ipvsadm_save import parse_save
from ..formats.kube import KubeState, parse_kube
from ..formats.netstat import Counters, parse_netstat_s, parse_proc_netstat
from ..formats.nft_json import NftRuleset, parse_nft_json
from ..formats.sysctl_text import Sysctls, parse_sysctl
from ..formats.tokens import quote
from ..model import Forward, RealServer, RealServerKey, ServiceKey, Timeouts, VirtualService, kernel_version

__all__ = ["FILES", "ROLES", "Bundle"]

#: file name -> what produced it
FILES = {
    "ipvsadm-Ln.txt": "ipvsadm -Ln",
    "ipvsadm-Ln-stats.txt": "ipvsadm -Ln --stats",
    "ipvsadm-Lnc.txt": "ipvsadm -Lnc",
    "ipvsadm-timeout.txt": "ipvsadm -L --timeout",
    "ipvsadm-Sn.txt": "ipvsadm -Sn",
    "proc-net-ip_vs.txt": "/proc/net/ip_vs",
    "proc-net-ip_vs_conn.txt": "/proc/net/ip_vs_conn",
    "sysctl.txt": "sysctl -a",
    "sysctl-conf.txt": "/etc/sysctl.conf and /etc/sysctl.d/*.conf",
    "netstat-s.txt": "netstat -s",
    "proc-net-netstat.txt": "/proc/net/netstat",
    "proc-net-snmp.txt": "/proc/net/snmp",
    "ip-addr.txt": "ip -d addr",
    "ip-route.txt": "ip route",
    "ip-rule.txt": "ip rule",
    "ip-neigh-proxy.txt": "ip -6 neigh show proxy",
    "uname.txt": "uname -r",
    "kubectl.json": "kubectl get svc,endpoints,endpointslices,nodes -A -o json",
    "kubectl.yaml": "kubectl get svc,endpoints,endpointslices,nodes -A -o yaml",
    "nft.json": "nft -j list ruleset",
    "role.txt": "director, node or both",
}
ROLES = ("director", "node", "both")

T = TypeVar("T")

_MAX_FILE = 512 * 1024 * 1024  # refuse to read more than this of one file
#: Every parsed view, in the order parse_all reads them (nft before nft_services, the
#: tables before role, which infers from them).
_VIEWS = (
    "listing",
    "stats_listing",
    "save",
    "conns",
    "timeouts",
    "sysctls",
    "sysctl_conf",
    "counters",
    "snmp",
    "kernel",
    "interfaces",
    "routes",
    "rules",
    "proxy_neighbours",
    "kube",
    "nft",
    "nft_services",
    "role",
)
_RELEASE = re.compile(r"[0-9]{1,4}\.[0-9]{1,4}[\w.+~-]{0,100}")  # uname -r: 6.1.0-28-amd64, 4.9.0-8-amd64


class Bundle:
    """Texts of one host by file name, with parsed views (cached)."""

    def __init__(self, texts: Mapping[str, str], *, origin: str = "bundle") -> None:
        self.texts = dict(texts)
        self.origin = origin
        self.problems: list[str] = []  # "file:line: why: 'text'", the first few per file
        self.bad_lines: dict[str, int] = {}  # file -> lines (or fields) that could not be read
        self.unreadable: dict[str, str] = {}  # file -> why nothing of it could be used
        self._files: dict[str, tuple[str, object]] = {}  # file -> (text, its usable parse or None), for _once

    @classmethod
    def load(cls, directory: str) -> Bundle:
        texts: dict[str, str] = {}
        cut: list[str] = []
        if not os.path.isdir(directory):
            raise FileNotFoundError(f"{directory}: no such bundle directory")
        for name in sorted(os.listdir(directory)):
            path = os.path.join(directory, name)
            if name not in FILES or not os.path.isfile(path):
                continue
            with open(path, "rb") as f:
                data = f.read(_MAX_FILE + 1)
            if len(data) > _MAX_FILE:
                cut.append(name)
                data = data[:_MAX_FILE]
            texts[name] = data.decode("utf-8", errors="replace")
        bundle = cls(texts, origin=directory)
        for name in cut:
            bundle._bad(name, 1, [f"{name}: larger than {_MAX_FILE} bytes; read the first part only"])
        return bundle

    def has(self, name: str) -> bool:
        return bool(self.texts.get(name, "").strip())

    def parse_all(self) -> None:
        """Parse every file of the bundle (each once: the views are cached), so the problems
        of each are known before the checks run, whichever views they read."""
        for view in _VIEWS:
            getattr(self, view)
        # The second choices the views did not need (/proc/net/ip_vs beside ipvsadm -Ln...):
        # read for their problems too. Not /proc/net/ip_vs_conn beside ipvsadm -Lnc: the
        # same table again, at millions of lines.
        for name in ("ipvsadm-Ln.txt", "proc-net-ip_vs.txt"):
            self._listing_file(name)
        for name in ("proc-net-netstat.txt", "netstat-s.txt"):
            self._counters_file(name)
        for name in ("kubectl.json", "kubectl.yaml"):
            self._kube_file(name)

    def _bad(self, name: str, count: int, problems: list[str]) -> None:
        """Record that ``count`` lines of ``name`` could not be read (``problems``: the first few)."""
        if count:
            self.bad_lines[name] = self.bad_lines.get(name, 0) + count
            self.problems.extend(problems)

    def _unusable(self, name: str, reason: str) -> None:
        self.unreadable[name] = reason

    def _best(self, names: tuple[str, ...], read: Callable[[str], T | None]) -> tuple[T, str] | None:
        """The first of ``names`` read whole, else the first read in part (a complete second
        choice beats a truncated first one), with its name; None when none could be read.
        Stops at the first whole one: a second choice is only read when needed."""
        partial: tuple[T, str] | None = None
        for name in names:
            result = read(name)
            if result is None:
                continue
            if name not in self.bad_lines:
                return result, name
            partial = partial or (result, name)
        return partial

    def _once(self, name: str, read: Callable[[str], T | None]) -> T | None:
        """``read(text)`` of file ``name``, once (its problems are recorded once); None when
        the file is absent or unreadable."""
        text = self.texts.get(name, "")
        if name not in self._files or self._files[name][0] is not text:  # read again if the text was replaced
            self._files[name] = (text, read(text) if self.has(name) else None)
        return self._files[name][1]  # type: ignore[return-value]

    def _listing_file(self, name: str) -> Listing | None:
        def read(text: str) -> Listing | None:
            listing = parse_listing(text, source=name, hexa=name.startswith("proc-"))
            self._bad(name, listing.bad_lines, listing.problems)
            if listing.services or not listing.bad_lines:
                return listing
            self._unusable(name, _none_read(listing.problems))  # the table is unknown, not empty
            return None

        return self._once(name, read)

    def _counters_file(self, name: str) -> Counters | None:
        def read(text: str) -> Counters | None:
            counters = (parse_netstat_s if name == "netstat-s.txt" else parse_proc_netstat)(text, source=name)
            self._bad(name, counters.bad_lines, counters.problems)
            if counters.sections or not counters.bad_lines:
                return counters
            self._unusable(name, _none_read(counters.problems))
            return None

        return self._once(name, read)

    def _kube_file(self, name: str) -> KubeState | None:
        def read(text: str) -> KubeState | None:
            state = parse_kube(text, source=name)
            self._bad(name, max(state.bad_fields, len(state.problems)), state.problems)
            if state.unreadable:
                self._unusable(name, state.problems[0].split(": ", 1)[-1])
            elif not state.ports and not state.node_ips and state.bad_fields:
                self._unusable(name, f"no object in it could be used (first: {state.problems[0]})")
            else:
                return state
            return None

        return self._once(name, read)

    # ------------------------------------------------------------------ IPVS

    @functools.cached_property
    def listing(self) -> Listing | None:
        """Virtual services with ActiveConn/InActConn: ipvsadm -Ln, else /proc/net/ip_vs."""
        found = self._best(("ipvsadm-Ln.txt", "proc-net-ip_vs.txt"), self._listing_file)
        return found[0] if found else None

    @property
    def listing_source(self) -> str:
        listing = self.listing
        return listing.source if listing else ""

    def kernel_order(self, key: ServiceKey) -> list[RealServerKey]:
        """The real servers of ``key`` in the kernel's own list order, which IPVS's Maglev
        scheduler walks to fill its table: /proc/net/ip_vs prints it (newest first),
        ipvsadm sorts. Empty when /proc/net/ip_vs was not captured."""
        listing = self._listing_file("proc-net-ip_vs.txt")
        if listing is None:
            return []
        rows = [(at[0], k[1]) for k, at in listing.lines.items() if isinstance(k, tuple) and k[0] == key]
        return [rs for _, rs in sorted(rows)]

    @functools.cached_property
    def stats_listing(self) -> Listing | None:
        return self._listing_file("ipvsadm-Ln-stats.txt")

    @functools.cached_property
    def save(self) -> list[VirtualService] | None:
        if not self.has("ipvsadm-Sn.txt"):
            return None
        try:
            return parse_save(self.texts["ipvsadm-Sn.txt"], source="ipvsadm-Sn.txt")
        except ParseError as exc:
            # ipvsadm -R refuses the whole file on one bad line, and so does parse_save.
            self._bad("ipvsadm-Sn.txt", 1, [str(exc)])
            self._unusable("ipvsadm-Sn.txt", str(exc))
            return None

    @functools.cached_property
    def ipvs_services(self) -> list[VirtualService] | None:
        """The IPVS table: from the listing, else from ``ipvsadm -Sn`` (also when the listing
        was read only in part: the save file holds the whole table); None when neither was
        captured."""
        listing = self.listing
        if (
            listing is not None
            and (listing.services or not self.save)
            and not (self.save and listing.source in self.bad_lines)
        ):
            return listing.services
        return self.save

    @property
    def ipvs_source(self) -> str:
        """The file ``ipvs_services`` came from ("" when none)."""
        if self.ipvs_services is None:
            return ""
        from_listing = self.listing is not None and self.ipvs_services is self.listing.services
        return self.listing.source if from_listing and self.listing else "ipvsadm-Sn.txt"

    @functools.cached_property
    def nft_services(self) -> list[VirtualService] | None:
        """The kubelvs nftables data plane's table (``ip``/``ip6``/``netdev kubelvs`` in
        nft.json), read back with the backend's own parser; None when nft.json has no such
        table. The same virtual services and real servers IPVS would hold."""
        nft = self.nft
        if nft is None:
            return None
        from ..backends.nftables import ruleset

        ours = []
        for item in nft.entries:
            ((kind, body),) = item.items()
            if not isinstance(body, dict) or body.get("family") not in ruleset.FAMILIES:
                continue
            if (body.get("name") if kind == "table" else body.get("table")) == ruleset.TABLE:
                ours.append(item)
        if not ours:
            return None
        try:
            parsed = ruleset.parse_tables([{"nftables": ours}])
        except (
            ValueError,
            KeyError,
            TypeError,
            AttributeError,
            IndexError,
            AssertionError,
            OverflowError,
            RecursionError,
        ) as exc:
            # parse_tables reads what nft itself prints for the backend; a captured file can
            # hold anything. Whatever it trips on, the table is unreadable: report it.
            why = f"{type(exc).__name__}: {quote(str(exc), 200)}"
            reason = f"table {ruleset.TABLE} could not be read back: {why}"
            self._bad("nft.json", 1, [f"nft.json: {reason}"])
            self._unusable("nft.json", reason)
            return None
        return list(parsed.services.values())

    @functools.cached_property
    def services(self) -> list[VirtualService] | None:
        """The load balancer's table: IPVS when captured, else the kubelvs nftables data
        plane's (``services_source`` says which); None when neither was captured."""
        if self.ipvs_services is not None:
            return self.ipvs_services
        return self.nft_services

    @property
    def services_source(self) -> str:
        """``ipvs``, ``nftables`` or "" (no table captured)."""
        if self.ipvs_services is not None:
            return "ipvs"
        return "nftables" if self.nft_services is not None else ""

    @property
    def plane(self) -> str:
        """How reports name the data plane whose table ``services`` is."""
        return "the kubelvs nftables table" if self.services_source == "nftables" else "IPVS"

    def rs_evidence(self, key: ServiceKey, rs: RealServer | None = None) -> list[str]:
        """The lines that show a service (and one of its real servers)."""
        out = []
        if self.services_source == "nftables":
            out.append(
                f"nft.json: table kubelvs: {key}"
                + (f" -> {rs.key} {rs.forward} weight {rs.weight}" if rs else "")
            )
            return out
        listing = self.listing if self.services is (self.listing.services if self.listing else None) else None
        source = self.listing_source if listing else "ipvsadm-Sn.txt"
        if listing is not None:
            if key in listing.lines:
                out.append("{}:{}: {}".format(source, *listing.lines[key]))
            if rs is not None and (key, rs.key) in listing.lines:
                out.append("{}:{}: {}".format(source, *listing.lines[(key, rs.key)]))
        else:
            out.append(f"ipvsadm-Sn.txt: {key}" + (f" -> {rs}" if rs else ""))
        return out

    @functools.cached_property
    def conns(self) -> ConnTable | None:
        """The connection table: ipvsadm -Lnc, else /proc/net/ip_vs_conn (read only then)."""
        found = self._best(("ipvsadm-Lnc.txt", "proc-net-ip_vs_conn.txt"), self._conns_file)
        return found[0] if found else None

    def _conns_file(self, name: str) -> ConnTable | None:
        def read(text: str) -> ConnTable | None:
            table = (parse_conn_list if name == "ipvsadm-Lnc.txt" else parse_proc_conn)(text, source=name)
            self._bad(name, table.bad_lines, table.problems)
            if table.rows or not table.bad_lines:
                return table
            self._unusable(name, _none_read(table.problems))
            return None

        return self._once(name, read)

    @property
    def conns_source(self) -> str:
        return self.conns.source if self.conns else ""

    @functools.cached_property
    def timeouts(self) -> Timeouts | None:
        if not self.has("ipvsadm-timeout.txt"):
            return None
        value = parse_timeout(self.texts["ipvsadm-timeout.txt"])
        if value is None:
            reason = "no 'Timeout (tcp tcpfin udp): N N N' line"
            self._bad("ipvsadm-timeout.txt", 1, [f"ipvsadm-timeout.txt: {reason}"])
            self._unusable("ipvsadm-timeout.txt", reason)
        return value

    # ------------------------------------------------------------------ kernel

    @functools.cached_property
    def sysctls(self) -> Sysctls | None:
        if not self.has("sysctl.txt"):
            return None
        parsed = parse_sysctl(self.texts["sysctl.txt"], source="sysctl.txt")
        if not parsed.values:  # sysctl -a prints hundreds: none at all is no capture of them
            self._bad("sysctl.txt", max(parsed.bad_lines, 1), parsed.problems)
            reason = _none_read(parsed.problems) if parsed.problems else "no 'name = value' line"
            self._unusable("sysctl.txt", reason)
            return None
        # "sysctl: permission denied on key ..." is noise sysctl -a mixes in; not a problem.
        parsed.problems = [
            p for p in parsed.problems if "permission denied" not in p and "reading key" not in p
        ]
        self._bad("sysctl.txt", parsed.bad_lines - parsed.noise, parsed.problems)
        return parsed

    @functools.cached_property
    def sysctl_conf(self) -> Sysctls | None:
        if not self.has("sysctl-conf.txt"):
            return None
        parsed = parse_sysctl(self.texts["sysctl-conf.txt"], source="sysctl-conf.txt")
        self._bad("sysctl-conf.txt", parsed.bad_lines, parsed.problems)
        if not parsed.values and parsed.bad_lines:
            self._unusable("sysctl-conf.txt", _none_read(parsed.problems))
            return None
        return parsed

    def sysctl(self, name: str) -> int | None:
        return self.sysctls.int_value(name) if self.sysctls else None

    def conf(self, iface: str, key: str, *, combine: str = "max") -> int | None:
        """Effective per-interface value: max(all, iface) (rp_filter, arp_ignore, arp_announce)
        or all OR iface (accept_local). None when neither is known."""
        values = [self.sysctl(f"net.ipv4.conf.{name.replace('.', '/')}.{key}") for name in ("all", iface)]
        known = [v for v in values if v is not None]
        if not known:
            return None
        return max(known) if combine == "max" else int(any(known))

    def sysctl_evidence(self, *names: str) -> list[str]:
        if not self.sysctls:
            return []
        return [self.sysctls.evidence(n) for n in names if n in self.sysctls.values]

    @functools.cached_property
    def counters(self) -> tuple[Counters, str] | None:
        """TCP counters and the file they came from (/proc/net/netstat preferred: exact names)."""
        return self._best(("proc-net-netstat.txt", "netstat-s.txt"), self._counters_file)

    @functools.cached_property
    def snmp(self) -> Counters | None:
        """``/proc/net/snmp``: no check reads it yet; parsed so that a broken copy is reported."""
        return self._counters_file("proc-net-snmp.txt")

    @functools.cached_property
    def kernel(self) -> tuple[int, int] | None:
        if self.has("uname.txt"):
            release = self.texts["uname.txt"].split()[0]
            version = kernel_version(release) if _RELEASE.fullmatch(release) else (0, 0)
            if version != (0, 0):
                return version
            reason = f"{quote(release, 60)} is not a kernel release (uname -r prints e.g. 6.1.0-28-amd64)"
            self._bad("uname.txt", 1, [f"uname.txt:1: {reason}"])
            self._unusable("uname.txt", reason)
        if self.sysctls and "kernel.osrelease" in self.sysctls.values:
            release = self.sysctls.values["kernel.osrelease"]
            version = kernel_version(release) if _RELEASE.fullmatch(release) else (0, 0)
            return version if version != (0, 0) else None
        return None

    # ------------------------------------------------------------------ network

    @functools.cached_property
    def interfaces(self) -> list[Interface] | None:
        if not self.has("ip-addr.txt"):
            return None
        interfaces, problems = parse_ip_addr(self.texts["ip-addr.txt"], source="ip-addr.txt")
        self._bad("ip-addr.txt", len(problems), problems)
        if interfaces or not problems:
            return interfaces
        self._unusable("ip-addr.txt", _none_read(problems))
        return None

    @functools.cached_property
    def local_addresses(self) -> set[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        return {a.ip for i in self.interfaces or [] for a in i.addresses}

    @functools.cached_property
    def routes(self) -> list[Route]:
        if not self.has("ip-route.txt"):
            return []
        routes, problems = parse_ip_route(self.texts["ip-route.txt"], source="ip-route.txt")
        self._bad("ip-route.txt", len(problems), problems)
        if not routes and problems:
            self._unusable("ip-route.txt", _none_read(problems))
        return routes

    @functools.cached_property
    def rules(self) -> list[tuple[int, str]]:
        if not self.has("ip-rule.txt"):
            return []
        rules, problems = parse_ip_rule(self.texts["ip-rule.txt"], source="ip-rule.txt")
        self._bad("ip-rule.txt", len(problems), problems)
        if not rules and problems:
            self._unusable("ip-rule.txt", _none_read(problems))
        return rules

    @functools.cached_property
    def proxy_neighbours(self) -> list[ProxyNeighbour] | None:
        """The IPv6 proxy neighbour entries; None when not captured (an empty file is
        a capture: no entries)."""
        if "ip-neigh-proxy.txt" not in self.texts:
            return None
        entries, problems = parse_ip_neigh_proxy(
            self.texts["ip-neigh-proxy.txt"], source="ip-neigh-proxy.txt"
        )
        self._bad("ip-neigh-proxy.txt", len(problems), problems)
        if not entries and problems:
            self._unusable("ip-neigh-proxy.txt", _none_read(problems))
            return None
        return entries

    @functools.cached_property
    def kube(self) -> KubeState | None:
        found = self._best(("kubectl.json", "kubectl.yaml"), self._kube_file)
        return found[0] if found else None

    @functools.cached_property
    def nft(self) -> NftRuleset | None:
        if not self.has("nft.json"):
            return None
        ruleset = parse_nft_json(self.texts["nft.json"], source="nft.json")
        self._bad("nft.json", max(ruleset.bad_entries, len(ruleset.problems)), ruleset.problems)
        if ruleset.unreadable:
            self._unusable("nft.json", ruleset.problems[0].split(": ", 1)[-1])
            return None
        return ruleset

    # ------------------------------------------------------------------ derived facts

    @property
    def role(self) -> str:
        return self.role_reason[0]

    @functools.cached_property
    def role_reason(self) -> tuple[str, str]:
        """The role and why: role.txt, else inferred: IPVS services -> director (both when it
        also runs pods or holds kube-ipvs0), none -> node."""
        if self.has("role.txt"):
            word = self.texts["role.txt"].split()[0].lower()
            if word in ROLES:
                return word, "as role.txt says"
            # Not unreadable for the checks: the role is inferred, as when role.txt is absent.
            why = f"{quote(word, 40)} is not one of {', '.join(ROLES)}; inferring the role"
            self._bad("role.txt", 1, [f"role.txt:1: {why}"])
        names = {i.name for i in self.interfaces or []}
        pods = sorted(
            n
            for n in names
            if n == "kube-ipvs0" or n.startswith(("cali", "veth", "cni", "flannel", "kube-bridge"))
        )
        if self.services:
            table = f"{self.plane} table with {len(self.services)} virtual service(s)"
        elif self.conns and self.conns.rows:
            table = f"{len(self.conns.rows)} IPVS connection entries"
        else:
            return "node", "inferred: no IPVS or kubelvs table in the input"
        if pods:
            return "both", f"inferred: {table}, and pod or kube-proxy interfaces ({', '.join(pods[:3])})"
        return "director", f"inferred: {table}"

    def nat_evidence(self) -> list[str]:
        """Why we think this host does NAT for LVS traffic (empty: no sign of it)."""
        out = []
        for svc in self.services or []:
            for rs in svc.realservers:
                if rs.forward is Forward.NAT:
                    out.extend(self.rs_evidence(svc.key, rs)[-1:])
                    break
            if out:
                break
        if self.nft and self.nft.nat_rules:
            out.append(f"nft.json: {self.nft.nat_rules[0]}")
        if not out and self.services is None and self.conns and self.conns.rows:
            out.append(f"{self.conns_source}: IPVS connections (Kubernetes IPVS proxies forward with Masq)")
        if any(i.name == "kube-ipvs0" for i in self.interfaces or []):
            out.append("ip-addr.txt: kube-ipvs0 (kube-proxy in IPVS mode masquerades)")
        return out


def _none_read(problems: list[str]) -> str:
    """Why a file was of no use: none of its lines could be read; the first one says why."""
    first = problems[0] if problems else "no line could be read"
    return f"none of its lines could be read (first: {first})"
