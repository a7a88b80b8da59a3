"""Every probe kind against real servers in network namespaces: a server that answers,
one that accepts TCP but answers HTTP 500, one that drops SYNs, one that answers slowly,
a DR node without the VIP on lo (and one with it), and, in the VM, a TUN node whose
rp_filter eats tunnelled packets."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from kubelvs.model.health import CheckKind, HealthCheck
from kubelvs.probes.direct import probe_direct
from kubelvs.probes.vip import VipProber, syn_probe_for

pytestmark = pytest.mark.netns

VIP = "10.0.0.200"


def ip(ns: str, *args: str) -> str:
    return subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True, text=True).stdout


def sysctl(ns: str, *settings: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw", *settings], check=True)


@dataclass
class Net:
    director: str
    node: str
    processes: list[subprocess.Popen[bytes]]

    def serve(self, ns: str, kind: str, port: int) -> None:
        proc = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                ns,
                sys.executable,
                "-m",
                "kubelvs.lab.servers",
                kind,
                "--name",
                "rs1",
                "--port",
                str(port),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.processes.append(proc)
        probe = "tcp" if kind == "http" else "udp"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            out = subprocess.run(
                ["ip", "netns", "exec", ns, "ss", "-lnH", f"--{probe}"], capture_output=True, text=True
            ).stdout
            if f":{port} " in out:
                return
            time.sleep(0.05)
        raise AssertionError(f"{kind} server on {port} did not start")


@pytest.fixture
def net(make_netns: Callable[[str], str]) -> Iterator[Net]:
    """director 10.0.0.2/24 (and the VIP on eth0, as a DR director holds it) - node 10.0.0.11/24."""
    d, n = make_netns("dir"), make_netns("node")
    ip(d, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", n)
    for ns, addr in ((d, "10.0.0.2/24"), (n, "10.0.0.11/24")):
        ip(ns, "addr", "add", addr, "dev", "eth0")
        ip(ns, "link", "set", "eth0", "up")
    ip(d, "addr", "add", f"{VIP}/32", "dev", "eth0")
    result = Net(d, n, [])
    try:
        yield result
    finally:
        for proc in result.processes:
            proc.kill()
            proc.wait()


def run(coro: object) -> tuple[bool, str]:
    return asyncio.run(coro)  # type: ignore[arg-type]


NODE = ipaddress.ip_address("10.0.0.11")


def test_tcp_http_udp_and_exec_probes_see_what_is_there(net: Net) -> None:
    net.serve(net.node, "http", 8080)
    net.serve(net.node, "udp", 5353)
    tcp = HealthCheck(kind=CheckKind.TCP, timeout=1)
    assert run(probe_direct(NODE, 8080, tcp, netns=net.director)) == (True, "connected")
    assert run(probe_direct(NODE, 8081, tcp, netns=net.director)) == (False, "connection refused")

    http = HealthCheck(kind=CheckKind.HTTP, timeout=1, path="/healthz", body="ok")
    assert run(probe_direct(NODE, 8080, http, netns=net.director)) == (True, "HTTP 200")
    error = HealthCheck(kind=CheckKind.HTTP, timeout=1, path="/status/500")
    assert run(probe_direct(NODE, 8080, error, netns=net.director)) == (
        False,
        "HTTP 500",
    )  # TCP accepted, still down
    wrong_body = HealthCheck(kind=CheckKind.HTTP, timeout=1, path="/healthz", body="ready")
    assert run(probe_direct(NODE, 8080, wrong_body, netns=net.director)) == (
        False,
        "HTTP 200 without 'ready' in the body",
    )
    slow = HealthCheck(kind=CheckKind.HTTP, timeout=0.5, path="/slow/2")
    assert run(probe_direct(NODE, 8080, slow, netns=net.director)) == (False, "no answer within 0.5 s")

    udp = HealthCheck(kind=CheckKind.UDP, timeout=1, send="ping", expect="rs1")
    ok, detail = run(probe_direct(NODE, 5353, udp, netns=net.director))
    assert ok, detail
    assert run(probe_direct(NODE, 5354, udp, netns=net.director)) == (False, "connection refused")

    exit0 = HealthCheck(
        kind=CheckKind.EXEC, timeout=2, command=("sh", "-c", 'test "$ADDRESS:$PORT" = 10.0.0.11:8080')
    )
    assert run(probe_direct(NODE, 8080, exit0, netns=net.director)) == (True, "exit 0")
    exit3 = HealthCheck(kind=CheckKind.EXEC, timeout=2, command=("sh", "-c", "echo broken >&2; exit 3"))
    assert run(probe_direct(NODE, 8080, exit3, netns=net.director)) == (False, "exit 3: broken")
    hangs = HealthCheck(kind=CheckKind.EXEC, timeout=0.5, command=("sleep", "30"))
    started = time.monotonic()
    assert run(probe_direct(NODE, 8080, hangs, netns=net.director)) == (False, "no answer within 0.5 s")
    assert time.monotonic() - started < 5  # the command was ended, not waited for


def test_a_server_that_drops_syns_times_out(net: Net) -> None:
    net.serve(net.node, "http", 8080)
    ruleset = (
        "table inet kubelvs_test {\n"
        " chain in { type filter hook input priority 0; tcp dport 8080 drop; }\n"
        "}\n"
    )
    subprocess.run(["ip", "netns", "exec", net.node, "nft", "-f", "-"], input=ruleset, text=True, check=True)
    tcp = HealthCheck(kind=CheckKind.TCP, timeout=0.7)
    assert run(probe_direct(NODE, 8080, tcp, netns=net.director)) == (False, "no answer within 0.7 s")


def test_vip_probe_fails_on_a_dr_node_without_the_vip_and_passes_with_it(net: Net) -> None:
    net.serve(net.node, "http", 80)
    tcp = HealthCheck(kind=CheckKind.TCP, timeout=1)
    # The node's own address answers: a keepalived TCP_CHECK would call it healthy ...
    assert run(probe_direct(NODE, 80, tcp, netns=net.director))[0]

    async def vip_probe(port: int = 80) -> tuple[bool, str]:
        prober = VipProber(net.director)
        try:
            syn = await asyncio.to_thread(syn_probe_for, net.director, VIP, port, "10.0.0.11", tunnel=False)
            return await prober.probe(syn, 1.0)
        finally:
            prober.close()

    # ... but it does not hold the VIP, so DR traffic to it is dropped: the VIP probe says so.
    ok, detail = run(vip_probe())
    assert not ok and detail.startswith(f"no answer from {VIP}:80")
    ip(net.node, "addr", "add", f"{VIP}/32", "dev", "lo")
    sysctl(net.node, "net.ipv4.conf.eth0.arp_ignore=1", "net.ipv4.conf.eth0.arp_announce=2")
    assert run(vip_probe()) == (True, f"SYN-ACK from {VIP}:80")
    assert run(vip_probe(81)) == (False, f"connection refused by {VIP}:81 via 10.0.0.11")
    # The probe reset the half-open connection itself: nothing is left on the node.
    time.sleep(0.2)
    left = subprocess.run(
        ["ip", "netns", "exec", net.node, "ss", "-tanH", "state", "syn-recv"], capture_output=True, text=True
    )
    assert left.stdout.strip() == ""


@pytest.mark.kernel_ipvs
def test_vip_probe_through_ipip_fails_on_strict_rp_filter_and_passes_when_fixed(net: Net) -> None:
    subprocess.run(["modprobe", "-q", "ipip"], check=False)
    net.serve(net.node, "http", 80)
    ip(net.node, "addr", "add", f"{VIP}/32", "dev", "lo")
    ip(net.node, "link", "set", "tunl0", "up")
    sysctl(net.node, "net.ipv4.conf.eth0.arp_ignore=1", "net.ipv4.conf.eth0.arp_announce=2")
    sysctl(net.node, "net.ipv4.conf.all.rp_filter=1", "net.ipv4.conf.tunl0.rp_filter=1")

    async def vip_probe() -> tuple[bool, str]:
        prober = VipProber(net.director)
        try:
            syn = await asyncio.to_thread(syn_probe_for, net.director, VIP, 80, "10.0.0.11", tunnel=True)
            return await prober.probe(syn, 2.0)
        finally:
            prober.close()

    ok, detail = run(vip_probe())
    assert not ok and "in IPIP" in detail, detail
    sysctl(net.node, "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.tunl0.rp_filter=0")
    assert run(vip_probe()) == (True, f"SYN-ACK from {VIP}:80")
    counters = json.loads(
        subprocess.run(
            ["ip", "-n", net.node, "-j", "-s", "link", "show", "tunl0"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )[0]
    assert counters["stats64"]["rx"]["packets"] >= 1  # it really came through the tunnel
