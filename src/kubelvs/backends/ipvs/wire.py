"""IPVS generic-netlink wire format: fast encoding of requests, the attribute walk of
replies (decode.py decodes services and destinations with it).

Requests are packed with ``struct`` (a bulk sync sends ~110,000 of them; pyroute2's
generic encoder costs several times more per message). The tests decode every
request built here with pyroute2's ``ipvsmsg`` definitions, the reference for this
family, and compare. Constants follow include/uapi/linux/ip_vs.h.
"""

from __future__ import annotations

import enum
import socket
import struct

from ...model import (
    Forward,
    Protocol,
    RealServer,
    RealServerKey,
    ServiceKey,
    Timeouts,
    VirtualService,
)

__all__ = [
    "DAEMON_BACKUP",
    "DAEMON_MASTER",
    "HEADERS",
    "NLM_F_ACK",
    "NLM_F_DUMP",
    "NLM_F_REQUEST",
    "Cmd",
    "attributes",
    "config_attrs",
    "daemon_attrs",
    "dest_attrs",
    "dest_key_attrs",
    "encode_request",
    "parse_config_reply",
    "parse_daemon_reply",
    "service_attrs",
    "service_key_attrs",
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
    NEW_DAEMON = 9
    DEL_DAEMON = 10
    GET_DAEMON = 11
    SET_CONFIG = 12
    GET_CONFIG = 13
    GET_INFO = 15
    FLUSH = 17


# Top-level attributes (IPVS_CMD_ATTR_*).
_CMD_ATTR_SERVICE, _CMD_ATTR_DEST, _CMD_ATTR_DAEMON = 1, 2, 3
_CMD_ATTR_TIMEOUT_TCP, _CMD_ATTR_TIMEOUT_TCP_FIN, _CMD_ATTR_TIMEOUT_UDP = 4, 5, 6
# IPVS_SVC_ATTR_*
_SVC_AF, _SVC_PROTOCOL, _SVC_ADDR, _SVC_PORT, _SVC_FWMARK = 1, 2, 3, 4, 5
_SVC_SCHED_NAME, _SVC_FLAGS, _SVC_TIMEOUT, _SVC_NETMASK = 6, 7, 8, 9
# IPVS_DEST_ATTR_*
_DEST_ADDR, _DEST_PORT, _DEST_FWD_METHOD, _DEST_WEIGHT = 1, 2, 3, 4
_DEST_U_THRESH, _DEST_L_THRESH, _DEST_ADDR_FAMILY = 5, 6, 11

# IPVS_DAEMON_ATTR_*, and the daemon states (IP_VS_STATE_*).
_DAEMON_STATE, _DAEMON_MCAST_IFN, _DAEMON_SYNC_ID = 1, 2, 3
DAEMON_MASTER, DAEMON_BACKUP = 1, 2

# Service flags (IP_VS_SVC_F_*).
F_PERSISTENT = 0x0001
F_HASHED = 0x0002
F_ONEPACKET = 0x0004
F_SCHED1, F_SCHED2, F_SCHED3 = 0x0008, 0x0010, 0x0020
_SCHED_BITS = {"flag-1": F_SCHED1, "flag-2": F_SCHED2, "flag-3": F_SCHED3}
# sh-fallback / mh-fallback are SCHED1, sh-port / mh-port are SCHED2 (ip_vs.h).
NAMED_SCHED_BITS = {"fallback": F_SCHED1, "port": F_SCHED2}

# Forwarding methods (IP_VS_CONN_F_*).
_FWD_TO_KERNEL = {Forward.NAT: 0, Forward.LOCAL: 1, Forward.TUN: 2, Forward.DR: 3}
FWD_FROM_KERNEL = {v: k for k, v in _FWD_TO_KERNEL.items()}

_PROTO_TO_KERNEL = {
    Protocol.TCP: socket.IPPROTO_TCP,
    Protocol.UDP: socket.IPPROTO_UDP,
    Protocol.SCTP: socket.IPPROTO_SCTP,
}
PROTO_FROM_KERNEL = {v: k for k, v in _PROTO_TO_KERNEL.items()}
_AF = {4: socket.AF_INET, 6: socket.AF_INET6}
FAMILY_OF_AF = {socket.AF_INET: 4, socket.AF_INET6: 6}

_NLA = struct.Struct("=HH")
_U16 = struct.Struct("=H")
_U32 = struct.Struct("=I")
_U32_BE = struct.Struct("!I")
_BE16 = struct.Struct("!H")
_NLMSG_GENL = struct.Struct("=IHHIIBBH")
HEADERS = _NLMSG_GENL.size  # nlmsghdr + genlmsghdr: where a message's attributes start


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
    return _NLMSG_GENL.pack(HEADERS + len(attrs), family_id, flags, seq, 0, cmd, GENL_VERSION, 0) + attrs


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
            flags |= NAMED_SCHED_BITS[name.split("-", 1)[1]]
    return flags


def service_attrs(svc: VirtualService) -> bytes:
    """The nested SERVICE attribute with every field (for add and edit)."""
    if svc.key.family == 4:
        netmask = _U32_BE.pack((0xFFFFFFFF << (32 - svc.effective_netmask)) & 0xFFFFFFFF)
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
        _attr(_DEST_ADDR, rs.address.packed)
        + _be16(_DEST_PORT, rs.port)
        + _u16(_DEST_ADDR_FAMILY, _AF[rs.address.version]),
    )


# The whole DEST attribute in one pack: ADDR, PORT (be16 via htons), ADDR_FAMILY,
# FWD_METHOD, WEIGHT, U_THRESH, L_THRESH; the IPv4 and IPv6 layouts differ in ADDR only.
_DEST = {n: struct.Struct(f"=HHHH{n}sHHH2xHHH2xHHIHHIHHIHHI") for n in (4, 16)}
_DEST_LEN = {n: _DEST[n].size for n in (4, 16)}


def dest_attrs(rs: RealServer) -> bytes:
    # TUN_TYPE is left out: the kernel's default is IPIP, the only tunnel type we model.
    packed = rs.address.packed
    n = len(packed)
    return _DEST[n].pack(
        _DEST_LEN[n],
        _CMD_ATTR_DEST,
        4 + n,
        _DEST_ADDR,
        packed,
        6,
        _DEST_PORT,
        socket.htons(rs.port),
        6,
        _DEST_ADDR_FAMILY,
        _AF[rs.address.version],
        8,
        _DEST_FWD_METHOD,
        _FWD_TO_KERNEL[rs.forward],
        8,
        _DEST_WEIGHT,
        rs.weight,
        8,
        _DEST_U_THRESH,
        rs.u_thresh,
        8,
        _DEST_L_THRESH,
        rs.l_thresh,
    )


def config_attrs(t: Timeouts) -> bytes:
    return (
        _u32(_CMD_ATTR_TIMEOUT_TCP, t.tcp)
        + _u32(_CMD_ATTR_TIMEOUT_TCP_FIN, t.tcpfin)
        + _u32(_CMD_ATTR_TIMEOUT_UDP, t.udp)
    )


def daemon_attrs(state: int, interface: str, syncid: int) -> bytes:
    """The nested DAEMON attribute of NEW_DAEMON (state only, for DEL_DAEMON, is not used:
    kubelvs never stops a sync daemon)."""
    body = (
        _u32(_DAEMON_STATE, state)
        + _attr(_DAEMON_MCAST_IFN, interface.encode() + b"\0")
        + _u32(_DAEMON_SYNC_ID, syncid)
    )
    return _attr(_CMD_ATTR_DAEMON, body)


def attributes(buf: bytes, start: int = 0) -> dict[int, bytes]:
    """Attribute type (without the NESTED and BYTEORDER bits) -> payload, of one level of
    ``buf`` from ``start`` (``HEADERS`` for a whole message)."""
    end = len(buf)
    out: dict[int, bytes] = {}
    unpack = _NLA.unpack_from
    while start + 4 <= end:
        length, kind = unpack(buf, start)
        if length < 4:
            break
        out[kind & 0x3FFF] = buf[start + 4 : start + length]
        start += (length + 3) & ~3
    return out


def parse_daemon_reply(message: bytes) -> tuple[int, str, int] | None:
    """(state, interface, syncid) of one GET_DAEMON reply message; None if it has none."""
    daemon = attributes(message, HEADERS).get(_CMD_ATTR_DAEMON)
    values = attributes(daemon) if daemon is not None else {}
    if _DAEMON_STATE not in values:
        return None
    state = _U32.unpack_from(values[_DAEMON_STATE])[0]
    interface = values.get(_DAEMON_MCAST_IFN, b"").split(b"\0", 1)[0].decode(errors="replace")
    syncid = _U32.unpack_from(values[_DAEMON_SYNC_ID])[0] if _DAEMON_SYNC_ID in values else 0
    return state, interface, syncid


def parse_config_reply(message: bytes) -> Timeouts:
    """Timeouts from a GET_CONFIG reply (nlmsghdr + genlmsghdr + three u32 attributes)."""
    values = attributes(message, HEADERS)

    def timeout(kind: int) -> int:
        raw = values.get(kind)
        found: int = _U32.unpack_from(raw)[0] if raw is not None and len(raw) >= 4 else 0
        return found

    return Timeouts(
        tcp=timeout(_CMD_ATTR_TIMEOUT_TCP),
        tcpfin=timeout(_CMD_ATTR_TIMEOUT_TCP_FIN),
        udp=timeout(_CMD_ATTR_TIMEOUT_UDP),
    )
