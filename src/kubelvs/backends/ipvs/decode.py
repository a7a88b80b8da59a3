"""Decoding of IPVS netlink replies with pyroute2's ``ipvsmsg`` definitions.

Imported only when there is something to decode: importing pyroute2 costs seconds
on a slow machine, and a cold sync reads an empty table.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Any

from pyroute2.netlink.generic.ipvs import ipvsmsg

from ...model import (
    SCHED_FLAGS,
    RealServer,
    RealServerStats,
    ServiceKey,
    VirtualService,
    parse_address,
)
from .wire import (
    F_ONEPACKET,
    F_PERSISTENT,
    F_SCHED1,
    F_SCHED2,
    F_SCHED3,
    FAMILY_OF_AF,
    FWD_FROM_KERNEL,
    NAMED_SCHED_BITS,
    PROTO_FROM_KERNEL,
)

__all__ = ["IpvsMessage", "decode", "decode_dest", "decode_service", "decode_service_key"]


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
    family = FAMILY_OF_AF[a["IPVS_SVC_ATTR_AF"]]
    if a.get("IPVS_SVC_ATTR_FWMARK"):
        return ServiceKey.for_fwmark(a["IPVS_SVC_ATTR_FWMARK"], family)
    return ServiceKey(
        family,
        PROTO_FROM_KERNEL[a["IPVS_SVC_ATTR_PROTOCOL"]],
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
    for suffix, bit in NAMED_SCHED_BITS.items():
        if raw_flags & bit:
            flags.add(f"{scheduler}-{suffix}" if named else {F_SCHED1: "flag-1", F_SCHED2: "flag-2"}[bit])
    if raw_flags & F_SCHED3:
        flags.add("flag-3")
    netmask_text = a.get("IPVS_SVC_ATTR_NETMASK", "255.255.255.255")
    if family == 4:
        prefix = ipaddress.IPv4Network(f"0.0.0.0/{netmask_text}").prefixlen
    else:
        prefix = struct.unpack("=I", ipaddress.IPv4Address(netmask_text).packed)[0]
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
        forward=FWD_FROM_KERNEL[a["IPVS_DEST_ATTR_FWD_METHOD"] & 0x7],
        u_thresh=a.get("IPVS_DEST_ATTR_U_THRESH", 0),
        l_thresh=a.get("IPVS_DEST_ATTR_L_THRESH", 0),
    )
    s = (
        _attrs(a["IPVS_DEST_ATTR_STATS64"])
        if "IPVS_DEST_ATTR_STATS64" in a
        else _attrs(a.get("IPVS_DEST_ATTR_STATS", {"attrs": []}))
    )
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


def decode(raw: bytes) -> IpvsMessage:
    msg = IpvsMessage(raw)
    msg.decode()
    return msg
