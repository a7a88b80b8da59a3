"""One order of real servers for IPVS's hashing schedulers, on every director (pure).

IPVS's ``mh`` (Maglev) and ``sh`` build their lookup tables by walking a service's
destination list, and the kernel puts each new destination at the head of that list
(``list_add_rcu`` in ``__ip_vs_update_dest``). So the table depends on the order in
which real servers were added: two directors that saw the same changes in another
order, or one that restarted (and added them all at once), send the same flow to
different nodes - and a flow that moves between directors (BGP ECMP after a director
is lost) breaks.

The canonical order is *descending* by (address, port) (``RealServerKey.sort_key``):
what adding real servers in ascending order gives, as the planner does for a new
service, and what adding a node with a higher address than the others (the usual way
clusters grow) keeps, with no extra work. kubelvs keeps it: a real server added to an
existing service below the others, and a list found out of order (another program, an
older kubelvs), are put right by deleting and at once re-adding the fewest
destinations: those before the longest tail of the canonical order that the list
already has in order. A re-added destination is taken back from the kernel's trash with
its connections (``ip_vs_trash_get_dest``); only a packet arriving in the microseconds
between the two requests of the pair could find it missing (docs/ha.md).
"""

from __future__ import annotations

from collections.abc import Sequence

from ...model import RealServer, RealServerKey

__all__ = ["ORDERED_SCHEDULERS", "canonical", "to_move"]

ORDERED_SCHEDULERS = frozenset({"mh", "sh"})


def canonical(realservers: Sequence[RealServer]) -> list[RealServer]:
    return sorted(realservers, key=lambda rs: rs.key.sort_key(), reverse=True)


def to_move(kernel_order: Sequence[RealServer]) -> list[RealServer]:
    """The destinations to delete and re-add, in the order to do it, so that the list
    becomes canonical; empty when it is. Re-adding puts each at the head, so the last
    one re-added must be the first of the canonical order: the canonical prefix,
    re-added from its end."""
    want = canonical(kernel_order)
    keys: list[RealServerKey] = [rs.key for rs in kernel_order]
    # The longest tail want[j:] that appears in the kernel's list in the same order
    # (as a subsequence): scanning both from the end.
    j = len(want)
    i = len(keys) - 1
    while j > 0 and i >= 0:
        if keys[i] == want[j - 1].key:
            j -= 1
        i -= 1
    return list(reversed(want[:j]))
