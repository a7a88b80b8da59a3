"""Planner properties: for any sequence of desired states applied in turn, the state
reached equals the last one; foreign services are never touched; no stale real server
survives. ``apply_ops`` is the reference semantics the kernel tier checks backends against."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from kubelvs.model import (
    DesiredState,
    Forward,
    ObservedState,
    Protocol,
    RealServer,
    RealServerStats,
    ServiceKey,
    VirtualService,
    parse_address,
)
from kubelvs.planner import (
    AddRealServer,
    DeleteRealServer,
    DeleteService,
    EditRealServer,
    EditService,
    apply_ops,
    changed_services,
    plan,
)

from ..strategies import OWNED, desired_states

FOREIGN_KEY = ServiceKey(4, Protocol.TCP, parse_address("192.0.2.10"), 443)
FOREIGN = VirtualService(
    FOREIGN_KEY, scheduler="rr", realservers=(RealServer(parse_address("192.0.2.20"), 443, 1, Forward.NAT),)
)
START = ObservedState(services={FOREIGN_KEY: FOREIGN})


def owned_part(state: ObservedState) -> dict[ServiceKey, VirtualService]:
    return {k: v for k, v in state.services.items() if OWNED.owns(k)}


@settings(max_examples=300)
@given(st.lists(desired_states(), min_size=1, max_size=6))
def test_sequence_converges_to_last_state_and_leaves_foreign_alone(sequence: list[DesiredState]) -> None:
    state = START
    for desired in sequence:
        result = plan(desired, state)
        state = apply_ops(state, result.ops)
        assert owned_part(state) == dict(desired.services)
        assert state.services[FOREIGN_KEY] == FOREIGN
        assert FOREIGN_KEY in result.foreign
        if desired.timeouts is not None:
            assert state.timeouts == desired.timeouts
        assert not plan(desired, state), "a second plan must be empty (idempotent)"


@settings(max_examples=200)
@given(desired_states(), desired_states())
def test_incremental_plan_equals_full_plan(first: DesiredState, second: DesiredState) -> None:
    state = apply_ops(START, plan(first, START).ops)
    full = plan(second, state)
    incremental = plan(second, state, keys=changed_services(first, second))
    assert apply_ops(state, incremental.ops) == apply_ops(state, full.ops)


@settings(max_examples=200)
@given(st.lists(desired_states(), min_size=1, max_size=4))
def test_graceful_mode_converges_once_connections_end(sequence: list[DesiredState]) -> None:
    state = START
    for desired in sequence:
        state = apply_ops(state, plan(desired, state, graceful=True).ops)
        # Undesired TCP real servers are kept with weight 0 while they have connections.
        for k, svc in owned_part(state).items():
            want = desired.services.get(k)
            for rs in svc.realservers:
                if want is None or rs.key not in want.realserver_map():
                    assert rs.weight == 0
        # Connections end (counters read back as 0): the next plan deletes the leftovers.
        state = apply_ops(state, plan(desired, state, graceful=True).ops)
        assert owned_part(state) == dict(desired.services)


def test_graceful_waits_for_connections() -> None:
    vip = parse_address("10.240.0.201")
    key = ServiceKey(4, Protocol.TCP, vip, 80)
    a, b = RealServer(parse_address("10.240.0.101"), 80), RealServer(parse_address("10.240.0.102"), 80)
    desired = DesiredState(services={key: VirtualService(key, "rr", realservers=(a,))}, ownership=OWNED)
    observed = ObservedState(
        services={key: VirtualService(key, "rr", realservers=(a, b))},
        stats={(key, b.key): RealServerStats(active_conns=3)},
    )
    first = plan(desired, observed, graceful=True)
    assert first.ops == (EditRealServer(key, RealServer(b.address, 80, 0)),)
    busy = apply_ops(observed, first.ops)
    busy = ObservedState(services=busy.services, stats={(key, b.key): RealServerStats(active_conns=2)})
    second = plan(desired, busy, graceful=True)
    assert second.ops == () and second.draining == ((key, b.key),)
    idle = ObservedState(services=busy.services, stats={(key, b.key): RealServerStats()})
    assert plan(desired, idle, graceful=True).ops == (DeleteRealServer(key, b.key),)


def _redis(port: int, target: int) -> DesiredState:
    """The incident's Service skuapi-rds-prod: ClusterIP 10.108.152.210, pod 172.26.6.185, NAT."""
    vip = parse_address("10.108.152.210")
    key = ServiceKey(4, Protocol.TCP, vip, port)
    pod = RealServer(parse_address("172.26.6.185"), target, 1, Forward.NAT)
    return DesiredState(
        services={key: VirtualService(key, "rr", realservers=(pod,))},
        ownership=type(OWNED)(cidrs=(ipaddress.ip_network("10.108.0.0/16"),)),
    )


def test_stale_realserver_targetport_edit() -> None:
    """The stale real server incident: targetPort 80 edited to 6379 must not leave 172.26.6.185:80 behind."""
    state = apply_ops(ObservedState(), plan(_redis(6379, 80), ObservedState()).ops)
    edit = plan(_redis(6379, 6379), state)
    assert (
        DeleteRealServer(next(iter(state.services)), RealServer(parse_address("172.26.6.185"), 80).key)
        in edit.ops
    )
    state = apply_ops(state, edit.ops)
    (svc,) = state.services.values()
    assert [str(r.key) for r in svc.realservers] == ["172.26.6.185:6379"]


def test_stale_realserver_port_and_targetport_edit() -> None:
    """Port and targetPort both 80 at first, then both 6379: only :6379 remains anywhere."""
    state = apply_ops(ObservedState(), plan(_redis(80, 80), ObservedState()).ops)
    state = apply_ops(state, plan(_redis(6379, 6379), state).ops)
    assert [str(k) for k in state.services] == ["TCP 10.108.152.210:6379"]
    (svc,) = state.services.values()
    assert [str(r.key) for r in svc.realservers] == ["172.26.6.185:6379"]


def test_attribute_change_is_an_edit_not_delete_and_add() -> None:
    first = _redis(6379, 6379)
    key = next(iter(first.services))
    state = apply_ops(ObservedState(), plan(first, ObservedState()).ops)
    svc = first.services[key]
    heavier = RealServer(svc.realservers[0].address, 6379, 5, Forward.NAT)
    second = DesiredState(
        services={key: VirtualService(key, "wrr", realservers=(heavier,))}, ownership=first.ownership
    )
    ops = plan(second, state).ops
    assert ops == (EditService(second.services[key]), EditRealServer(key, heavier))


def test_deletes_of_services_come_first() -> None:
    state = apply_ops(ObservedState(), plan(_redis(80, 80), ObservedState()).ops)
    ops = plan(_redis(6379, 6379), state).ops
    assert isinstance(ops[0], DeleteService)
    assert isinstance(ops[-1], AddRealServer)


def test_model_objects_copy_and_pickle_with_their_cached_text() -> None:
    # Keys cache their text on first use; a copy made before or after must still work.
    import copy
    import pickle

    from kubelvs.model import Protocol, RealServer, ServiceKey, VirtualService, parse_address

    key = ServiceKey(4, Protocol.TCP, parse_address("10.0.0.1"), 80)
    svc = VirtualService(key).with_realservers([RealServer(parse_address("10.0.0.2"), 80)])
    fresh = pickle.loads(pickle.dumps(svc))
    assert fresh == svc and copy.deepcopy(svc) == svc
    assert str(fresh.key) == "TCP 10.0.0.1:80" and str(fresh.realservers[0]) == "10.0.0.2:80 dr w=1"
    assert str(copy.deepcopy(key)) == str(key) == "TCP 10.0.0.1:80"


def test_a_node_leaving_services_that_share_real_servers() -> None:
    """Services with one shared tuple of real servers lose the same node, then get it
    back: the plan deletes (adds) it in each (its diff worked out once), and ``apply_ops``
    leaves them one shared tuple again, equal to the desired one; a deletion followed by
    an add of the same real server in one plan keeps it, and deleting a real server a
    service lacks is refused."""
    from kubelvs.model import in_key_order

    nodes = [RealServer(parse_address(f"10.0.0.{i}"), 80) for i in (1, 2, 3)]
    keys = [ServiceKey(4, Protocol.TCP, parse_address(f"10.240.0.{200 + i}"), 80) for i in range(4)]
    before, after = in_key_order(nodes), in_key_order(nodes[1:])
    ownership = OWNED
    first = DesiredState(
        services={k: VirtualService(k, realservers=before) for k in keys}, ownership=ownership
    )
    state = apply_ops(ObservedState(), plan(first, ObservedState()).ops)
    second = DesiredState(
        services={k: VirtualService(k, realservers=after) for k in keys}, ownership=ownership
    )
    ops = plan(second, state).ops
    assert ops == tuple(DeleteRealServer(k, nodes[0].key) for k in keys)
    reached = apply_ops(state, ops)
    assert reached.services == second.services
    assert len({id(vs.realservers) for vs in reached.services.values()}) == 1
    assert not any(k_ == nodes[0].key for _, k_ in reached.stats)

    back_ops = plan(first, reached).ops  # the node comes back
    assert back_ops == tuple(AddRealServer(k, nodes[0]) for k in keys)
    back = apply_ops(reached, back_ops)
    assert back.services == first.services
    assert {id(vs.realservers) for vs in back.services.values()} == {id(before)}

    again = apply_ops(reached, (DeleteRealServer(keys[0], nodes[1].key), AddRealServer(keys[0], nodes[1])))
    assert again.services[keys[0]].realservers == after
    try:
        apply_ops(reached, (DeleteRealServer(keys[1], nodes[0].key),))
    except KeyError:
        pass
    else:
        raise AssertionError("deleting a real server the service lacks was accepted")
