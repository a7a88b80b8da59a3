"""Hypothesis strategies for valid desired states, shared by tier 1 and tier 2."""

from __future__ import annotations

import ipaddress

from hypothesis import strategies as st

from kubelvs.model import (
    DesiredState,
    Forward,
    Ownership,
    Protocol,
    RealServer,
    ServiceKey,
    Timeouts,
    VirtualService,
    parse_address,
)

OWNED = Ownership(
    cidrs=(ipaddress.ip_network("10.240.0.0/24"), ipaddress.ip_network("2001:db8::/64")),
    fwmarks=(range(100, 200),),
)
VIPS = [parse_address(a) for a in ("10.240.0.200", "10.240.0.201", "10.240.0.202", "2001:db8::10")]
RS4 = [parse_address(f"10.240.0.{i}") for i in (101, 102, 103, 104)]
RS6 = [parse_address(f"2001:db8::{i}") for i in (101, 102, 103)]
SCHEDULERS = ["rr", "wrr", "wlc", "sh", "mh"]


@st.composite
def realservers(draw: st.DrawFn, key: ServiceKey) -> tuple[RealServer, ...]:
    # One address of the other family: IPVS tunnels across families (TUN only).
    family_pool = RS4 + RS6[:1] if key.family == 4 else RS6 + RS4[:1]
    out: dict[tuple[object, int], RealServer] = {}
    for address in draw(st.lists(st.sampled_from(family_pool), max_size=4, unique=True)):
        if address.version != key.family:
            forward = Forward.TUN
        else:
            forward = draw(st.sampled_from([Forward.DR, Forward.NAT, Forward.TUN]))
        if forward is Forward.NAT:
            port = draw(st.sampled_from([80, 6379, 8080]))
        else:
            port = 0 if key.fwmark else key.port
        rs = RealServer(
            address=address,
            port=port,
            weight=draw(st.integers(0, 5)),
            forward=forward,
            u_thresh=draw(st.sampled_from([0, 0, 100])),
            l_thresh=0,
        )
        out[(address, port)] = rs
    return tuple(sorted(out.values(), key=lambda r: r.key.sort_key()))


@st.composite
def services(draw: st.DrawFn) -> VirtualService:
    if draw(st.integers(0, 5)) == 0:
        key = ServiceKey.for_fwmark(draw(st.sampled_from([100, 101])))
    else:
        vip = draw(st.sampled_from(VIPS))
        key = ServiceKey(
            vip.version,
            draw(st.sampled_from([Protocol.TCP, Protocol.UDP])),
            vip,
            draw(st.sampled_from([80, 6379])),
        )
    scheduler = draw(st.sampled_from(SCHEDULERS))
    flags: frozenset[str] = frozenset()
    if scheduler == "mh":
        flags = draw(
            st.sampled_from([frozenset(), frozenset({"mh-port"}), frozenset({"mh-port", "mh-fallback"})])
        )
    persistence = draw(st.sampled_from([0, 0, 300]))
    return VirtualService(
        key=key,
        scheduler=scheduler,
        persistence=persistence,
        netmask=draw(st.sampled_from([None, 24])) if persistence and key.family == 4 else None,
        flags=flags,
        realservers=draw(realservers(key)),
    )


@st.composite
def desired_states(draw: st.DrawFn) -> DesiredState:
    svcs = draw(st.lists(services(), max_size=4, unique_by=lambda s: s.key))
    timeouts = draw(st.sampled_from([None, Timeouts(900, 30, 300), Timeouts(7200, 120, 300)]))
    return DesiredState(services={s.key: s for s in svcs}, timeouts=timeouts, ownership=OWNED)
