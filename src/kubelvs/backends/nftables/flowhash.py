"""Which slot the nftables data plane gives a flow (pure): nft's ``jhash`` expression as
the kernel computes it, for ``kubelvs explain``.

``jhash ip saddr [. th sport] mod N seed S`` (schema.py's scheduler chains) is, in
nft_hash.c, ``reciprocal_scale(jhash(registers, len, S), N)``: Bob Jenkins' lookup3
(``jhash`` in include/linux/jhash.h) over the source registers, ``len`` bytes. A
concatenation puts each field in its own 32-bit registers (``ip saddr``: 4 bytes;
``th sport``: 2 bytes in network order, then 2 zero bytes: nft_payload clears the
register's last word before it copies), so ``ip saddr . th sport`` hashes 8 bytes.
"""

from __future__ import annotations

import ipaddress

from ...model import Forward, Prediction, VirtualService
from .elements import owner_names, slot_order
from .schema import HASH_SEED

__all__ = ["flow_key", "jhash", "predict", "slot"]

_M32 = 0xFFFFFFFF
JHASH_INITVAL = 0xDEADBEEF


def _rol(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & _M32


def _mix(a: int, b: int, c: int) -> tuple[int, int, int]:
    a = (a - c) & _M32
    a ^= _rol(c, 4)
    c = (c + b) & _M32
    b = (b - a) & _M32
    b ^= _rol(a, 6)
    a = (a + c) & _M32
    c = (c - b) & _M32
    c ^= _rol(b, 8)
    b = (b + a) & _M32
    a = (a - c) & _M32
    a ^= _rol(c, 16)
    c = (c + b) & _M32
    b = (b - a) & _M32
    b ^= _rol(a, 19)
    a = (a + c) & _M32
    c = (c - b) & _M32
    c ^= _rol(b, 4)
    b = (b + a) & _M32
    return a, b, c


def _final(a: int, b: int, c: int) -> int:
    c ^= b
    c = (c - _rol(b, 14)) & _M32
    a ^= c
    a = (a - _rol(c, 11)) & _M32
    b ^= a
    b = (b - _rol(a, 25)) & _M32
    c ^= b
    c = (c - _rol(b, 16)) & _M32
    a ^= c
    a = (a - _rol(c, 4)) & _M32
    b ^= a
    b = (b - _rol(a, 14)) & _M32
    c ^= b
    c = (c - _rol(b, 24)) & _M32
    return c


def jhash(key: bytes, initval: int) -> int:
    """The kernel's ``jhash(key, length, initval)`` (lookup3, words read little-endian
    as on x86)."""
    length = len(key)
    a = b = c = (JHASH_INITVAL + length + initval) & _M32
    k = key
    while len(k) > 12:
        a = (a + int.from_bytes(k[0:4], "little")) & _M32
        b = (b + int.from_bytes(k[4:8], "little")) & _M32
        c = (c + int.from_bytes(k[8:12], "little")) & _M32
        a, b, c = _mix(a, b, c)
        k = k[12:]
    if not k:
        return c
    tail = k + bytes(12 - len(k))
    a = (a + int.from_bytes(tail[0:4], "little")) & _M32
    b = (b + int.from_bytes(tail[4:8], "little")) & _M32
    c = (c + int.from_bytes(tail[8:12], "little")) & _M32
    return _final(a, b, c)


def flow_key(source: str, source_port: int | None) -> bytes:
    """The registers ``ip saddr`` or ``ip saddr . th sport`` hold for this client."""
    key = ipaddress.IPv4Address(source).packed
    if source_port is not None:
        key += source_port.to_bytes(2, "big") + b"\0\0"
    return key


def slot(source: str, source_port: int | None, modulus: int, seed: int) -> int:
    """``jhash <key> mod <modulus> seed <seed>``: ``reciprocal_scale`` of the hash."""
    return (jhash(flow_key(source, source_port), seed) * modulus) >> 32


def predict(svc: VirtualService, client: str, client_port: int | None) -> Prediction:
    """What the nftables data plane does with a new flow from ``client`` to ``svc``."""
    nat = bool(svc.realservers) and svc.realservers[0].forward is Forward.NAT
    names = owner_names(svc)  # as the backend names them in its slot tables
    weights = {name: rs.weight for name, rs in names.items()}
    if svc.scheduler in ("rr", "wrr"):
        if nat:
            return Prediction(None, False, f"{svc.scheduler} on NAT: numgen (a counter) per new connection")
        if client_port is None:
            return Prediction(
                None, False, f"{svc.scheduler} on DR hashes the source port too: give CLIENT:PORT"
            )
        port: int | None = client_port
        source = "ip saddr . th sport"
    elif svc.scheduler in ("sh", "mh"):
        with_port = f"{svc.scheduler}-port" in svc.flags
        if with_port and client_port is None:
            return Prediction(None, False, f"{svc.scheduler}-port hashes the source port: give CLIENT:PORT")
        port = client_port if with_port else None
        source = "ip saddr . th sport" if with_port else "ip saddr"
    else:
        return Prediction(None, False, f"scheduler {svc.scheduler} is not one the nftables backend runs")
    table = slot_order(svc.scheduler, weights)
    if not table:
        return Prediction(None, True, "no real server takes new flows (every weight is 0): dropped")
    n = len(table)
    s = slot(client, port, n, HASH_SEED)
    name = table[s]
    owner = None if name is None else f"{names[name].address}:{names[name].port}"
    return Prediction(
        owner,
        True,
        f"{svc.scheduler}: jhash {source} mod {n} seed {HASH_SEED:#x} = slot {s}, owned by {owner}",
        s,
        n,
    )
