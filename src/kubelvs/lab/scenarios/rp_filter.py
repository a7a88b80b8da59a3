"""rp-filter: rp_filter on tunnel devices (docs/incidents.md) - strict rp_filter on a TUN real server.

CentOS 7 nodes came with ``net.ipv4.conf.all.rp_filter = 1`` and ``tun-*.rp_filter = 1``.
In LVS-TUN the director IPIP-encapsulates the client's SYN to the node; after
decapsulation it enters on ``tunl0`` with the client's source address, but the route
back to the client leaves through eth0: strict reverse-path filtering (effective value
max(all, tunl0) = 1) drops it. The director has sent nothing back, so its connection
entries sit in SYN_RECV (the incident's ``ipvsadm -lnc``) and the client times out.

The node agent makes the effective rp_filter loose on the interfaces DR/TUN traffic
enters, and the connections succeed. Needs IPIP and IPVS: the VM tier.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ...kernel import sysctl
from ..netlab import LabError
from ..spec import READY_TIMEOUT
from ..topology import LabSpec, build
from ..traffic import requests, tally
from . import Phase, ScenarioResult, examine, ipvs_states, wait_syn_recv_expired

SUMMARY = (
    "strict rp_filter on a TUN real server: SYN_RECV at the director, clients time out; "
    "the node agent turns it off on tunl0, loose elsewhere"
)
NEEDS = "IPVS and ipip: VM tier (scripts/vm-run)"

REQUESTS = 6


def _rp_drops(netns: str, run: Callable[..., object]) -> int:
    text = run(netns, "cat", "/proc/net/netstat").stdout  # type: ignore[attr-defined]
    lines = text.splitlines()
    for head, values in zip(lines[::2], lines[1::2]):
        names, nums = head.split()[1:], values.split()[1:]
        if "IPReversePathFilter" in names:
            return int(nums[names.index("IPReversePathFilter")])
    return 0


def run(*, prefix: str, backend: str, log: Callable[[str], None], doctor: bool = True) -> ScenarioResult:
    from ...backends.base import ipvs_available
    from ...backends.nftables.backend import tun_supported

    if backend == "nftables" or not ipvs_available() or not tun_supported():
        raise LabError(
            "rp-filter needs IPVS (LVS-TUN) and ipip in the kernel: run it in the VM tier, "
            "scripts/vm-run -- kubelvs lab scenario rp-filter"
        )
    spec = LabSpec(prefix=prefix, topology="tun", backend="ipvs", agents=False)
    log("lab up: tun (IPVS); workers set up by hand with CentOS 7's strict rp_filter")
    running = build(spec)
    info = running.info
    run_ = running.lab.run
    try:
        for node in info.nodes:
            run_(node.netns, "ip", "addr", "add", f"{spec.vip}/32", "dev", "lo")
            run_(node.netns, "ip", "link", "set", "tunl0", "up")
            for key, value in (
                ("net.ipv4.conf.eth0.arp_ignore", 1),
                ("net.ipv4.conf.eth0.arp_announce", 2),
                ("net.ipv4.conf.all.rp_filter", 1),
                ("net.ipv4.conf.tunl0.rp_filter", 1),
            ):
                running.lab.sysctl(node.netns, key, value)
        drops0 = sum(_rp_drops(n.netns, run_) for n in info.nodes)
        results = requests(info.client, spec.vip, spec.port, REQUESTS, timeout=2)
        states = ipvs_states(info.directors["dir1"], run_)
        drops = sum(_rp_drops(n.netns, run_) for n in info.nodes) - drops0
        failed = [r for r in results if not r.ok]
        before = Phase(
            "TUN real servers with rp_filter=1 (all and tunl0)",
            expected=len(failed) == REQUESTS and "SYN_RECV" in states and drops > 0,
            facts={
                "succeeded": f"{REQUESTS - len(failed)}/{REQUESTS}",
                "errors": sorted({r.error for r in failed}),
                "director connection states": sorted(set(states)),
                "packets the workers dropped by rp_filter (IPReversePathFilter)": drops,
            },
        )
        examine(before, info, enabled=doctor)
        if not before.expected:
            return ScenarioResult("rp-filter", info.backend, before, None)
        log("starting the node agent on every worker")
        for node in info.nodes:
            running.start_agent(node.name)
        # For all the agents together; it bounds the wait only (a Python start-up in the
        # emulated VM under load has taken over a minute).
        deadline = time.monotonic() + READY_TIMEOUT
        for node in info.nodes:
            running.wait_agent(
                node.name,
                # tunl0 has no address: only an effective 0 lets decapsulated packets in.
                ready=lambda: (
                    max(
                        sysctl.read("net.ipv4.conf.all.rp_filter") or 0,
                        sysctl.read("net/ipv4/conf/tunl0/rp_filter") or 0,
                    )
                    == 0
                ),
                what="loosen rp_filter",
                timeout=max(0.0, deadline - time.monotonic()),
            )
        # The director still holds the failed attempts in SYN_RECV (IPVS keeps such an entry
        # 60 s after the last retransmitted SYN): let them expire, so that what the after
        # phase shows of the connection table (and what doctor reads in it) is the fix's.
        waited = wait_syn_recv_expired(info.directors["dir1"], run_)
        results = requests(info.client, spec.vip, spec.port, REQUESTS, timeout=3)
        ok = sum(r.ok for r in results)
        states = ipvs_states(info.directors["dir1"], run_)
        _, by_node = tally(results, info.pod_node())
        after = Phase(
            "the same with the node agent (effective rp_filter: tunl0 off, eth0 loose)",
            expected=ok == REQUESTS and "SYN_RECV" not in states,
            facts={
                "succeeded": f"{ok}/{REQUESTS}",
                "answered by node": dict(by_node),
                "director connection states": sorted(set(states)),
            },
            notes=[f"waited {waited:.0f} s for the failed attempts' SYN_RECV entries to expire first"],
        )
        examine(after, info, enabled=doctor)
        return ScenarioResult("rp-filter", info.backend, before, after)
    finally:
        running.teardown()
