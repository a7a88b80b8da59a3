"""IPVS generic-netlink wire format: fast encoding of requests, decoding via pyroute2.

Requests are packed with ``struct`` (a bulk sync sends ~110,000 of them; pyroute2's
generic encoder costs several times more per message). Replies and dumps are
decoded with pyroute2's ``ipvsmsg`` definitions, the reference for this family;
the tests decode every request this module builds with pyroute2 and compare.
Constants follow include/uapi/linux/ip_vs.h.
"""

from __future__ import annotations

import enum
import ipaddress
import socket
import struct
from typing import Any

from pyroute2.netlink.generic.ipvs import ipvsmsg

from ...model import (
    SCHED_FLAGS,
    Forward,
    Protocol,
    RealServer,
    RealServerKey,
    RealServerStats,
    ServiceKey,
    Timeouts,
    VirtualService,
    parse_address,
)

__all__ = [
    "Cmd",
    "IpvsMessage",
    "NLM_F_ACK",
    "NLM_F_DUMP",
    "NLM_F_REQUEST",
    "encode_request",
    "service_attrs",
    "service_key_attrs",
    "dest_attrs",
    "dest_key_attrs",
    "config_attrs",
    "decode_service",
    "decode_service_key",
    "decode_dest",
    "decode_timeouts",
]

GENL_VERSION = 1

NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300


class Cmd(enum.IntEnum):
    NEW_SERVICE = 1
    SET_SERVICE = 2
    DEL_SERVICE = 3
    GET_SERVICE = 4
    NEW_DEST = 5
    SET_DEST = 6
    DEL_DEST = 7
    GET_DEST = 8
    SET_CONFIG = 12
    GET_CONFIG = 13
    GET_INFO = 15
    FLUSH = 17


# Top-level attributes (IPVS_CMD_ATTR_*).
_CMD_ATTR_SERVICE, _CMD_ATTR_DEST = 1, 2
_CMD_ATTR_TIMEOUT_TCP, _CMD_ATTR_TIMEOUT_TCP_FIN, _CMD_ATTR_TIMEOUT_UDP = 4, 5, 6
# IPVS_SVC_ATTR_*
_SVC_AF, _SVC_PROTOCOL, _SVC_ADDR, _SVC_PORT, _SVC_FWMARK = 1, 2, 3, 4, 5
_SVC_SCHED_NAME, _SVC_FLAGS, _SVC_TIMEOUT, _SVC_NETMASK = 6, 7, 8, 9
# IPVS_DEST_ATTR_*
_DEST_ADDR, _DEST_PORT, _DEST_FWD_METHOD, _DEST_WEIGHT = 1, 2, 3, 4
_DEST_U_THRESH, _DEST_L_THRESH, _DEST_ADDR_FAMILY = 5, 6, 11

# Service flags (IP_VS_SVC_F_*).
F_PERSISTENT = 0x0001
F_HASHED = 0x0002
F_ONEPACKET = 0x0004
F_SCHED1, F_SCHED2, F_SCHED3 = 0x0008, 0x0010, 0x0020
_SCHED_BITS = {"flag-1": F_SCHED1, "flag-2": F_SCHED2, "flag-3": F_SCHED3}
# sh-fallback / mh-fallback are SCHED1, sh-port / mh-port are SCHED2 (ip_vs.h).
_NAMED_SCHED_BITS = {"fallback": F_SCHED1, "port": F_SCHED2}

# Forwarding methods (IP_VS_CONN_F_*).
_FWD_TO_KERNEL = {Forward.NAT: 0, Forward.LOCAL: 1, Forward.TUN: 2, Forward.DR: 3}
_FWD_FROM_KERNEL = {v: k for k, v in _FWD_TO_KERNEL.items()}

_PROTO_TO_KERNEL = {Protocol.TCP: socket.IPPROTO_TCP, Protocol.UDP: socket.IPPROTO_UDP, Protocol.SCTP: socket.IPPROTO_SCTP}
_PROTO_FROM_KERNEL = {v: k for k, v in _PROTO_TO_KERNEL.items()}
_AF = {4: socket.AF_INET, 6: socket.AF_INET6}
_FAMILY = {socket.AF_INET: 4, socket.AF_INET6: 6}

_NLA = struct.Struct("=HH")
_U16 = struct.Struct("=H")
_U32 = struct.Struct("=I")
_BE16 = struct.Struct("!H")
_NLMSG_GENL = struct.Struct("=IHHIIBBH")


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return _NLA.pack(length, kind) + payload + b"\0" * (-length & 3)


def _u16(kind: int, value: int) -> bytes:
    return _attr(kind, _U16.pack(value))


def _u32(kind: int, value: int) -> bytes:
    return _attr(kind, _U32.pack(value))


def _be16(kind: int, value: int) -> bytes:
    return _attr(kind, _BE16.pack(value))


def encode_request(family_id: int, cmd: Cmd, attrs: bytes, *, flags: int, seq: int) -> bytes:
    """One complete netlink message: nlmsghdr + genlmsghdr + attributes."""
    return _NLMSG_GENL.pack(20 + len(attrs), family_id, flags, seq, 0, cmd, GENL_VERSION, 0) + attrs


def service_key_attrs(key: ServiceKey) -> bytes:
    """The nested SERVICE attribute with only the identity fields (for dest commands, delete)."""
    return _attr(_CMD_ATTR_SERVICE, _service_key(key))


def _service_key(key: ServiceKey) -> bytes:
    af = _u16(_SVC_AF, _AF[key.family])
    if key.fwmark:
        return af + _u32(_SVC_FWMARK, key.fwmark)
    assert key.address is not None
    return (
        af
        + _u16(_SVC_PROTOCOL, _PROTO_TO_KERNEL[key.protocol])
        + _attr(_SVC_ADDR, key.address.packed)
        + _be16(_SVC_PORT, key.port)
    )


def _service_flags(svc: VirtualService) -> int:
    flags = F_PERSISTENT if svc.persistence else 0
    for name in svc.flags:
        if name == "ops":
            flags |= F_ONEPACKET
        elif name in _SCHED_BITS:
            flags |= _SCHED_BITS[name]
        else:  # "mh-port" -> "port"
            flags |= _NAMED_SCHED_BITS[name.split("-", 1)[1]]
    return flags


def service_attrs(svc: VirtualService) -> bytes:
    """The nested SERVICE attribute with every field (for add and edit)."""
    if svc.key.family == 4:
        netmask = int(ipaddress.IPv4Network(f"0.0.0.0/{svc.effective_netmask}").netmask).to_bytes(4, "big")
    else:
        # The kernel takes an IPv6 persistence netmask as a prefix length in host order.
        netmask = _U32.pack(svc.effective_netmask)
    body = (
        _service_key(svc.key)
        + _attr(_SVC_SCHED_NAME, svc.scheduler.encode() + b"\0")
        # mask ~0: the flags given replace all of the service's flags, as in ipvsadm.
        + _attr(_SVC_FLAGS, struct.pack("=II", _service_flags(svc), 0xFFFFFFFF))
        + _u32(_SVC_TIMEOUT, svc.persistence)
        + _attr(_SVC_NETMASK, netmask)
    )
    return _attr(_CMD_ATTR_SERVICE, body)


def dest_key_attrs(rs: RealServerKey) -> bytes:
    return _attr(
        _CMD_ATTR_DEST,
        _attr(_DEST_ADDR, rs.address.packed) + _be16(_DEST_PORT, rs.port) + _u16(_DEST_ADDR_FAMILY, _AF[rs.address.version]),
    )


def dest_attrs(rs: RealServer) -> bytes:
    body = (
        _attr(_DEST_ADDR, rs.address.packed)
        + _be16(_DEST_PORT, rs.port)
        + _u16(_DEST_ADDR_FAMILY, _AF[rs.address.version])
        + _u32(_DEST_FWD_METHOD, _FWD_TO_KERNEL[rs.forward])
        + _u32(_DEST_WEIGHT, rs.weight)
        + _u32(_DEST_U_THRESH, rs.u_thresh)
        + _u32(_DEST_L_THRESH, rs.l_thresh)
    )
    # TUN_TYPE is left out: the kernel's default is IPIP, the only tunnel type we model.
    return _attr(_CMD_ATTR_DEST, body)


def config_attrs(t: Timeouts) -> bytes:
    return _u32(_CMD_ATTR_TIMEOUT_TCP, t.tcp) + _u32(_CMD_ATTR_TIMEOUT_TCP_FIN, t.tcpfin) + _u32(_CMD_ATTR_TIMEOUT_UDP, t.udp)


# ---------------------------------------------------------------- decoding


class IpvsMessage(ipvsmsg):  # type: ignore[misc]
    """pyroute2's ipvsmsg, with the timeout attributes decoded as the u32 they are."""

    nla_map = (
        ("IPVS_CMD_ATTR_UNSPEC", "none"),
        ("IPVS_CMD_ATTR_SERVICE", "service"),
        ("IPVS_CMD_ATTR_DEST", "dest"),
        ("IPVS_CMD_ATTR_DAEMON", "hex"),
        ("IPVS_CMD_ATTR_TIMEOUT_TCP", "uint32"),
        ("IPVS_CMD_ATTR_TIMEOUT_TCP_FIN", "uint32"),
        ("IPVS_CMD_ATTR_TIMEOUT_UDP", "uint32"),
    )


def _attrs(nla: Any) -> dict[str, Any]:
    return {name: value for name, value in nla["attrs"]}


def decode_service_key(msg: IpvsMessage) -> ServiceKey:
    return _service_key_of(_attrs(msg.get_attr("IPVS_CMD_ATTR_SERVICE")))


def _service_key_of(a: dict[str, Any]) -> ServiceKey:
    family = _FAMILY[a["IPVS_SVC_ATTR_AF"]]
    if a.get("IPVS_SVC_ATTR_FWMARK"):
        return ServiceKey.for_fwmark(a["IPVS_SVC_ATTR_FWMARK"], family)
    return ServiceKey(
        family,
        _PROTO_FROM_KERNEL[a["IPVS_SVC_ATTR_PROTOCOL"]],
        parse_address(a["IPVS_SVC_ATTR_ADDR"]),
        a["IPVS_SVC_ATTR_PORT"],
    )


def decode_service(msg: IpvsMessage, *, name: str = "") -> VirtualService:
    a = _attrs(msg.get_attr("IPVS_CMD_ATTR_SERVICE"))
    key = _service_key_of(a)
    family = key.family
    scheduler = a.get("IPVS_SVC_ATTR_SCHED_NAME", "")
    raw_flags = a["IPVS_SVC_ATTR_FLAGS"]["flags"]
    flags: set[str] = set()
    if raw_flags & F_ONEPACKET:
        flags.add("ops")
    named = SCHED_FLAGS.get(scheduler)
    for suffix, bit in _NAMED_SCHED_BITS.items():
        if raw_flags & bit:
            flags.add(f"{scheduler}-{suffix}" if named else {F_SCHED1: "flag-1", F_SCHED2: "flag-2"}[bit])
    if raw_flags & F_SCHED3:
        flags.add("flag-3")
    netmask_text = a.get("IPVS_SVC_ATTR_NETMASK", "255.255.255.255")
    if family == 4:
        prefix = ipaddress.IPv4Network(f"0.0.0.0/{netmask_text}").prefixlen
    else:
        prefix = _U32.unpack(ipaddress.IPv4Address(netmask_text).packed)[0]
    persistent = bool(raw_flags & F_PERSISTENT)
    return VirtualService(
        key=key,
        scheduler=scheduler,
        persistence=a.get("IPVS_SVC_ATTR_TIMEOUT", 0) if persistent else 0,
        netmask=None if prefix == (32 if family == 4 else 128) else prefix,
        flags=frozenset(flags),
        name=name,
    )


def decode_dest(msg: IpvsMessage) -> tuple[RealServer, RealServerStats]:
    a = _attrs(msg.get_attr("IPVS_CMD_ATTR_DEST"))
    rs = RealServer(
        address=parse_address(a["IPVS_DEST_ATTR_ADDR"]),
        port=a["IPVS_DEST_ATTR_PORT"],
        weight=a["IPVS_DEST_ATTR_WEIGHT"],
        forward=_FWD_FROM_KERNEL[a["IPVS_DEST_ATTR_FWD_METHOD"] & 0x7],
        u_thresh=a.get("IPVS_DEST_ATTR_U_THRESH", 0),
        l_thresh=a.get("IPVS_DEST_ATTR_L_THRESH", 0),
    )
    s = _attrs(a["IPVS_DEST_ATTR_STATS64"]) if "IPVS_DEST_ATTR_STATS64" in a else _attrs(a.get("IPVS_DEST_ATTR_STATS", {"attrs": []}))
    stats = RealServerStats(
        active_conns=a.get("IPVS_DEST_ATTR_ACTIVE_CONNS", 0),
        inactive_conns=a.get("IPVS_DEST_ATTR_INACT_CONNS", 0),
        persist_conns=a.get("IPVS_DEST_ATTR_PERSIST_CONNS", 0),
        conns=s.get("IPVS_STATS_ATTR_CONNS", 0),
        in_packets=s.get("IPVS_STATS_ATTR_INPKTS", 0),
        out_packets=s.get("IPVS_STATS_ATTR_OUTPKTS", 0),
        in_bytes=s.get("IPVS_STATS_ATTR_INBYTES", 0),
        out_bytes=s.get("IPVS_STATS_ATTR_OUTBYTES", 0),
    )
    return rs, stats


def decode_timeouts(msg: IpvsMessage) -> Timeouts:
    return Timeouts(
        tcp=msg.get_attr("IPVS_CMD_ATTR_TIMEOUT_TCP"),
        tcpfin=msg.get_attr("IPVS_CMD_ATTR_TIMEOUT_TCP_FIN"),
        udp=msg.get_attr("IPVS_CMD_ATTR_TIMEOUT_UDP"),
    )
