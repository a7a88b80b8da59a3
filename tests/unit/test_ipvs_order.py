"""The canonical destination order of IPVS's hashing schedulers (backends/ipvs/order.py):
whatever order the kernel's list is in, deleting and re-adding what ``to_move`` names
(each re-added destination goes to the head of the list, as in the kernel) leaves the
list in canonical order, and a list already in it moves nothing."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from kubelvs.backends.ipvs.order import canonical, to_move
from kubelvs.model import Forward, RealServer


def rs(n: int) -> RealServer:
    return RealServer(ipaddress.ip_address(f"10.0.{n // 200}.{n % 200 + 1}"), 80, 1, Forward.DR)


def moved(kernel: list[RealServer]) -> list[RealServer]:
    """The kernel's list after ``to_move``'s deletes and re-adds."""
    out = list(kernel)
    for r in to_move(kernel):
        out.remove(r)
        out.insert(0, r)
    return out


@given(st.lists(st.integers(0, 1000), unique=True, max_size=30).map(lambda ns: [rs(n) for n in ns]))
def test_any_order_becomes_canonical_and_canonical_stays(kernel: list[RealServer]) -> None:
    assert moved(kernel) == canonical(kernel)
    assert to_move(canonical(kernel)) == []


def test_the_fewest_destinations_move() -> None:
    a, b, c, d = rs(1), rs(2), rs(3), rs(4)
    # Canonical is descending: what ascending adds (each to the head) give.
    assert canonical([a, c, b, d]) == [d, c, b, a]
    assert to_move([d, c, b, a]) == []
    assert to_move([c, d, b, a]) == [d]  # only d: c, b, a are in order already
    # a, the smallest, was added last (at the head) but belongs at the tail: b, c, d are re-added.
    assert to_move([a, d, c, b]) == [b, c, d]
