"""ipvsadm -Lnc and /proc/net/ip_vs_conn."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kubelvs.formats.ipvs_conn import (
    ConnTable,
    format_conn_list,
    format_proc_conn,
    parse_conn_list,
    parse_proc_conn,
)

_ADDR4 = st.builds(
    lambda a, b, p: f"10.{a}.0.{b}:{p}", st.integers(0, 255), st.integers(1, 254), st.integers(0, 65535)
)
_ADDR6 = st.builds(lambda a, p: f"[2001:db8::{a:x}]:{p}", st.integers(1, 0xFFFF), st.integers(0, 65535))
_STATES = st.sampled_from(["ESTABLISHED", "SYN_RECV", "TIME_WAIT", "FIN_WAIT", "CLOSE_WAIT", "NONE", "UDP"])


@st.composite
def tables(draw: st.DrawFn) -> ConnTable:
    addr = draw(st.sampled_from([_ADDR4, _ADDR6]))
    rows = draw(
        st.lists(
            st.tuples(
                st.sampled_from(["TCP", "UDP", "SCTP"]), st.integers(0, 7200), _STATES, addr, addr, addr
            ),
            max_size=20,
        )
    )
    return ConnTable(rows=rows)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tables())
def test_lnc_round_trip(table: ConnTable) -> None:
    back = parse_conn_list(format_conn_list(table))
    assert back.rows == table.rows and back.problems == []


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tables())
def test_proc_round_trip(table: ConnTable) -> None:
    back = parse_proc_conn(format_proc_conn(table))
    assert back.rows == table.rows and back.problems == []


def test_incident_lines_and_line_numbers() -> None:
    text = (
        "IPVS connection entries\npro expire state       source             virtual            destination\n"
        "TCP 00:48 SYN_RECV 192.168.58.36:57964 10.111.99.131:80 172.26.8.17:80\r\n"
        "TCP 00:4\n"  # truncated
        "TCP 1x:00 SYN_RECV a:1 b:2 c:3\n"
        "TCP 14:59 ESTABLISHED 192.168.58.36:57963 10.111.99.131:http 172.26.8.17:http\n"
    )
    table = parse_conn_list(text)
    assert table.rows[0] == (
        "TCP",
        48,
        "SYN_RECV",
        "192.168.58.36:57964",
        "10.111.99.131:80",
        "172.26.8.17:80",
    )
    assert table.rows[1][1] == 899 and table.linenos == [3, 6]
    assert table.bad_lines == 2 and "ipvsadm -Lnc:4" in table.problems[0]


def test_proc_conn_from_the_kernel() -> None:
    # Linux prints "%-3s %08X %04X %08X %04X %08X %04X %-11s %7u%s\n" (+ PE name/data)
    text = (
        "Pro FromIP   FPrt ToIP     TPrt DestIP   DPrt State       Expires PEName PEData\n"
        "TCP C0A83A24 E26C 0A6F6383 0050 AC1A0811 0050 SYN_RECV         48\n"
        "TCP C0A83A24 E26C 0A6F6383\n"
    )
    table = parse_proc_conn(text)
    assert table.rows == [
        ("TCP", 48, "SYN_RECV", "192.168.58.36:57964", "10.111.99.131:80", "172.26.8.17:80")
    ]
    assert table.bad_lines == 1


def test_kernel_and_ipvsadm_tables_captured_together_agree() -> None:
    """vm-* fixtures hold ipvsadm -Lnc and, read later by collect, /proc/net/ip_vs_conn of the
    same real IPVS table. On the emulated VM seconds pass between the reads: entries can only
    have expired or counted down meanwhile."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "fixtures" / "bundles"
    common = 0
    for lnc in sorted(root.glob("vm-*/**/ipvsadm-Lnc.txt")):
        proc = lnc.with_name("proc-net-ip_vs_conn.txt")
        a = parse_conn_list(lnc.read_text(), source=str(lnc))
        b = parse_proc_conn(proc.read_text(), source=str(proc))
        assert a.problems == b.problems == []
        first = {(r[0], r[3], r[4], r[5]): r for r in a.rows}
        for r in b.rows:
            earlier = first[(r[0], r[3], r[4], r[5])]  # KeyError: a connection ipvsadm did not list
            assert r[1] <= earlier[1] or r[2] != earlier[2], (lnc, r, earlier)
            common += 1
    assert common > 1000  # vm-timewait alone has 1200
