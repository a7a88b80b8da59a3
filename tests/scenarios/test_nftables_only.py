"""nftables-specific behaviour on the same topology: timeouts in conntrack, MAC changes.

(IPVS keeps its own connection table and resolves MACs in the kernel's stack, so
these do not apply to it; its timeouts are covered by the IPVS backend's tests.)
"""

from __future__ import annotations

import re

import pytest

from kubelvs.model import Timeouts

from .conftest import VIP, Env


def _only_nftables(env: Env) -> None:
    if env.backend_name != "nftables":
        pytest.skip("nftables-specific")


def _conntrack(env: Env, *args: str) -> list[tuple[int, str]]:
    """(timeout seconds, state) of the director's conntrack entries to the VIP."""
    out = env.lab.run(env.director.netns, "conntrack", "-L", "-d", VIP, *args, check=False).stdout
    entries = []
    for line in out.splitlines():
        m = re.match(r"^(tcp|udp)\s+\d+\s+(\d+)\s+([A-Z_]+)?", line)
        if m:
            entries.append((int(m.group(2)), m.group(3) or ""))
    return entries


def test_timeouts_apply_to_nat_connections(nat_env: Env) -> None:
    """The TIME_WAIT incident's ``ipvsadm --set 900 30 300`` has the same effect on conntrack entries."""
    _only_nftables(nat_env)
    nat_env.lab.run(nat_env.director.netns, "conntrack", "-F", check=False)
    nat_env.sync(
        nat_env.service("rr", [1, 1]),
        nat_env.service("rr", [1, 1], udp=True),
        timeouts=Timeouts(900, 30, 300),
    )
    held = nat_env.keepalive()
    try:
        established = [t for t, state in _conntrack(nat_env, "-p", "tcp") if state == "ESTABLISHED"]
        assert established and all(800 < t <= 900 for t in established), established
        nat_env.ask(3)  # closed connections: TIME_WAIT gets tcpfin
        closing = [t for t, state in _conntrack(nat_env, "-p", "tcp") if state in ("TIME_WAIT", "FIN_WAIT")]
        assert closing and all(t <= 30 for t in closing), closing
        nat_env.ask(2, udp=True)
        udp = [t for t, _ in _conntrack(nat_env, "-p", "udp")]
        assert udp and all(200 < t <= 300 for t in udp), udp
    finally:
        held.close()


def test_realserver_mac_change_is_followed(dr_env: Env) -> None:
    _only_nftables(dr_env)
    dr_env.sync(dr_env.service("rr", [1]))
    assert {a.server for a in dr_env.ask(2)} == {"rs1"}
    rs1 = dr_env.realservers[0]
    dr_env.lab.run(rs1.netns, "ip", "link", "set", "eth0", "address", "02:00:00:00:99:01")
    # The director's kernel learns the new MAC (a real NIC swap sends gratuitous ARP;
    # here the stale entry is dropped so the next probe asks again).
    dr_env.lab.run(dr_env.director.netns, "ip", "neigh", "flush", "dev", "eth0")
    assert dr_env.backend.refresh() == [rs1.ip]
    assert {a.server for a in dr_env.ask(2)} == {"rs1"}
    dr_env.lab.run(rs1.netns, "ip", "link", "set", "eth0", "address", rs1.mac)
    dr_env.lab.run(dr_env.director.netns, "ip", "neigh", "flush", "dev", "eth0")
    dr_env.backend.refresh()
