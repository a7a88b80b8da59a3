"""Real traffic through the director, the same assertions for every backend.

Where a backend cannot behave like IPVS the difference is asserted explicitly and
listed in docs/nftables.md (e.g. DR keeps no connection state under nftables).
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections import Counter
from collections.abc import Callable

import pytest

from kubelvs.kernel.netns import entered
from kubelvs.lab.servers import http_get
from kubelvs.model import Forward, RealServerKey, RealServerStats, ServiceKey, desired_flags

from .conftest import (
    CLIENT_SOURCES,
    FALLBACK_SOURCES,
    HTTP_PORT,
    MAGLEV_SOURCES,
    ORDER_SOURCES,
    STICKY_SOURCE,
    UDP_PORT,
    VIP,
    Env,
)


def _host(peer: str) -> str:
    """The address of a peer as the servers write it (``10.0.0.10:4000``, ``[fd00::10]:4000``)."""
    return peer.rsplit(":", 1)[0].removeprefix("[").removesuffix("]")


def test_http_and_udp_reach_every_realserver_through_the_vip(env: Env) -> None:
    env.sync(env.service("rr", [1, 1, 1]), env.service("rr", [1, 1, 1], udp=True))
    # nftables DR rr is a per-flow hash, not strict alternation: with 12 flows one of 3
    # real servers stays unused 2.3% of the time; with 60, about once in 10^10.
    answers = env.ask(60)
    assert set(env.tally(answers)) == {"rs1", "rs2", "rs3"}
    for a in answers:
        # No source NAT: the real server sees the client's own address.
        assert _host(a.client) == env.addr("10.0.0.10")
        if env.mode is Forward.DR:
            assert a.local == env.hostport(env.vip, 80)  # reached on the VIP (held on its lo)
        else:
            assert a.local in {env.hostport(rs.ip, 8080) for rs in env.realservers}  # DNAT, port mapped
    udp = env.ask(60, udp=True)
    assert set(env.tally(udp)) == {"rs1", "rs2", "rs3"}
    assert {a.local for a in udp} == {env.hostport(env.vip, UDP_PORT)}  # the reply comes from the VIP


def test_nat_maps_service_port_80_to_8080(nat_env: Env) -> None:
    nat_env.sync(nat_env.service("rr", [1, 1]))
    observed = nat_env.backend.read()
    svc = observed.services[nat_env.http_key]
    assert {(str(r.address), r.port, r.forward) for r in svc.realservers} == {
        (nat_env.rs_ip(0), 8080, Forward.NAT),
        (nat_env.rs_ip(1), 8080, Forward.NAT),
    }
    answers = nat_env.ask(4)
    assert {a.local.split(":")[1] for a in answers} == {"8080"}


def test_rr_spreads_new_flows_evenly(env: Env) -> None:
    env.sync(env.service("rr", [1, 1]))
    tally = env.tally(env.ask(200))
    assert set(tally) == {"rs1", "rs2"}
    # IPVS and nftables-NAT alternate exactly; nftables-DR hashes each flow (see docs):
    # binomial(200, 1/2) has sigma 7.1, so 70..130 (4.2 sigma) fails once in ~40,000 runs.
    assert 70 <= tally["rs1"] <= 130, tally


def test_wrr_follows_the_weights(env: Env) -> None:
    env.sync(env.service("wrr", [3, 1]))
    tally = env.tally(env.ask(240))
    # binomial(240, 3/4): mean 180, sigma 6.7; 150..210 is 4.5 sigma.
    assert 150 <= tally["rs1"] <= 210, tally
    assert tally["rs1"] + tally["rs2"] == 240


def test_sh_keeps_a_client_on_one_realserver(env: Env) -> None:
    env.sync(env.service("sh", [1, 1, 1]))
    # From an address no earlier test used (see STICKY_SOURCE).
    assert len(env.tally(env.ask(15, sources=env.sources([STICKY_SOURCE])))) == 1
    spread = env.tally(env.ask(1, sources=env.sources(CLIENT_SOURCES)))
    assert len(spread) >= 2, spread  # different clients do land on different servers


def _assignment(env: Env) -> dict[str, str]:
    # From addresses no earlier test used (see STICKY_SOURCE).
    return {a.source: a.server for a in env.ask(1, sources=env.sources(MAGLEV_SOURCES))}


def test_mh_is_sticky_and_removing_a_realserver_moves_only_its_flows(env: Env) -> None:
    env.sync(env.service("mh", [1, 1, 1]))
    before = _assignment(env)
    assert _assignment(env) == before  # sticky per client
    assert len(set(before.values())) == 3, Counter(before.values())
    env.sync(env.service("mh", [1, 1]))  # rs3 removed
    after = _assignment(env)
    moved = [src for src in before if before[src] != after[src]]
    collateral = [src for src in moved if before[src] != "rs3"]
    # Maglev moves a few percent of the other servers' flows too (IPVS mh as well).
    assert len(collateral) <= 0.05 * len(MAGLEV_SOURCES), (collateral, before, after)
    assert {src for src in before if before[src] == "rs3"} <= set(moved)
    assert "rs3" not in after.values()


def test_mh_sends_flows_the_same_way_whatever_order_real_servers_came_in(env: Env) -> None:
    """A director that saw rs1 join after rs2 and rs3 sends every flow where a director
    that started with all three does (IPVS builds the Maglev table from the order of its
    destination list: kubelvs keeps one order, re-adding rs2 and rs3 when rs1 joins), and
    the connection held to rs2 or rs3 meanwhile survives their re-adding."""
    every = env.service("mh", [1, 1, 1])
    env.sync(every.with_realservers(every.realservers[1:]))  # rs2, rs3
    held = env.keepalive()
    try:
        first = held.get().server
        assert first in ("rs2", "rs3")
        env.sync(every)  # rs1 joins: below the others
        if env.mode is Forward.NAT or env.backend_name == "ipvs":
            # The same connection, still answered by its server. (nftables DR keeps no
            # connection state: a flow whose slot rs1 takes over moves with it, which
            # the IPv6 client's does; docs/nftables.md.)
            assert held.get().server == first
    finally:
        held.close()
    grown = {a.source: a.server for a in env.ask(1, sources=env.sources(ORDER_SOURCES))}
    env.sync()  # a director that restarts with an empty table ...
    env.sync(every)  # ... and adds all three at once
    fresh = {a.source: a.server for a in env.ask(1, sources=env.sources(ORDER_SOURCES))}
    assert len(set(fresh.values())) == 3 and grown == fresh


def test_weight_zero_stops_new_flows(env: Env) -> None:
    env.sync(env.service("rr", [1, 1]))
    held = env.keepalive()
    try:
        first = held.get().server
        weights = [0, 1] if first == "rs1" else [1, 0]
        env.sync(env.service("rr", weights))
        tally = env.tally(env.ask(20))
        assert first not in tally, tally  # no new flow reaches the drained server
        if env.mode is Forward.NAT or env.backend_name == "ipvs":
            # Connection state (conntrack / the IPVS table) keeps the established one.
            assert held.get().server == first
    finally:
        held.close()


def test_a_weight_zero_realserver_under_mh_refuses_no_new_client(env: Env) -> None:
    """A real server at weight 0 (draining, or down with ``weight0``) under ``mh``: the
    clients hashed to it go to the other servers and theirs stay put, with the flags every
    source programs (``desired_flags``: mh falls back). IPVS without the flag refuses those
    clients (what kube-proxy's mh does); nftables gives a weight-0 server no slot either way."""
    flags = desired_flags("mh", frozenset())
    env.sync(env.service("mh", [1, 1, 1], flags=flags))
    sources = env.sources(FALLBACK_SOURCES)
    before = {a.source: a.server for a in env.ask(1, sources=sources)}
    hashed_to_rs3 = {src for src, server in before.items() if server == "rs3"}
    assert hashed_to_rs3, before
    env.sync(env.service("mh", [1, 1, 0], flags=flags))
    after = {a.source: a.server for a in env.ask(1, sources=sources)}  # raises on a refusal
    assert "rs3" not in after.values()
    collateral = [src for src in sources if src not in hashed_to_rs3 and after[src] != before[src]]
    assert len(collateral) <= 0.05 * len(sources), (collateral, before, after)
    if env.backend_name != "ipvs":
        return
    env.sync(env.service("mh", [1, 1, 0]))  # no fallback flag
    refused = set()
    for src in sources:
        with entered(env.client.netns):
            try:
                http_get(env.vip, 80, source=src, timeout=10.0)
            except ConnectionRefusedError:  # IPVS: "no destination available", port unreachable
                refused.add(src)
    assert refused == hashed_to_rs3


def _get_from_port(env: Env, port: int) -> tuple[str, int]:
    """One HTTP/1.0 GET from the client's (10.0.0.10, ``port``): the server closes first,
    so the client keeps no TIME_WAIT and the same port can connect again at once.
    Returns the answering server and the local port used."""
    with entered(env.client.netns), socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.settimeout(10)
        sock.bind(("10.0.0.10", port))
        sock.connect((VIP, 80))
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        reply = b""
        while chunk := sock.recv(4096):
            reply += chunk
        return json.loads(reply.partition(b"\r\n\r\n")[2])["server"], sock.getsockname()[1]


def test_a_reused_client_port_is_not_black_holed_after_its_realserver_is_deleted(dr_env: Env) -> None:
    """The stale-real-server incident, at the connection level. In DR the director
    sees only the client's half, so IPVS keeps a finished connection in FIN_WAIT, which
    conn_reuse_mode=1 does not reschedule: a new SYN from the same client port follows it
    to its real server, and when that one was deleted the SYN is dropped for the whole
    FIN_WAIT timeout - unless expire_nodest_conn=1, which the director sets. nftables DR
    keeps no connection state, so the SYN is scheduled afresh there anyway."""
    env = dr_env
    env.sync(env.service("rr", [0, 0, 1]))  # only rs3 takes new flows
    server, port = _get_from_port(env, 0)
    assert server == "rs3"
    if env.backend_name == "ipvs":
        table = env.lab.run(env.director.netns, "ipvsadm", "-Lnc").stdout
        assert re.search(rf"FIN_WAIT\s+10\.0\.0\.10:{port}\s+{re.escape(VIP)}:80\s+10\.0\.0\.13:80", table), (
            table
        )
    env.sync(env.service("rr", [1, 1]))  # rs3 deleted
    server, _ = _get_from_port(env, port)  # 10 s: more than the SYN retransmits need
    assert server in {"rs1", "rs2"}


Pairs = list[tuple[RealServerStats, RealServerStats]]  # per real server: (before, now)


def _stats_after(
    env: Env,
    before: dict[tuple[ServiceKey, RealServerKey], RealServerStats],
    done: Callable[[Pairs], bool],
) -> Pairs:
    """Per real server (before, now) counters once ``done`` holds for them (or after 30 s).

    IPVS folds its per-CPU counters into what netlink reports every 2 s (the estimator,
    which folds each real server at its own tick, so one can lag the other; on the VM's
    emulated CPU, later right after the service was made), nftables counts at once;
    polling holds both to one behaviour."""
    keys = [(env.http_key, rs.key) for rs in env.service("rr", [1, 1]).realservers]
    deadline = time.monotonic() + 30
    while True:
        stats = env.backend.read().stats
        pairs = [(before.get(k, RealServerStats()), stats[k]) for k in keys]
        if done(pairs) or time.monotonic() > deadline:
            return pairs
        time.sleep(0.5)


def _delivered(pairs: Pairs) -> int:
    return sum(n.in_packets - b.in_packets for b, n in pairs)


def test_dr_replies_bypass_the_director(dr_env: Env) -> None:
    dr_env.sync(dr_env.service("rr", [1, 1]))
    before = dict(dr_env.backend.read().stats)
    # 30 flows: with DR's per-flow hash both real servers get some (all on one: 2 in 10^9).
    answers = dr_env.ask(30)
    assert len(answers) == 30
    # SYN, ACK, request, FIN... of every connection reached the director ...
    pairs = _stats_after(dr_env, before, lambda pairs: _delivered(pairs) >= 30 * 3)
    assert _delivered(pairs) >= 30 * 3
    assert all(n.in_bytes > b.in_bytes for b, n in pairs)
    # ... and none of the replies: they go from the real server straight to the client.
    assert all(n.out_packets == 0 and n.out_bytes == 0 for _, n in pairs)


def test_nat_counts_both_directions(nat_env: Env) -> None:
    nat_env.sync(nat_env.service("rr", [1, 1]))
    before = dict(nat_env.backend.read().stats)
    nat_env.ask(10)

    def both_ways(pairs: Pairs) -> bool:
        return all(n.in_packets > b.in_packets and n.out_packets > b.out_packets for b, n in pairs)

    for old, now in _stats_after(nat_env, before, both_ways):
        assert now.in_packets > old.in_packets
        assert now.out_packets > old.out_packets


@pytest.mark.parametrize("scheduler", ["rr", "mh"])
def test_udp_echo_per_flow(env: Env, scheduler: str) -> None:
    env.sync(env.service(scheduler, [1, 1], udp=True))
    answers = env.ask(1, udp=True, sources=env.sources(CLIENT_SOURCES[:20]))
    assert set(env.tally(answers)) == {"rs1", "rs2"}
    assert all(_host(a.client) == a.source for a in answers)


def test_http_port_matches_mode(env: Env) -> None:
    # Sanity of the topology itself: servers listen where the suite expects.
    assert HTTP_PORT[env.mode] in (80, 8080)
