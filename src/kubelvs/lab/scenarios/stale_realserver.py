"""stale-realserver: the stale real server after a port edit (docs/incidents.md).

A Service created with the default port 80/targetPort 80 by mistake is edited to
6379/6379. A reconciler that keys real servers by IP alone (kube-router before PR
#842, the incident's cluster) moves the endpoints to the new virtual service VIP:6379 and
keeps pod:80 because "that IP is still an endpoint" - the incident's ``ipvsadm`` shows
``-> 172.26.6.185:http`` next to ``-> 172.26.6.185:6379``. Nothing listens on 80, so
round robin sends about every second connection to a dead port.

The naive reconciler is simulated explicitly below; kubelvs then converges the same
director (``Director.sync`` of the correct desired state) and every connection succeeds.
NAT topology: the director maps the Service port to the pods (IPVS Masq, as kube-proxy).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable

from ...backends.base import open_backend
from ...model import (
    DesiredState,
    Forward,
    Ownership,
    Protocol,
    RealServer,
    ServiceKey,
    Timeouts,
    VirtualService,
    kernel_version,
    recommended_sysctls,
)
from ...planner import AddRealServer, AddService, DeleteService, Operation, describe
from ...roles.director import Director
from ..kube import Endpoint, kubectl_json
from ..topology import LAB_TIMEOUTS, LabSpec, build
from ..traffic import requests, tally
from . import Phase, ScenarioResult, examine

SUMMARY = (
    "Service edited 80 -> 6379 leaves a stale real server (naive reconciler): "
    "~half the connections fail; kubelvs converges"
)

REQUESTS = 20


def _service(vip: str, port: int, pods: list[str], target: int) -> VirtualService:
    key = ServiceKey(4, Protocol.TCP, ipaddress.ip_address(vip), port)
    rss = [RealServer(ipaddress.ip_address(p), target, 1, Forward.NAT) for p in pods]
    return VirtualService(key=key, scheduler="rr", name="skuapi-rds-prod").with_realservers(rss)


def naive_update(old: VirtualService, new: VirtualService) -> list[Operation]:
    """What a reconciler keyed on the real server's IP does with a Service edit: it
    re-creates the virtual service under its new key and carries the old real servers
    over when their IP is still an endpoint, then adds the new ones."""
    ops: list[Operation] = []
    if old.key != new.key:
        ops.append(DeleteService(old.key))
        ops.append(AddService(new.with_realservers(())))
    endpoint_ips = {rs.address for rs in new.realservers}
    carried = [rs for rs in old.realservers if rs.address in endpoint_ips]  # BUG: keyed by IP only
    seen = set()
    for rs in carried + list(new.realservers):
        if rs.key not in seen:
            seen.add(rs.key)
            ops.append(AddRealServer(new.key, rs))
    return ops


def run(*, prefix: str, backend: str, log: Callable[[str], None], doctor: bool = True) -> ScenarioResult:
    spec = LabSpec(
        prefix=prefix,
        topology="nat",
        port=6379,
        target_port=6379,
        backend=backend,
        director=False,
        agents=False,
        nodes=1,
        pods=1,
    )
    log("lab up: nat, one pod running a server on 6379 (the redis)")
    running = build(spec)
    info = running.info
    pods = [p.ip for n in info.nodes for p in n.pods]
    be = open_backend(backend, netns=info.directors["dir1"])  # type: ignore[arg-type]
    try:
        ownership = Ownership(cidrs=(ipaddress.ip_network(f"{spec.vip}/32"),))
        first = _service(spec.vip, 80, pods, 80)  # the mistake: port/targetPort left at 80
        edited = _service(spec.vip, 6379, pods, 6379)  # kubectl edit svc: 6379/6379
        # The naive reconciler: the first version, then the edit.
        be.apply(
            [
                AddService(first.with_realservers(())),
                *[AddRealServer(first.key, rs) for rs in first.realservers],
            ]
        )
        be.apply(naive_update(first, edited))
        table = be.read().services
        stale = [str(rs.key) for rs in table[edited.key].realservers]
        log(f"naive reconciler left {edited.key} -> {', '.join(stale)}")
        results = requests(info.client, spec.vip, 6379, REQUESTS)
        failed = [r for r in results if not r.ok]
        by_pod, _ = tally(results, info.pod_node())
        share = len(failed) / len(results)
        before = Phase(
            "naive reconciler after the Service edit",
            expected=len(stale) == 2 * len(pods) and 0.25 <= share <= 0.75,
            facts={
                "real servers of " + str(edited.key): stale,
                "succeeded": f"{len(results) - len(failed)}/{len(results)}",
                "errors": sorted({r.error for r in failed}),
                "by_pod": dict(by_pod),
            },
        )
        # The doctor compares the table with the Service as edited (what kubectl would show).
        kubectl = kubectl_json(
            name=edited.name,
            vip=spec.vip,
            port=6379,
            target_port=6379,
            endpoints=[Endpoint(p.name, n.name, p.ip) for n in info.nodes for p in n.pods],
            nodes=[(n.name, n.ip) for n in info.nodes],
        )
        examine(before, info, enabled=doctor, hosts=["dir1"], kubectl=kubectl)
        if not before.expected:
            return ScenarioResult("stale-realserver", be.name, before, None)
        # What ``kubelvs director`` converges to (cli desired_for): the Service, the sysctls it
        # recommends for this backend and kernel, and the lab's connection timeouts.
        desired = DesiredState(
            services={edited.key: edited},
            ownership=ownership,
            timeouts=Timeouts(*LAB_TIMEOUTS),
            sysctls=recommended_sysctls(be.name, kernel_version(os.uname().release), [edited]),
        )
        result = Director(be).sync(desired)
        table = be.read().services
        results = requests(info.client, spec.vip, 6379, REQUESTS)
        ok = sum(r.ok for r in results)
        after = Phase(
            "kubelvs director converged to the Service",
            expected=ok == REQUESTS
            and [str(rs.key) for rs in table[edited.key].realservers] == [f"{p}:6379" for p in pods],
            facts={
                "plan": [describe(op) for op in result.plan.ops],
                "real servers of " + str(edited.key): [str(rs.key) for rs in table[edited.key].realservers],
                "succeeded": f"{ok}/{REQUESTS}",
            },
        )
        examine(after, info, enabled=doctor, hosts=["dir1"], kubectl=kubectl)
        return ScenarioResult("stale-realserver", be.name, before, after)
    finally:
        be.close()
        running.teardown()
