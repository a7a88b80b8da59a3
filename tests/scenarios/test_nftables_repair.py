"""nftables robustness with real traffic: damage to the tables is repaired by the next
full sync and traffic flows again; a real server that cannot be reached is left out
of a plan without holding back the rest of it.

(IPVS has no tables of ours to damage, and resolves real servers' MACs in the kernel:
these are nftables-specific. The same cases without traffic, and many more kinds of
damage, are in tests/nftables/test_repair.py.)
"""

from __future__ import annotations

import ipaddress
import json

import pytest

from kubelvs.backends.nftables.elements import mark_of
from kubelvs.errors import PartialApplyError
from kubelvs.kernel.netns import entered
from kubelvs.lab.servers import http_get
from kubelvs.model import DesiredState, Forward, Ownership, Protocol, RealServer, ServiceKey, VirtualService
from kubelvs.planner import apply_ops, plan

from .conftest import CLIENT_SOURCES, VIP, Env

pytestmark = pytest.mark.netns

OWNED = Ownership(cidrs=(ipaddress.ip_network("10.0.0.0/24"),))


def _only_nftables(env: Env) -> None:
    if env.backend_name != "nftables":
        pytest.skip("nftables-specific")


def _refused(env: Env, source: str = "") -> bool:
    """True when a request to the VIP is not served by a real server (the director's own
    stack answers it with a reset, or nothing answers)."""
    try:
        with entered(env.client.netns):
            http_get(env.vip, 80, source=source, timeout=2.0)
    except OSError:
        return True
    return False


def _ifindex(env: Env, device: str) -> int:
    out = env.lab.run(env.director.netns, "ip", "-j", "link", "show", device).stdout
    return int(json.loads(out)[0]["ifindex"])


#: ``{dr}``: the DR maps of the environment's family (``dr``, ``dr6``); ``{nat}``: its NAT
#: table's family (``ip``, ``ip6``).
DR_DAMAGE = {
    "netdev table deleted": "delete table netdev kubelvs",
    "ingress hook deleted": "delete chain netdev kubelvs dr_in_{eth0}",
    "a neighbour's MAC deleted": "delete element netdev kubelvs {dr}_mac {{ {mark} }}",
    "the forwarding rule deleted": "flush chain netdev kubelvs {dr}_out",
}
NAT_DAMAGE = {
    "NAT table deleted": "delete table {nat} kubelvs",
    "prerouting hook deleted": "delete chain {nat} kubelvs nat_pre",
    "the scheduler chain's rules deleted": "flush chain {nat} kubelvs nat_rr_3",
}
#: Damage to a shared NAT table (an mh service on one port: table 1, a map and a chain).
NAT_TABLE_DAMAGE = {
    "the table's chain lost its rules": "flush chain {nat} kubelvs nat_mh_t1",
    "the table's slots deleted": "flush map {nat} kubelvs nat_tab_1",
    "the service's port deleted": "delete element {nat} kubelvs nat_rport {{ {vip} . tcp . 80 }}",
    "the service's entry deleted": "delete element {nat} kubelvs nat_svc {{ {vip} . tcp . 80 }}",
}


@pytest.mark.parametrize("damage", list(DR_DAMAGE) + list(NAT_DAMAGE) + list(NAT_TABLE_DAMAGE))
def test_damage_stops_traffic_and_the_next_full_sync_restores_it(env: Env, damage: str) -> None:
    _only_nftables(env)
    nat = {**NAT_DAMAGE, **NAT_TABLE_DAMAGE}
    script = DR_DAMAGE.get(damage) if env.mode is Forward.DR else nat.get(damage)
    if script is None:
        pytest.skip(f"{damage}: not a {env.mode.value} table")
    # mh hashes the client's address: requests from many addresses reach every real server.
    maglev = damage in NAT_TABLE_DAMAGE
    clients = env.sources(CLIENT_SOURCES) if maglev else ("",)
    desired = env.sync(env.service("mh" if maglev else "rr", [1, 1, 1]))
    assert set(env.tally(env.ask(1 if maglev else 30, sources=clients))) == {"rs1", "rs2", "rs3"}
    mark = mark_of(ipaddress.ip_address(env.rs_ip(0)))
    names = {"dr": "dr", "nat": "ip"} if env.family == 4 else {"dr": "dr6", "nat": "ip6"}
    script = script.format(eth0=_ifindex(env, "eth0"), mark=mark, vip=env.vip, **names)
    env.lab.run(env.director.netns, "nft", script)
    # Broken now: every request fails - with one MAC gone, every one hashed to rs1: one
    # of 40 client addresses misses rs1 with probability (2/3)^40, about 1e-7.
    sources = env.sources(CLIENT_SOURCES) if "MAC" in damage else [""]
    assert any(_refused(env, source) for source in sources)
    assert env.backend.changed_elsewhere()
    env.sync(*desired.services.values())  # a full sync: refresh, read, plan, apply
    assert set(env.tally(env.ask(1 if maglev else 30, sources=clients))) == {"rs1", "rs2", "rs3"}
    assert not env.backend.changed_elsewhere()


def test_an_unreachable_dr_realserver_does_not_hold_back_a_healthy_service(dr_env: Env) -> None:
    """A DR real server nobody answers ARP for, in a plan beside a healthy new service:
    the healthy service is programmed and serves, the rest of the broken one too, and
    the one operation that needs the MAC is reported with the reason."""
    env = dr_env
    _only_nftables(env)
    env.sync()
    healthy = env.service("rr", [1, 1, 1])
    broken_key = ServiceKey(4, Protocol.TCP, ipaddress.ip_address(VIP), 8080)
    nobody = RealServer(ipaddress.ip_address("10.0.0.99"), 8080, 1, Forward.DR)
    somebody = RealServer(ipaddress.ip_address(env.rs_ip(1)), 8080, 1, Forward.DR)
    broken = VirtualService(key=broken_key, scheduler="rr").with_realservers([nobody, somebody])
    desired = DesiredState(services={healthy.key: healthy, broken.key: broken}, ownership=OWNED)
    before = env.backend.read()
    ops = plan(desired, before).ops
    with pytest.raises(PartialApplyError) as err:
        env.backend.apply(ops)
    (failure,) = err.value.failures
    assert ops[failure.index] == next(op for op in ops if getattr(op, "realserver", None) == nobody)
    assert (
        failure.reason
        == "DR real server 10.0.0.99: 10.0.0.99 does not answer ARP on eth0 (is the real server up?)"
    )
    assert str(err.value).startswith(f"{len(ops) - 1} of {len(ops)} operation(s) applied; 1 not applied:")
    applied = [op for i, op in enumerate(ops) if i != failure.index]
    after = env.backend.read()
    assert after.services == apply_ops(before, applied).services
    assert after.services[broken_key].realservers == (somebody,)
    assert set(env.tally(env.ask(30))) == {"rs1", "rs2", "rs3"}
    assert not env.backend.changed_elsewhere()
    env.sync()
