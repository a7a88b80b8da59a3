"""worker-local-vip: the worker-local VIP loop (docs/incidents.md) - a worker without the VIP reaches the VIP.

node1 does not hold the VIP (kube-proxy's external-IP rules DNAT traffic from outside
without it, so it "works" for clients), and has the incident's ``accept_local=1`` +
``rp_filter=1`` on eth1 (here eth0). A connection from node1 to VIP:80 leaves the node
unchanged (its source is local and the VIP is not, so no kube-proxy rule matches) and
goes to the director. When the director picks node1 itself, the packet comes back with
node1's own address as source: accepted because of accept_local, conntrack already has
a NAT binding for it so the DNAT is skipped, the VIP is not local, so node1 routes it
back to the director, which sends it to node1 again ... until the TTL runs out (the
incident's tcpdump, TTL 64 down to 1; curl says "No route to host").

The fix is the node agent: with the VIP on lo, kube-proxy's ``--dst-type LOCAL`` rule
matches in OUTPUT and the connection is DNATed to a local pod; nothing loops.
"""

from __future__ import annotations

from collections.abc import Callable

from ..topology import PROXY_TABLE, LabSpec, build
from ..traffic import nft_counter, requests, tally
from . import Phase, ScenarioResult, examine, wait_syn_recv_expired

SUMMARY = (
    "a worker without the VIP connects to the VIP: packets loop director<->node until the TTL runs out; "
    "VIP on lo fixes it"
)

REQUESTS = 16


def run(*, prefix: str, backend: str, log: Callable[[str], None], doctor: bool = True) -> ScenarioResult:
    spec = LabSpec(prefix=prefix, topology="dr", backend=backend, agents=False)
    log("lab up: dr; node agents only on the other workers")
    running = build(spec)
    info = running.info
    node1 = info.nodes[0]
    try:
        for node in info.nodes[1:]:
            running.start_agent(node.name)
            running.wait_agent(node.name)
        # As in the worker-local VIP loop incident: rp_filter=1 on the node's NIC ... accept_local=1
        running.lab.sysctl(node1.netns, "net.ipv4.conf.eth0.rp_filter", 1)
        running.lab.sysctl(node1.netns, "net.ipv4.conf.eth0.accept_local", 1)
        loops0 = nft_counter(node1.netns, "ip", PROXY_TABLE, "vip_forwarded")
        results = requests(node1.netns, spec.vip, spec.port, REQUESTS, timeout=3)
        loops = nft_counter(node1.netns, "ip", PROXY_TABLE, "vip_forwarded") - loops0
        failed = [r for r in results if not r.ok]
        by_pod, by_node = tally(results, info.pod_node())
        before = Phase(
            f"curl http://{spec.vip} on {node1.name}, VIP not on its lo (accept_local=1, rp_filter=1)",
            # Connections the director sends back to node1 loop; the others reach node2's pods.
            expected=bool(failed) and loops >= 30,
            facts={
                "succeeded": f"{len(results) - len(failed)}/{len(results)}",
                "errors": sorted({r.error for r in failed}),
                "packets to the VIP node1 routed back out (the loop)": loops,
                "answered by node": dict(by_node),
            },
            notes=[f"each looping SYN is routed by {node1.name} about once per TTL step (TTL 64 -> 0)"],
        )
        examine(before, info, enabled=doctor)
        if not before.expected:
            return ScenarioResult("worker-local-vip", info.backend, before, None)
        log(f"starting the node agent on {node1.name}")
        running.start_agent(node1.name)
        running.wait_agent(node1.name)
        # With IPVS the director holds the looped connections in SYN_RECV for 60 s.
        waited = wait_syn_recv_expired(info.directors["dir1"], running.lab.run)
        loops0 = nft_counter(node1.netns, "ip", PROXY_TABLE, "vip_forwarded")
        results = requests(node1.netns, spec.vip, spec.port, REQUESTS, timeout=3)
        loops = nft_counter(node1.netns, "ip", PROXY_TABLE, "vip_forwarded") - loops0
        by_pod, by_node = tally(results, info.pod_node())
        ok = sum(r.ok for r in results)
        after = Phase(
            f"the same with the node agent on {node1.name} (VIP on lo)",
            expected=ok == REQUESTS and loops == 0 and set(by_node) == {node1.name},
            facts={
                "succeeded": f"{ok}/{REQUESTS}",
                "packets to the VIP node1 routed back out": loops,
                "answered by pod": dict(by_pod),
            },
            notes=[
                "kube-proxy's `--dst-type LOCAL` rule now matches in OUTPUT: "
                "node1 serves itself from its own pods"
            ]
            + (
                [f"waited {waited:.0f} s for the director's SYN_RECV entries of the loop to expire first"]
                if waited >= 1
                else []
            ),
        )
        examine(after, info, enabled=doctor)
        return ScenarioResult("worker-local-vip", info.backend, before, after)
    finally:
        running.teardown()
