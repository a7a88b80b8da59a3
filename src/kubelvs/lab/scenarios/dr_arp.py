"""dr-arp: real servers holding the VIP on lo without arp_ignore/arp_announce.

The VIP must exist on every worker, so it sits on lo, and the workers must not answer
ARP for it on their network interface (docs/incidents.md, the DR ARP settings).
Without ``arp_ignore=1`` every worker answers ARP for the VIP (Linux answers for any
local address on any interface), and without ``arp_announce=2`` a worker replying
from the VIP asks "who has <client>? tell <VIP>" with its own MAC - which re-points the
client's ARP entry for the VIP at that worker. Either way the client's traffic for the
VIP goes straight to one worker: the director is bypassed, the load is not balanced.

With the node agent (arp_ignore=1/arp_announce=2 on eth0) only the director answers
ARP for the VIP, and every connection goes through it to all workers.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ...kernel import sysctl
from ..spec import READY_TIMEOUT
from ..topology import LabSpec, build
from ..traffic import DirectorCounters, arp_who_has, neighbour_mac, requests, tally
from . import Phase, ScenarioResult, examine

SUMMARY = (
    "real servers without arp_ignore/arp_announce answer ARP for the VIP and steal the director's "
    "traffic; the node agent stops it"
)

REQUESTS = 20


def run(*, prefix: str, backend: str, log: Callable[[str], None], doctor: bool = True) -> ScenarioResult:
    spec = LabSpec(prefix=prefix, topology="dr", backend=backend, agents=False)
    log("lab up: dr; workers get the VIP on lo by hand, without the ARP sysctls")
    running = build(spec)
    info = running.info
    director_mac = info.director_macs["dir1"]
    node_macs = {n.mac: n.name for n in info.nodes}
    try:
        for node in info.nodes:
            running.lab.run(node.netns, "ip", "addr", "add", f"{spec.vip}/32", "dev", "lo")
        counters = DirectorCounters(
            info.directors["dir1"],
            vip=spec.vip,
            port=spec.port,
            reply_sources=[(n.ip, spec.port) for n in info.nodes],
        )

        def measure(title: str) -> tuple[Phase, list[str], int, str | None]:
            running.lab.run(info.client, "ip", "neigh", "flush", "dev", "eth0")
            answered = arp_who_has(info.client, "eth0", spec.vip)
            running.lab.run(info.client, "ip", "neigh", "flush", "dev", "eth0")
            syns0 = counters.syns()
            results = requests(info.client, spec.vip, spec.port, REQUESTS)
            via_director = counters.syns() - syns0
            entry = neighbour_mac(info.client, spec.vip)
            _, by_node = tally(results, info.pod_node())
            who = [("director" if m == director_mac else node_macs.get(m, m)) for m in answered]
            phase = Phase(
                title,
                expected=False,
                facts={
                    f"who answered ARP for {spec.vip}": who,
                    "client's ARP entry for the VIP afterwards": "director"
                    if entry == director_mac
                    else node_macs.get(entry or "", entry),
                    "connections that went through the director": f"{via_director}/{REQUESTS}",
                    "succeeded": f"{sum(r.ok for r in results)}/{REQUESTS}",
                    "answered by node": dict(by_node),
                },
            )
            return phase, who, via_director, entry

        before, who, via, entry = measure("VIP on the workers' lo, arp_ignore=0 / arp_announce=0")
        stolen = any(w != "director" for w in who) or entry != director_mac
        before.expected = stolen and via < REQUESTS
        examine(before, info, enabled=doctor)
        if not before.expected:
            return ScenarioResult("dr-arp", info.backend, before, None)
        log("starting the node agent on every worker")
        for node in info.nodes:
            running.start_agent(node.name)
        # For all the agents together; it bounds the wait only (a Python start-up in the
        # emulated VM under load has taken over a minute).
        deadline = time.monotonic() + READY_TIMEOUT
        for node in info.nodes:
            running.wait_agent(
                node.name,
                ready=lambda: (
                    sysctl.read("net.ipv4.conf.eth0.arp_ignore") == 1
                    and sysctl.read("net.ipv4.conf.eth0.arp_announce") == 2
                ),
                what="set arp_ignore/arp_announce",
                timeout=max(0.0, deadline - time.monotonic()),
            )
        after, who, via, entry = measure("the same with the node agent (arp_ignore=1, arp_announce=2)")
        examine(after, info, enabled=doctor)
        after.expected = (
            who == ["director"]
            and entry == director_mac
            and via == REQUESTS
            and after.facts["succeeded"] == f"{REQUESTS}/{REQUESTS}"
            and set(after.facts["answered by node"]) == {n.name for n in info.nodes}
        )
        return ScenarioResult("dr-arp", info.backend, before, after)
    finally:
        running.teardown()
