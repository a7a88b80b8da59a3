"""A bundle: the captured outputs of one host, parsed on first use.

A bundle is a directory with one file per command output (names in ``FILES``),
or the same texts gathered from the live host (``live.py``). Every file is
optional. Parse problems are collected in ``problems`` (file name first), never
raised: doctor reports what it could not read and analyses the rest.
"""

from __future__ import annotations

import functools
import ipaddress
import os
from collections.abc import Mapping

from ..errors import ParseError
from ..formats.ipvs_conn import ConnTable, parse_conn_list, parse_proc_conn
from ..formats.ipvsadm_list import Listing, parse_listing, parse_proc_ip_vs, parse_timeout
from ..formats.ipvsadm_save import parse_save
from ..formats.iproute import Interface, Route, parse_ip_addr, parse_ip_route, parse_ip_rule
from ..formats.kube import KubeState, parse_kube
from ..formats.netstat import Counters, parse_netstat_s, parse_proc_netstat
from ..formats.nft_json import NftRuleset, parse_nft_json
from ..formats.sysctl_text import Sysctls, parse_sysctl
from ..model import Forward, RealServer, ServiceKey, Timeouts, VirtualService, kernel_version

__all__ = ["Bundle", "FILES", "ROLES"]

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
    "uname.txt": "uname -r",
    "kubectl.json": "kubectl get svc,endpoints,endpointslices,nodes -A -o json",
    "kubectl.yaml": "kubectl get svc,endpoints,endpointslices,nodes -A -o yaml",
    "nft.json": "nft -j list ruleset",
    "role.txt": "director, node or both",
}
ROLES = ("director", "node", "both")

_MAX_FILE = 512 * 1024 * 1024  # refuse to read more than this of one file


class Bundle:
    """Texts of one host by file name, with parsed views (cached)."""

    def __init__(self, texts: Mapping[str, str], *, origin: str = "bundle") -> None:
        self.texts = dict(texts)
        self.origin = origin
        self.problems: list[str] = []

    @classmethod
    def load(cls, directory: str) -> Bundle:
        texts: dict[str, str] = {}
        problems = []
        if not os.path.isdir(directory):
            raise FileNotFoundError(f"{directory}: no such bundle directory")
        for name in sorted(os.listdir(directory)):
            path = os.path.join(directory, name)
            if name not in FILES or not os.path.isfile(path):
                continue
            with open(path, "rb") as f:
                data = f.read(_MAX_FILE + 1)
            if len(data) > _MAX_FILE:
                problems.append(f"{name}: larger than {_MAX_FILE} bytes; read the first part only")
                data = data[:_MAX_FILE]
            texts[name] = data.decode("utf-8", errors="replace")
        bundle = cls(texts, origin=directory)
        bundle.problems.extend(problems)
        return bundle

    def has(self, name: str) -> bool:
        return bool(self.texts.get(name, "").strip())

    # ------------------------------------------------------------------ IPVS

    @functools.cached_property
    def listing(self) -> Listing | None:
        """Virtual services with ActiveConn/InActConn: ipvsadm -Ln, else /proc/net/ip_vs."""
        for name, parse in (("ipvsadm-Ln.txt", parse_listing), ("proc-net-ip_vs.txt", parse_proc_ip_vs)):
            if self.has(name):
                listing = parse(self.texts[name], source=name)
                self.problems.extend(listing.problems)
                return listing
        return None

    @property
    def listing_source(self) -> str:
        listing = self.listing
        return listing.source if listing else ""

    @functools.cached_property
    def stats_listing(self) -> Listing | None:
        if not self.has("ipvsadm-Ln-stats.txt"):
            return None
        listing = parse_listing(self.texts["ipvsadm-Ln-stats.txt"], source="ipvsadm-Ln-stats.txt")
        self.problems.extend(listing.problems)
        return listing

    @functools.cached_property
    def save(self) -> list[VirtualService] | None:
        if not self.has("ipvsadm-Sn.txt"):
            return None
        try:
            return parse_save(self.texts["ipvsadm-Sn.txt"], source="ipvsadm-Sn.txt")
        except ParseError as exc:
            self.problems.append(str(exc))
            return None

    @functools.cached_property
    def ipvs_services(self) -> list[VirtualService] | None:
        """The IPVS table: from the listing, else from ``ipvsadm -Sn``; None when neither was captured."""
        if self.listing is not None and (self.listing.services or not self.save):
            return self.listing.services
        return self.save

    @functools.cached_property
    def nft_services(self) -> list[VirtualService] | None:
        """The kubelvs nftables data plane's table (``ip kubelvs`` / ``netdev kubelvs`` in
        nft.json), read back with the backend's own parser; None when nft.json has no such
        table. The same virtual services and real servers IPVS would hold."""
        if not self.has("nft.json"):
            return None
        import json

        from ..backends.nftables import ruleset

        try:
            items = json.loads(self.texts["nft.json"])["nftables"]
        except (ValueError, KeyError, TypeError):
            return None  # parse_nft_json (self.nft) reports it
        ours = []
        for item in items if isinstance(items, list) else []:
            if not isinstance(item, dict) or len(item) != 1:
                continue
            (kind, body), = item.items()
            if not isinstance(body, dict) or body.get("family") not in ("ip", "netdev"):
                continue
            if (body.get("name") if kind == "table" else body.get("table")) == ruleset.TABLE:
                ours.append(item)
        if not ours:
            return None
        try:
            parsed = ruleset.parse_tables([{"nftables": ours}])
        except (ValueError, KeyError, TypeError, AssertionError) as exc:
            self.problems.append(f"nft.json: table {ruleset.TABLE} could not be read back: {exc}")
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
            out.append(f"nft.json: table kubelvs: {key}" + (f" -> {rs.key} {rs.forward} weight {rs.weight}" if rs else ""))
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
        for name, parse in (("ipvsadm-Lnc.txt", parse_conn_list), ("proc-net-ip_vs_conn.txt", parse_proc_conn)):
            if self.has(name):
                table = parse(self.texts[name], source=name)
                self.problems.extend(table.problems)
                if table.bad_lines > len(table.problems):
                    self.problems.append(f"{name}: {table.bad_lines} lines in all could not be read")
                return table
        return None

    @property
    def conns_source(self) -> str:
        return self.conns.source if self.conns else ""

    @functools.cached_property
    def timeouts(self) -> Timeouts | None:
        if not self.has("ipvsadm-timeout.txt"):
            return None
        value = parse_timeout(self.texts["ipvsadm-timeout.txt"])
        if value is None:
            self.problems.append("ipvsadm-timeout.txt: no 'Timeout (tcp tcpfin udp): N N N' line")
        return value

    # ------------------------------------------------------------------ kernel

    @functools.cached_property
    def sysctls(self) -> Sysctls | None:
        if not self.has("sysctl.txt"):
            return None
        parsed = parse_sysctl(self.texts["sysctl.txt"], source="sysctl.txt")
        # "sysctl: permission denied on key ..." is noise sysctl -a mixes in; not a problem.
        parsed.problems = [p for p in parsed.problems if "permission denied" not in p and "reading key" not in p]
        self.problems.extend(parsed.problems)
        return parsed

    @functools.cached_property
    def sysctl_conf(self) -> Sysctls | None:
        if not self.has("sysctl-conf.txt"):
            return None
        parsed = parse_sysctl(self.texts["sysctl-conf.txt"], source="sysctl-conf.txt")
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
        for name, parse in (("proc-net-netstat.txt", parse_proc_netstat), ("netstat-s.txt", parse_netstat_s)):
            if self.has(name):
                counters = parse(self.texts[name], source=name)
                self.problems.extend(p for p in counters.problems if "histogram" not in p)
                return counters, name
        return None

    @functools.cached_property
    def kernel(self) -> tuple[int, int] | None:
        if self.has("uname.txt"):
            release = self.texts["uname.txt"].split()[0]
            version = kernel_version(release)
            if version != (0, 0):
                return version
            self.problems.append(f"uname.txt: {release!r} is not a kernel release")
        if self.sysctls and "kernel.osrelease" in self.sysctls.values:
            version = kernel_version(self.sysctls.values["kernel.osrelease"])
            return version if version != (0, 0) else None
        return None

    # ------------------------------------------------------------------ network

    @functools.cached_property
    def interfaces(self) -> list[Interface] | None:
        if not self.has("ip-addr.txt"):
            return None
        interfaces, problems = parse_ip_addr(self.texts["ip-addr.txt"], source="ip-addr.txt")
        self.problems.extend(problems)
        return interfaces

    @functools.cached_property
    def local_addresses(self) -> set[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        return {a.ip for i in self.interfaces or [] for a in i.addresses}

    @functools.cached_property
    def routes(self) -> list[Route]:
        if not self.has("ip-route.txt"):
            return []
        routes, problems = parse_ip_route(self.texts["ip-route.txt"], source="ip-route.txt")
        self.problems.extend(problems)
        return routes

    @functools.cached_property
    def rules(self) -> list[tuple[int, str]]:
        if not self.has("ip-rule.txt"):
            return []
        rules, problems = parse_ip_rule(self.texts["ip-rule.txt"], source="ip-rule.txt")
        self.problems.extend(problems)
        return rules

    @functools.cached_property
    def kube(self) -> KubeState | None:
        for name in ("kubectl.json", "kubectl.yaml"):
            if self.has(name):
                state = parse_kube(self.texts[name], source=name)
                self.problems.extend(state.problems)
                return state
        return None

    @functools.cached_property
    def nft(self) -> NftRuleset | None:
        if not self.has("nft.json"):
            return None
        ruleset = parse_nft_json(self.texts["nft.json"], source="nft.json")
        self.problems.extend(ruleset.problems)
        return ruleset

    # ------------------------------------------------------------------ derived facts

    @functools.cached_property
    def role(self) -> str:
        """role.txt, else inferred: IPVS services -> director (both when it also runs pods or
        holds kube-ipvs0), none -> node."""
        if self.has("role.txt"):
            word = self.texts["role.txt"].split()[0].lower()
            if word in ROLES:
                return word
            self.problems.append(f"role.txt: {word!r} is not one of {', '.join(ROLES)}; inferring the role")
        names = {i.name for i in self.interfaces or []}
        has_ipvs = bool(self.services) or bool(self.conns and self.conns.rows)
        pods = "kube-ipvs0" in names or any(n.startswith(("cali", "veth", "cni", "flannel", "kube-bridge")) for n in names)
        if has_ipvs:
            return "both" if pods else "director"
        return "node"

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
