"""What a lab is: its spec (what to build), its record (what was built, saved as JSON so
that another process can use it), and the configuration files it writes (the director's
YAML, the kube-proxy rules of every worker). Pure apart from reading the record.
The layout itself is drawn in ``lab.topology``."""

from __future__ import annotations

import ipaddress
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from ..errors import LabError
from .netlab import NETNS_PREFIX

__all__ = [
    "DEFAULT_PREFIX",
    "KUBECTL_FILE",
    "LAB_TIMEOUTS",
    "PROXY_TABLE",
    "READY_TIMEOUT",
    "STATE_ROOT",
    "LabInfo",
    "LabSpec",
    "NodeInfo",
    "PodInfo",
    "director_config",
    "load_info",
    "proxy_ruleset",
    "router_bird_config",
    "state_dir",
    "vrrp_priority",
]

DEFAULT_PREFIX = "kubelvs-lab"
STATE_ROOT = Path("/run/kubelvs/lab")
PROXY_TABLE = "kubelvs_lab_proxy"
#: ``--metrics``: where the lab's directors and agents serve /metrics (all addresses of
#: their namespaces: the client's namespace can scrape them over the lab's network).
METRICS_PORT = 9565
AGENT_METRICS_PORT = 9566
KUBECTL_FILE = "kubectl.json"  # in the state directory: the lab's Service for kubelvs doctor
SEGMENT = ipaddress.ip_network("10.240.0.0/24")
#: ``--ip-family ipv6|dual``: the segment's IPv6 network and node N's pods' network.
SEGMENT6 = ipaddress.IPv6Network("fd00:240::/64")


def pod_network6(node: int) -> ipaddress.IPv6Network:
    return ipaddress.IPv6Network(f"fd00:230:{node}::/64")


def host6(network: ipaddress.IPv6Network, number: int) -> ipaddress.IPv6Address:
    """A lab host's IPv6 address, written with the digits of its IPv4 host number
    (10.240.0.101 and fd00:240::101 are the same node)."""
    return network.network_address + int(str(number), 16)


IpFamily = Literal["ipv4", "ipv6", "dual"]
CLIENT_NET = ipaddress.ip_network("192.168.58.0/24")
MASQ_MARK = 0x4000  # KUBE-MARK-MASQ
#: Seconds to wait for a lab process to be ready. Generous: in the VM tier (emulated CPU,
#: shared with other VMs) a Python start-up alone has taken over a minute. A process
#: that exits is noticed at once, so a real failure does not wait this long.
READY_TIMEOUT = 900.0

Topology = Literal["dr", "nat", "tun"]
#: The director's connection timeouts (tcp, tcpfin, udp): the kernel's 900 s TCP default is
#: below Linux's default tcp_keepalive_time of 7200 s, which drops idle connections.
LAB_TIMEOUTS = (7260, 30, 300)
#: The lab's VRRP adverts (seconds): a master is declared dead after about 3 of them.
VRRP_ADVERT = 0.1


#: The lab's BGP: the router's AS, the directors' AS, BFD every 100 ms (3 missed: down).
ROUTER_AS, DIRECTORS_AS, BFD_INTERVAL = 64500, 64512, 0.1


def router_bird_config(director_ips: dict[str, str]) -> str:
    """bird on the lab's router: a session with every director, ECMP over their routes
    into the kernel (``merge paths``), BFD. What a user's top-of-rack router does."""
    ms = round(BFD_INTERVAL * 1000)
    lines = [
        "# Written by kubelvs lab: the router's BGP.",
        "log stderr { info, remote, warning, error, auth, fatal, bug };",
        f"router id {SEGMENT.network_address + 254};",
        "protocol device {}",
        "protocol kernel { ipv4 { import none; export all; }; merge paths on; }",
        f'protocol bfd {{ interface "*" {{ min rx interval {ms} ms; min tx interval {ms} ms;',
        "  multiplier 3; }; }",
        "template bgp directors {",
        f"  local as {ROUTER_AS}; hold time 3; keepalive time 1; connect retry time 1; bfd on;",
        "  ipv4 { import all; export none; };",
        "}",
    ]
    lines += [
        f"protocol bgp {name} from directors {{ neighbor {ip} as {DIRECTORS_AS}; }}"
        for name, ip in director_ips.items()
    ]
    return "\n".join(lines) + "\n"


def vrrp_priority(director: str) -> int:
    """dir1 is preferred, then dir2, ...: the lab's ``--vrrp-priority`` for each director."""
    return 200 - 10 * int(director.removeprefix("dir"))


@dataclass(frozen=True, slots=True)
class LabSpec:
    """What to build. Defaults: the whoami Service with external IP 10.240.0.201."""

    prefix: str = DEFAULT_PREFIX
    topology: Topology = "dr"
    nodes: int = 2
    pods: int = 2  # per node
    directors: int = 1
    router: bool = False  # client on 192.168.58.0/24 behind a router namespace (always on for nat)
    vip: str = "10.240.0.201"
    port: int = 80  # the Service port (= the external IP's port)
    target_port: int = 8080  # the pods' port
    scheduler: str = "rr"
    backend: str = "auto"
    director: bool = True  # start ``kubelvs director``
    agents: bool = True  # start ``kubelvs node`` on every worker (dr, tun)
    health: str = ""  # the director config's ``health_defaults:`` (a YAML flow mapping); "": no checks
    vrrp: bool = False  # the directors move the VIP with VRRP (keepalived) instead of holding it all
    bgp: bool = False  # the directors announce the VIP to the router by BGP (bird), ECMP over them
    flags: tuple[str, ...] = ()  # the Service's scheduler flags, e.g. ("mh-port",)
    extra_config: str = ""  # more top-level YAML for the director's config (scenarios' variants)
    metrics: bool = False  # directors and agents serve /metrics on their lab addresses (else none)
    # The Service's families: ipv4 (the VIP), ipv6 (vip6) or dual (both). Every host has
    # addresses of both families when IPv6 is on; only the Service's VIPs change.
    ip_family: IpFamily = "ipv4"
    vip6: str = "fd00:240::201"

    def check(self) -> None:
        """Raise LabError naming the field when the spec cannot be built."""
        if not self.prefix.startswith(NETNS_PREFIX) or "/" in self.prefix or len(self.prefix) > 40:
            raise LabError(
                f"prefix: {self.prefix!r} must start with {NETNS_PREFIX!r} and be at most 40 characters"
            )
        if self.topology not in ("dr", "nat", "tun"):
            raise LabError(f"topology: {self.topology!r} is not dr, nat or tun")
        if not 1 <= self.nodes <= 50:
            raise LabError(f"nodes: {self.nodes} is not within 1..50")
        if not 1 <= self.pods <= 50:
            raise LabError(f"pods: {self.pods} is not within 1..50")
        if not 1 <= self.directors <= 8:
            raise LabError(f"directors: {self.directors} is not within 1..8")
        if self.directors > 1 and not (self.with_router or self.vrrp):
            raise LabError(
                "directors: more than one director needs the router (it spreads the VIP over them by "
                "ECMP) or vrrp (one master holds it)"
            )
        if self.bgp and not self.with_router:
            raise LabError("bgp: the directors announce the VIP to the router; add --router")
        if self.bgp and self.vrrp:
            raise LabError("bgp: every director holds the VIP with BGP; vrrp moves it to one: choose one")
        if self.vrrp and self.topology == "nat":
            raise LabError(
                "vrrp: nat needs the nodes' route back through a moving gateway address; use dr or tun"
            )
        if self.directors > 1 and self.topology == "nat":
            raise LabError(
                "directors: nat needs the replies back through the one director that saw the request; use 1"
            )
        vip = ipaddress.ip_address(self.vip)
        if vip not in SEGMENT or vip == SEGMENT.network_address or vip == SEGMENT.broadcast_address:
            raise LabError(f"vip: {self.vip} must be an address inside the segment {SEGMENT}")
        if int(vip) - int(SEGMENT.network_address) in self._host_numbers():
            raise LabError(f"vip: {self.vip} is a lab host's address")
        for name in ("port", "target_port"):
            value = getattr(self, name)
            if not 1 <= value <= 65535:
                raise LabError(f"{name}: {value} is not a TCP port")
        self._check_ipv6()

    def _check_ipv6(self) -> None:
        if self.ip_family not in ("ipv4", "ipv6", "dual"):
            raise LabError(f"ip_family: {self.ip_family!r} is not ipv4, ipv6 or dual")
        if self.ip_family == "ipv4":
            return
        # The IPv6 lab is the DR segment: the router, VRRP and BGP plumbing of the lab is IPv4
        # (the product's VRRP and BGP move and announce IPv6 VIPs: docs/ha.md).
        for name, used in (
            ("topology", self.topology != "dr"),
            ("router", self.with_router),
            ("vrrp", self.vrrp),
            ("bgp", self.bgp),
            ("directors", self.directors > 1),
        ):
            if used:
                raise LabError(f"{name}: the lab's IPv6 ({self.ip_family}) is one DR director on the segment")
        try:
            vip6 = ipaddress.IPv6Address(self.vip6)
        except ValueError:
            raise LabError(f"vip6: {self.vip6!r} is not an IPv6 address") from None
        taken = {host6(SEGMENT6, n) for n in self._host_numbers()} | {SEGMENT6.network_address}
        if vip6 not in SEGMENT6 or vip6 in taken:
            raise LabError(f"vip6: {self.vip6} must be a free address inside the segment {SEGMENT6}")

    def _host_numbers(self) -> set[int]:
        return (
            {2 + d for d in range(self.directors)} | {100 + n for n in range(1, self.nodes + 1)} | {10, 254}
        )

    @property
    def vips(self) -> tuple[str, ...]:
        """The Service's VIPs: IPv4 first."""
        return {"ipv4": (self.vip,), "ipv6": (self.vip6,), "dual": (self.vip, self.vip6)}[self.ip_family]

    @property
    def ipv6(self) -> bool:
        """The lab's hosts have IPv6 addresses too."""
        return self.ip_family != "ipv4"

    @property
    def with_router(self) -> bool:
        return self.router or self.topology == "nat"


@dataclass(frozen=True, slots=True)
class PodInfo:
    name: str
    node: str
    netns: str
    ip: str
    ip6: str = ""  # with IPv6 on


@dataclass(frozen=True, slots=True)
class NodeInfo:
    name: str
    netns: str
    ip: str
    mac: str
    pod_cidr: str
    pods: tuple[PodInfo, ...]
    ip6: str = ""  # with IPv6 on


@dataclass(frozen=True, slots=True)
class LabInfo:
    """Everything another process needs to use or inspect a built lab (saved as JSON)."""

    spec: LabSpec
    client: str  # namespace
    client_ip: str
    router: str | None
    directors: dict[str, str]  # name -> namespace
    director_ips: dict[str, str]
    director_macs: dict[str, str]
    nodes: tuple[NodeInfo, ...]
    config: str  # director YAML
    state_dir: str
    namespaces: tuple[str, ...]
    pids: dict[str, int] = field(default_factory=dict)  # "director dir1", "agent node1", "pod whoami-node1-1"
    backend: str = ""  # what ``auto`` became
    client_ip6: str = ""  # with IPv6 on

    def netns_of(self, role: str) -> str:
        """``client``, ``router``, ``dir1``, ``node1``, ``whoami-node1-1``/``node1-pod1``, or a full
        namespace name."""
        if role in self.namespaces:
            return role
        candidate = f"{self.spec.prefix}-{role}"
        if candidate in self.namespaces:
            return candidate
        for node in self.nodes:
            for pod in node.pods:
                if pod.name == role:
                    return pod.netns
        raise LabError(f"no host {role!r} in lab {self.spec.prefix} (hosts: {', '.join(self.roles())})")

    def roles(self) -> list[str]:
        return [n[len(self.spec.prefix) + 1 :] for n in self.namespaces if n != f"{self.spec.prefix}-sw"]

    def pod_node(self) -> dict[str, str]:
        return {p.name: n.name for n in self.nodes for p in n.pods}

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @staticmethod
    def from_json(text: str) -> LabInfo:
        d = json.loads(text)
        nodes = tuple(
            NodeInfo(**{**n, "pods": tuple(PodInfo(**p) for p in n["pods"])}) for n in d.pop("nodes")
        )
        spec = LabSpec(**d.pop("spec"))
        return LabInfo(spec=spec, nodes=nodes, **{**d, "namespaces": tuple(d["namespaces"])})


def state_dir(prefix: str) -> Path:
    return STATE_ROOT / prefix


def load_info(prefix: str = DEFAULT_PREFIX) -> LabInfo:
    path = state_dir(prefix) / "lab.json"
    try:
        return LabInfo.from_json(path.read_text())
    except FileNotFoundError:
        raise LabError(f"no lab {prefix!r} is up (no {path}); start one with: kubelvs lab up") from None


def director_config(spec: LabSpec, nodes: list[NodeInfo]) -> str:
    """The director's YAML: the whoami Service's external IP over the workers (dr/tun)
    or over the pods with port mapping (nat)."""
    forward = {"dr": "dr", "tun": "tun", "nat": "nat"}[spec.topology]
    services = ""
    for vip in spec.vips:
        ipv6 = ":" in vip
        if spec.topology == "nat":
            rss = [
                f"      - address: {p.ip6 if ipv6 else p.ip}\n        port: {spec.target_port}\n"
                for n in nodes
                for p in n.pods
            ]
        else:
            rss = [f"      - address: {n.ip6 if ipv6 else n.ip}\n" for n in nodes]
        services += (
            f"  - name: whoami{'-v6' if ipv6 else ''}\n"
            f"    vip: {vip}\n"
            f"    port: {spec.port}\n"
            f"    scheduler: {spec.scheduler}\n"
            + (f"    flags: [{', '.join(spec.flags)}]\n" if spec.flags else "")
            + f"    forward: {forward}\n"
            "    realservers:\n" + "".join(rss)
        )
    owned = ", ".join(f"{vip}/{128 if ':' in vip else 32}" for vip in spec.vips)
    return (
        "# Written by kubelvs lab: the whoami Service, external IP on the segment.\n"
        f"owned_cidrs: [{owned}]\n"
        "# Above tcp_keepalive_time (7200 s), so an idle connection's entry outlives the first\n"
        "# keep-alive probe (kubelvs doctor: ipvs-timeout-below-keepalive); tcpfin 30 s: the\n"
        "# TIME_WAIT fix.\n"
        f"timeouts: {{tcp: {LAB_TIMEOUTS[0]}, tcpfin: {LAB_TIMEOUTS[1]}, udp: {LAB_TIMEOUTS[2]}}}\n"
        + (f"health_defaults: {spec.health}\n" if spec.health else "")
        + (
            # sync_daemon: IPVS shares connections both ways (nftables has none to share).
            f"vrrp: {{interface: eth0, virtual_router_id: 51, advert_interval: {VRRP_ADVERT},\n"
            "       sync_daemon: {}}\n"
            if spec.vrrp
            else ""
        )
        + (
            f"bgp: {{local_as: {DIRECTORS_AS}, peers: [{{address: {SEGMENT.network_address + 254}, "
            f"peer_as: {ROUTER_AS}}}], bfd_interval: {BFD_INTERVAL}}}\n"
            if spec.bgp
            else ""
        )
        + spec.extra_config
        + "services:\n"
        + services
    )


def proxy_ruleset(spec: LabSpec, node: NodeInfo) -> str:
    """What kube-proxy installs on a worker for the external IPs (kube-proxy's iptables
    rules in nftables form, one table per family as kube-proxy has one proxier per
    family; physdev matching is left out: pods here are routed, not bridged)."""
    return "".join(_proxy_table(spec, node, vip) for vip in spec.vips)


def _proxy_table(spec: LabSpec, node: NodeInfo, vip: str) -> str:
    port = spec.port
    family = "ip6" if ":" in vip else "ip"
    match = f"{family} daddr {vip} tcp dport {port}"
    eps = "".join(
        f"  chain ep{i} {{ meta l4proto tcp dnat to "
        + (f"[{p.ip6}]" if family == "ip6" else p.ip)
        + f":{spec.target_port}; }}\n"
        for i, p in enumerate(node.pods)
    )
    vmap = ", ".join(f"{i} : goto ep{i}" for i in range(len(node.pods)))
    return (
        f"table {family} {PROXY_TABLE} {{\n"
        "  counter vip_forwarded { }\n"
        "  chain services {\n"
        f"    {match} meta mark set meta mark | {MASQ_MARK:#x}\n"  # KUBE-MARK-MASQ
        f"    {match} fib saddr type != local goto svc\n"  # from outside the node
        f"    {match} fib daddr type local goto svc\n"  # the node holds the VIP (on lo)
        "  }\n"
        f"  chain svc {{ numgen random mod {len(node.pods)} vmap {{ {vmap} }}; }}\n"
        + eps
        + "  chain prerouting { type nat hook prerouting priority dstnat; policy accept; jump services; }\n"
        "  chain output { type nat hook output priority -100; policy accept; jump services; }\n"
        "  chain postrouting { type nat hook postrouting priority srcnat; policy accept;\n"
        f"    meta mark & {MASQ_MARK:#x} == {MASQ_MARK:#x} masquerade; }}\n"
        "  chain forward { type filter hook forward priority filter; policy accept;\n"
        f'    {family} daddr {vip} counter name "vip_forwarded"; }}\n'
        "}\n"
    )
