"""The nftables backend against the machine's kernel, each test in a fresh namespace.

DR real servers need a MAC: the namespace gets a veth with permanent neighbour
entries (links.prepare), so DR services can be programmed without real hosts behind them.
"""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kubelvs.backends.base import ipvs_available, open_backend
from kubelvs.backends.nftables import NftablesBackend, readback
from kubelvs.backends.nftables import backend as backend_module
from kubelvs.backends.nftables.elements import layout, mark_of, service_key
from kubelvs.backends.nftables.maglev import MAGLEV_SIZE, maglev_table
from kubelvs.backends.nftables.netlink import NftNetlink
from kubelvs.backends.nftables.partial import Culprits
from kubelvs.backends.nftables.picture import read_tables
from kubelvs.backends.nftables.schema import nat_table_map, parse_nat_table_chain, parse_nat_table_map
from kubelvs.backends.nftables.slottables import Content, NatTable, tables_of
from kubelvs.errors import PartialApplyError
from kubelvs.model import (
    DesiredState,
    Forward,
    Protocol,
    RealServer,
    ServiceKey,
    Timeouts,
    VirtualService,
)
from kubelvs.planner import AddRealServer, DeleteService, Operation, apply_ops, changed_services, plan
from kubelvs.roles.director import Director

from .links import prepare
from .strategies import NAT_POOL, desired_states, make_desired, make_service

pytestmark = pytest.mark.netns


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


def _sh(ns: str, *args: str) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", ns, *args], check=True, capture_output=True, text=True
    ).stdout


# ---------------------------------------------------------------- sequences


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(desired_states(), min_size=1, max_size=5), incremental=st.booleans())
def test_read_back_equals_the_last_desired_state(
    make_netns: Callable[[str], str], steps: list[DesiredState], incremental: bool
) -> None:
    ns = make_netns("seq")
    prepare(ns)
    backend = NftablesBackend(netns=ns)
    director = Director(backend)
    last_timeouts = None
    previous: DesiredState | None = None
    for desired in steps:
        changed = changed_services(previous, desired) if incremental and previous is not None else None
        director.sync(desired, changed=changed)
        previous = desired
        last_timeouts = desired.timeouts or last_timeouts
        fresh = NftablesBackend(netns=ns).read()  # a new process' view: nothing cached
        assert fresh.services == desired.services
        _assert_netlink_read_equals_nft(ns, backend)
        assert fresh.timeouts == last_timeouts
        assert plan(desired, fresh).ops == ()
        _assert_tables_are_shared(ns, desired)
        # The backend's own picture after apply equals what the kernel says.
        assert director.observed is not None and director.observed.services == fresh.services
        subprocess.run(
            ["ip", "netns", "exec", ns, "nft", "-c", "list", "ruleset"], check=True, capture_output=True
        )
    subprocess.run(["ip", "netns", "del", ns], check=False)


@st.composite
def cluster_states(draw: st.DrawFn) -> DesiredState:
    """DR services drawn from a few real-server sets (as a cluster's Services share the
    nodes): services share tables, move between them, and whole tables change."""
    sets = [[(2, 1), (3, 1), (4, 1)], [(2, 1), (3, 1)], [(2, 2), (3, 1), (4, 0)]]  # (host, weight)
    keys = draw(
        st.lists(
            st.sampled_from([("10.0.0.1", 80), ("10.0.0.1", 443), ("10.0.0.2", 80), ("fd00::1", 80)]),
            unique=True,
        )
    )
    sched = draw(st.sampled_from(["mh", "rr", "wrr"]))
    services = []
    for vip, port in keys:
        members = draw(st.sampled_from(sets))
        net = "fd00:1::" if ":" in vip else "10.0.1."  # IPv6 real servers: ids, not addresses, in the slots
        rss = [(f"{net}{host}", port, w, Forward.DR) for host, w in members]
        services.append(make_service(vip, port, sched, rss))
    return make_desired(*services)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(cluster_states(), min_size=2, max_size=6))
def test_shared_tables_follow_any_sequence_of_cluster_states(
    make_netns: Callable[[str], str], steps: list[DesiredState]
) -> None:
    ns = make_netns("tab")
    prepare(ns)
    director = Director(NftablesBackend(netns=ns))
    previous: DesiredState | None = None
    for desired in steps:
        director.sync(desired, changed=changed_services(previous, desired) if previous is not None else None)
        previous = desired
        fresh = NftablesBackend(netns=ns).read()
        assert fresh.services == desired.services
        assert plan(desired, fresh).ops == ()
        _assert_tables_are_shared(ns, desired)
    subprocess.run(["ip", "netns", "del", ns], check=False)


def _assert_tables_are_shared(ns: str, desired: DesiredState) -> None:
    """The shared slot tables (DR in netdev, NAT on one port in ip and ip6, each table
    numbering its own): each service names the one that holds its slots, every table is
    named by some service, no two tables hold the same slots, and a NAT table is its map
    and its chain (nothing of one is left alone)."""
    with NftNetlink(ns) as nl:
        parsed, found, _ = read_tables(nl, ns)
    tables = {("netdev", tid): slots for tid, slots in tables_of(parsed.by_set.get("dr_slots", ())).items()}
    nats: dict[tuple[str, int], NatTable | None] = dict.fromkeys(tables)
    weights = {("netdev", tid): w for tid, w in tables_of(parsed.by_set.get("dr_weights", ())).items()}
    for family in ("ip", "ip6"):
        nat_weights = [e for e in parsed.by_set.get("nat_weights", ()) if e.family == family]
        weights.update(((family, tid), w) for tid, w in tables_of(nat_weights).items())
    for family, chain in found.rules:
        if (nat_chain := parse_nat_table_chain(chain)) is not None:
            base, tid = nat_chain
            assert (family, tid) not in nats and found.rules[(family, chain)] == 2
            nats[(family, tid)] = NatTable(family, base)
            members = [e for e in parsed.by_set.get(nat_table_map(tid), ()) if e.family == family]
            tables[(family, tid)] = {int(e.key[0]): int(ip(str(e.value))) for e in members}
    maps = {(family, parse_nat_table_map(name)) for family, name in found.sets if name.startswith("nat_tab_")}
    assert maps == {space for space, nat in nats.items() if nat is not None}
    assert weights.keys() <= tables.keys()
    contents = {
        space: Content((slots[i] for i in range(len(slots))), weights.get(space, {}).items(), nats[space])
        for space, slots in tables.items()
    }
    named = {
        service_key(e.key): ("netdev", int(e.value))  # type: ignore[arg-type]
        for name in ("dr_tab", "dr6_tab")
        for e in parsed.by_set.get(name, ())
    }
    for e in parsed.by_set.get("nat_svc", ()):
        if (nat_chain := parse_nat_table_chain(str(e.value)[5:])) is not None:
            named[service_key(e.key)] = (e.family, nat_chain[1])
    expected = {key: layout(svc).content for key, svc in desired.services.items()}
    assert named == {key: named.get(key) for key, content in expected.items() if content is not None}
    for key, space in named.items():
        assert contents[space] == expected[key], key
    assert set(named.values()) == set(contents)
    assert len(set(contents.values())) == len(contents)


def _assert_netlink_read_equals_nft(ns: str, backend: NftablesBackend) -> None:
    """The backend's own decoding of the kernel's binary set elements (netlink.py) says
    exactly what nft itself says about the same tables (its JSON listing)."""
    listings = [
        subprocess.run(
            ["ip", "netns", "exec", ns, "nft", "-j", "list", "table", family, "kubelvs"],
            capture_output=True,
            text=True,
            check=False,
        )
        for family in ("ip", "ip6", "netdev")
    ]
    docs = [json.loads(p.stdout) for p in listings if p.returncode == 0]  # no table before the first apply
    by_nft = readback.parse_tables(docs)
    with NftNetlink(ns) as nl:
        by_netlink, _, _ = read_tables(nl, ns)
    assert by_netlink.elements == by_nft.elements
    assert by_netlink.services == by_nft.services
    assert by_netlink.timeouts == by_nft.timeouts
    assert by_netlink.tables == by_nft.tables
    # nft 1.0.6's JSON leaves a netdev chain's device out; its text has it.
    text = _sh(ns, "nft", "list", "chains", "netdev")
    hooks = re.findall(r'chain dr_in_(\d+) \{\s*type filter hook ingress device "([^"]+)"', text)
    assert by_netlink.device_chains == {int(index): device for index, device in hooks}


# ---------------------------------------------------------------- transactions


def _recorded_scripts(backend: NftablesBackend, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every nft script the backend runs from now on, in order (and run)."""
    scripts: list[str] = []
    original = backend._nft.run_script

    def recorded(script: str, *args: Any, **kwargs: Any) -> Any:
        scripts.append(script)
        return original(script, *args, **kwargs)

    monkeypatch.setattr(backend._nft, "run_script", recorded)
    return scripts


def test_services_with_the_same_real_servers_share_one_slot_table(
    nsb: tuple[str, NftablesBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two mh services on the same nodes are one 509-slot table; a third is two elements
    (its entry and the table it names); a node's weight change rewrites just the slots
    it owns, in place; a service that leaves the set takes a table of its own, and the
    last one to leave a table deletes its slots."""
    ns, backend = nsb
    nodes = [("10.0.1.2", 1), ("10.0.1.3", 1), ("10.0.1.4", 1)]

    def svc(vip: str, port: int, weights: list[tuple[str, int]]) -> VirtualService:
        return make_service(vip, port, "mh", [(a, port, w, Forward.DR) for a, w in weights])

    a, b, c = svc("10.0.0.1", 80, nodes), svc("10.0.0.1", 443, nodes), svc("10.0.0.2", 80, nodes)
    director = Director(backend)
    director.sync(make_desired(a, b))
    assert _sh(ns, "nft", "list", "map", "netdev", "kubelvs", "dr_slots").count(" : 0x") == MAGLEV_SIZE
    scripts = _recorded_scripts(backend, monkeypatch)
    director.sync(make_desired(a, b, c), changed={c.key})
    assert scripts[-1] == (
        "add element netdev kubelvs dr_svc { 10.0.0.2 . tcp . 80 : goto dr_mh }\n"
        "add element netdev kubelvs dr_tab { 10.0.0.2 . tcp . 80 : 1 }\n"
    )
    heavier = [("10.0.1.2", 1), ("10.0.1.3", 1), ("10.0.1.4", 2)]
    a2, b2, c2 = svc("10.0.0.1", 80, heavier), svc("10.0.0.1", 443, heavier), svc("10.0.0.2", 80, heavier)
    director.sync(make_desired(a2, b2, c2), changed={a2.key, b2.key, c2.key})
    script = scripts[-1]
    assert "dr_tab" not in script and "dr_svc" not in script  # the table changed, not the services
    before, after = maglev_table({n: 1 for n, _ in nodes}), maglev_table(dict(heavier))
    moved = sum(1 for x, y in zip(before, after, strict=True) if x != y)
    written = {
        line.split(" {")[0]: line.count(",") + 1 for line in script.splitlines() if " element " in line
    }
    assert written == {  # each moved slot deleted and added; the table's weight 2 for .4
        "delete element netdev kubelvs dr_slots": moved,
        "add element netdev kubelvs dr_slots": moved,
        "add element netdev kubelvs dr_weights": 1,
    }
    assert NftablesBackend(netns=ns).read().services == make_desired(a2, b2, c2).services
    # A health check's weight 0 for .4 in all three: the table again, nothing of theirs.
    down = [*heavier[:2], ("10.0.1.4", 0)]
    a0, b0, c0 = svc("10.0.0.1", 80, down), svc("10.0.0.1", 443, down), svc("10.0.0.2", 80, down)
    director.sync(make_desired(a0, b0, c0), changed={a0.key, b0.key, c0.key})
    script = scripts[-1]
    written = {
        line.split(" {")[0]: line.count(",") + 1 for line in script.splitlines() if " element " in line
    }
    moved = sum(1 for x, y in zip(after, maglev_table(dict(down)), strict=True) if x != y)
    assert written == {
        "delete element netdev kubelvs dr_slots": moved,
        "add element netdev kubelvs dr_slots": moved,
        "delete element netdev kubelvs dr_weights": 1,
        "add element netdev kubelvs dr_weights": 1,
    }
    assert "0x0a000104 : 0x00000000" in _sh(ns, "nft", "list", "map", "netdev", "kubelvs", "dr_weights")
    assert NftablesBackend(netns=ns).read().services == make_desired(a0, b0, c0).services
    # c leaves the set: a table of its own; then a and b leave theirs: table 1 is deleted.
    c3 = svc("10.0.0.2", 80, nodes[:2])
    director.sync(make_desired(a2, b2, c3), changed={c3.key})
    director.sync(make_desired(c3), changed={a2.key, b2.key})
    slots = _sh(ns, "nft", "list", "map", "netdev", "kubelvs", "dr_slots")
    assert slots.count(" : 0x") == MAGLEV_SIZE and "0x00000001 . " not in slots
    _assert_tables_are_shared(ns, make_desired(c3))


def test_nat_services_on_one_port_share_one_slot_table(
    nsb: tuple[str, NftablesBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    """NAT services whose real servers use one port each (a Service's NodePort, another
    per Service) share one table: a map of 509 slots and a chain that DNATs with it. A
    third service is two elements (its entry, which goes to the table's chain, and its
    port); a node's weight change rewrites the slots it owns, in place; the last service
    to leave a table deletes its map and its chain. A service on several ports keeps
    slots of its own."""
    ns, backend = nsb
    nodes = [("10.0.2.2", 1), ("10.0.2.3", 1), ("10.0.2.4", 1)]

    def svc(vip: str, port: int, node_port: int, weights: list[tuple[str, int]]) -> VirtualService:
        return make_service(vip, port, "mh", [(a, node_port, w, Forward.NAT) for a, w in weights])

    a, b = svc("10.0.0.1", 80, 30080, nodes), svc("10.0.0.1", 443, 30443, nodes)
    c = svc("10.0.0.2", 80, 30081, nodes)
    director = Director(backend)
    director.sync(make_desired(a, b))
    assert _sh(ns, "nft", "list", "map", "ip", "kubelvs", "nat_tab_1").count(" : 10.0.2.") == MAGLEV_SIZE
    assert "dnat to jhash ip saddr mod 509" in _sh(ns, "nft", "list", "chain", "ip", "kubelvs", "nat_mh_t1")
    assert "elements" not in _sh(ns, "nft", "list", "map", "ip", "kubelvs", "nat_slots")
    scripts = _recorded_scripts(backend, monkeypatch)
    director.sync(make_desired(a, b, c), changed={c.key})
    assert scripts[-1] == (
        "add element ip kubelvs nat_rport { 10.0.0.2 . tcp . 80 : 30081 }\n"
        "add element ip kubelvs nat_svc { 10.0.0.2 . tcp . 80 : goto nat_mh_t1 }\n"
    )
    heavier = [*nodes[:2], ("10.0.2.4", 2)]
    changed = [svc(s.key.address.exploded, s.key.port, s.realservers[0].port, heavier) for s in (a, b, c)]  # type: ignore[union-attr]
    director.sync(make_desired(*changed), changed={s.key for s in changed})
    written = {
        line.split(" {")[0]: line.count(",") + 1 for line in scripts[-1].splitlines() if " element " in line
    }
    moved = sum(
        1
        for x, y in zip(maglev_table({n: 1 for n, _ in nodes}), maglev_table(dict(heavier)), strict=True)
        if x != y
    )
    assert written == {  # the table changed, not the services: each moved slot, and .4's weight 2
        "delete element ip kubelvs nat_tab_1": moved,
        "add element ip kubelvs nat_tab_1": moved,
        "add element ip kubelvs nat_weights": 1,
    }
    assert NftablesBackend(netns=ns).read().services == make_desired(*changed).services
    _assert_tables_are_shared(ns, make_desired(*changed))
    # A service on two ports: slots of its own; the others leave table 1: it is deleted.
    mixed = make_service(
        "10.0.0.2", 80, "mh", [("10.0.2.2", 30081, 1, Forward.NAT), ("10.0.2.3", 30082, 1, Forward.NAT)]
    )
    director.sync(make_desired(mixed), changed={s.key for s in changed} | {mixed.key})
    assert _sh(ns, "nft", "list", "map", "ip", "kubelvs", "nat_slots").count(" : 10.0.2.") == MAGLEV_SIZE
    assert "nat_tab_1" not in _sh(ns, "nft", "list", "table", "ip", "kubelvs")
    assert "nat_mh_t1" not in _sh(ns, "nft", "list", "table", "ip", "kubelvs")
    assert NftablesBackend(netns=ns).read().services == make_desired(mixed).services
    _assert_tables_are_shared(ns, make_desired(mixed))


def test_a_refused_service_is_left_out_the_rest_is_applied_and_the_next_sync_converges(
    nsb: tuple[str, NftablesBackend],
) -> None:
    """nft refuses the elements of one service (someone deleted its entry behind our
    back): that service's operation is reported, every other one is applied in the
    same transaction, and the next full sync repairs what the other program left."""
    ns, backend = nsb
    # a on a shared table (one port), b with slots of its own (two ports)
    a = make_service("10.0.0.1", 80, "rr", [("10.0.2.2", 8080, 1, Forward.NAT)])
    b = make_service(
        "10.0.0.2", 80, "rr", [("10.0.2.3", 8080, 1, Forward.NAT), ("10.0.2.5", 8081, 1, Forward.NAT)]
    )
    Director(backend).sync(make_desired(a, b))
    _sh(ns, "nft", "delete", "element", "ip", "kubelvs", "nat_svc", "{ 10.0.0.2 . tcp . 80 }")
    added = RealServer(ip("10.0.2.4"), 8080, 1, Forward.NAT)
    ops: list[Operation] = [AddRealServer(a.key, added), DeleteService(b.key)]
    with pytest.raises(PartialApplyError) as err:
        backend.apply(ops)
    (failure,) = err.value.failures
    assert failure.index == 1 and failure.operation == "- service TCP 10.0.0.2:80"
    assert "nat_svc element 10.0.0.2 . tcp . 80" in failure.reason and "No such file" in failure.reason
    assert str(err.value).startswith("1 of 2 operation(s) applied; 1 not applied:")
    # The add was applied; b is still half there (its slots), as the other program left it.
    a2 = a.with_realservers([*a.realservers, added])
    assert NftablesBackend(netns=ns).read().services == {a.key: a2}
    assert "10.0.0.2 . tcp . 80 . 0" in _sh(ns, "nft", "list", "map", "ip", "kubelvs", "nat_slots")
    assert backend.changed_elsewhere()  # someone else committed before our commit
    # A full sync reads the kernel, sees the damage (b's leftover elements) and repairs it.
    want = make_desired(a2)
    Director(backend).sync(want)
    assert NftablesBackend(netns=ns).read().services == want.services
    assert "10.0.0.2" not in _sh(ns, "nft", "list", "table", "ip", "kubelvs")
    assert not backend.changed_elsewhere()


def test_without_a_location_in_nft_error_the_refused_service_is_found_by_bisecting(
    nsb: tuple[str, NftablesBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    """When nft's error names no element (as for errors the kernel reports at commit),
    the backend checks halves of the plan's services with transactions the kernel
    validates and aborts, and leaves out only the one it refuses."""
    ns, backend = nsb
    svcs = [make_service(f"10.0.0.{i}", 80, "rr", [("10.0.2.2", 8080, 1, Forward.NAT)]) for i in range(1, 9)]
    Director(backend).sync(make_desired(*svcs))
    _sh(ns, "nft", "delete", "element", "ip", "kubelvs", "nat_svc", "{ 10.0.0.6 . tcp . 80 }")
    monkeypatch.setattr(backend_module, "locate", lambda exc, pieces: Culprits())  # nft named nothing
    with NftNetlink(ns) as nl:
        generation = nl.generation()
        added = RealServer(ip("10.0.2.4"), 8080, 1, Forward.NAT)
        ops = [AddRealServer(s.key, added) for s in svcs]
        with pytest.raises(PartialApplyError) as err:
            backend.apply(ops)
        assert nl.generation() == generation + 1  # the checks committed nothing; the apply once
    (failure,) = err.value.failures
    assert failure.index == 5
    assert failure.reason == (
        "nft refused the elements of TCP 10.0.0.6:80: Could not process rule: No such file or directory"
    )
    read = NftablesBackend(netns=ns).read().services
    assert all(added in read[s.key].realservers for i, s in enumerate(svcs) if i != 5)
    assert svcs[5].key not in read


def test_other_tables_are_never_touched(nsb: tuple[str, NftablesBackend]) -> None:
    ns, backend = nsb
    subprocess.run(
        ["ip", "netns", "exec", ns, "nft", "-f", "-"],
        input="table inet foreign {\n"
        " chain c { type filter hook input priority 0; tcp dport 22 accept; }\n}\n"
        "table ip nat {\n chain p { type nat hook prerouting priority -100; }\n}\n",
        text=True,
        check=True,
    )
    foreign = _sh(ns, "nft", "list", "table", "inet", "foreign") + _sh(
        ns, "nft", "list", "table", "ip", "nat"
    )
    svc = make_service(
        "10.0.0.1", 80, "mh", [("10.0.1.2", 80, 1, Forward.DR), ("10.0.1.3", 80, 2, Forward.DR)]
    )
    Director(backend).sync(make_desired(svc, timeouts=Timeouts(900, 30, 300)))
    Director(backend).sync(make_desired())
    assert (
        _sh(ns, "nft", "list", "table", "inet", "foreign") + _sh(ns, "nft", "list", "table", "ip", "nat")
        == foreign
    )


def test_one_realserver_change_is_a_small_transaction(
    nsb: tuple[str, NftablesBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, backend = nsb
    svcs = [
        make_service(f"10.0.0.{i}", 80, "rr", [(a, 8080, 1, Forward.NAT) for a in NAT_POOL[:3]])
        for i in range(1, 60)
    ]
    director = Director(backend)
    director.sync(make_desired(*svcs))
    scripts = _recorded_scripts(backend, monkeypatch)
    changed = svcs[5].with_realservers(
        [*svcs[5].realservers, RealServer(ip(NAT_POOL[3]), 8080, 1, Forward.NAT)]
    )
    director.sync(make_desired(*svcs[:5], changed, *svcs[6:]), changed={changed.key})
    (script,) = scripts
    assert "10.0.0.6 " in script and "10.0.0.7 " not in script
    assert script.count("\n") <= 12, script


def test_a_draining_director_deletes_at_once_without_asking_for_connections(
    nsb: tuple[str, NftablesBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    """nftables keeps no connections to wait for: a graceful director deletes a leaving
    real server in the same sync, and does not read counters to learn that."""
    ns, backend = nsb
    nodes = [("10.0.1.2", 80, 1, Forward.DR), ("10.0.1.3", 80, 1, Forward.DR)]
    svc = make_service("10.0.0.1", 80, "mh", nodes)
    director = Director(backend, graceful=True)
    director.sync(make_desired(svc))

    def asked(keys: object) -> None:
        raise AssertionError(f"read_stats({keys}) on a backend that tracks no connections")

    monkeypatch.setattr(backend, "read_stats", asked)
    left = make_service("10.0.0.1", 80, "mh", nodes[:1])
    result = director.sync(make_desired(left), changed={left.key})
    assert result.ok and not result.plan.draining
    assert NftablesBackend(netns=ns).read().services == make_desired(left).services


def test_elements_edited_by_hand_are_seen_and_rewritten(nsb: tuple[str, NftablesBackend]) -> None:
    """A comment, a changed slot and a foreign element in our maps: read marks those
    services, and the next apply writes exactly what the model says."""
    ns, backend = nsb
    a = make_service(  # on two ports: slots of its own
        "10.0.0.1", 80, "rr", [("10.0.2.2", 8080, 1, Forward.NAT), ("10.0.2.3", 8081, 1, Forward.NAT)]
    )
    b = make_service("10.0.0.2", 80, "mh", [("10.0.1.2", 80, 1, Forward.DR), ("10.0.1.3", 80, 2, Forward.DR)])
    director = Director(backend)
    director.sync(make_desired(a, b))
    clean = _sh(ns, "nft", "list", "ruleset")
    edits = (
        "delete element ip kubelvs nat_slots { 10.0.0.1 . tcp . 80 . 0 }\n"
        'add element ip kubelvs nat_slots { 10.0.0.1 . tcp . 80 . 0 comment "by hand" : 10.0.2.9 . 9090 }\n'
        "add element ip kubelvs nat_svc { 10.0.0.3 . udp . 53 : goto nat_rr_1 }\n"
        "delete element netdev kubelvs dr_slots { 1 . 7 }\n"
    )
    subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=edits, text=True, check=True)
    _assert_netlink_read_equals_nft(ns, backend)
    with NftNetlink(ns) as nl:
        parsed, _, _ = read_tables(nl, ns)
    assert any(e.comment == "by hand" for e in parsed.elements)
    observed = NftablesBackend(netns=ns).read()
    assert set(observed.services) == {a.key, b.key, ServiceKey(4, Protocol.UDP, ip("10.0.0.3"), 53)}
    director.sync(make_desired(a, b))  # a full sync: reads, sees the edits, repairs them
    assert _sh(ns, "nft", "list", "ruleset") == clean


def test_a_read_by_the_same_backend_sees_any_commit_since(nsb: tuple[str, NftablesBackend]) -> None:
    """An unchanged table is not dumped again (its generation has not moved), but any
    transaction since - even in another table - makes the next read a full one."""
    ns, backend = nsb
    a = make_service("10.0.0.1", 80, "rr", [("10.0.2.2", 8080, 1, Forward.NAT)])
    b = make_service("10.0.0.2", 80, "rr", [("10.0.2.3", 8080, 1, Forward.NAT)])
    director = Director(backend)
    director.sync(make_desired(a, b))
    assert backend.read().services == {a.key: a, b.key: b}
    _sh(ns, "nft", "delete", "element", "ip", "kubelvs", "nat_svc", "{ 10.0.0.2 . tcp . 80 }")
    assert set(backend.read().services) == {a.key}
    director.sync(make_desired(a, b))  # a full sync repairs it
    assert backend.read().services == {a.key: a, b.key: b}
    _sh(ns, "nft", "add", "table", "inet", "unrelated")
    _sh(ns, "nft", "delete", "element", "ip", "kubelvs", "nat_svc", "{ 10.0.0.1 . tcp . 80 }")
    assert set(backend.read().services) == {b.key}


# ---------------------------------------------------------------- DR neighbours


def test_a_dr_realserver_without_a_neighbour_is_left_out_naming_it(nsb: tuple[str, NftablesBackend]) -> None:
    """A DR real server that does not answer ARP (or has no route on a link) is the one
    operation not applied; its service and the other real servers are."""
    ns, backend = nsb
    svc = make_service(
        "10.0.0.1", 80, "rr", [("10.0.1.2", 80, 1, Forward.DR), ("10.0.1.99", 80, 1, Forward.DR)]
    )
    other = make_service("10.0.0.2", 80, "rr", [("192.0.2.9", 80, 1, Forward.DR)])
    before = backend.read()
    ops = plan(make_desired(svc, other), before).ops
    with pytest.raises(PartialApplyError) as err:
        backend.apply(ops)
    reasons = {ops[f.index]: f.reason for f in err.value.failures}
    assert set(reasons) == {
        AddRealServer(svc.key, svc.realservers[1]),
        AddRealServer(other.key, other.realservers[0]),
    }
    assert reasons[AddRealServer(svc.key, svc.realservers[1])] == (
        "DR real server 10.0.1.99: 10.0.1.99 does not answer ARP on v0 (is the real server up?)"
    )
    assert reasons[AddRealServer(other.key, other.realservers[0])].startswith(
        "DR real server 192.0.2.9: no route to 192.0.2.9"
    )
    applied = [op for i, op in enumerate(ops) if i not in err.value.failed_indexes]
    assert NftablesBackend(netns=ns).read().services == apply_ops(before, applied).services
    assert not backend.changed_elsewhere()  # the picture is exact: nothing was refused by nft


def test_ipv6_realservers_whose_ids_collide_are_not_both_used(nsb: tuple[str, NftablesBackend]) -> None:
    """An IPv6 DR real server's mark is a 32-bit hash of its address: a real server whose
    id is that of one in use (a pair found by search) is left out naming it, and the one
    in use keeps its slots."""
    ns, backend = nsb
    used, newcomer = "fd00:1::1:69f9", "fd00:1::2800"
    assert mark_of(ipaddress.ip_address(used)) == mark_of(ipaddress.ip_address(newcomer))
    for i, address in enumerate((used, newcomer)):
        mac = f"02:00:00:00:06:{i:02x}"
        _sh(ns, "ip", "neigh", "replace", address, "lladdr", mac, "dev", "v0", "nud", "permanent")
    Director(backend).sync(make_desired(make_service("fd00::1", 80, "rr", [(used, 80, 1, Forward.DR)])))
    svc = make_service("fd00::1", 80, "rr", [(used, 80, 1, Forward.DR), (newcomer, 80, 1, Forward.DR)])
    ops = plan(make_desired(svc), backend.read()).ops
    with pytest.raises(PartialApplyError) as err:
        backend.apply(ops)
    assert [(ops[f.index], f.reason) for f in err.value.failures] == [
        (
            AddRealServer(svc.key, RealServer(ipaddress.ip_address(newcomer), 80, 1, Forward.DR)),
            f"DR real server {newcomer}: its id (a hash of the address) is that of {used}",
        )
    ]
    served = NftablesBackend(netns=ns).read().services[svc.key].realservers
    assert [str(rs.address) for rs in served] == [used]


def test_a_restarted_director_keeps_one_ingress_hook_per_device(nsb: tuple[str, NftablesBackend]) -> None:
    """nft 1.0.6's JSON listing leaves out a netdev chain's device: a backend that read
    through it added a second hook (``dr_in_0``) on the same device after a restart."""
    ns, backend = nsb
    a = make_service("10.0.0.1", 80, "rr", [("10.0.1.2", 80, 1, Forward.DR)])
    b = make_service("10.0.0.2", 80, "rr", [("10.0.1.3", 80, 1, Forward.DR)])
    Director(backend).sync(make_desired(a))
    Director(NftablesBackend(netns=ns)).sync(make_desired(a, b))  # a new process
    chains = re.findall(r"chain (dr_in_\d+)", _sh(ns, "nft", "list", "chains", "netdev"))
    assert len(chains) == 1, chains


def test_mac_changes_are_picked_up(nsb: tuple[str, NftablesBackend]) -> None:
    ns, backend = nsb
    svc = make_service("10.0.0.1", 80, "rr", [("10.0.1.2", 80, 1, Forward.DR)])
    Director(backend).sync(make_desired(svc))
    assert "02:00:00:00:01:02" in _sh(ns, "nft", "list", "map", "netdev", "kubelvs", "dr_mac")
    subprocess.run(
        [
            "ip",
            "-n",
            ns,
            "neigh",
            "replace",
            "10.0.1.2",
            "lladdr",
            "02:00:00:00:0a:0a",
            "dev",
            "v0",
            "nud",
            "permanent",
        ],
        check=True,
    )
    assert backend.refresh() == ["10.0.1.2"]
    listing = _sh(ns, "nft", "list", "map", "netdev", "kubelvs", "dr_mac")
    assert "02:00:00:00:0a:0a" in listing and "02:00:00:00:01:02" not in listing
    assert backend.refresh() == []


# ---------------------------------------------------------------- capabilities


def test_problems_name_the_field_and_the_reason(nsb: tuple[str, NftablesBackend]) -> None:
    _, backend = nsb
    tun = make_service("10.0.0.1", 80, "rr", [("10.0.1.2", 80, 1, Forward.TUN)])
    wlc = make_service("10.0.0.2", 80, "wlc", [("10.0.2.2", 80, 1, Forward.NAT)])
    mixed = make_service(
        "10.0.0.3", 80, "rr", [("10.0.2.2", 80, 1, Forward.NAT), ("10.0.1.2", 80, 1, Forward.DR)]
    )
    tun6 = make_service("10.0.0.4", 80, "rr", [("2001:db8::2", 80, 1, Forward.TUN)])  # IPv6 in IPv4
    problems = {p.field: p.reason for p in backend.problems(make_desired(tun, wlc, mixed, tun6))}
    assert "tunnels IPv4 in IPv4 only" in problems["services[TCP 10.0.0.4:80].realservers[0].address"]
    tun_reason = problems["services[TCP 10.0.0.1:80].realservers"]
    if subprocess.run(["modprobe", "-n", "ipip"], capture_output=True).returncode != 0:
        assert "no ipip" in tun_reason
    assert "tun" in tun_reason
    assert "rr, wrr, sh and mh" in problems["services[TCP 10.0.0.2:80].scheduler"]
    assert "one forwarding method" in problems["services[TCP 10.0.0.3:80].realservers"]


@pytest.mark.skipif(ipvs_available(), reason="this kernel has IPVS: auto picks ipvs")
def test_auto_picks_nftables_without_ipvs(netns: str) -> None:
    assert open_backend("auto", netns=netns).name == "nftables"


# ---------------------------------------------------------------- timeouts


def test_timeouts_reach_conntrack(nsb: tuple[str, NftablesBackend]) -> None:
    """``ipvsadm --set 900 30 300``: closing connections leave after 30 s."""
    ns, backend = nsb
    svc = make_service("10.0.0.1", 80, "rr", [("10.0.2.2", 8080, 1, Forward.NAT)])
    Director(backend).sync(make_desired(svc, timeouts=Timeouts(900, 30, 300)))
    policy = {
        item["ct timeout"]["name"]: item["ct timeout"]["policy"]
        for item in json.loads(_sh(ns, "nft", "-j", "list", "table", "ip", "kubelvs"))["nftables"]
        if "ct timeout" in item
    }
    assert policy["kl_tcp"] == {"established": 900, "fin_wait": 30, "time_wait": 30}
    assert policy["kl_udp"]["replied"] == 300
    assert backend.read().timeouts == Timeouts(900, 30, 300)
