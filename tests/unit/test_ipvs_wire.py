"""The fast struct encoder must produce what pyroute2's IPVS definitions decode to the
same values (pyroute2 is the reference for this netlink family)."""

from __future__ import annotations

from hypothesis import given, settings

from kubelvs.backends.ipvs import decode as dec
from kubelvs.backends.ipvs import wire
from kubelvs.model import Forward, RealServer, Timeouts, VirtualService

from ..strategies import services


def decode(cmd: wire.Cmd, attrs: bytes) -> dec.IpvsMessage:
    msg = dec.decode(wire.encode_request(0x1F, cmd, attrs, flags=wire.NLM_F_REQUEST, seq=42))
    assert msg["header"]["sequence_number"] == 42 and msg["cmd"] == cmd
    return msg


@settings(max_examples=300)
@given(services())
def test_service_round_trips_through_pyroute2(svc: VirtualService) -> None:
    msg = decode(wire.Cmd.NEW_SERVICE, wire.service_attrs(svc))
    assert dec.decode_service(msg) == svc.with_realservers(())


@settings(max_examples=300)
@given(services())
def test_dest_round_trips_through_pyroute2(svc: VirtualService) -> None:
    for rs in svc.realservers:
        msg = decode(wire.Cmd.NEW_DEST, wire.service_key_attrs(svc.key) + wire.dest_attrs(rs))
        decoded, _stats = dec.decode_dest(msg)
        assert decoded == rs
        assert dec.decode_service_key(msg) == svc.key


def test_timeouts_round_trip() -> None:
    raw = wire.encode_request(
        0x1F, wire.Cmd.SET_CONFIG, wire.config_attrs(Timeouts(900, 30, 300)), flags=1, seq=1
    )
    msg = dec.decode(raw)
    assert [msg.get_attr(f"IPVS_CMD_ATTR_TIMEOUT_{n}") for n in ("TCP", "TCP_FIN", "UDP")] == [900, 30, 300]
    assert wire.parse_config_reply(raw) == Timeouts(900, 30, 300)


def test_forward_codes_match_ip_vs_h() -> None:
    # IP_VS_CONN_F_MASQ 0, _LOCALNODE 1, _TUNNEL 2, _DROUTE 3
    from kubelvs.model import parse_address

    for forward, code in ((Forward.NAT, 0), (Forward.LOCAL, 1), (Forward.TUN, 2), (Forward.DR, 3)):
        attrs = wire.dest_attrs(RealServer(parse_address("10.0.0.1"), 80, 1, forward))
        msg = decode(wire.Cmd.NEW_DEST, attrs)
        dest = dict(msg.get_attr("IPVS_CMD_ATTR_DEST")["attrs"])
        assert dest["IPVS_DEST_ATTR_FWD_METHOD"] == code
