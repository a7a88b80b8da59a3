"""The kernel-interface layer (kernel.iproute, kernel.sysctl) against the real kernel.

What the layer reads is compared with what ``ip -j`` (iproute2, an independent
implementation) prints for the same namespace, and what it changes is read back with
``ip``. ipip and dummy exist only in the VM kernel (``kernel_ipvs``).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest

from kubelvs.errors import KernelError
from kubelvs.kernel import iproute, sysctl
from kubelvs.kernel.netns import entered

pytestmark = pytest.mark.netns


def _ip(ns: str, *args: str) -> str:
    return subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True, text=True).stdout


def _ipj(ns: str, *args: str) -> list[dict[str, Any]]:
    out = json.loads(_ip(ns, "-j", *args) or "[]")
    assert isinstance(out, list)
    return out


@pytest.fixture
def pair(make_netns: Callable[[str], str]) -> tuple[str, str]:
    """Namespaces a (10.9.0.1/24, default route via b) and b (10.9.0.2/24) joined by a
    veth pair eth0 <-> eth0, made with ip(8) so that the layer only reads here."""
    a, b = make_netns("a"), make_netns("b")
    _ip(a, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", b)
    for ns, address in ((a, "10.9.0.1/24"), (b, "10.9.0.2/24")):
        _ip(ns, "addr", "add", address, "dev", "eth0")
        _ip(ns, "link", "set", "eth0", "up")
    return a, b


def _has_link_kind(kind: str) -> bool:
    return (
        os.path.exists(f"/sys/module/{kind}")
        or subprocess.run(["modprobe", "-q", kind], capture_output=True, check=False).returncode == 0
    )


# ---------------------------------------------------------------- links


def _oracle_links(ns: str) -> dict[str, dict[str, Any]]:
    return {link["ifname"]: link for link in _ipj(ns, "-d", "link", "show")}


def _assert_links_match(ns: str) -> None:
    seen = iproute.links(ns)
    oracle = _oracle_links(ns)
    assert sorted(link.name for link in seen) == sorted(oracle)
    names = {link.index: link.name for link in seen}
    for link in seen:
        want = oracle[link.name]
        assert link.index == want["ifindex"]
        assert link.kind == (want.get("linkinfo") or {}).get("info_kind", "")
        assert link.link_type == want["link_type"]
        if link.link_type not in ("tunnel6", "ip6gre"):  # the layer does not read their 16-byte addresses
            assert link.mac == want.get("address", "")
        assert link.up == ("UP" in want["flags"])
        assert link.mtu == want["mtu"]
        assert names.get(link.master) == want.get("master")


def test_links_read_as_ip_link_shows_them(make_netns: Callable[[str], str]) -> None:
    ns = make_netns("links")
    _ip(ns, "link", "add", "br0", "type", "bridge")
    _ip(ns, "link", "add", "v0", "type", "veth", "peer", "name", "v1")
    _ip(ns, "link", "set", "v1", "master", "br0")
    _ip(ns, "link", "set", "v0", "mtu", "1400", "up")
    _ip(ns, "link", "add", "mv0", "link", "v0", "type", "macvlan")
    _assert_links_match(ns)
    v0 = iproute.link(ns, "v0")
    assert v0 is not None and v0.kind == "veth" and v0.up and v0.mtu == 1400
    assert iproute.link(ns, "nope0") is None


def test_links_made_by_the_layer_as_ip_link_reads_them(make_netns: Callable[[str], str]) -> None:
    sw, host = make_netns("sw"), make_netns("host")
    iproute.add_bridge(sw, "br0")
    iproute.add_veth(sw, "p1", "eth0", peer_netns=host)
    iproute.set_master(sw, "p1", "br0")
    for name in ("br0", "p1"):
        iproute.set_link_up(sw, name)
    iproute.set_link_up(host, "eth0")
    sw_links = _oracle_links(sw)
    assert sw_links["br0"]["linkinfo"]["info_kind"] == "bridge" and "UP" in sw_links["br0"]["flags"]
    assert sw_links["p1"]["master"] == "br0" and "UP" in sw_links["p1"]["flags"]
    assert sw_links["p1"]["linkinfo"]["info_kind"] == "veth"
    host_eth0 = _oracle_links(host)["eth0"]  # the peer went to the other namespace
    assert "UP" in host_eth0["flags"] and "eth0" not in sw_links
    _assert_links_match(sw)
    _assert_links_match(host)

    iproute.add_veth(host, "x0", "x1")  # both ends in one namespace
    assert {"x0", "x1"} <= set(_oracle_links(host))
    iproute.set_link_down(host, "eth0")
    assert "UP" not in _oracle_links(host)["eth0"]["flags"]
    iproute.delete_link(host, "x0")  # deleting one end of a veth pair removes both
    assert not {"x0", "x1"} & set(_oracle_links(host))


# ---------------------------------------------------------------- addresses


def _oracle_addresses(ns: str, *dev: str) -> set[tuple[str, str, int, str]]:
    return {
        (link["ifname"], a["local"], a["prefixlen"], a["scope"])
        for link in _ipj(ns, "addr", "show", *(("dev", dev[0]) if dev else ()))
        for a in link.get("addr_info", [])
    }


def test_addresses_read_as_ip_addr_shows_them(pair: tuple[str, str]) -> None:
    a, _ = pair
    _ip(a, "addr", "add", "10.240.0.201/32", "dev", "lo")
    _ip(a, "addr", "add", "10.9.0.77/24", "dev", "eth0")  # a secondary
    _ip(a, "addr", "add", "192.0.2.1/32", "dev", "eth0", "scope", "link")
    _ip(a, "addr", "add", "2001:db8::1/64", "dev", "eth0", "nodad")
    seen = {(x.device, x.address, x.prefixlen, x.scope) for x in iproute.addresses(a)}
    assert seen == _oracle_addresses(a)
    assert ("lo", "10.240.0.201", 32, "global") in seen and ("eth0", "192.0.2.1", 32, "link") in seen
    on_eth0 = iproute.addresses(a, "eth0")
    assert {(x.device, x.address, x.prefixlen, x.scope) for x in on_eth0} == _oracle_addresses(a, "eth0")
    # In the kernel's order, as ip prints it (the primary before its secondaries).
    shown = [
        f"{a['local']}/{a['prefixlen']}"
        for link in _ipj(a, "addr", "show", "dev", "eth0")
        for a in link["addr_info"]
    ]
    assert [x.cidr for x in on_eth0] == shown


def test_add_and_delete_address_as_ip_addr_reads_them(pair: tuple[str, str]) -> None:
    a, _ = pair
    iproute.add_address(a, "lo", "10.240.0.201/32")
    iproute.add_address(a, "eth0", "2001:db8::5/64")
    assert ("lo", "10.240.0.201", 32, "global") in _oracle_addresses(a, "lo")
    assert any(x[1] == "2001:db8::5" and x[2] == 64 for x in _oracle_addresses(a, "eth0"))
    iproute.delete_address(a, "lo", "10.240.0.201/32")
    assert ("lo", "10.240.0.201", 32, "global") not in _oracle_addresses(a, "lo")
    with pytest.raises(
        KernelError, match=r"delete address 10\.240\.0\.201/32 from lo in network namespace .*: "
    ):
        iproute.delete_address(a, "lo", "10.240.0.201/32")  # not there any more


# ---------------------------------------------------------------- routes


def test_route_get_answers_as_ip_route_get(pair: tuple[str, str]) -> None:
    a, _ = pair
    _ip(a, "route", "add", "default", "via", "10.9.0.2")
    for dst in ("10.9.0.2", "10.9.0.1", "203.0.113.7", "127.0.0.1"):
        (want,) = _ipj(a, "route", "get", dst)
        got = iproute.route_get(a, dst)
        assert got.destination == dst
        assert got.type == want.get("type", "unicast")
        assert got.device == want.get("dev", "")
        assert got.gateway == want.get("gateway")
        assert got.prefsrc == want.get("prefsrc")
    assert iproute.route_get(a, "203.0.113.7").gateway == "10.9.0.2"
    assert iproute.route_get(a, "10.9.0.1").type == "local"


def test_default_route_device_as_ip_route_shows_it(pair: tuple[str, str]) -> None:
    a, _ = pair
    assert _ipj(a, "route", "show", "default") == [] and iproute.default_route_device(a) is None
    _ip(a, "route", "add", "default", "via", "10.9.0.2", "dev", "eth0")
    (want,) = _ipj(a, "route", "show", "default")
    assert iproute.default_route_device(a) == want["dev"] == "eth0"


def test_route_get_without_a_route_is_a_clear_error(pair: tuple[str, str]) -> None:
    a, _ = pair
    with pytest.raises(
        KernelError, match=r"^route get 203\.0\.113\.7 in network namespace .*: .*unreachable"
    ):
        iproute.route_get(a, "203.0.113.7")
    _ip(a, "route", "add", "blackhole", "198.51.100.0/24")
    refused = subprocess.run(["ip", "-n", a, "route", "get", "198.51.100.9"], capture_output=True, text=True)
    assert refused.returncode != 0  # ip is refused too
    with pytest.raises(KernelError, match=r"^route get 198\.51\.100\.9 in network namespace .*: .+"):
        iproute.route_get(a, "198.51.100.9")
    with pytest.raises(KernelError, match=r"'not-an-ip' is not an IPv4 or IPv6 address"):
        iproute.route_get(a, "not-an-ip")


# ---------------------------------------------------------------- neighbours


def _wait_neighbour(
    ns: str, address: str, ready: Callable[[list[iproute.NeighbourEntry]], bool]
) -> list[iproute.NeighbourEntry]:
    deadline = time.monotonic() + 5
    while True:
        entries = iproute.neighbours(ns, device="eth0", address=address)
        if ready(entries) or time.monotonic() > deadline:
            return entries
        time.sleep(0.05)


def test_probe_resolves_a_neighbour_read_as_ip_neigh_shows_it(pair: tuple[str, str]) -> None:
    a, b = pair
    assert iproute.neighbours(a, device="eth0", address="10.9.0.2") == []
    iproute.probe_neighbour(a, "10.9.0.2", "eth0")  # no packet of ours: the kernel asks by ARP
    (entry,) = _wait_neighbour(a, "10.9.0.2", lambda e: bool(e) and e[0].usable)
    peer_mac = _oracle_links(b)["eth0"]["address"]
    assert entry.mac == peer_mac and entry.device == "eth0" and entry.usable
    (want,) = _ipj(a, "neigh", "show", "10.9.0.2", "dev", "eth0")
    assert entry.mac == want["lladdr"] and entry.states == frozenset(want["state"])
    # The same IPv4 table as ip -4 neigh shows for the whole namespace (IPv6 multicast
    # entries come and go with MLD on their own: not compared).
    shown = {
        (n["dst"], n["dev"], n.get("lladdr"), frozenset(n["state"])) for n in _ipj(a, "-4", "neigh", "show")
    }
    seen = {
        (n.address, n.device, n.mac, n.states)
        for n in iproute.neighbours(a)
        if n.states and ":" not in n.address
    }
    assert seen == shown


def test_probe_of_an_absent_host_leaves_an_unusable_entry(pair: tuple[str, str]) -> None:
    a, _ = pair
    iproute.probe_neighbour(a, "10.9.0.99", "eth0")
    (entry,) = _wait_neighbour(a, "10.9.0.99", lambda e: bool(e) and "INCOMPLETE" in e[0].states)
    assert entry.mac is None and not entry.usable
    (want,) = _ipj(a, "neigh", "show", "10.9.0.99", "dev", "eth0")
    assert entry.states == frozenset(want["state"]) and "lladdr" not in want


def test_resolve_on_link_finds_the_device_both_macs_and_the_source(pair: tuple[str, str]) -> None:
    a, b = pair
    found = iproute.resolve_on_link(a, "10.9.0.2")  # no entry yet: asked by ARP, then read
    own, peer = _oracle_links(a)["eth0"], _oracle_links(b)["eth0"]
    assert found == iproute.OnLink(
        "10.9.0.2", "eth0", own["ifindex"], own["address"], peer["address"], "10.9.0.1"
    )
    (entry,) = _ipj(a, "neigh", "show", "10.9.0.2", "dev", "eth0")
    assert entry["lladdr"] == peer["address"]


def test_resolve_on_link_names_what_stands_in_the_way(pair: tuple[str, str]) -> None:
    a, _ = pair
    with pytest.raises(
        KernelError, match=r"^10\.9\.0\.99 does not answer ARP on eth0 \(is the real server up\?\)$"
    ):
        iproute.resolve_on_link(a, "10.9.0.99", timeout=0.3)
    _ip(a, "route", "add", "198.51.100.0/24", "via", "10.9.0.2")
    with pytest.raises(
        KernelError, match=r"^198\.51\.100\.7 is reached via gateway 10\.9\.0\.2, not on a link"
    ):
        iproute.resolve_on_link(a, "198.51.100.7")
    with pytest.raises(
        KernelError,
        match=r"^no route to 203\.0\.113\.7 \(route get 203\.0\.113\.7 in network namespace .+: .+\)$",
    ):
        iproute.resolve_on_link(a, "203.0.113.7")
    # Our own address: the kernel's route goes through lo.
    with pytest.raises(
        KernelError, match=r"^10\.9\.0\.1 is reached through lo, which is not an Ethernet device$"
    ):
        iproute.resolve_on_link(a, "10.9.0.1")


# ---------------------------------------------------------------- errors


def test_a_missing_namespace_is_a_clear_kernel_error(make_netns: Callable[[str], str]) -> None:
    missing = make_netns("gone")
    subprocess.run(["ip", "netns", "del", missing], check=True)
    calls: list[Callable[[], object]] = [
        lambda: iproute.links(missing),
        lambda: iproute.link(missing, "lo"),
        lambda: iproute.addresses(missing),
        lambda: iproute.add_address(missing, "lo", "10.0.0.1/32"),
        lambda: iproute.route_get(missing, "10.0.0.1"),
        lambda: iproute.default_route_device(missing),
        lambda: iproute.neighbours(missing),
        lambda: sysctl.read_in(missing, "net.ipv4.ip_forward"),
        lambda: sysctl.write_in(missing, "net.ipv4.ip_forward", 1),
    ]
    for call in calls:
        with pytest.raises(KernelError, match=rf"^network namespace '{missing}' does not exist$"):
            call()


def test_a_missing_device_is_a_clear_kernel_error(pair: tuple[str, str]) -> None:
    a, _ = pair
    where = rf"device 'eth9' does not exist in network namespace {a}$"
    for call in (
        lambda: iproute.addresses(a, "eth9"),
        lambda: iproute.add_address(a, "eth9", "10.0.0.1/32"),
        lambda: iproute.set_link_up(a, "eth9"),
        lambda: iproute.delete_link(a, "eth9"),
        lambda: iproute.set_master(a, "eth0", "eth9"),
        lambda: iproute.neighbours(a, device="eth9"),
        lambda: iproute.probe_neighbour(a, "10.9.0.2", "eth9"),
    ):
        with pytest.raises(KernelError, match=where):
            call()


def test_the_kernels_refusal_names_the_request_and_its_reason(pair: tuple[str, str]) -> None:
    a, _ = pair
    with pytest.raises(
        KernelError, match=rf"^add address 10\.9\.0\.1/24 to eth0 in network namespace {a}: .+"
    ) as err:
        iproute.add_address(a, "eth0", "10.9.0.1/24")  # already there
    assert err.value.__cause__ is not None  # raised from the netlink error
    with pytest.raises(KernelError, match=r"'10\.9\.0\.300/24' is not an address with a prefix length"):
        iproute.add_address(a, "eth0", "10.9.0.300/24")
    with pytest.raises(KernelError, match=r"^add link eth0 type veth peer p0 in network namespace .*: .+"):
        iproute.add_veth(a, "eth0", "p0")  # the name is taken


def test_a_link_type_the_kernel_lacks_is_named(make_netns: Callable[[str], str]) -> None:
    if _has_link_kind("dummy"):
        pytest.skip("this kernel has dummy (the VM tier tests it)")
    ns = make_netns("nodummy")
    with pytest.raises(iproute.LinkKindUnsupported, match="this kernel has no dummy link type") as err:
        iproute.add_dummy(ns, "kubelvs0")
    assert err.value.kind == "dummy" and iproute.link(ns, "kubelvs0") is None


# ---------------------------------------------------------------- where the socket is


def test_calls_from_a_running_event_loop_read_the_callers_namespace(pair: tuple[str, str]) -> None:
    a, _ = pair
    outside = iproute.addresses(a)

    async def inside() -> tuple[list[iproute.Address], list[iproute.Address]]:
        with entered(a):  # netns None: the calling thread's namespace, also from the worker thread
            here = iproute.addresses(None)
        return iproute.addresses(a), here

    by_name, by_thread = asyncio.run(inside())
    assert by_name == outside == by_thread
    assert any(x.address == "10.9.0.1" for x in by_thread)


# ---------------------------------------------------------------- sysctls


def test_sysctls_in_a_namespace_as_sysctl_8_reads_them(pair: tuple[str, str]) -> None:
    a, _ = pair
    sysctl.write_in(a, "net.ipv4.conf.eth0.arp_ignore", 1)
    sysctl.write_in(a, "net/ipv4/conf/eth0/arp_announce", 2)
    out = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            a,
            "sysctl",
            "-n",
            "net.ipv4.conf.eth0.arp_ignore",
            "net.ipv4.conf.eth0.arp_announce",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert out.split() == ["1", "2"]
    assert sysctl.read_in(a, "net.ipv4.conf.eth0.arp_ignore") == 1
    assert sysctl.read_in(a, "net.ipv4.conf.eth9.arp_ignore") is None
    assert {"all", "default", "eth0", "lo"} == set(sysctl.conf_devices(a))
    with pytest.raises(
        KernelError,
        match=rf"^sysctl net\.ipv4\.conf\.eth9\.arp_ignore does not exist in network namespace {a}$",
    ):
        sysctl.write_in(a, "net.ipv4.conf.eth9.arp_ignore", 1)
    with pytest.raises(
        KernelError,
        match=rf"^cannot set sysctl net\.ipv4\.tcp_syn_retries=0 in network namespace {a}: "
        "Invalid argument$",
    ):
        sysctl.write_in(a, "net.ipv4.tcp_syn_retries", 0)  # its minimum is 1


# ---------------------------------------------------------------- VM tier: dummy and ipip


@pytest.mark.kernel_ipvs
def test_dummy_made_and_read_back_as_ip_link_shows_it(make_netns: Callable[[str], str]) -> None:
    ns = make_netns("dummy")
    iproute.add_dummy(ns, "kubelvs0")
    iproute.set_link_up(ns, "kubelvs0")
    want = _oracle_links(ns)["kubelvs0"]
    assert want["linkinfo"]["info_kind"] == "dummy"
    _assert_links_match(ns)
    iproute.delete_link(ns, "kubelvs0")
    assert "kubelvs0" not in _oracle_links(ns)


@pytest.mark.kernel_ipvs
def test_ipip_made_and_read_back_as_ip_link_shows_it(pair: tuple[str, str]) -> None:
    a, _ = pair
    iproute.add_ipip(a, "kvt0a090002", remote="10.9.0.2", local="10.9.0.1", underlay="eth0")
    iproute.set_link_up(a, "kvt0a090002")
    want = _oracle_links(a)["kvt0a090002"]
    data = want["linkinfo"]["info_data"]
    assert want["linkinfo"]["info_kind"] == "ipip"
    assert (data["remote"], data["local"], data["link"]) == ("10.9.0.2", "10.9.0.1", "eth0")
    got = iproute.link(a, "kvt0a090002")
    eth0 = iproute.link(a, "eth0")
    assert got is not None and eth0 is not None
    assert got.ipip == iproute.IpipParams(remote="10.9.0.2", local="10.9.0.1", underlay=eth0.index)
    assert got.kind == "ipip" and got.link_type == "ipip" and got.up
    tunl0 = iproute.link(a, "tunl0")  # the ipip module's fallback device
    assert tunl0 is not None and tunl0.ipip is not None and tunl0.ipip.remote == "0.0.0.0"
    _assert_links_match(a)
    iproute.delete_link(a, "kvt0a090002")
    assert "kvt0a090002" not in _oracle_links(a)
