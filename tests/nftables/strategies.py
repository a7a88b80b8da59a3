"""Services for the nftables backend tests, built by hand or drawn by Hypothesis.

Shared by test_backend.py (DR and NAT, the machine's kernel) and test_tun.py (TUN as
well, the VM's). DR and TUN real servers come from DR_POOL, which ``links.prepare``
gives permanent neighbours; the forwarding method is per service.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from hypothesis import strategies as st

from kubelvs.backends.nftables.elements import ServiceElements, group_elements, service_elements, service_text
from kubelvs.backends.nftables.schema import Element
from kubelvs.backends.nftables.slottables import SlotTables, TableChange
from kubelvs.model import (
    DesiredState,
    Forward,
    Ownership,
    Protocol,
    RealServer,
    ServiceKey,
    Timeouts,
    VirtualService,
)

OWN = Ownership(cidrs=(ipaddress.ip_network("10.0.0.0/24"), ipaddress.ip_network("fd00::/120")))
DR_POOL = [f"10.0.1.{i}" for i in range(2, 7)]
NAT_POOL = [f"10.0.2.{i}" for i in range(2, 7)]
NAT6_POOL = [f"fd00:2::{i}" for i in range(2, 7)]
DR6_POOL = [f"fd00:1::{i}" for i in range(2, 7)]


def make_desired(*services: VirtualService, timeouts: Timeouts | None = None) -> DesiredState:
    return DesiredState(services={s.key: s for s in services}, timeouts=timeouts, ownership=OWN)


def written(svc: VirtualService) -> tuple[ServiceElements, set[Element], dict[tuple[str, str], list[str]]]:
    """What a backend with no slot table yet writes for ``svc`` alone: its elements, them
    with the slots of the DR table it takes (table 1), and the text the cold-sync path
    renders for them (``service_text``, with the table's slots)."""
    change = TableChange(SlotTables())
    built = service_elements(svc, change.acquire)
    slots, _ = change.elements()
    direct: dict[tuple[str, str], list[str]] = {}
    text_change = TableChange(SlotTables())
    dr_addresses = service_text(svc, direct, text_change.acquire)
    assert dr_addresses == built.dr_addresses
    group_elements(text_change.elements()[0], with_value=True, into=direct)
    return built, set(built.own) | slots, direct


def make_service(
    vip: str,
    port: int,
    sched: str,
    rss: list[tuple[str, int, int, Forward]],
    proto: Protocol = Protocol.TCP,
    flags: frozenset[str] = frozenset(),
) -> VirtualService:
    address = ipaddress.ip_address(vip)
    key = ServiceKey(address.version, proto, address, port)
    return VirtualService(key=key, scheduler=sched, flags=flags).with_realservers(
        RealServer(ipaddress.ip_address(a), p, w, f) for a, p, w, f in rss
    )


@st.composite
def services(draw: st.DrawFn, forwards: Sequence[Forward] = (Forward.DR, Forward.NAT)) -> VirtualService:
    """One service whose real servers all use one method drawn from ``forwards``
    (repeat a method to draw it more often), IPv4 or IPv6."""
    forward = draw(st.sampled_from(forwards))
    ipv6 = draw(st.booleans())
    vip = draw(st.sampled_from(["fd00::1", "fd00::2"] if ipv6 else ["10.0.0.1", "10.0.0.2"]))
    proto = draw(st.sampled_from([Protocol.TCP, Protocol.UDP]))
    port = draw(st.sampled_from([80, 443]))
    sched = draw(st.sampled_from(["rr", "wrr", "sh", "mh"]))
    flags = frozenset({f"{sched}-port"}) if sched in ("sh", "mh") and draw(st.booleans()) else frozenset()
    if forward is Forward.NAT:
        pool = NAT6_POOL if ipv6 else NAT_POOL
    else:
        pool = DR6_POOL if ipv6 else DR_POOL
    addrs = draw(st.lists(st.sampled_from(pool), unique=True, max_size=4))
    rss = [
        (
            a,
            draw(st.sampled_from([8080, 8443])) if forward is Forward.NAT else port,
            draw(st.integers(0, 5)),
            forward,
        )
        for a in addrs
    ]
    return make_service(vip, port, sched, rss, proto, flags)


def desired_states(
    forwards: Sequence[Forward] = (Forward.DR, Forward.NAT),
) -> st.SearchStrategy[DesiredState]:
    """Up to five services (one per key) drawn by ``services(forwards)``, with or without timeouts."""
    return st.builds(
        lambda svcs, t: make_desired(*{s.key: s for s in svcs}.values(), timeouts=t),
        st.lists(services(forwards), max_size=5),
        st.one_of(
            st.none(), st.builds(Timeouts, st.integers(1, 2000), st.integers(1, 300), st.integers(1, 600))
        ),
    )
