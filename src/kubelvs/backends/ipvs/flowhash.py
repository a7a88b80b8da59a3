"""Which real server IPVS's ``sh`` and ``mh`` schedulers give a flow (pure), computed the
way net/netfilter/ipvs/ip_vs_sh.c and ip_vs_mh.c do, for ``kubelvs explain``.

Both build a table from the service's destinations *in the kernel's list order* (the
order ``ipvsadm -Ln`` prints) and look the client up in it; a destination that is
unavailable there (weight 0, overloaded) gets nothing unless the service has the
``sh-fallback``/``mh-fallback`` flag (not modelled here: explain says so).

- ``sh``: 256 buckets (IP_VS_SH_TAB_BITS 8) filled round-robin over the destinations,
  each taking ``weight`` consecutive buckets (at least one); the client's bucket is
  ``hash_32(ntohl(addr) + ntohs(port), 8)`` (port: only with ``sh-port``).
- ``mh``: Maglev with 4093 entries (CONFIG_IP_VS_MH_TAB_INDEX 12) and two fixed
  hsiphash keys (so every director builds the same table); ``hsiphash`` on 64-bit
  kernels is SipHash-1-3 with two 64-bit key words, truncated to 32 bits.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Sequence

from ...model import SCHED_FLAGS, Prediction, RealServer, VirtualService

__all__ = [
    "MH_TABLE_SIZE",
    "SH_TABLE_SIZE",
    "hsiphash_u32",
    "mh_bucket",
    "mh_table",
    "predict",
    "sh_bucket",
    "sh_table",
]

_M64 = (1 << 64) - 1
SH_TABLE_BITS = 8
SH_TABLE_SIZE = 1 << SH_TABLE_BITS
GOLDEN_RATIO_32 = 0x61C88647
MH_TABLE_SIZE = 4093
MH_TABLE_BITS = 6  # CONFIG_IP_VS_MH_TAB_INDEX / 2
MH_HASH1 = (2654435761, 2654435761)
MH_HASH2 = (2654446892, 2654446892)


# ---------------------------------------------------------------------------- sh


def _hash_32(value: int, bits: int) -> int:
    return ((value * GOLDEN_RATIO_32) & 0xFFFFFFFF) >> (32 - bits)


def sh_bucket(source: str, source_port: int = 0) -> int:
    return _hash_32((int(ipaddress.IPv4Address(source)) + source_port) & 0xFFFFFFFF, SH_TABLE_BITS)


def sh_table(weights: Sequence[int]) -> list[int]:
    """Bucket -> index of the destination (in list order) of ``ip_vs_sh_reassign``."""
    table: list[int] = []
    if not weights:
        return table
    i = count = 0
    for _ in range(SH_TABLE_SIZE):
        table.append(i)
        count += 1
        if count >= weights[i]:
            i = (i + 1) % len(weights)
            count = 0
    return table


# ---------------------------------------------------------------------------- mh


def _rol64(x: int, k: int) -> int:
    return ((x << k) | (x >> (64 - k))) & _M64


def _round(v0: int, v1: int, v2: int, v3: int) -> tuple[int, int, int, int]:
    v0 = (v0 + v1) & _M64
    v1 = _rol64(v1, 13) ^ v0
    v0 = _rol64(v0, 32)
    v2 = (v2 + v3) & _M64
    v3 = _rol64(v3, 16) ^ v2
    v0 = (v0 + v3) & _M64
    v3 = _rol64(v3, 21) ^ v0
    v2 = (v2 + v1) & _M64
    v1 = _rol64(v1, 17) ^ v2
    v2 = _rol64(v2, 32)
    return v0, v1, v2, v3


def siphash(data: bytes, key: tuple[int, int], c_rounds: int, d_rounds: int) -> int:
    """SipHash-c-d with a key of two 64-bit words (the kernel's siphash_key_t)."""
    k0, k1 = key
    v0 = 0x736F6D6570736575 ^ k0
    v1 = 0x646F72616E646F6D ^ k1
    v2 = 0x6C7967656E657261 ^ k0
    v3 = 0x7465646279746573 ^ k1
    full = len(data) - len(data) % 8
    for i in range(0, full, 8):
        m = int.from_bytes(data[i : i + 8], "little")
        v3 ^= m
        for _ in range(c_rounds):
            v0, v1, v2, v3 = _round(v0, v1, v2, v3)
        v0 ^= m
    b = (len(data) << 56) & _M64 | int.from_bytes(data[full:], "little")
    v3 ^= b
    for _ in range(c_rounds):
        v0, v1, v2, v3 = _round(v0, v1, v2, v3)
    v0 ^= b
    v2 ^= 0xFF
    for _ in range(d_rounds):
        v0, v1, v2, v3 = _round(v0, v1, v2, v3)
    return v0 ^ v1 ^ v2 ^ v3


def hsiphash_u32(value: int, key: tuple[int, int]) -> int:
    """``hsiphash(&v, sizeof(u32), key)`` on a 64-bit kernel."""
    return siphash((value & 0xFFFFFFFF).to_bytes(4, "little"), key, 1, 3) & 0xFFFFFFFF


def _mh_hashkey(address: str, port: int, key: tuple[int, int]) -> int:
    return hsiphash_u32(int(ipaddress.IPv4Address(address)) + port, key)


def mh_bucket(source: str, source_port: int = 0) -> int:
    return _mh_hashkey(source, source_port, MH_HASH1) % MH_TABLE_SIZE


def mh_table(destinations: Sequence[tuple[str, int, int]]) -> list[int | None]:
    """Entry -> index of the destination (in list order) that ``ip_vs_mh_populate``
    puts there; ``destinations``: (address, port, last weight) in the kernel's order."""
    weights = [w for _, _, w in destinations]
    gcd = 0
    for w in weights:
        gcd = math.gcd(gcd, w) if w > 0 else gcd
    if gcd < 1:
        return [None] * MH_TABLE_SIZE
    shift = max(0, (max(weights) // gcd).bit_length() - MH_TABLE_BITS)
    perm, skip, turns = [], [], []
    for address, port, w in destinations:
        # ip_vs_mh_permutate: the offset from hash1 (the key clients are looked up with
        # too), the skip from hash2.
        perm.append(_mh_hashkey(address, port, MH_HASH1) % MH_TABLE_SIZE)
        skip.append(_mh_hashkey(address, port, MH_HASH2) % (MH_TABLE_SIZE - 1) + 1)
        turns.append(((w // gcd) >> shift) or (1 if w != 0 else 0))
    table: list[int | None] = [None] * MH_TABLE_SIZE
    filled = 0
    while True:
        for i in range(len(destinations)):
            for _ in range(turns[i]):
                c = perm[i]
                while table[c] is not None:
                    c = (c + skip[i]) % MH_TABLE_SIZE
                perm[i] = c
                table[c] = i
                filled += 1
                if filled == MH_TABLE_SIZE:
                    return table


def predict(
    svc: VirtualService, order: Sequence[RealServer], client: str, client_port: int | None
) -> Prediction:
    """What IPVS does with a new flow from ``client`` to ``svc`` whose real servers are
    ``order`` (the kernel's list order). mh's table is built from each server's
    ``last_weight`` (the weight before it went to 0), which netlink does not report: with
    a server at weight 0 the answer is "not predictable"."""
    if svc.scheduler not in SCHED_FLAGS:
        return Prediction(None, False, f"{svc.scheduler} depends on the kernel's state (counters, positions)")
    with_port = f"{svc.scheduler}-port" in svc.flags
    if with_port and client_port is None:
        return Prediction(None, False, f"{svc.scheduler}-port hashes the source port: give CLIENT:PORT")
    port = client_port if with_port and client_port is not None else 0
    if not order:
        return Prediction(None, True, "no real server: dropped")
    if svc.scheduler == "sh":
        sh = sh_table([rs.weight for rs in order])
        bucket, size = sh_bucket(client, port), SH_TABLE_SIZE
        owner: int | None = sh[bucket]
    else:
        if any(rs.weight <= 0 for rs in order):
            # The kernel built the table with these servers' last non-zero weights,
            # which netlink does not report: the table below may differ from the kernel's.
            return Prediction(
                None, False, "mh: a real server at weight 0 keeps its entries at its last weight (unknown)"
            )
        mh = mh_table([(str(rs.address), rs.port, rs.weight) for rs in order])
        bucket, size = mh_bucket(client, port), MH_TABLE_SIZE
        owner = mh[bucket]
    if owner is None:
        return Prediction(
            None, True, f"{svc.scheduler}: bucket {bucket} of {size} is empty: dropped", bucket, size
        )
    rs = order[owner]
    name = f"{rs.address}:{rs.port}"
    if rs.weight <= 0:
        fallback = f"{svc.scheduler}-fallback" in svc.flags
        why = "the next available one (fallback)" if fallback else "dropped (no fallback flag)"
        return Prediction(
            None, not fallback, f"{svc.scheduler}: bucket {bucket} is {name}, weight 0: {why}", bucket, size
        )
    return Prediction(
        name, True, f"{svc.scheduler}: bucket {bucket} of {size}, owned by {name}", bucket, size
    )
