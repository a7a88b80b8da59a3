"""IPv6 services with real traffic: DR, TUN and NAT through the VIP, on one bridge segment.

Topology (namespaces ``kubelvs-t<token>-<role>``, no DAD on the lab's interfaces)::

    client   fd00:10::10/64
    director fd00:10::2/64, fd00:11::1/64, VIP fd00:10::200/128 deprecated (answers NDP for it)
    DR:  rs1, rs2 fd00:10::11-12/64, the VIP on lo put there by the node agent
    TUN: the same, and the node agent's ip6tnl0 up (IPv6 in IPv6)
    NAT: rs1, rs2 fd00:11::11-12/64, default route via the director

IPVS runs all three in the VM tier, the nftables backend DR (``dr6_*`` maps of the
netdev table) and NAT (its ``ip6 kubelvs`` table) on the machine's kernel and TUN
(an ip6ip6 device per real server) in the VM: this machine's kernel has no
ip6_tunnel, where the backend refuses it, by field and reason, and programs nothing
(docs/ipv6.md).
"""

from __future__ import annotations

import ipaddress
import re
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kubelvs.backends import BackendName, open_backend
from kubelvs.backends.nftables.backend import tun_supported
from kubelvs.errors import CapabilityError
from kubelvs.kernel.netns import entered
from kubelvs.lab.netlab import Host, Lab
from kubelvs.lab.servers import Answer, probe
from kubelvs.model import (
    DesiredState,
    Forward,
    Ownership,
    Protocol,
    RealServer,
    ServiceKey,
    Timeouts,
    VirtualService,
)
from kubelvs.planner import plan
from kubelvs.roles.director import Director
from kubelvs.roles.node import NodeAgent

VIP6 = "fd00:10::200"
CLIENT6 = "fd00:10::10"
HTTP_PORT = {Forward.DR: 80, Forward.TUN: 80, Forward.NAT: 8080}
OWNED = Ownership(cidrs=(ipaddress.ip_network("fd00:10::/64"),))


@dataclass
class Env6:
    lab: Lab
    mode: Forward
    director: Host
    client: Host
    realservers: list[Host]

    def service(self) -> VirtualService:
        port = HTTP_PORT[self.mode]
        rss = [RealServer(ipaddress.ip_address(rs.ip), port, 1, self.mode) for rs in self.realservers]
        key = ServiceKey(6, Protocol.TCP, ipaddress.ip_address(VIP6), 80)
        return VirtualService(key=key, scheduler="rr").with_realservers(rss)

    def desired(self) -> DesiredState:
        svc = self.service()
        return DesiredState(services={svc.key: svc}, ownership=OWNED)

    def ask(self, count: int) -> list[Answer]:
        with entered(self.client.netns):
            return probe(VIP6, 80, count=count, timeout=10.0)


def _build(lab: Lab, mode: Forward, state_dir: Path) -> Env6:
    client = lab.host("cl", [f"{CLIENT6}/64"])
    director = lab.host("dir", ["fd00:10::2/64", "fd00:11::1/64", f"{VIP6}/128"])
    lab.sysctl(director.netns, "net.ipv6.conf.all.forwarding", 1)  # NAT: the replies pass through it
    # Deprecated, so that the director never picks the VIP as the source of its own packets:
    # Linux prefers it to fd00:10::2 for the real servers (its /128 matches more of their
    # addresses), and a TUN real server drops a tunnel packet from its own VIP (docs/ipv6.md).
    lab.run(director.netns, "ip", "-6", "addr", "change", f"{VIP6}/128", "dev", "eth0", "preferred_lft", "0")
    realservers = []
    for i in range(2):
        role = f"rs{i + 1}"
        if mode in (Forward.DR, Forward.TUN):
            rs = lab.host(role, [f"fd00:10::{11 + i}/64"])
            # The product's node agent holds the VIP (IPv6 needs no ARP settings), and for
            # TUN brings up the device that decapsulates IPv6 in IPv6.
            NodeAgent(
                interface="eth0",
                netns=rs.netns,
                mode="tun" if mode is Forward.TUN else "dr",
                vip_device="lo",
                state_dir=state_dir,
            ).sync([VIP6])
        else:
            rs = lab.host(role, [f"fd00:11::{11 + i}/64"])
            lab.run(rs.netns, "ip", "-6", "route", "add", "default", "via", "fd00:11::1")
            # A one-armed NAT director forwards the replies out of the interface they came
            # in on, so it sends the real server an ICMPv6 redirect to the client, which
            # would then be answered directly, bypassing the rewrite back to the VIP.
            lab.sysctl(rs.netns, "net.ipv6.conf.all.accept_redirects", 0)
            lab.sysctl(rs.netns, "net.ipv6.conf.eth0.accept_redirects", 0)
        lab.start_python(
            rs.netns,
            "kubelvs.lab.servers",
            "http",
            "--name",
            role,
            "--port",
            str(HTTP_PORT[mode]),
            "--bind",
            "::",
        )
        realservers.append(rs)
    for rs in realservers:
        lab.wait_listening(rs.netns, HTTP_PORT[mode])
    return Env6(lab, mode, director, client, realservers)


@pytest.fixture
def env6(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Env6]:
    with Lab(f"kubelvs-t{secrets.token_hex(3)}") as lab:
        yield _build(lab, request.param, tmp_path)


def _wait_stats(
    backend_name: BackendName, backend_netns: str, done: Callable[[int, int], bool], timeout: float = 30.0
) -> tuple[int, int]:
    """(in packets, out packets) of the VIP's real servers once ``done`` says so: IPVS folds
    per-CPU counters at its estimator's tick, not at every packet."""
    deadline = time.monotonic() + timeout
    while True:
        with open_backend(backend_name, netns=backend_netns) as backend:
            stats = backend.read().stats
        totals = (sum(s.in_packets for s in stats.values()), sum(s.out_packets for s in stats.values()))
        if done(*totals) or time.monotonic() > deadline:
            return totals
        time.sleep(0.2)


@pytest.mark.parametrize(
    ("backend_name", "env6"),
    [
        pytest.param("ipvs", Forward.DR, marks=pytest.mark.kernel_ipvs, id="ipvs-dr"),
        pytest.param("ipvs", Forward.TUN, marks=pytest.mark.kernel_ipvs, id="ipvs-tun"),
        pytest.param("ipvs", Forward.NAT, marks=pytest.mark.kernel_ipvs, id="ipvs-nat"),
        pytest.param("nftables", Forward.DR, marks=pytest.mark.netns, id="nftables-dr"),
        # ip6ip6 needs the ip6_tunnel module: the VM's kernel has it, this machine's not.
        pytest.param("nftables", Forward.TUN, marks=pytest.mark.kernel_ipvs, id="nftables-tun"),
        pytest.param("nftables", Forward.NAT, marks=pytest.mark.netns, id="nftables-nat"),
    ],
    indirect=["env6"],
)
def test_ipv6_through_the_vip(backend_name: BackendName, env6: Env6) -> None:
    desired = env6.desired()
    with open_backend(backend_name, netns=env6.director.netns) as backend:
        Director(backend).sync(desired)
        assert plan(desired, backend.read()).ops == (), "the kernel reads back as desired"

    answers = env6.ask(20)
    assert len(answers) == 20
    assert {a.server for a in answers} == {"rs1", "rs2"}  # rr: every other connection
    assert all(a.client.startswith(f"[{CLIENT6}]:") for a in answers), "no source NAT"
    if env6.mode in (Forward.DR, Forward.TUN):
        # The real server was reached on the VIP (DR: the frame was only re-addressed to its
        # MAC; TUN: the packet came out of ip6tnl0 as it went in) ...
        assert {a.local for a in answers} == {f"[{VIP6}]:80"}
        # ... and answered the client directly: the director saw no reply.
        inbound, outbound = _wait_stats(backend_name, env6.director.netns, lambda i, o: i >= 20 * 3)
        assert inbound >= 20 * 3 and outbound == 0
    else:
        assert {a.local for a in answers} == {f"[{rs.ip}]:8080" for rs in env6.realservers}
        inbound, outbound = _wait_stats(
            backend_name, env6.director.netns, lambda i, o: i >= 20 * 3 and o >= 20 * 2
        )
        assert inbound >= 20 * 3 and outbound >= 20 * 2


@pytest.mark.netns
def test_nftables_refuses_ipv6_tun_without_ip6_tunnel_by_field_and_changes_nothing(
    make_netns: Callable[[str], str],
) -> None:
    if tun_supported(6):
        pytest.skip("this kernel has ip6_tunnel")
    ns = make_netns("dir")
    rss = [RealServer(ipaddress.ip_address("fd00:10::11"), 80, 1, Forward.TUN)]
    svc = VirtualService(
        key=ServiceKey(6, Protocol.TCP, ipaddress.ip_address(VIP6), 80), scheduler="rr"
    ).with_realservers(rss)
    desired = DesiredState(services={svc.key: svc}, ownership=OWNED)
    with open_backend("nftables", netns=ns) as backend:
        problems = [(p.field, p.reason) for p in backend.problems(desired)]
        assert (
            "services[TCP [fd00:10::200]:80].realservers",
            "forward tun over IPv6 needs ip6ip6 tunnels, and this kernel has no ip6_tunnel support "
            "(CONFIG_IPV6_TUNNEL unset, no ip6_tunnel module); use dr or nat",
        ) in problems
        assert {field for field, _ in problems} == {"services[TCP [fd00:10::200]:80].realservers"}
        with pytest.raises(CapabilityError, match=r"services\[TCP \[fd00:10::200\]:80\]\.realservers: "):
            Director(backend).sync(desired)
        assert not backend.read().services


@pytest.mark.netns
@pytest.mark.parametrize("env6", [Forward.NAT], ids=["nat"], indirect=True)
def test_nftables_timeouts_apply_to_ipv6_nat_connections(env6: Env6) -> None:
    """``ipvsadm --set 900 30 300``'s tcpfin reaches IPv6 connections too: the ip6 table has
    its own ct timeout objects (conntrack's default for TIME_WAIT is 120 s)."""
    desired = env6.desired()
    desired = DesiredState(services=desired.services, ownership=OWNED, timeouts=Timeouts(900, 30, 300))
    with open_backend("nftables", netns=env6.director.netns) as backend:
        Director(backend).sync(desired)
        assert backend.read().timeouts == Timeouts(900, 30, 300)
    assert len(env6.ask(4)) == 4
    listing = env6.lab.run(
        env6.director.netns, "conntrack", "-L", "-f", "ipv6", "-p", "tcp", "--orig-dst", VIP6
    ).stdout
    closing = [int(t) for t in re.findall(r"^tcp\s+\d+\s+(\d+)\s+TIME_WAIT", listing, re.MULTILINE)]
    assert len(closing) == 4 and all(t <= 30 for t in closing), listing
