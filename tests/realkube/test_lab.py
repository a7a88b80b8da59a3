"""End to end against a real kube-apiserver: the whoami Service, its EndpointSlice and the
Nodes created through the API; ``kubelvs director --kubernetes`` and one ``kubelvs node
--kubernetes`` per node as real processes, each with its own ServiceAccount token (RBAC from
deploy/rbac.yaml); real HTTP through the VIP from 20 client addresses. Then a Service edit
(port change) and a node cordon, made through the API, converge with the traffic checked.

nftables on this machine's kernel. The lab is the one of tests/kubernetes/test_e2e.py, but
nothing is put on the nodes by hand: the node agents hold the VIP and set the ARP sysctls.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kubelvs.lab.netlab import Lab, terminate

from ..kubernetes import k8sobjects as k
from ..kubernetes.test_e2e import SOURCES, VIP, World
from ..kubernetes.test_runner import CONFIG
from .cluster import SA_NAMESPACE, Cluster

pytestmark = [pytest.mark.netns, pytest.mark.real_apiserver, pytest.mark.usefixtures("rbac")]

NODES = {"node1": "10.240.0.101", "node2": "10.240.0.102"}


@pytest.fixture
def world(kube: Cluster, tmp_path: Path) -> Iterator[World]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    kube.create_all(k.whoami_objects())
    lab = Lab(f"kubelvs-t{secrets.token_hex(3)}")
    procs: list[tuple[subprocess.Popen[bytes], Path]] = []

    def kubelvs(log: Path, *argv: str) -> None:
        with log.open("w") as out:
            procs.append(
                (
                    subprocess.Popen(
                        [sys.executable, "-m", "kubelvs", *argv], stdout=out, stderr=subprocess.STDOUT
                    ),
                    log,
                )
            )

    try:
        client = lab.host("cl", ["10.240.0.50/24"] + [f"{a}/24" for a in SOURCES])
        director = lab.host("dir", ["10.240.0.10/24", f"{VIP}/32"])
        for conf in ("all", "eth0"):
            lab.sysctl(director.netns, f"net.ipv4.conf.{conf}.send_redirects", 0)
        for name, ip in NODES.items():
            node = lab.host(name, [f"{ip}/24"])
            for port in (80, 8080, 10256):  # 10256: kube-proxy's health port, the default check
                lab.start_python(
                    node.netns, "kubelvs.lab.servers", "http", "--name", name, "--port", str(port)
                )
        for name in NODES:
            for port in (80, 8080, 10256):
                lab.wait_listening(lab.hosts[name].netns, port, timeout=60)
        director_kc = kube.kubeconfig_for(kube.token_for(SA_NAMESPACE, "kubelvs-director"), tmp_path / "d.kc")
        node_kc = kube.kubeconfig_for(kube.token_for(SA_NAMESPACE, "kubelvs-node"), tmp_path / "n.kc")
        kubelvs(
            tmp_path / "director.log",
            *("director", "-f", str(CONFIG), "--kubernetes", "--kubeconfig", str(director_kc)),
            *("--backend", "nftables", "--netns", director.netns),
        )
        for name in NODES:
            kubelvs(
                tmp_path / f"{name}.log",
                *(
                    "node",
                    "--kubernetes",
                    "--kubeconfig",
                    str(node_kc),
                    "-f",
                    str(CONFIG),
                    "--node-name",
                    name,
                ),
                *("--netns", lab.hosts[name].netns, "--interface", "eth0", "--vip-device", "lo"),
                *("--state-dir", str(tmp_path / name)),
            )
        yield World(lab, client, director, tmp_path)
        for proc, log in procs:
            assert proc.poll() is None, log.read_text()[-3000:]
    finally:
        for proc, log in procs:
            terminate(proc, 10)
            with contextlib.suppress(OSError):
                sys.stderr.write(f"--- {log.name}\n{log.read_text()[-2000:]}")  # shown when the test fails
        lab.teardown()


def test_whoami_through_a_real_api_server_with_edits_and_traffic(world: World, kube: Cluster) -> None:
    both = {"node1", "node2"}
    world.until(80, lambda seen: None not in seen.values() and set(seen.values()) == both, timeout=60)
    # The node agents put the VIP on lo (nobody else did).
    for name in NODES:
        out = subprocess.run(
            ["ip", "-n", world.lab.hosts[name].netns, "-br", "addr", "show", "dev", "lo"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert f"{VIP}/32" in out, (name, out)

    # A Service edit through the API: port 80 -> 8080 (and the slice's port with it).
    def to_8080(obj: dict[str, Any]) -> None:
        obj["spec"]["ports"][0]["port"] = 8080
        obj["spec"]["ports"][0]["targetPort"] = 8080

    svc = kube.call("GET", "/api/v1/namespaces/default/services/whoami")
    to_8080(svc)
    kube.call("PUT", "/api/v1/namespaces/default/services/whoami", svc)
    slices = kube.call("GET", "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices")["items"]
    for s in slices:
        s["ports"][0]["port"] = 8080
        kube.call(
            "PUT", f"/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/{s['metadata']['name']}", s
        )
    world.until(8080, lambda seen: None not in seen.values() and set(seen.values()) == both)
    assert set(world.ask(80).values()) == {None}

    # A cordon through the API: node2 leaves, every client is served by node1.
    kube.merge_patch("/api/v1/nodes/node2", {"spec": {"unschedulable": True}})
    world.until(8080, lambda seen: set(seen.values()) == {"node1"})
