"""The nftables backend's element rendering, pure (no kernel): the layout-level diff of
a DR service is the difference of its elements."""

from __future__ import annotations

import dataclasses

from hypothesis import assume, given
from hypothesis import strategies as st

from kubelvs.backends.nftables.elements import dr_changes, layout, service_elements
from kubelvs.model import Forward, VirtualService

from .strategies import services

DR_LIKE = (Forward.DR, Forward.TUN)


@given(services(DR_LIKE), services(DR_LIKE), st.integers(-1, 3), st.integers(-1, 3))
def test_dr_changes_are_the_difference_of_the_elements(
    old: VirtualService, drawn: VirtualService, old_table: int, new_table: int
) -> None:
    new = dataclasses.replace(drawn, key=old.key)  # the same service, edited
    old_lay, new_lay = layout(old), layout(new)
    # What the transaction diffs this way (a service without real servers is kept as NAT).
    assume(old_lay.kind == new_lay.kind != "nat")
    before = service_elements(old, lambda _: old_table, old_lay).own
    after = service_elements(new, lambda _: new_table, new_lay).own
    deletes, adds = dr_changes(
        old_lay,
        old_table if old_lay.content is not None else None,
        new_lay,
        new_table if new_lay.content is not None else None,
    )
    assert (frozenset(deletes), frozenset(adds)) == (before - after, after - before)
    assert len(deletes) == len(set(deletes)) and len(adds) == len(set(adds))
