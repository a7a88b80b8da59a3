"""The pure ruleset: model -> elements (elements.py) -> nft JSON as nft lists it -> model
(readback.py), and the skeleton's chain names (schema.py)."""

from __future__ import annotations

import ipaddress
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from kubelvs.backends.nftables import elements, readback, schema
from kubelvs.backends.nftables.elements import layout
from kubelvs.backends.nftables.maglev import MAGLEV_SIZE, maglev_table
from kubelvs.backends.nftables.schema import Element, parse_scheduler_chain, scheduler_chain
from kubelvs.model import Forward, Protocol, Timeouts, VirtualService

from .strategies import make_service, written


def _as_nft_json(
    elements: set[Element], counters: dict[tuple[str, tuple[Any, ...]], tuple[int, int]] | None = None
) -> dict[str, Any]:
    """What ``nft -j list table`` prints for these elements (shape copied from nft 1.0.6)."""
    counters = counters or {}
    out: list[dict[str, Any]] = [
        {"table": {"family": "ip", "name": "kubelvs", "handle": 1}},
        {"table": {"family": "netdev", "name": "kubelvs", "handle": 2}},
        {"chain": {"family": "ip", "table": "kubelvs", "name": schema.SKELETON_VERSION, "handle": 3}},
        {"chain": {"family": "netdev", "table": "kubelvs", "name": schema.NETDEV_VERSION, "handle": 4}},
    ]
    by_set: dict[tuple[str, str], list[Element]] = {}
    for e in elements:
        by_set.setdefault((e.family, e.set), []).append(e)

    def val(v: Any) -> Any:
        return (
            {"concat": list(v)}
            if isinstance(v, tuple) and len(v) > 1
            else (v[0] if isinstance(v, tuple) else v)
        )

    for (family, name), items in by_set.items():
        is_map = items[0].value is not None
        elems: list[Any] = []
        for e in items:
            key: Any = val(e.key)
            if (name, e.key) in counters:
                p, b = counters[(name, e.key)]
                key = {"elem": {"val": key, "counter": {"packets": p, "bytes": b}}}
            if not is_map:
                elems.append(key)
            elif isinstance(e.value, str) and e.value.startswith("goto "):
                elems.append([key, {"goto": {"target": e.value[5:]}}])
            else:
                elems.append([key, val(e.value)])
        body = {"family": family, "name": name, "table": "kubelvs", "elem": elems}
        if name.endswith("_svc"):
            body["map"] = "verdict"
        out.append({"map" if is_map else "set": body})
    return {"nftables": out}


def _nat_service(scheduler: str, last_port: int, flags: frozenset[str] = frozenset()) -> VirtualService:
    """Real servers of weight 3, 1 and 0, the last one on ``last_port`` (the others 8080)."""
    rss = [("10.1.0.2", 8080, 3, Forward.NAT), ("10.1.0.3", 8080, 1, Forward.NAT)]
    return make_service(
        "10.0.0.1", 80, scheduler, [*rss, ("10.1.0.4", last_port, 0, Forward.NAT)], flags=flags
    )


def test_nat_service_on_one_port_names_a_shared_table() -> None:
    svc = _nat_service("mh", 8080, frozenset({"mh-port"}))
    built, with_table, _ = written(svc)
    # Its entry goes to table 1's chain, its port is in nat_rport; the slots are the table's.
    assert built.own == {
        Element("ip", "nat_svc", ("10.0.0.1", "tcp", 80), "goto nat_mh_p_t1"),
        Element("ip", "nat_rport", ("10.0.0.1", "tcp", 80), 8080),
    }
    table = with_table - built.own
    slots = {e.key[0]: e.value for e in table if e.set == "nat_tab_1"}
    owners = maglev_table({"10.1.0.2": 3, "10.1.0.3": 1, "10.1.0.4": 0}, MAGLEV_SIZE)
    assert slots == dict(enumerate(owners)) and set(owners) == {"10.1.0.2", "10.1.0.3"}
    # Weight 3 and the slot-less weight-0 server are the table's; weight 1 is implied.
    assert {e.key: e.value for e in table if e.set == "nat_weights"} == {
        (1, "10.1.0.2"): 3,
        (1, "10.1.0.4"): 0,
    }
    assert {e.set for e in table} == {"nat_tab_1", "nat_weights"}
    # The map and the chain the table needs (made by the transaction that first uses it).
    text = schema.nat_table_text("ip", "nat_mh_p", 1)
    assert "add map ip kubelvs nat_tab_1 { typeof numgen inc mod 2 : ip daddr; }" in text
    assert (
        "add rule ip kubelvs nat_mh_p_t1 meta l4proto { tcp, udp, sctp } dnat ip to jhash ip saddr . th sport"
        " mod 509 seed 0x6b6c7673 map @nat_tab_1 : ip daddr . meta l4proto . th dport map @nat_rport" in text
    )
    assert schema.parse_nat_table_chain("nat_mh_p_t1") == ("nat_mh_p", 1)
    assert parse_scheduler_chain("nat_mh_p_t1") == ("mh", frozenset({"mh-port"}))


def test_nat_service_with_rr_or_on_several_ports_has_its_own_slots() -> None:
    assert layout(_nat_service("wrr", 8080)).content is None  # rr, wrr: on one port too
    svc = _nat_service("wrr", 8081)
    built, _, _ = written(svc)
    by_set: dict[str, list[Element]] = {}
    for e in built.own:
        by_set.setdefault(e.set, []).append(e)
    (svc_elem,) = by_set["nat_svc"]
    assert svc_elem.value == "goto nat_wrr_4"
    slots = sorted(e.value for e in by_set["nat_slots"])  # type: ignore[type-var]
    assert slots == [("10.1.0.2", 8080)] * 3 + [("10.1.0.3", 8080)]
    # Weight 3 and the slot-less weight-0 server are stored; the weight-1 one is implied.
    assert {e.key[3:]: e.value for e in by_set["nat_rs"]} == {("10.1.0.2", 8080): 3, ("10.1.0.4", 8081): 0}
    assert built.dr_addresses == frozenset()


def test_dr_service_elements_and_text() -> None:
    svc = make_service(
        "10.0.0.1",
        80,
        "mh",
        [("10.1.0.2", 80, 1, Forward.DR), ("10.1.0.3", 81, 2, Forward.DR)],
        flags=frozenset({"mh-port"}),
    )
    built, with_table, _ = written(svc)
    assert built.dr_addresses == {"10.1.0.2", "10.1.0.3"}
    # The service names table 1; the table's 509 slots are not the service's own.
    assert Element("netdev", "dr_tab", ("10.0.0.1", "tcp", 80), 1) in built.own
    assert not any(e.set == "dr_slots" for e in built.own)
    slots = [e for e in with_table if e.set == "dr_slots"]
    assert sorted(e.key for e in slots) == [(1, i) for i in range(MAGLEV_SIZE)]
    assert {e.value for e in slots} == {
        int(ipaddress.ip_address("10.1.0.2")),
        int(ipaddress.ip_address("10.1.0.3")),
    }
    assert {e.key[3]: e.value for e in built.own if e.set == "dr_rs"} == {
        int(ipaddress.ip_address("10.1.0.3")): (81, 2)
    }
    text = "".join(elements.elements_text("add", built.own))
    assert "add element netdev kubelvs dr_svc { 10.0.0.1 . tcp . 80 : goto dr_mh_p }" in text
    assert "delete element" not in text
    deletes = "".join(elements.elements_text("delete", built.own))
    assert ": goto" not in deletes  # deletes name keys only


def test_scheduler_chain_names_round_trip() -> None:
    for sched, flags in [
        ("rr", frozenset()),
        ("wrr", frozenset()),
        ("sh", frozenset({"sh-port", "sh-fallback"})),
        ("mh", frozenset({"mh-fallback"})),
        ("mh", frozenset()),
    ]:
        for slots in (0, 3):
            name = scheduler_chain("nat", sched, flags, slots)
            assert parse_scheduler_chain(name) == (sched, flags)
            assert name in schema.skeleton_text()
    assert parse_scheduler_chain("nat_pre") is None


realservers = st.lists(
    st.tuples(
        st.sampled_from([f"10.1.0.{i}" for i in range(2, 9)]), st.sampled_from([80, 8080]), st.integers(0, 4)
    ),
    max_size=6,
    unique_by=lambda t: t[0],
)


@settings(max_examples=80, deadline=None)
@given(
    st.sampled_from(["rr", "wrr", "sh", "mh"]),
    realservers,
    st.sampled_from([Forward.DR, Forward.NAT]),
    st.sampled_from([Protocol.TCP, Protocol.UDP]),
    st.booleans(),
)
def test_elements_parse_back_to_the_same_service(
    sched: str, rss: list[tuple[str, int, int]], forward: Forward, proto: Protocol, port_flag: bool
) -> None:
    flags = frozenset({f"{sched}-port"}) if port_flag and sched in ("sh", "mh") else frozenset()
    svc = make_service("10.0.0.1", 80, sched, [(a, p, w, forward) for a, p, w in rss], proto, flags)
    _, with_table, _ = written(svc)
    parsed = readback.parse_tables([_as_nft_json(with_table)])
    assert parsed.services == {svc.key: svc}
    assert parsed.elements == with_table


def test_counters_and_timeouts_are_read() -> None:
    svc = make_service("10.0.0.1", 80, "rr", [("10.1.0.2", 8080, 1, Forward.NAT)])
    doc = _as_nft_json(written(svc)[1])
    doc["nftables"].append(
        {
            "set": {
                "family": "ip",
                "name": "nat_in",
                "table": "kubelvs",
                "elem": [
                    {
                        "elem": {
                            "val": {"concat": ["10.0.0.1", "tcp", "10.1.0.2", 8080]},
                            "counter": {"packets": 7, "bytes": 700},
                        }
                    }
                ],
            }
        }
    )
    doc["nftables"].append(
        {
            "ct timeout": {
                "family": "ip",
                "name": "kl_tcp",
                "table": "kubelvs",
                "protocol": "tcp",
                "policy": {"established": 900, "fin_wait": 30},
            }
        }
    )
    doc["nftables"].append(
        {
            "ct timeout": {
                "family": "ip",
                "name": "kl_udp",
                "table": "kubelvs",
                "protocol": "udp",
                "policy": None,
            }
        }
    )
    parsed = readback.parse_tables([doc])
    stats = parsed.stats[(svc.key, svc.realservers[0].key)]
    assert (stats.in_packets, stats.in_bytes, stats.out_packets) == (7, 700, 0)
    # nft leaves out values equal to conntrack's defaults (udp replied 120).
    assert parsed.timeouts == Timeouts(900, 30, 120)


@settings(max_examples=80, deadline=None)
@given(
    st.sampled_from(["rr", "wrr", "sh", "mh"]),
    realservers,
    st.sampled_from([Forward.DR, Forward.NAT]),
    st.sampled_from([Protocol.TCP, Protocol.UDP]),
    st.booleans(),
)
def test_service_text_writes_exactly_the_service_elements(
    sched: str, rss: list[tuple[str, int, int]], forward: Forward, proto: Protocol, port_flag: bool
) -> None:
    """The cold-sync renderer (text straight from the model) and the diff path (Element
    tuples, then text) must write the same elements: later diffs assume it."""
    flags = frozenset({f"{sched}-port"}) if port_flag and sched in ("sh", "mh") else frozenset()
    svc = make_service("10.0.0.1", 80, sched, [(a, p, w, forward) for a, p, w in rss], proto, flags)
    _, with_table, direct = written(svc)  # (it checks that both give the same DR real servers)
    via_elements = elements.group_elements(with_table, with_value=True)
    assert {k: sorted(v) for k, v in direct.items()} == {k: sorted(v) for k, v in via_elements.items()}
