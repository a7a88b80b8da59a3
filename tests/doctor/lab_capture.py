"""Bundles captured from the lab (``kubelvs.lab``) with ``kubelvs doctor collect``, for the
doctor's fixture tests. Machine kernel, the director on the nftables backend:

    .venv/bin/python -m tests.doctor.lab_capture tests/fixtures/bundles [NAME ...]

- ``m-lab-healthy/{dir1,node1,node2}``: the default DR lab (director, node agents, the
  whoami Service as kubectl.json) - a site with nothing to report.
- ``m-lab-dr-arp/{dir1,node1,node2}``: the dr-arp scenario's broken state (the VIP on the
  workers' lo without the node agent's ARP settings): every host answers ARP for the VIP.
- ``m-lab-dr-gateway{,-fixed}/{dir1,node1,node2}``: a DR lab with the client behind a
  router; the workers route the client network via the director (no request answered),
  and, fixed, via the router (every request answered).
- ``m-lab-local-policy{,-fixed}``: the director of a Service with externalTrafficPolicy
  Local whose node2 has no pod left (the director still sends there; those requests
  fail), and, fixed, with pods on both nodes.
- ``m-lab-stale-nft``: the director of the stale-realserver scenario after the naive
  reconciler (``VIP:6379 -> pod:80, pod:6379`` in the kubelvs nftables table), with the
  edited Service as kubectl.json.

Labs use the prefix ``kubelvs-c<token>`` and are removed afterwards, also on failure (lab
down kills only the lab's own processes, by PID). As in scenarios.py, the capturing
host's sysctl config files and the list of missing tools are not kept.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from kubelvs.backends.base import open_backend
from kubelvs.lab.kube import Endpoint, kubectl_json
from kubelvs.lab.scenarios.stale_realserver import _service, naive_update
from kubelvs.lab.spec import CLIENT_NET
from kubelvs.lab.topology import KUBECTL_FILE, LabSpec, RunningLab, build, down
from kubelvs.lab.traffic import requests
from kubelvs.planner import AddRealServer, AddService

PY = sys.executable


def collect(netns: str, out: Path, role: str, kubectl: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            PY,
            "-m",
            "kubelvs",
            "doctor",
            "collect",
            str(out),
            "--netns",
            netns,
            "--role",
            role,
            "--no-kubectl",
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    (out / "collect-errors.txt").unlink(missing_ok=True)
    (out / "sysctl-conf.txt").unlink(missing_ok=True)
    (out / "kubectl.json").write_text(kubectl)


def healthy(running: RunningLab, out: Path) -> None:
    info = running.info
    kubectl = (Path(info.state_dir) / KUBECTL_FILE).read_text()
    collect(info.directors["dir1"], out / "dir1", "director", kubectl)
    for node in info.nodes:
        collect(node.netns, out / node.name, "node", kubectl)


def stale(running: RunningLab, out: Path) -> None:
    info = running.info
    spec = info.spec
    pods = [p.ip for n in info.nodes for p in n.pods]
    first, edited = _service(spec.vip, 80, pods, 80), _service(spec.vip, 6379, pods, 6379)
    be = open_backend("nftables", netns=info.directors["dir1"])
    try:
        be.apply(
            [
                AddService(first.with_realservers(())),
                *[AddRealServer(first.key, rs) for rs in first.realservers],
            ]
        )
        be.apply(naive_update(first, edited))
    finally:
        be.close()
    kubectl = kubectl_json(
        name=edited.name,
        vip=spec.vip,
        port=6379,
        target_port=6379,
        endpoints=[Endpoint(p.name, n.name, p.ip) for n in info.nodes for p in n.pods],
        nodes=[(n.name, n.ip) for n in info.nodes],
    )
    collect(info.directors["dir1"], out, "director", kubectl)


def dr_arp(running: RunningLab, out: Path) -> None:
    """The dr-arp scenario's broken state: the workers hold the VIP on lo without the node
    agent, so arp_ignore is 0 and all three hosts answer ARP for the VIP."""
    info = running.info
    for node in info.nodes:
        running.lab.run(node.netns, "ip", "addr", "add", f"{info.spec.vip}/32", "dev", "lo")
    healthy(running, out)


def dr_gateway(running: RunningLab, out: Path) -> None:
    """A DR lab whose client sits behind a router. Healthy (``<out>-fixed``): the workers
    route the client network via the router, and every request is answered. Broken
    (``<out>``): they route it via the director, which drops their replies from the VIP
    (its own address, arriving from outside): no request is answered."""
    info = running.info
    spec = info.spec
    assert sum(r.ok for r in requests(info.client, spec.vip, spec.port, 10)) == 10
    healthy(running, out.parent / f"{out.name}-fixed")
    for node in info.nodes:
        running.lab.run(
            node.netns, "ip", "route", "replace", str(CLIENT_NET), "via", info.director_ips["dir1"]
        )
    answered = sum(r.ok for r in requests(info.client, spec.vip, spec.port, 10, timeout=1.0))
    assert answered == 0, answered
    healthy(running, out)


def local_policy(running: RunningLab, out: Path) -> None:
    """The Service with externalTrafficPolicy: Local (as the lab's node proxy behaves: each
    node sends the VIP's traffic to its own pods only). Healthy (``<out>-fixed``): pods on
    both nodes, every request answered. Broken (``<out>``): node2's pods gone, the director
    still sends to node2, and those requests fail. The director's bundle only."""
    info = running.info
    spec = info.spec

    def kube(nodes: set[str]) -> str:
        return kubectl_json(
            name="whoami",
            vip=spec.vip,
            port=spec.port,
            target_port=spec.target_port,
            endpoints=[Endpoint(p.name, n.name, p.ip) for n in info.nodes if n.name in nodes for p in n.pods],
            nodes=[(n.name, n.ip) for n in info.nodes],
            traffic_policy="Local",
        )

    assert sum(r.ok for r in requests(info.client, spec.vip, spec.port, 20)) == 20
    collect(info.directors["dir1"], out.parent / f"{out.name}-fixed", "director", kube({"node1", "node2"}))
    for pod in info.nodes[1].pods:
        running.stop(f"pod {pod.name}")
    answered = sum(r.ok for r in requests(info.client, spec.vip, spec.port, 20, timeout=1.0))
    assert 0 < answered < 20, answered  # the share the director sends to node2 fails
    collect(info.directors["dir1"], out, "director", kube({"node1"}))


CAPTURES: dict[str, tuple[Callable[[str], LabSpec], Callable[[RunningLab, Path], None]]] = {
    "m-lab-healthy": (lambda p: LabSpec(prefix=p, backend="nftables"), healthy),
    "m-lab-dr-gateway": (
        lambda p: LabSpec(prefix=p, topology="dr", router=True, backend="nftables"),
        dr_gateway,
    ),
    "m-lab-local-policy": (lambda p: LabSpec(prefix=p, topology="dr", backend="nftables"), local_policy),
    "m-lab-dr-arp": (lambda p: LabSpec(prefix=p, topology="dr", backend="nftables", agents=False), dr_arp),
    "m-lab-stale-nft": (
        lambda p: LabSpec(
            prefix=p,
            topology="nat",
            port=6379,
            target_port=6379,
            backend="nftables",
            director=False,
            agents=False,
            nodes=1,
            pods=1,
        ),
        stale,
    ),
}


def main(argv: list[str]) -> int:
    out_dir, only = Path(argv[0]), set(argv[1:])
    for name, (spec_of, capture) in CAPTURES.items():
        if only and name not in only:
            continue
        prefix = f"kubelvs-c{secrets.token_hex(3)}"
        try:
            running = build(spec_of(prefix))
            try:
                capture(running, out_dir / name)
            finally:
                running.teardown()
        finally:
            down(prefix)
        print(out_dir / name, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
