"""The IPVS wire format against pyroute2's IPVS definitions (the reference for this
netlink family): what the struct encoder packs, pyroute2 decodes to the same values; and
what the struct decoder reads from a message, pyroute2 reads from the same bytes, for
our requests and for replies laid out as the kernel lays them out (ip_vs_ctl.c:
16-byte address unions, 32- and 64-bit counters with their padding attributes)."""

from __future__ import annotations

import ipaddress
import socket
import struct
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from pyroute2.netlink.generic.ipvs import ipvsmsg

from kubelvs.backends.ipvs import decode as dec
from kubelvs.backends.ipvs import wire
from kubelvs.model import (
    SCHED_FLAGS,
    Forward,
    RealServer,
    RealServerStats,
    ServiceKey,
    Timeouts,
    VirtualService,
    parse_address,
)

from ..strategies import services


class Reference(ipvsmsg):  # type: ignore[misc]
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


def reference(raw: bytes) -> Any:
    msg = Reference(raw)
    msg.decode()
    return msg


def _attrs(nla: Any) -> dict[str, Any]:
    return {name: value for name, value in nla["attrs"]}


def reference_key(a: dict[str, Any]) -> ServiceKey:
    family = wire.FAMILY_OF_AF[a["IPVS_SVC_ATTR_AF"]]
    if a.get("IPVS_SVC_ATTR_FWMARK"):
        return ServiceKey.for_fwmark(a["IPVS_SVC_ATTR_FWMARK"], family)
    return ServiceKey(
        family,
        wire.PROTO_FROM_KERNEL[a["IPVS_SVC_ATTR_PROTOCOL"]],
        parse_address(a["IPVS_SVC_ATTR_ADDR"]),
        a["IPVS_SVC_ATTR_PORT"],
    )


def reference_service(msg: Any) -> VirtualService:
    """A service as pyroute2 decodes it (flags, netmask and persistence as the kernel means them)."""
    a = _attrs(msg.get_attr("IPVS_CMD_ATTR_SERVICE"))
    key = reference_key(a)
    scheduler = a.get("IPVS_SVC_ATTR_SCHED_NAME", "")
    raw_flags = a["IPVS_SVC_ATTR_FLAGS"]["flags"]
    flags: set[str] = {"ops"} if raw_flags & wire.F_ONEPACKET else set()
    for suffix, bit in wire.NAMED_SCHED_BITS.items():
        if raw_flags & bit:
            generic = {wire.F_SCHED1: "flag-1", wire.F_SCHED2: "flag-2"}[bit]
            flags.add(f"{scheduler}-{suffix}" if SCHED_FLAGS.get(scheduler) else generic)
    if raw_flags & wire.F_SCHED3:
        flags.add("flag-3")
    netmask = a.get("IPVS_SVC_ATTR_NETMASK", "255.255.255.255")
    if key.family == 4:
        prefix = ipaddress.IPv4Network(f"0.0.0.0/{netmask}").prefixlen
    else:
        prefix = struct.unpack("=I", ipaddress.IPv4Address(netmask).packed)[0]
    return VirtualService(
        key=key,
        scheduler=scheduler,
        persistence=a.get("IPVS_SVC_ATTR_TIMEOUT", 0) if raw_flags & wire.F_PERSISTENT else 0,
        netmask=None if prefix == (32 if key.family == 4 else 128) else prefix,
        flags=frozenset(flags),
    )


def reference_dest(msg: Any) -> tuple[RealServer, RealServerStats]:
    a = _attrs(msg.get_attr("IPVS_CMD_ATTR_DEST"))
    rs = RealServer(
        address=parse_address(a["IPVS_DEST_ATTR_ADDR"]),
        port=a["IPVS_DEST_ATTR_PORT"],
        weight=a["IPVS_DEST_ATTR_WEIGHT"],
        forward=wire.FWD_FROM_KERNEL[a["IPVS_DEST_ATTR_FWD_METHOD"] & 0x7],
        u_thresh=a.get("IPVS_DEST_ATTR_U_THRESH", 0),
        l_thresh=a.get("IPVS_DEST_ATTR_L_THRESH", 0),
    )
    s = _attrs(a.get("IPVS_DEST_ATTR_STATS64") or a.get("IPVS_DEST_ATTR_STATS") or {"attrs": []})
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


def request(cmd: wire.Cmd, attrs: bytes) -> bytes:
    return wire.encode_request(0x1F, cmd, attrs, flags=wire.NLM_F_REQUEST, seq=42)


# ------------------------------------------------------------------ kernel-shaped replies


def _nla(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length & 3)


NESTED = 0x8000  # NLA_F_NESTED, as the kernel sets it on nested attributes
PAD = 11  # IPVS_STATS_ATTR_PAD


def _u64(kind: int, value: int, offset: int) -> bytes:
    """nla_put_u64_64bit: a PAD attribute first when the value would not be 8-aligned."""
    pad = _nla(PAD, b"") if (offset + 4) % 8 else b""
    return pad + _nla(kind, struct.pack("=Q", value))


def _stats(counters: list[int], wide: bool, offset: int) -> bytes:
    """STATS (conns and packets u32, bytes u64) or STATS64 (all u64), 10 counters."""
    body = b""
    for kind, value in enumerate(counters, start=1):
        here = offset + 4 + len(body)
        if wide or kind in (4, 5):
            body += _u64(kind, value, here)
        else:
            body += _nla(kind, struct.pack("=I", value & 0xFFFFFFFF))
    return body


def _payloads(attrs: bytes) -> dict[int, bytes]:
    out, offset = {}, 0
    while offset < len(attrs):
        length, kind = struct.unpack_from("=HH", attrs, offset)
        out[kind] = attrs[offset + 4 : offset + length]
        offset += (length + 3) & ~3
    return out


def _addr16(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bytes:
    return address.packed.ljust(16, b"\0")


def kernel_service_reply(svc: VirtualService, counters: list[int]) -> bytes:
    key = svc.key
    af = socket.AF_INET if key.family == 4 else socket.AF_INET6
    body = _nla(1, struct.pack("=H", af))
    if key.fwmark:
        body += _nla(5, struct.pack("=I", key.fwmark))
    else:
        assert key.address is not None
        proto = {v: k for k, v in wire.PROTO_FROM_KERNEL.items()}[key.protocol]
        body += _nla(2, struct.pack("=H", proto)) + _nla(3, _addr16(key.address))
        body += _nla(4, struct.pack("!H", key.port))
    # Flags, timeout and netmask as the encoder writes them (the requests' test checks those).
    inner = _payloads(wire.service_attrs(svc)[4:])
    body += _nla(6, svc.scheduler.encode() + b"\0") + _nla(7, inner[7]) + _nla(8, inner[8])
    body += _nla(9, inner[9])
    body += _nla(10 | NESTED, _stats(counters, False, 20 + 4 + len(body)))
    body += _nla(12 | NESTED, _stats(counters, True, 20 + 4 + len(body)))
    return _header(wire.Cmd.NEW_SERVICE, _nla(1 | NESTED, body))


def kernel_dest_reply(
    rs: RealServer, conns: tuple[int, int, int], counters: list[int], *, with_family: bool = True
) -> bytes:
    fwd = {v: k for k, v in wire.FWD_FROM_KERNEL.items()}[rs.forward]
    af = socket.AF_INET if rs.address.version == 4 else socket.AF_INET6
    body = (
        _nla(1, _addr16(rs.address))
        + _nla(2, struct.pack("!H", rs.port))
        + _nla(3, struct.pack("=I", fwd))
        + _nla(4, struct.pack("=I", rs.weight))
        + _nla(13, b"\0")  # TUN_TYPE
        + _nla(14, struct.pack("!H", 0))  # TUN_PORT
        + _nla(15, struct.pack("=H", 0))  # TUN_FLAGS
        + _nla(5, struct.pack("=I", rs.u_thresh))
        + _nla(6, struct.pack("=I", rs.l_thresh))
        + _nla(7, struct.pack("=I", conns[0]))
        + _nla(8, struct.pack("=I", conns[1]))
        + _nla(9, struct.pack("=I", conns[2]))
        + (_nla(11, struct.pack("=H", af)) if with_family else b"")
    )
    body += _nla(10 | NESTED, _stats(counters, False, 20 + 4 + len(body)))
    body += _nla(12 | NESTED, _stats(counters, True, 20 + 4 + len(body)))
    return _header(wire.Cmd.NEW_DEST, _nla(2 | NESTED, body))


def _header(cmd: wire.Cmd, attrs: bytes) -> bytes:
    return wire.encode_request(0x1F, cmd, attrs, flags=0x2, seq=7)


COUNTERS = st.lists(st.integers(0, 2**40), min_size=10, max_size=10)
CONNS = st.tuples(*[st.integers(0, 2**32 - 1)] * 3)


# ------------------------------------------------------------------ tests


@settings(max_examples=300)
@given(services())
def test_service_request_decodes_the_same_both_ways(svc: VirtualService) -> None:
    raw = request(wire.Cmd.NEW_SERVICE, wire.service_attrs(svc))
    msg = reference(raw)
    assert msg["header"]["sequence_number"] == 42 and msg["cmd"] == wire.Cmd.NEW_SERVICE
    assert reference_service(msg) == svc.with_realservers(())
    assert dec.decode_service(raw) == svc.with_realservers(())


@settings(max_examples=300)
@given(services())
def test_dest_request_decodes_the_same_both_ways(svc: VirtualService) -> None:
    for rs in svc.realservers:
        raw = request(wire.Cmd.NEW_DEST, wire.service_key_attrs(svc.key) + wire.dest_attrs(rs))
        msg = reference(raw)
        assert reference_dest(msg)[0] == rs
        assert reference_key(_attrs(msg.get_attr("IPVS_CMD_ATTR_SERVICE"))) == svc.key
        assert dec.decode_dest(raw, svc.key.family)[0] == rs
        assert dec.decode_service_key(raw) == svc.key


@settings(max_examples=200)
@given(services(), COUNTERS)
def test_kernel_service_reply_decodes_as_pyroute2_does(svc: VirtualService, counters: list[int]) -> None:
    raw = kernel_service_reply(svc, counters)
    assert dec.decode_service(raw) == reference_service(reference(raw)) == svc.with_realservers(())


@settings(max_examples=200)
@given(services(), CONNS, COUNTERS)
def test_kernel_dest_reply_decodes_as_pyroute2_does(
    svc: VirtualService, conns: tuple[int, int, int], counters: list[int]
) -> None:
    for rs in svc.realservers:
        raw = kernel_dest_reply(rs, conns, counters)
        ours = dec.decode_dest(raw, svc.key.family)
        assert ours == reference_dest(reference(raw))
        assert ours[0] == rs
        assert ours[1].in_bytes == counters[3] and ours[1].out_packets == counters[2]
        assert ours[1].active_conns == conns[0]


def test_a_dest_without_its_family_takes_the_services() -> None:
    # Kernels before 4.0 send no IPVS_DEST_ATTR_ADDR_FAMILY.
    rs = RealServer(parse_address("2001:db8::7"), 8080, 3, Forward.DR)
    raw = kernel_dest_reply(rs, (1, 2, 3), list(range(10)), with_family=False)
    assert dec.decode_dest(raw, 6)[0] == rs


def test_timeouts_round_trip() -> None:
    raw = wire.encode_request(
        0x1F, wire.Cmd.SET_CONFIG, wire.config_attrs(Timeouts(900, 30, 300)), flags=1, seq=1
    )
    msg = reference(raw)
    assert [msg.get_attr(f"IPVS_CMD_ATTR_TIMEOUT_{n}") for n in ("TCP", "TCP_FIN", "UDP")] == [900, 30, 300]
    assert wire.parse_config_reply(raw) == Timeouts(900, 30, 300)


def test_forward_codes_match_ip_vs_h() -> None:
    # IP_VS_CONN_F_MASQ 0, _LOCALNODE 1, _TUNNEL 2, _DROUTE 3
    for forward, code in ((Forward.NAT, 0), (Forward.LOCAL, 1), (Forward.TUN, 2), (Forward.DR, 3)):
        attrs = wire.dest_attrs(RealServer(parse_address("10.0.0.1"), 80, 1, forward))
        msg = reference(request(wire.Cmd.NEW_DEST, attrs))
        dest = dict(msg.get_attr("IPVS_CMD_ATTR_DEST")["attrs"])
        assert dest["IPVS_DEST_ATTR_FWD_METHOD"] == code


def test_daemon_reply_round_trip() -> None:
    raw = wire.encode_request(
        0x1F, wire.Cmd.NEW_DAEMON, wire.daemon_attrs(wire.DAEMON_BACKUP, "eth1", 7), flags=1, seq=1
    )
    assert wire.parse_daemon_reply(raw) == (wire.DAEMON_BACKUP, "eth1", 7)
    assert (
        wire.parse_daemon_reply(wire.encode_request(0x1F, wire.Cmd.GET_DAEMON, b"", flags=1, seq=2)) is None
    )
