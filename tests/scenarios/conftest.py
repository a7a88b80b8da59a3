"""One behaviour suite for every data plane.

The same tests run against nftables on the machine's kernel (tier 1) and against
IPVS in the VM (``kernel_ipvs``, tier 2): the ``backend_name`` parameter carries
the tier's marker, so ``-m "not kernel_ipvs"`` runs the nftables half and
``-m kernel_ipvs`` the IPVS half.

Topology (one bridge segment, namespaces ``kubelvs-t<token>-<role>``)::

    client  10.0.0.10/24 (+ 10.0.0.98, 10.0.0.101-180, 10.0.0.221-254 as extra sources)
    director 10.0.0.2/24, 10.1.0.1/24, VIP 10.0.0.200/32
    DR:  rs1..rs3 10.0.0.11-13/24, VIP on lo, arp_ignore=1, arp_announce=2
    NAT: rs1..rs3 10.1.0.11-13/24, default route via the director (return path)

and its IPv6 twin (``env`` runs every test of both families; ``dr_env``/``nat_env`` are
IPv4's): the same host numbers in ``fd00::/64`` and ``fd00:1::/64`` (10.0.0.101 is
fd00::101), the VIP fd00::200/128 deprecated on the director (never the source of its
own packets: docs/ipv6.md), on the DR real servers' lo with no sysctl.

HTTP servers listen on 80 (DR: the port cannot change) or 8080 (NAT: the service
port 80 maps to it), UDP echo on 5353.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import pytest

from kubelvs.backends import Backend
from kubelvs.backends.base import open_backend
from kubelvs.kernel.netns import entered
from kubelvs.lab.netlab import Host, Lab
from kubelvs.lab.servers import Answer, HttpConnection, probe
from kubelvs.model import (
    DesiredState,
    Forward,
    Ownership,
    Protocol,
    RealServer,
    ServiceKey,
    Timeouts,
    VirtualService,
    hostport,
)
from kubelvs.model.sysctls import kernel_version, recommended_sysctls
from kubelvs.planner import plan
from kubelvs.roles.director import Director

VIP = "10.0.0.200"
VIP6 = "fd00::200"
CLIENT_SOURCES = [f"10.0.0.{i}" for i in range(101, 141)]
#: Client addresses only the stickiness tests use: the module's topologies live across
#: tests, and IPVS keeps a connection entry (TIME_WAIT: 2 minutes) for every earlier flow;
#: a new connection whose client port the kernel reuses follows that entry to the earlier
#: test's real server instead of being scheduled (the reused-port incident).
STICKY_SOURCE = "10.0.0.98"
MAGLEV_SOURCES = [f"10.0.0.{i}" for i in range(141, 181)]
ORDER_SOURCES = [f"10.0.0.{i}" for i in range(221, 255)]  # the Maglev order test's own (not .200: the VIP)
FALLBACK_SOURCES = [f"10.0.0.{i}" for i in (*range(181, 200), *range(201, 221))]  # the weight-0 mh test's
HTTP_PORT = {Forward.DR: 80, Forward.NAT: 8080}
UDP_PORT = 5353

BACKENDS = [
    pytest.param("nftables", marks=pytest.mark.netns, id="nftables"),
    pytest.param("ipvs", marks=pytest.mark.kernel_ipvs, id="ipvs"),
]


def v6(address: str) -> str:
    """The IPv6 twin of a topology address: the same host number (10.0.0.101 -> fd00::101,
    10.1.0.11 -> fd00:1::11)."""
    _, net, _, host = address.split(".")
    return f"fd00:{net}::{host}" if net != "0" else f"fd00::{host}"


@dataclass
class Env:
    """A built topology for one backend, one forwarding mode and one IP family."""

    lab: Lab
    backend_name: str
    mode: Forward
    backend: Backend
    director: Host
    client: Host
    realservers: list[Host]
    names: dict[str, str] = field(default_factory=dict)  # real server IP -> server name
    family: int = 4

    @property
    def vip(self) -> str:
        return VIP if self.family == 4 else VIP6

    def addr(self, address: str) -> str:
        """A topology address (written in IPv4) in this environment's family."""
        return address if self.family == 4 else v6(address)

    def sources(self, addresses: Sequence[str]) -> list[str]:
        return [self.addr(a) for a in addresses]

    def hostport(self, host: str, port: int) -> str:
        """As the servers write a peer: ``[IPv6]:port``."""
        return hostport(host, port)

    @property
    def http_key(self) -> ServiceKey:
        return ServiceKey(self.family, Protocol.TCP, ipaddress.ip_address(self.vip), 80)

    @property
    def udp_key(self) -> ServiceKey:
        return ServiceKey(self.family, Protocol.UDP, ipaddress.ip_address(self.vip), UDP_PORT)

    def rs_ip(self, index: int) -> str:
        return self.realservers[index].ip

    def service(
        self,
        scheduler: str,
        weights: Sequence[int],
        *,
        udp: bool = False,
        flags: frozenset[str] = frozenset(),
    ) -> VirtualService:
        """The HTTP (or UDP) service over the first ``len(weights)`` real servers."""
        key = self.udp_key if udp else self.http_key
        port = UDP_PORT if udp else HTTP_PORT[self.mode]
        rss = [
            RealServer(ipaddress.ip_address(self.rs_ip(i)), port, w, self.mode) for i, w in enumerate(weights)
        ]
        return VirtualService(key=key, scheduler=scheduler, flags=flags).with_realservers(rss)

    def sync(self, *services: VirtualService, timeouts: Timeouts | None = None) -> DesiredState:
        """Converge the director to exactly ``services``, with the sysctls ``kubelvs apply``
        and ``kubelvs director`` set by default; assert the kernel reads back as desired."""
        desired = DesiredState(
            services={s.key: s for s in services},
            timeouts=timeouts,
            sysctls=recommended_sysctls(self.backend_name, kernel_version(os.uname().release), services),
            ownership=Ownership(
                cidrs=(ipaddress.ip_network("10.0.0.0/24"), ipaddress.ip_network("fd00::/64"))
            ),
        )
        Director(self.backend).sync(desired)
        after = self.backend.read(sysctls=desired.sysctls)
        assert plan(desired, after).ops == (), "the kernel does not read back as the desired state"
        return desired

    def ask(self, count: int, *, udp: bool = False, sources: Sequence[str] = ("",)) -> list[Answer]:
        port = UDP_PORT if udp else 80
        # 10 s for TCP: every flow must succeed here, and in the emulated VM under load a
        # single lost SYN waits 1 s + 2 s for its retransmits (the 3 s default failed once
        # in 240 flows). A flow the data plane really drops still fails.
        with entered(self.client.netns):
            return probe(self.vip, port, count=count, udp=udp, sources=sources, timeout=None if udp else 10.0)

    def keepalive(self) -> HttpConnection:
        with entered(self.client.netns):
            conn = HttpConnection(self.vip, 80)
            conn.get()  # connects inside the client's namespace
        return conn

    @staticmethod
    def tally(answers: Sequence[Answer]) -> Counter[str]:
        return Counter(a.server for a in answers)


def _build(lab: Lab, backend_name: str, mode: Forward, family: int) -> Env:
    ipv6 = family == 6

    def cidr(address: str) -> str:
        return f"{v6(address)}/64" if ipv6 else f"{address}/24"

    sources = [STICKY_SOURCE, *CLIENT_SOURCES, *MAGLEV_SOURCES, *ORDER_SOURCES, *FALLBACK_SOURCES]
    client = lab.host("cl", [cidr("10.0.0.10")] + [cidr(a) for a in sources])
    if ipv6:  # Linux would pick the source that shares the longest prefix with the VIP
        lab.run(
            client.netns, "ip", "-6", "route", "add", f"{VIP6}/128", "dev", "eth0", "src", v6("10.0.0.10")
        )
    director = lab.host("dir", [cidr("10.0.0.2"), cidr("10.1.0.1"), f"{VIP6}/128" if ipv6 else f"{VIP}/32"])
    settings = [
        ("net.ipv4.ip_forward", 1),
        ("net.ipv4.conf.all.send_redirects", 0),
        ("net.ipv4.conf.eth0.send_redirects", 0),
    ]
    if ipv6:
        lab.run(
            director.netns, "ip", "-6", "addr", "change", f"{VIP6}/128", "dev", "eth0", "preferred_lft", "0"
        )
        settings.append(("net.ipv6.conf.all.forwarding", 1))
    for name, value in settings:
        lab.sysctl(director.netns, name, value)
    realservers = []
    names = {}
    for i in range(3):
        role = f"rs{i + 1}"
        if mode is Forward.DR:
            rs = lab.host(role, [cidr(f"10.0.0.{11 + i}")])
            lab.run(rs.netns, "ip", "addr", "add", f"{VIP6}/128" if ipv6 else f"{VIP}/32", "dev", "lo")
            for conf in ("all", "eth0"):  # IPv6 needs none of it (docs/ipv6.md)
                lab.sysctl(rs.netns, f"net.ipv4.conf.{conf}.arp_ignore", 1)
                lab.sysctl(rs.netns, f"net.ipv4.conf.{conf}.arp_announce", 2)
        else:
            rs = lab.host(role, [cidr(f"10.1.0.{11 + i}")])
            lab.run(rs.netns, "ip", "route", "add", "default", "via", v6("10.1.0.1") if ipv6 else "10.1.0.1")
            if ipv6:  # a one-armed NAT director's ICMPv6 redirect would send replies around it
                lab.sysctl(rs.netns, "net.ipv6.conf.all.accept_redirects", 0)
                lab.sysctl(rs.netns, "net.ipv6.conf.eth0.accept_redirects", 0)
        bind = ("--bind", "::") if ipv6 else ()
        lab.start_python(
            rs.netns, "kubelvs.lab.servers", "http", "--name", role, "--port", str(HTTP_PORT[mode]), *bind
        )
        lab.start_python(
            rs.netns, "kubelvs.lab.servers", "udp", "--name", role, "--port", str(UDP_PORT), *bind
        )
        realservers.append(rs)
        names[rs.ip] = role
    for rs in realservers:
        lab.wait_listening(rs.netns, HTTP_PORT[mode])
        lab.wait_listening(rs.netns, UDP_PORT, udp=True)
    backend = open_backend(backend_name, netns=director.netns)  # type: ignore[arg-type]
    return Env(lab, backend_name, mode, backend, director, client, realservers, names, family)


@pytest.fixture(scope="module", params=BACKENDS)
def backend_name(request: pytest.FixtureRequest) -> str:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    name: str = request.param
    return name


@pytest.fixture(scope="module")
def envs(backend_name: str) -> Iterator[dict[tuple[Forward, int], Env]]:
    """Lazily built topologies, one per forwarding mode and IP family, torn down after
    the module."""
    labs: list[Lab] = []
    built: dict[tuple[Forward, int], Env] = {}

    class Lazy(dict[tuple[Forward, int], Env]):
        def __missing__(self, key: tuple[Forward, int]) -> Env:
            lab = Lab(f"kubelvs-t{secrets.token_hex(3)}")
            labs.append(lab)
            env = _build(lab, backend_name, *key)
            built[key] = env
            self[key] = env
            return env

    try:
        yield Lazy()
    finally:
        for env in built.values():
            env.backend.close()
        for lab in labs:
            lab.teardown()


@pytest.fixture(
    params=[(Forward.DR, 4), (Forward.NAT, 4), (Forward.DR, 6), (Forward.NAT, 6)],
    ids=["dr", "nat", "dr-ipv6", "nat-ipv6"],
)
def env(request: pytest.FixtureRequest, envs: dict[tuple[Forward, int], Env]) -> Env:
    e: Env = envs[request.param]
    return e


@pytest.fixture
def nat_env(envs: dict[tuple[Forward, int], Env]) -> Env:
    return envs[(Forward.NAT, 4)]


@pytest.fixture
def dr_env(envs: dict[tuple[Forward, int], Env]) -> Env:
    return envs[(Forward.DR, 4)]
