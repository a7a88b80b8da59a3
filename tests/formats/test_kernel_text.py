"""sysctl -a, netstat -s, /proc/net/netstat: round trips, the machine's real output, messy input."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kubelvs.formats.netstat import (
    Counters,
    format_netstat_s,
    format_proc_netstat,
    parse_netstat_s,
    parse_proc_netstat,
)
from kubelvs.formats.sysctl_text import conf_key, format_sysctl, parse_sysctl

_NAME = st.from_regex(r"net\.ipv4\.(conf\.[a-z0-9/-]{1,10}\.[a-z_]{1,12}|[a-z_]{1,20})", fullmatch=True)
_VALUE = st.from_regex(r"[0-9]{1,6}(\t[0-9]{1,6}){0,2}", fullmatch=True)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(_NAME, _VALUE, max_size=20))
def test_sysctl_round_trip(values: dict[str, str]) -> None:
    parsed = parse_sysctl(format_sysctl(values))
    assert parsed.values == values and parsed.problems == []


def test_sysctl_interface_with_dot_and_conf_files() -> None:
    text = (
        "net.ipv4.conf.eth0/100.rp_filter = 1\r\n# comment\n  net.ipv4.tcp_tw_recycle = 1\n"
        "net.ipv4.tcp_rmem = 4096\t131072\t6291456\nsysctl: permission denied on key 'fs.protected_fifos'\n"
        "net/ipv4/conf/eth0.200/arp_ignore = 1\n-net.ipv4.vs.conntrack = 1\n"
    )
    parsed = parse_sysctl(text)
    assert parsed.int_value("net.ipv4.conf.eth0/100.rp_filter") == 1
    assert parsed.int_value("net.ipv4.conf.eth0/200.arp_ignore") == 1
    assert parsed.int_value("net.ipv4.tcp_rmem") == 4096 and parsed.int_value("net.ipv4.vs.conntrack") == 1
    assert parsed.interfaces() == ["eth0.100", "eth0.200"]
    assert conf_key("net.ipv4.conf.eth0/100.rp_filter") == ("eth0.100", "rp_filter")
    assert len(parsed.problems) == 1 and "permission denied" in parsed.problems[0]
    assert parsed.lines["net.ipv4.tcp_tw_recycle"][0] == 3


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(
        st.sampled_from(["TcpExt", "IpExt", "Tcp", "MPTcpExt"]),
        st.dictionaries(
            st.from_regex(r"[A-Z][A-Za-z0-9]{0,15}", fullmatch=True),
            st.integers(0, 2**63),
            min_size=1,
            max_size=10,
        ),
        max_size=4,
    )
)
def test_proc_netstat_round_trip(sections: dict[str, dict[str, int]]) -> None:
    counters = Counters(sections=sections)
    assert parse_proc_netstat(format_proc_netstat(counters)).sections == sections
    assert parse_netstat_s(format_netstat_s(counters)).sections == sections


@pytest.mark.skipif(shutil.which("netstat") is None, reason="net-tools not installed")
def test_real_netstat_s_and_proc_netstat_agree() -> None:
    with open("/proc/net/netstat") as f:
        proc = parse_proc_netstat(f.read())
    text = subprocess.run(["netstat", "-s"], capture_output=True, text=True, check=True).stdout
    net = parse_netstat_s(text)
    assert proc.problems == []
    assert proc.get("TcpExt", "PAWSEstab") is not None
    assert net.problems == []
    assert "Tcp" in net.sections and "TcpExt" in net.sections


def test_netstat_sentences_to_kernel_names() -> None:
    text = (
        "TcpExt:\n    17855 packets rejects in established connections because of timestamp\n"
        "    3 active connections rejected because of time stamp\n    IPReversePathFilter: 12\nIcmp:\n"
        "    ICMP input histogram:\n        destination unreachable: 1\n"
    )
    c = parse_netstat_s(text)
    assert c.get("TcpExt", "PAWSEstab") == 17855 and c.get("TcpExt", "PAWSActive") == 3
    assert c.get("TcpExt", "IPReversePathFilter") == 12
    assert c.problems == []
    # grepped output has no section line
    c = parse_netstat_s("    17855 packets rejects in established connections because of timestamp\n")
    assert c.get("TcpExt", "PAWSEstab") == 17855


def test_truncated_proc_netstat() -> None:
    c = parse_proc_netstat("TcpExt: A B C\nTcpExt: 1 2\nIpExt: X\n")
    assert c.get("TcpExt", "A") == 1 and c.get("TcpExt", "C") is None
    assert len(c.problems) == 2
