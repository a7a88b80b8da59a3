"""Decoding of IPVS netlink replies (``GET_SERVICE`` and ``GET_DEST`` dumps) with ``struct``.

A read of 10,000 services x 10 real servers decodes 110,000 messages. pyroute2's generic
decoder built a Python object per attribute (~100 us per message here, minutes under the
VM tier's emulated CPU, and its import alone took seconds there); this reads the
attributes the model uses straight from the bytes. pyroute2's ``ipvsmsg`` definitions
stay the reference: tests/unit/test_ipvs_wire.py decodes the same messages with both.
Constants follow include/uapi/linux/ip_vs.h (wire.py has the encoder's).
"""

from __future__ import annotations

import ipaddress
import struct

from ...model import SCHED_FLAGS, IPAddress, RealServer, RealServerStats, ServiceKey, VirtualService
from .wire import (
    _BE16,
    _CMD_ATTR_DEST,
    _CMD_ATTR_SERVICE,
    _DEST_ADDR,
    _DEST_ADDR_FAMILY,
    _DEST_FWD_METHOD,
    _DEST_L_THRESH,
    _DEST_PORT,
    _DEST_U_THRESH,
    _DEST_WEIGHT,
    _SVC_ADDR,
    _SVC_AF,
    _SVC_FLAGS,
    _SVC_FWMARK,
    _SVC_NETMASK,
    _SVC_PORT,
    _SVC_PROTOCOL,
    _SVC_SCHED_NAME,
    _SVC_TIMEOUT,
    _U16,
    _U32,
    _U32_BE,
    F_ONEPACKET,
    F_PERSISTENT,
    F_SCHED1,
    F_SCHED2,
    F_SCHED3,
    FAMILY_OF_AF,
    FWD_FROM_KERNEL,
    HEADERS,
    NAMED_SCHED_BITS,
    PROTO_FROM_KERNEL,
    attributes,
)

__all__ = ["decode_dest", "decode_service", "decode_service_key"]

_U64 = struct.Struct("=Q")
_FLAGS = struct.Struct("=II")
# The attributes only replies carry (wire.py has those of requests). IPVS_DEST_ATTR_*:
_DEST_ACTIVE, _DEST_INACTIVE, _DEST_PERSIST, _DEST_STATS, _DEST_STATS64 = 7, 8, 9, 10, 12
# IPVS_STATS_ATTR_*: u32 in STATS but the byte counts, u64 all in STATS64.
_STATS_CONNS, _STATS_INPKTS, _STATS_OUTPKTS, _STATS_INBYTES, _STATS_OUTBYTES = 1, 2, 3, 4, 5


def _nested(raw: bytes, kind: int, what: str) -> dict[int, bytes]:
    top = attributes(raw, HEADERS)
    if kind not in top:
        raise ValueError(f"IPVS reply without its {what} attribute")
    return attributes(top[kind])


def _u32(a: dict[int, bytes], kind: int) -> int:
    raw = a.get(kind)
    value: int = _U32.unpack_from(raw)[0] if raw else 0
    return value


def _address(raw: bytes, family: int) -> IPAddress:
    # The kernel sends a union nf_inet_addr (16 bytes) whatever the family.
    if family == 4:
        return ipaddress.IPv4Address(raw[:4])
    return ipaddress.IPv6Address(raw[:16])


def decode_service_key(raw: bytes) -> ServiceKey:
    """The service key of a message with a SERVICE attribute (a reply or a request)."""
    return _service_key(_nested(raw, _CMD_ATTR_SERVICE, "service"))


def _service_key(a: dict[int, bytes]) -> ServiceKey:
    family = FAMILY_OF_AF[_U16.unpack_from(a[_SVC_AF])[0]]
    fwmark = _u32(a, _SVC_FWMARK)
    if fwmark:
        return ServiceKey.for_fwmark(fwmark, family)
    return ServiceKey(
        family,
        PROTO_FROM_KERNEL[_U16.unpack_from(a[_SVC_PROTOCOL])[0]],
        _address(a[_SVC_ADDR], family),
        _BE16.unpack_from(a[_SVC_PORT])[0],
    )


def decode_service(raw: bytes, *, name: str = "") -> VirtualService:
    """A ``GET_SERVICE`` reply message as a service without real servers."""
    a = _nested(raw, _CMD_ATTR_SERVICE, "service")
    key = _service_key(a)
    family = key.family
    scheduler = a.get(_SVC_SCHED_NAME, b"").split(b"\0", 1)[0].decode()
    raw_flags = _FLAGS.unpack_from(a[_SVC_FLAGS])[0] if _SVC_FLAGS in a else 0
    flags: set[str] = set()
    if raw_flags & F_ONEPACKET:
        flags.add("ops")
    named = SCHED_FLAGS.get(scheduler)
    for suffix, bit in NAMED_SCHED_BITS.items():
        if raw_flags & bit:
            flags.add(f"{scheduler}-{suffix}" if named else {F_SCHED1: "flag-1", F_SCHED2: "flag-2"}[bit])
    if raw_flags & F_SCHED3:
        flags.add("flag-3")
    netmask = a.get(_SVC_NETMASK)
    if family == 4:
        # A netmask in network order, e.g. 255.255.255.0.
        prefix = bin(_U32_BE.unpack_from(netmask)[0]).count("1") if netmask else 32
    else:
        # A prefix length in host order.
        prefix = _U32.unpack_from(netmask)[0] if netmask else 128
    persistent = bool(raw_flags & F_PERSISTENT)
    return VirtualService(
        key=key,
        scheduler=scheduler,
        persistence=_u32(a, _SVC_TIMEOUT) if persistent else 0,
        netmask=None if prefix == (32 if family == 4 else 128) else prefix,
        flags=frozenset(flags),
        name=name,
    )


def decode_dest(raw: bytes, family: int = 4) -> tuple[RealServer, RealServerStats]:
    """A ``GET_DEST`` reply message: the real server and its counters. ``family``: the
    service's, for kernels that do not send the destination's own (before 4.0)."""
    a = _nested(raw, _CMD_ATTR_DEST, "destination")
    if _DEST_ADDR_FAMILY in a:
        family = FAMILY_OF_AF[_U16.unpack_from(a[_DEST_ADDR_FAMILY])[0]]
    rs = RealServer(
        address=_address(a[_DEST_ADDR], family),
        port=_BE16.unpack_from(a[_DEST_PORT])[0],
        weight=_u32(a, _DEST_WEIGHT),
        forward=FWD_FROM_KERNEL[_u32(a, _DEST_FWD_METHOD) & 0x7],
        u_thresh=_u32(a, _DEST_U_THRESH),
        l_thresh=_u32(a, _DEST_L_THRESH),
    )
    nested = a.get(_DEST_STATS64) or a.get(_DEST_STATS)
    s = attributes(nested) if nested else {}

    def counter(kind: int) -> int:
        value = s.get(kind)
        if not value:
            return 0
        found: int = (_U64 if len(value) >= 8 else _U32).unpack_from(value)[0]
        return found

    stats = RealServerStats(
        active_conns=_u32(a, _DEST_ACTIVE),
        inactive_conns=_u32(a, _DEST_INACTIVE),
        persist_conns=_u32(a, _DEST_PERSIST),
        conns=counter(_STATS_CONNS),
        in_packets=counter(_STATS_INPKTS),
        out_packets=counter(_STATS_OUTPKTS),
        in_bytes=counter(_STATS_INBYTES),
        out_bytes=counter(_STATS_OUTBYTES),
    )
    return rs, stats
