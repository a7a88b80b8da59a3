"""TUN (IPIP) forwarding by the nftables backend.

VM tier (``kernel_ipvs``: Debian's 6.1 kernel, which has ipip): real HTTP through the
VIP reaches two real servers through kubelvs' IPIP devices, the replies go straight
to the client, devices and ``tun_dev`` read back and go away with their real server.
Machine tier: a kernel without ipip refuses TUN, naming the field, before anything
is changed.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
import subprocess
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kubelvs.backends.nftables import NftablesBackend, elements, readback
from kubelvs.backends.nftables.backend import tun_supported
from kubelvs.backends.nftables.schema import Element
from kubelvs.backends.nftables.tunnel import address_of, device_name, is_ours, list_tunnels
from kubelvs.errors import CapabilityError, PartialApplyError
from kubelvs.kernel.netns import entered
from kubelvs.lab.netlab import Host, Lab
from kubelvs.lab.servers import probe
from kubelvs.model import (
    DesiredState,
    Forward,
    Ownership,
    Protocol,
    RealServer,
    ServiceKey,
    VirtualService,
)
from kubelvs.planner import AddRealServer, apply_ops, changed_services, plan
from kubelvs.roles.director import Director

from .links import prepare
from .strategies import desired_states, make_desired, make_service, written
from .test_ruleset import _as_nft_json as as_nft_json
from .test_ruleset import realservers as rs_lists

VIP = "10.0.0.200"
KEY = ServiceKey(4, Protocol.TCP, ipaddress.ip_address(VIP), 80)
OWN = Ownership(cidrs=(ipaddress.ip_network("10.0.0.0/24"),))


def _links(ns: str) -> dict[str, dict[str, object]]:
    out = subprocess.run(
        ["ip", "-n", ns, "-d", "-j", "link", "show"], capture_output=True, text=True, check=True
    ).stdout
    return {str(link["ifname"]): link for link in json.loads(out)}


def _kvt(ns: str) -> set[str]:
    return {name for name in _links(ns) if name.startswith("kvt")}


def _nft(ns: str, *args: str) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", ns, "nft", *args], capture_output=True, text=True, check=True
    ).stdout


# ---------------------------------------------------------------- pure: the ruleset


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(["rr", "wrr", "sh", "mh"]),
    rs_lists,
    st.sampled_from([Protocol.TCP, Protocol.UDP]),
    st.booleans(),
)
def test_tun_elements_are_the_dr_path_plus_tun_svc_and_parse_back(
    sched: str, rss: list[tuple[str, int, int]], proto: Protocol, port_flag: bool
) -> None:
    flags = frozenset({f"{sched}-port"}) if port_flag and sched in ("sh", "mh") else frozenset()
    tun = make_service("10.0.0.1", 80, sched, [(a, 80, w, Forward.TUN) for a, _, w in rss], proto, flags)
    dr = make_service("10.0.0.1", 80, sched, [(a, 80, w, Forward.DR) for a, _, w in rss], proto, flags)
    (built, with_table, direct), (as_dr, dr_with_table, _) = written(tun), written(dr)
    if not rss:  # no real servers: no method, kept as an (empty) NAT service
        assert built == as_dr
        return
    tun_key = Element("netdev", "tun_svc", ("10.0.0.1", str(proto.value), 80))
    assert with_table == dr_with_table | {tun_key}
    assert built.dr_addresses == frozenset()  # tunnels, not neighbours
    parsed = readback.parse_tables([as_nft_json(with_table)])
    assert parsed.services == {tun.key: tun}
    via_elements = elements.group_elements(with_table, with_value=True)
    assert {k: sorted(v) for k, v in direct.items()} == {k: sorted(v) for k, v in via_elements.items()}


def test_device_names_are_the_address_and_nothing_else_is_ours() -> None:
    assert device_name("10.0.0.11") == "kvt0a00000b" and len(device_name("255.255.255.255")) <= 15
    assert address_of("kvt0a00000b") == "10.0.0.11"
    for foreign in ("kvt0a00000", "kvt0a00000bb", "kvtxyz00000", "tunl0", "kvt0A00000B", "xkvt0a00000b"):
        assert address_of(foreign) is None
        assert not is_ours(foreign)
    # IPv6: the id that marks the real server (its address does not fit in a name).
    assert device_name("fd00::11") == f"kv6{elements.mark_of(ipaddress.ip_address('fd00::11')):08x}"
    assert len(device_name("fd00::11")) == 11 and is_ours(device_name("fd00::11"))
    assert address_of(device_name("fd00::11")) is None and not is_ours("ip6tnl0")


def test_ipv6_tun_elements_are_the_dr6_path_plus_tun6_svc_and_parse_back() -> None:
    rss = [("fd00::11", 80, 1, Forward.TUN), ("fd00::12", 80, 3, Forward.TUN)]
    tun = make_service("fd00::200", 80, "mh", rss)
    dr = make_service("fd00::200", 80, "mh", [(a, p, w, Forward.DR) for a, p, w, _ in rss])
    (built, with_table, _), (_, dr_with_table, _) = written(tun), written(dr)
    assert with_table == dr_with_table | {Element("netdev", "tun6_svc", ("fd00::200", "tcp", 80))}
    assert built.dr_addresses == frozenset()  # tunnels, not neighbours
    # The tunnels' elements (tunnel.py) say which address each id in the slots stands for.
    named = {Element("netdev", "tun6_addr", (elements.mark_of(ipaddress.ip_address(a)),), a) for a, *_ in rss}
    assert readback.parse_tables([as_nft_json(with_table)]).services[tun.key].realservers == ()
    assert readback.parse_tables([as_nft_json(with_table | named)]).services == {tun.key: tun}


# ---------------------------------------------------------------- machine tier


def test_tun_is_refused_without_ipip_before_anything_changes(netns: str) -> None:
    if tun_supported():
        pytest.skip("this kernel has ipip: the VM tests below forward TUN")
    backend = NftablesBackend(netns=netns)
    tun = make_service("10.0.0.1", 80, "rr", [("10.0.1.2", 80, 1, Forward.TUN)])
    nat = make_service("10.0.0.2", 80, "rr", [("10.0.2.2", 8080, 1, Forward.NAT)])
    with pytest.raises(CapabilityError) as err:
        Director(backend).sync(make_desired(nat, tun))
    problems = {p.field: p.reason for p in err.value.problems}
    assert set(problems) == {"services[TCP 10.0.0.1:80].realservers"}
    assert "forward tun needs IPIP tunnels" in problems["services[TCP 10.0.0.1:80].realservers"]
    assert "no ipip support" in problems["services[TCP 10.0.0.1:80].realservers"]
    assert _nft(netns, "list", "ruleset").strip() == ""  # not even the NAT service
    assert _kvt(netns) == set()


# ---------------------------------------------------------------- VM tier: real traffic


@dataclass
class TunLab:
    lab: Lab
    client: Host
    director: Host
    realservers: list[Host]
    backend: NftablesBackend

    def sync(self, *services: VirtualService) -> DesiredState:
        desired = DesiredState(services={s.key: s for s in services}, ownership=OWN)
        Director(self.backend).sync(desired)
        fresh = NftablesBackend(netns=self.director.netns).read()  # a new process' view
        assert fresh.services == desired.services
        assert plan(desired, fresh).ops == ()
        return desired

    def service(self, *indices: int, scheduler: str = "rr") -> VirtualService:
        rss = [RealServer(ipaddress.ip_address(self.realservers[i].ip), 80, 1, Forward.TUN) for i in indices]
        return VirtualService(key=KEY, scheduler=scheduler).with_realservers(rss)

    def ask(self, count: int) -> Counter[str]:
        with entered(self.client.netns):
            answers = probe(VIP, 80, count=count, timeout=10.0)
        for a in answers:
            assert a.client.split(":")[0] == self.client.ip  # no SNAT
            assert a.local == f"{VIP}:80"  # decapsulated and delivered to the VIP on lo
        return Counter(a.server for a in answers)


def _stat(ns: str, dev: str, direction: str) -> int:
    return int(_links_stats(ns, dev)[direction]["packets"])


def _links_stats(ns: str, dev: str) -> dict[str, dict[str, int]]:
    out = subprocess.run(
        ["ip", "-n", ns, "-s", "-j", "link", "show", "dev", dev], capture_output=True, text=True, check=True
    )
    stats: dict[str, dict[str, int]] = json.loads(out.stdout)[0]["stats64"]
    return stats


@pytest.fixture(scope="module")
def tunlab() -> Iterator[TunLab]:
    """client 10.0.0.10, director 10.0.0.2 (+ VIP on eth0), rs1/rs2 10.0.0.11-12 with the
    VIP on lo and tunl0 up, rp_filter 0 (what ``kubelvs node`` does in tun mode)."""
    if not tun_supported():
        pytest.skip("this kernel has no ipip")
    lab = Lab(f"kubelvs-t{secrets.token_hex(3)}")
    backend: NftablesBackend | None = None
    try:
        client = lab.host("cl", ["10.0.0.10/24"])
        director = lab.host("dir", ["10.0.0.2/24", f"{VIP}/32"])
        realservers = []
        for i in range(2):
            role = f"rs{i + 1}"
            rs = lab.host(role, [f"10.0.0.{11 + i}/24"])
            lab.run(rs.netns, "ip", "addr", "add", f"{VIP}/32", "dev", "lo")
            for conf in ("all", "eth0"):
                lab.sysctl(rs.netns, f"net.ipv4.conf.{conf}.arp_ignore", 1)
                lab.sysctl(rs.netns, f"net.ipv4.conf.{conf}.arp_announce", 2)
            lab.run(rs.netns, "ip", "link", "set", "tunl0", "up")
            for conf in ("all", "default", "eth0", "tunl0"):
                lab.sysctl(rs.netns, f"net.ipv4.conf.{conf}.rp_filter", 0)
            lab.start_python(rs.netns, "kubelvs.lab.servers", "http", "--name", role, "--port", "80")
            realservers.append(rs)
        for rs in realservers:
            lab.wait_listening(rs.netns, 80)
        # Counts what reaches the director from the VIP: the real servers' replies, were
        # they to come this way (a test-owned table, not kubelvs').
        lab.run(
            director.netns,
            "nft",
            "-f",
            "-",
            timeout=300,
            input=(
                "table netdev probe {\n"
                '  chain c { type filter hook ingress device "eth0" priority -500;'
                f" ip saddr {VIP} counter; }}\n"
                "}\n"
            ),
        )
        backend = NftablesBackend(netns=director.netns)
        yield TunLab(lab, client, director, realservers, backend)
    finally:
        if backend is not None:
            backend.close()
        lab.teardown()


def _replies_seen_by_director(t: TunLab) -> int:
    out = _nft(t.director.netns, "-j", "list", "chain", "netdev", "probe", "c")
    for item in json.loads(out)["nftables"]:
        if "rule" in item:
            for expr in item["rule"]["expr"]:
                if "counter" in expr:
                    return int(expr["counter"]["packets"])
    raise AssertionError("no counter in the probe chain")


@pytest.mark.kernel_ipvs
def test_http_through_the_vip_reaches_both_realservers_through_ipip(tunlab: TunLab) -> None:
    t = tunlab
    rs1, rs2 = (rs.ip for rs in t.realservers)
    t.sync(t.service(0, 1))
    # One IPIP device per real server, ours, from our address on the way to it.
    links = _links(t.director.netns)
    for rip in (rs1, rs2):
        link = links[device_name(rip)]
        data = link["linkinfo"]["info_data"]  # type: ignore[index]
        assert link["linkinfo"]["info_kind"] == "ipip"  # type: ignore[index]
        assert (data["remote"], data["local"], data["link"]) == (rip, "10.0.0.2", "eth0")
        assert "UP" in link["flags"]  # type: ignore[operator]
    assert _kvt(t.director.netns) == {device_name(rs1), device_name(rs2)}
    tun_dev = _nft(t.director.netns, "list", "map", "netdev", "kubelvs", "tun_dev")
    assert f'"{device_name(rs1)}"' in tun_dev and f'"{device_name(rs2)}"' in tun_dev

    before = {rs.ip: _stat(rs.netns, "tunl0", "rx") for rs in t.realservers}
    replies_before = _replies_seen_by_director(t)
    # 60 flows: DR-style per-flow hash; all on one of two real servers: 2 in 10^18.
    tally = t.ask(60)
    assert set(tally) == {"rs1", "rs2"} and sum(tally.values()) == 60
    for rs in t.realservers:  # every packet of those flows came out of a tunnel
        assert _stat(rs.netns, "tunl0", "rx") >= before[rs.ip] + 3 * tally[f"rs{t.realservers.index(rs) + 1}"]
    # The replies went from the real servers straight to the client.
    assert _replies_seen_by_director(t) == replies_before
    stats = t.backend.read().stats
    for member in t.service(0, 1).realservers:
        assert stats[(KEY, member.key)].in_packets > 0 and stats[(KEY, member.key)].out_packets == 0


@pytest.mark.kernel_ipvs
def test_devices_follow_the_realservers_and_are_removed_with_them(tunlab: TunLab) -> None:
    t = tunlab
    rs1, rs2 = (rs.ip for rs in t.realservers)
    t.sync(t.service(0, 1, scheduler="mh"))
    assert _kvt(t.director.netns) == {device_name(rs1), device_name(rs2)}
    t.sync(t.service(0, scheduler="mh"))  # rs2 removed
    assert _kvt(t.director.netns) == {device_name(rs1)}
    assert device_name(rs2) not in _nft(t.director.netns, "list", "map", "netdev", "kubelvs", "tun_dev")
    assert set(t.ask(10)) == {"rs1"}
    # A device deleted behind our back: the next full sync (refresh) makes it again.
    subprocess.run(["ip", "-n", t.director.netns, "link", "del", device_name(rs1)], check=True)
    t.sync(t.service(0, scheduler="mh"))
    assert _kvt(t.director.netns) == {device_name(rs1)}
    assert set(t.ask(10)) == {"rs1"}
    # A foreign ipip device, and a foreign link named like ours but not ipip, are never touched.
    ns = t.director.netns
    subprocess.run(
        ["ip", "-n", ns, "link", "add", "other", "type", "ipip", "remote", "10.0.0.99", "local", "10.0.0.2"],
        check=True,
    )
    subprocess.run(
        ["ip", "-n", ns, "link", "add", "kvt0a0000ff", "type", "veth", "peer", "name", "kvpeer"], check=True
    )
    t.sync()  # the service goes: so do its devices, and nothing else
    assert _kvt(ns) == {"kvt0a0000ff"}
    assert "other" in _links(ns)
    subprocess.run(["ip", "-n", ns, "link", "del", "other"], check=True)
    subprocess.run(["ip", "-n", ns, "link", "del", "kvt0a0000ff"], check=True)
    assert "elements" not in _nft(t.director.netns, "list", "map", "netdev", "kubelvs", "tun_dev")


@pytest.mark.kernel_ipvs
def test_a_tun_realserver_without_a_route_is_left_out_and_the_rest_applied(tunlab: TunLab) -> None:
    """No route to one TUN real server: the operation adding it is reported with the
    reason; its service, its other real server and the rest of the plan are applied,
    and no device is made for the unreachable one."""
    t = tunlab
    t.sync(t.service(0))
    bad = VirtualService(
        key=ServiceKey(4, Protocol.TCP, ipaddress.ip_address(VIP), 443), scheduler="rr"
    ).with_realservers(
        [
            RealServer(ipaddress.ip_address("10.0.0.11"), 443, 1, Forward.TUN),
            RealServer(ipaddress.ip_address("192.0.2.7"), 443, 1, Forward.TUN),
        ]
    )
    good = t.service(0, 1)
    before = t.backend.read()
    ops = plan(DesiredState(services={good.key: good, bad.key: bad}, ownership=OWN), before).ops
    with pytest.raises(PartialApplyError) as err:
        t.backend.apply(ops)
    (failure,) = err.value.failures
    assert ops[failure.index] == AddRealServer(bad.key, bad.realservers[1])
    assert failure.reason.startswith("TUN real server 192.0.2.7: no route to 192.0.2.7")
    applied = [op for i, op in enumerate(ops) if i != failure.index]
    assert NftablesBackend(netns=t.director.netns).read().services == apply_ops(before, applied).services
    assert _kvt(t.director.netns) == {device_name("10.0.0.11"), device_name("10.0.0.12")}
    assert set(t.ask(20)) == {"rs1", "rs2"}
    t.sync()


# ---------------------------------------------------------------- VM tier: read back


# Half the services tunnel (IPIP, or ip6ip6 for an IPv6 service); the others are DR or
# NAT, next to them in the same state.
TUN_STATES = desired_states((Forward.TUN, Forward.TUN, Forward.DR, Forward.NAT))


@pytest.mark.kernel_ipvs
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(TUN_STATES, min_size=1, max_size=4), incremental=st.booleans())
def test_read_back_with_tun_equals_the_last_desired_state(
    make_netns: Callable[[str], str], steps: list[DesiredState], incremental: bool
) -> None:
    if not tun_supported():
        pytest.skip("this kernel has no ipip")
    ns = make_netns(f"tun{secrets.token_hex(2)}")
    try:
        prepare(ns)
        backend = NftablesBackend(netns=ns)
        director = Director(backend)
        previous: DesiredState | None = None
        for desired in steps:
            changed = changed_services(previous, desired) if incremental and previous is not None else None
            director.sync(desired, changed=changed)
            previous = desired
            fresh = NftablesBackend(netns=ns).read()
            assert fresh.services == desired.services
            assert plan(desired, fresh).ops == ()
            assert director.observed is not None and director.observed.services == fresh.services
            # Exactly the TUN real servers have a device, and tun_dev names each of them.
            tun = {
                str(rs.address)
                for s in desired.services.values()
                for rs in s.realservers
                if rs.forward is Forward.TUN
            }
            assert set(list_tunnels(ns)) == tun
            listing = subprocess.run(
                ["ip", "netns", "exec", ns, "nft", "-j", "list", "table", "netdev", "kubelvs"],
                capture_output=True,
                text=True,
                check=False,
            )
            by_nft = readback.parse_tables([json.loads(listing.stdout)] if listing.returncode == 0 else [])
            names = {e.value for name in ("tun_dev", "tun6_dev") for e in by_nft.by_set.get(name, ())}
            assert names == {device_name(rip) for rip in tun}
            assert {
                s for s in by_nft.services.values() if any(r.forward is Forward.TUN for r in s.realservers)
            } == {
                s for s in desired.services.values() if any(r.forward is Forward.TUN for r in s.realservers)
            }
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
