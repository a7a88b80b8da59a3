"""Slot tables: which real server each hash/counter slot of a service points at (pure).

Two kinds, both lists of backend names indexed by slot:

* ``maglev_table`` - Maglev consistent hashing (Eisenbud et al., NSDI 2016) with a
  prime table size, weighted the way Linux's ``ip_vs_mh`` does it: per round each
  backend claims as many entries as its weight (divided by the weights' gcd).
  Every backend walks its own pseudo-random permutation of the table (seeded by its
  name), so removing a backend only frees *its* entries; the others keep theirs
  except for a small reshuffle (a few percent) while the freed entries are claimed.
* ``wrr_table`` - a smooth weighted round-robin order (nginx's algorithm) whose
  length is the sum of the reduced weights; walking it with a counter gives
  ``wrr`` per new flow, with every backend spread out rather than bunched.

Backends with weight 0 get no slot: new flows never reach them.
"""

from __future__ import annotations

import array
import functools
import hashlib
import math
from collections.abc import Mapping, Sequence
from functools import reduce

__all__ = ["MAGLEV_SIZE", "MAX_WRR_SLOTS", "PRIMES", "maglev_table", "moved_fraction", "wrr_table"]

#: Table size for ``sh`` and ``mh`` services. Prime, as Maglev requires (the second
#: of ip_vs_mh's sizes). Every such service costs this many map elements, so it is a
#: trade between disruption and sync cost: removing one of N backends moves its own
#: flows plus, of the others', 0.9% (N = 3) to 4% (N = 12) on average and 7.3% at most in
#: 18,000 simulated removals with 509 entries; more with 251 (see docs/nftables.md and
#: tests/nftables/test_maglev.py, which derives its bound).
MAGLEV_SIZE = 509

#: Primes ip_vs_mh offers as table sizes.
PRIMES = (251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071)

#: Longest wrr order; larger weight sums are scaled down to this many slots.
MAX_WRR_SLOTS = 64


def _hash(name: str, salt: bytes) -> int:
    # Stable across processes and machines (Python's hash() is salted per process):
    # two directors computing the table for the same service must agree.
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8, key=salt).digest(), "big")


_MASK = (1 << 64) - 1


# Up to 32,768 real servers' permutations (~1 KB each as 16-bit arrays): a full sync of
# 1,000 mh services x 10 distinct real servers needs 10,000, and with the former
# 8,192 entries every sync and read computed all of them again (~0.25 ms each).
@functools.lru_cache(maxsize=1 << 15)
def _permutation(name: str, size: int) -> Sequence[int]:
    """Backend ``name``'s preference list: a pseudo-random permutation of the table.

    The Maglev paper derives it as ``(offset + j * skip) mod M``. That is cheap, but two
    backends whose skips are equal (or related) walk the table in lockstep and fight
    over the same entries: removing a third backend then moved up to 20% of the
    *remaining* backends' flows (found by tests/nftables/test_maglev.py). A full
    Fisher-Yates shuffle driven by splitmix64 keeps that at 4% on average and 7.3% at
    most (12 backends, 18,000 simulated removals).
    """
    state = _hash(name, b"kubelvs-perm")
    perm = list(range(size))
    for i in range(size - 1, 0, -1):
        state = (state + 0x9E3779B97F4A7C15) & _MASK
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
        z ^= z >> 31
        j = z % (i + 1)
        perm[i], perm[j] = perm[j], perm[i]
    return array.array("H" if size <= 0xFFFF else "L", perm)


def _reduced(weights: Mapping[str, int]) -> dict[str, int]:
    live = {name: w for name, w in weights.items() if w > 0}
    if not live:
        return {}
    g = reduce(math.gcd, live.values())
    return {name: w // g for name, w in live.items()}


def maglev_table(weights: Mapping[str, int], size: int = MAGLEV_SIZE) -> list[str | None]:
    """The Maglev lookup table: ``size`` entries, each a backend name (None if no backend).

    ``weights`` maps a backend's stable name (e.g. ``"10.0.0.2:80"``) to its weight.
    """
    if size < 2 or any(size % p == 0 for p in range(2, math.isqrt(size) + 1)):
        raise ValueError(f"Maglev table size must be a prime, got {size}")
    turns = _reduced(weights)
    table: list[str | None] = [None] * size
    if not turns:
        return table
    names = sorted(turns)  # a fixed order: the table must not depend on dict order
    prefs = {n: _permutation(n, size) for n in names}
    nxt = dict.fromkeys(names, 0)
    filled = 0
    while True:
        for n in names:
            for _ in range(turns[n]):
                # Next preferred, still-free entry of n's permutation.
                while True:
                    c = prefs[n][nxt[n]]
                    nxt[n] += 1
                    if table[c] is None:
                        break
                table[c] = n
                filled += 1
                if filled == size:
                    return table


def wrr_table(
    weights: Mapping[str, int], *, weighted: bool = True, max_slots: int = MAX_WRR_SLOTS
) -> list[str]:
    """A smooth weighted round-robin order over the backends with weight > 0.

    ``weighted=False`` (``rr``): every live backend counts as weight 1.
    """
    live = [name for name, w in weights.items() if w > 0]
    if len(live) <= max_slots and (not weighted or len({weights[name] for name in live}) <= 1):
        # All equal: plain round robin, one slot each (the common case, kept O(n) and
        # cheap - a cold sync computes 10,000 of these).
        return sorted(live)
    reduced = _reduced(weights)
    if not weighted:
        reduced = dict.fromkeys(reduced, 1)
    total = sum(reduced.values())
    if total > max_slots:
        reduced = _scale(reduced, max_slots)
        total = sum(reduced.values())
    current = dict.fromkeys(reduced, 0)
    order: list[str] = []
    names = sorted(reduced)
    for _ in range(total):
        for n in names:
            current[n] += reduced[n]
        best = max(names, key=lambda n: (current[n], -names.index(n)))
        current[best] -= total
        order.append(best)
    return order


def _scale(weights: Mapping[str, int], slots: int) -> dict[str, int]:
    """Largest-remainder apportionment of ``slots`` to ``weights``, at least one slot each."""
    names = sorted(weights)
    if len(names) > slots:
        # More backends than slots: keep the heaviest (ties by name); the rest get no slot.
        names = sorted(names, key=lambda n: (-weights[n], n))[:slots]
    total = sum(weights[n] for n in names)
    exact = {n: weights[n] * slots / total for n in names}
    out = {n: max(1, int(exact[n])) for n in names}
    spare = slots - sum(out.values())
    for n in sorted(names, key=lambda n: (-(exact[n] - int(exact[n])), n)):
        if spare <= 0:
            break
        out[n] += 1
        spare -= 1
    while sum(out.values()) > slots:  # the max(1, ...) floor overshot: take from the largest
        big = max(names, key=lambda n: (out[n], n))
        out[big] -= 1
    return out


def moved_fraction(before: Sequence[str | None], after: Sequence[str | None]) -> float:
    """Fraction of table entries (= of flows, for uniformly hashed flows) whose backend changed."""
    if len(before) != len(after):
        raise ValueError("tables of different sizes")
    if not before:
        return 0.0
    return sum(1 for a, b in zip(before, after, strict=True) if a != b) / len(before)
