"""The nftables backend's next state is the planner's reference semantics
(``planner.apply_ops_in_place``, transaction.py): its shortcut for a service added whole
(the AddService's own object is kept) must give what applying operation by operation
gives, for any sequence of operations, not only the planner's."""

from __future__ import annotations

import ipaddress
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from kubelvs.model import ObservedState, Protocol, RealServer, RealServerStats, ServiceKey, VirtualService
from kubelvs.planner import (
    AddRealServer,
    AddService,
    DeleteRealServer,
    DeleteService,
    EditRealServer,
    EditService,
    Operation,
    apply_ops_in_place,
)

KEYS = [ServiceKey(4, Protocol.TCP, ipaddress.ip_address("10.0.0.1"), port) for port in (80, 443)]
RSS = [RealServer(ipaddress.ip_address(f"10.0.2.{i}"), 8080, w) for i in (2, 3, 4) for w in (1, 2)]


def one_by_one(state: ObservedState, ops: list[Operation]) -> dict[ServiceKey, VirtualService]:
    """The semantics spelled out: every operation rebuilds its service at once."""
    services = dict(state.services)
    for op in ops:
        match op:
            case AddService(service=s) | EditService(service=s):
                old = services.get(s.key)
                services[s.key] = replace(s, realservers=old.realservers if old else ())
            case DeleteService(key=k):
                del services[k]
            case AddRealServer(service=k, realserver=r) | EditRealServer(service=k, realserver=r):
                members = services[k].realserver_map()
                members[r.key] = r
                services[k] = services[k].with_realservers(members.values())
            case DeleteRealServer(service=k, realserver=rk):
                members = services[k].realserver_map()
                del members[rk]
                services[k] = services[k].with_realservers(members.values())
    return services


@st.composite
def plans(draw: st.DrawFn) -> list[Operation]:
    """Operations that apply without error: services added whole (the shortcut), added
    and then changed, edited, deleted, added again; real servers added, edited, deleted."""
    ops: list[Operation] = []
    present: dict[ServiceKey, set[object]] = {}
    for _ in range(draw(st.integers(0, 12))):
        key = draw(st.sampled_from(KEYS))
        if key not in present:
            svc = VirtualService(key=key, scheduler=draw(st.sampled_from(["rr", "mh"]))).with_realservers(
                draw(st.lists(st.sampled_from(RSS), unique_by=lambda r: r.key, max_size=3))
            )
            ops.append(AddService(svc))
            count = draw(st.integers(0, len(svc.realservers)))
            ops += [AddRealServer(key, rs) for rs in svc.realservers[:count]]  # the shortcut, or part of it
            present[key] = {rs.key for rs in svc.realservers[:count]}
            continue
        choice = draw(st.sampled_from(["add", "edit", "delete_rs", "edit_service", "delete"]))
        rs = draw(st.sampled_from(RSS))
        if choice in ("add", "edit"):
            ops.append((AddRealServer if choice == "add" else EditRealServer)(key, rs))
            present[key].add(rs.key)
        elif choice == "delete_rs" and rs.key in present[key]:
            ops.append(DeleteRealServer(key, rs.key))
            present[key].discard(rs.key)
        elif choice == "edit_service":
            ops.append(EditService(VirtualService(key=key, scheduler="wrr", realservers=(rs,))))
        elif choice == "delete":
            ops.append(DeleteService(key))
            del present[key]
    return ops


@settings(max_examples=300, deadline=None)
@given(plans())
def test_the_shortcut_for_services_added_whole_changes_nothing(ops: list[Operation]) -> None:
    start = ObservedState(services={}, stats={}, sysctls={})
    after = apply_ops_in_place(start, ops)
    assert after.services == one_by_one(ObservedState(), ops)
    # Every real server has counters, zero for new ones; deleted ones have none.
    assert set(after.stats) == {(k, rs.key) for k, svc in after.services.items() for rs in svc.realservers}
    assert all(s == RealServerStats() for s in after.stats.values())
