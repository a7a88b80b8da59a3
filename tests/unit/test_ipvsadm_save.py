from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kubelvs.errors import ParseError
from kubelvs.formats.ipvsadm_save import format_save, parse_save
from kubelvs.model import Forward, Protocol

from ..strategies import services

# Real `ipvsadm -Sn` output (ipvsadm v1.31, Debian 12, kernel 6.1), captured in the VM tier;
# tests/kernel checks that ipvsadm still prints exactly this after `ipvsadm -R` of it.
REAL = """\
-A -t 10.240.0.201:80 -s mh -b mh-fallback,mh-port
-a -t 10.240.0.201:80 -r 10.240.0.101:80 -g -w 1
-a -t 10.240.0.201:80 -r 10.240.0.102:80 -g -w 3
-A -t 10.240.0.203:80 -s sh -p 300 -M 255.255.255.0 -b sh-port
-A -u 10.240.0.202:53 -s rr -o
-a -u 10.240.0.202:53 -r 10.1.0.1:5353 -m -w 1
-A -t [2001:db8::10]:443 -s wlc -p 300 -M 64
-a -t [2001:db8::10]:443 -r [2001:db8::101]:443 -i -w 2 --tun-type ipip
-A -f 100 -s rr -p 60
-a -f 100 -r 10.240.0.103:0 -g -w 1
"""


def test_parses_real_output() -> None:
    svcs = parse_save(REAL)
    assert [str(s.key) for s in svcs] == [
        "TCP 10.240.0.201:80",
        "TCP 10.240.0.203:80",
        "UDP 10.240.0.202:53",
        "TCP [2001:db8::10]:443",
        "FWM 100",
    ]
    mh, sh, udp, v6, fwm = svcs
    assert mh.flags == {"mh-fallback", "mh-port"} and [r.weight for r in mh.realservers] == [1, 3]
    assert (sh.flags, sh.persistence, sh.netmask, sh.realservers) == (frozenset({"sh-port"}), 300, 24, ())
    assert udp.flags == {"ops"} and udp.key.protocol is Protocol.UDP
    (r,) = udp.realservers
    assert (r.port, r.forward) == (5353, Forward.NAT)
    assert (v6.persistence, v6.netmask, v6.realservers[0].forward) == (300, 64, Forward.TUN)
    assert fwm.persistence == 60 and fwm.realservers[0].port == 0


def test_round_trip_of_real_output_is_exact() -> None:
    assert format_save(parse_save(REAL)) == REAL


@settings(max_examples=200)
@given(st.lists(services(), max_size=5, unique_by=lambda s: s.key))
def test_round_trip_any_model(svcs: list) -> None:  # type: ignore[type-arg]
    assert parse_save(format_save(svcs)) == svcs


def test_thresholds_are_kept_although_ipvsadm_drops_them() -> None:
    text = "-A -u 10.0.0.1:53 -s rr\n-a -u 10.0.0.1:53 -r 10.0.0.2:5353 -m -w 1 -x 100 -y 10\n"
    (svc,) = parse_save(text)
    assert (svc.realservers[0].u_thresh, svc.realservers[0].l_thresh) == (100, 10)
    assert format_save([svc]) == text


def test_crlf_and_comments_accepted() -> None:
    text = "# saved\r\n-A -t 10.0.0.1:80 -s rr\r\n-a -t 10.0.0.1:80 -r 10.0.0.2:80 -g -w 1\r\n"
    assert len(parse_save(text)[0].realservers) == 1


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        ("-A -t lb.example:http -s rr\n", 1, "ipvsadm -Sn"),
        ("-A -t 10.0.0.1:80 -s rr\n-a -t 10.0.0.9:80 -r 10.0.0.2:80 -g\n", 2, "not declared"),
        ("-X -t 10.0.0.1:80\n", 1, "expected -A or -a"),
        ("-A -t 10.0.0.1:80 -s rr\n-a -t 10.0.0.1:80 -r 10.0.0.2:80 -w heavy\n", 2, "not a number"),
    ],
)
def test_errors_name_the_line(text: str, line: int, reason: str) -> None:
    with pytest.raises(ParseError) as info:
        parse_save(text, source="rules.txt")
    assert info.value.line == line and reason in info.value.reason
