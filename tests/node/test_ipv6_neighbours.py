"""IPv6 VIPs on a real server, with real neighbour discovery between two namespaces.

What ``arp_ignore``/``arp_announce`` do for IPv4, Linux does for IPv6 by itself: it answers
a neighbour solicitation only for an address of the interface it arrived on, and its own
solicitations take their source from the outgoing interface. These tests hold an IPv6
VIP with the node agent and prove both on the wire (ICMPv6 captured with a raw socket in
the client's namespace), then that DR traffic reaches the VIP once the client's
neighbour entry points at the node, as a director's rewrite does.
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kubelvs.kernel import sysctl
from kubelvs.kernel.netns import entered
from kubelvs.roles.node import NodeAgent

pytestmark = pytest.mark.netns

VIP6 = "fd00:240::201"
VIP4 = "10.240.0.201"
CLIENT6, NODE6 = "fd00:240::1", "fd00:240::101"
NEIGHBOUR_SOLICITATION, NEIGHBOUR_ADVERTISEMENT = 135, 136


def _ip(ns: str, *args: str) -> str:
    return subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True, text=True).stdout


def _lo(ns: str) -> set[str]:
    (link,) = json.loads(_ip(ns, "-j", "addr", "show", "dev", "lo"))
    return {f"{a['local']}/{a['prefixlen']}" for a in link["addr_info"]}


def _mac(ns: str, dev: str) -> str:
    (link,) = json.loads(_ip(ns, "-j", "link", "show", "dev", dev))
    return str(link["address"])


def _neighbour_state(ns: str, address: str) -> list[str]:
    entries = json.loads(_ip(ns, "-j", "-6", "neigh", "show", address))
    return [state for e in entries for state in e.get("state", [])]


@dataclass(frozen=True)
class Segment:
    client: str  # eth0: fd00:240::1/64
    node: str  # eth0: fd00:240::101/64 and 10.240.0.101/24


@pytest.fixture
def segment(make_netns: Callable[[str], str]) -> Segment:
    client, node = make_netns("client"), make_netns("node")
    _ip(client, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", node)
    for ns, addr6 in ((client, CLIENT6), (node, NODE6)):
        _ip(ns, "addr", "add", f"{addr6}/64", "dev", "eth0", "nodad")
        _ip(ns, "link", "set", "eth0", "up")
    _ip(node, "addr", "add", "10.240.0.101/24", "dev", "eth0")
    # The client reaches the VIP on the link, as it would behind a DR director's rewrite.
    _ip(client, "-6", "route", "add", f"{VIP6}/128", "dev", "eth0")
    return Segment(client, node)


class Icmp6Capture:
    """Neighbour solicitations and advertisements arriving in a namespace: (type, source,
    target), from a raw ICMPv6 socket (no tcpdump needed; the kernel hands raw sockets
    every ICMPv6 message it receives)."""

    def __init__(self, ns: str) -> None:
        with entered(ns):
            self.sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        self.sock.settimeout(0.1)
        self.seen: list[tuple[int, str, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data, (source, *_) = self.sock.recvfrom(2048)
            except TimeoutError:
                continue
            if data[0] in (NEIGHBOUR_SOLICITATION, NEIGHBOUR_ADVERTISEMENT) and len(data) >= 24:
                target = socket.inet_ntop(socket.AF_INET6, data[8:24])
                self.seen.append((data[0], source.split("%")[0], target))

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture
def capture(segment: Segment) -> Iterator[Icmp6Capture]:
    cap = Icmp6Capture(segment.client)
    yield cap
    cap.close()


def _serve_once(ns: str, address: str) -> tuple[socket.socket, int]:
    with entered(ns):
        server = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    server.bind((address, 0))
    server.listen(4)
    return server, int(server.getsockname()[1])


def _connect(ns: str, address: str, port: int, timeout: float) -> tuple[str, str] | None:
    """(local, peer) addresses of a TCP connection from ``ns``; None when it failed."""
    with entered(ns):
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect((address, port))
        return str(sock.getsockname()[0]), str(sock.getpeername()[0])
    except OSError:
        return None
    finally:
        sock.close()


def _agent(ns: str, tmp_path: Path) -> NodeAgent:
    return NodeAgent(interface="eth0", netns=ns, vip_device="lo", state_dir=tmp_path)


def _get(ns: str, name: str) -> int | None:
    with entered(ns):
        return sysctl.read(name)


def test_an_ipv6_vip_on_lo_is_never_advertised_and_dr_traffic_reaches_it(
    segment: Segment, capture: Icmp6Capture, tmp_path: Path
) -> None:
    changes = [str(c) for c in _agent(segment.node, tmp_path).sync([VIP6])]
    assert changes == [f"add {VIP6}/128 dev lo"], "an IPv6 VIP needs no sysctl"
    assert f"{VIP6}/128" in _lo(segment.node)
    assert _get(segment.node, "net.ipv4.conf.eth0.arp_ignore") == 0

    server, port = _serve_once(segment.node, "::")
    try:
        # The client asks the link who has the VIP: the node must not say it has.
        assert _connect(segment.client, VIP6, port, timeout=2.0) is None
        assert set(_neighbour_state(segment.client, VIP6)) <= {"INCOMPLETE", "FAILED"}
        # ...while it does answer for its own address (the same capture sees that).
        assert _connect(segment.client, NODE6, port, timeout=2.0) == (CLIENT6, NODE6)

        # A DR director sends the client's packets to the node's MAC: pin the VIP to it.
        mac = _mac(segment.node, "eth0")
        _ip(segment.client, "-6", "neigh", "replace", VIP6, "lladdr", mac, "dev", "eth0", "nud", "permanent")
        _ip(segment.node, "-6", "neigh", "flush", "dev", "eth0")  # the node must resolve the client again
        # The reply comes from the VIP (the client's socket connected to it).
        assert _connect(segment.client, VIP6, port, timeout=2.0) == (CLIENT6, VIP6)
        time.sleep(0.3)  # the capture thread's last reads
    finally:
        server.close()

    advertised = [(src, target) for kind, src, target in capture.seen if kind == NEIGHBOUR_ADVERTISEMENT]
    solicited = [(src, target) for kind, src, target in capture.seen if kind == NEIGHBOUR_SOLICITATION]
    assert any(target == NODE6 for _, target in advertised), f"no advertisement of {NODE6}: {capture.seen}"
    assert all(target != VIP6 for _, target in advertised), f"the node advertised the VIP: {advertised}"
    assert solicited, "the node resolved the client with a solicitation the capture saw"
    assert all(src != VIP6 for src, _ in solicited), f"the node solicited from the VIP: {solicited}"


def test_dual_stack_vips_ipv4_settings_follow_the_ipv4_vips_only(segment: Segment, tmp_path: Path) -> None:
    agent = _agent(segment.node, tmp_path)
    changes = {str(c) for c in agent.sync([VIP4, VIP6])}
    assert {f"add {VIP4}/32 dev lo", f"add {VIP6}/128 dev lo"} <= changes
    assert _get(segment.node, "net.ipv4.conf.eth0.arp_ignore") == 1
    assert agent.sync([VIP6, VIP4]) == [] and not agent.drifted([VIP4, VIP6])

    # The last IPv4 VIP goes: its ARP settings go with it, the IPv6 VIP stays.
    changes = {str(c) for c in agent.sync([VIP6])}
    assert f"delete {VIP4}/32 dev lo" in changes
    assert "restore net.ipv4.conf.eth0.arp_ignore (1 -> 0)" in changes
    assert _get(segment.node, "net.ipv4.conf.eth0.arp_ignore") == 0
    assert f"{VIP6}/128" in _lo(segment.node) and f"{VIP4}/32" not in _lo(segment.node)

    # Removed behind the agent's back: seen as drift, put back.
    _ip(segment.node, "addr", "del", f"{VIP6}/128", "dev", "lo")
    assert agent.drifted([VIP6])
    assert [str(c) for c in agent.sync([VIP6])] == [f"add {VIP6}/128 dev lo"]

    assert [str(c) for c in agent.revert()] == [f"delete {VIP6}/128 dev lo"]
    assert f"{VIP6}/128" not in _lo(segment.node)


def test_an_ipv6_vip_already_on_the_node_is_not_ours(segment: Segment, tmp_path: Path) -> None:
    _ip(segment.node, "addr", "add", f"{VIP6}/64", "dev", "eth0", "nodad")
    agent = _agent(segment.node, tmp_path)
    assert [str(c) for c in agent.sync([VIP6])] == [
        f"keep {VIP6}/64 dev eth0 (already on the node: not ours, left alone)"
    ]
    reverted = [str(c) for c in agent.revert()]
    assert reverted == [f"keep {VIP6}/64 dev eth0 (was there before the agent: left alone)"]
    assert f"{VIP6}/128" not in _lo(segment.node)
    assert any(VIP6 in line for line in _ip(segment.node, "-6", "addr", "show", "dev", "eth0").splitlines())
