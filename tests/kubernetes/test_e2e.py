"""End to end in a lab of network namespaces: ``kubelvs director --from-manifests`` (a
real process, through the CLI) programs a real data plane from the whoami
Service (externalIP 10.240.0.201, nodes 10.240.0.101/102), and edits of the manifests
(port change, replicas change, node removed) converge with real HTTP traffic checked.

nftables on the machine's kernel (tier 1); IPVS in the VM (``kernel_ipvs``, tier 2).

    client   10.240.0.50/24 (+ 10.240.0.60-79 as extra sources: mh hashes the source)
    director 10.240.0.10/24, VIP 10.240.0.201/32
    node1    10.240.0.101/24 } VIP on lo, arp_ignore=1, arp_announce=2,
    node2    10.240.0.102/24 } HTTP on 80 and 8080 answering with the node's name
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubelvs.kernel.netns import entered
from kubelvs.lab.netlab import Host, Lab, terminate
from kubelvs.lab.servers import http_get

from . import k8sobjects as k

VIP = "10.240.0.201"
SOURCES = [f"10.240.0.{i}" for i in range(60, 80)]
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "kubernetes"

BACKENDS = [
    pytest.param("nftables", marks=pytest.mark.netns, id="nftables"),
    pytest.param("ipvs", marks=pytest.mark.kernel_ipvs, id="ipvs"),
]


class World:
    def __init__(
        self, lab: Lab, client: Host, director: Host, manifests: Path, *, scale: float = 1.0
    ) -> None:
        self.lab, self.client, self.director, self.manifests = lab, client, director, manifests
        # The VM emulates its CPU (and may share the machine with other VMs): timeouts
        # there are stretched by ``scale``; they bound waiting, they measure nothing.
        self.scale = scale
        self.http_timeout = 1.0 * scale

    def ask(self, port: int) -> dict[str, str | None]:
        """source -> the node that answered (None: no answer)."""
        out: dict[str, str | None] = {}
        with entered(self.client.netns):
            for src in SOURCES:
                try:
                    out[src] = http_get(VIP, port, source=src, timeout=self.http_timeout).server
                except OSError:
                    out[src] = None
        return out

    def until(
        self, port: int, check: Callable[[dict[str, str | None]], bool], timeout: float = 60
    ) -> dict[str, str | None]:
        deadline = time.monotonic() + timeout * self.scale
        while True:
            seen = self.ask(port)
            if check(seen):
                return seen
            if time.monotonic() > deadline:
                raise AssertionError(f"not converged on port {port}: {seen}")
            time.sleep(0.2)

    def edit(self, name: str, change: Callable[[dict[str, Any]], None]) -> None:
        path = self.manifests / name
        doc = yaml.safe_load(path.read_text())
        change(doc)
        tmp = path.with_suffix(".tmp")  # not a manifest suffix: the poller ignores it
        tmp.write_text(yaml.safe_dump(doc))
        tmp.replace(path)  # atomic, like kubectl writing a file


@pytest.fixture(params=BACKENDS)
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    backend: str = request.param
    manifests = tmp_path / "manifests"
    shutil.copytree(EXAMPLES / "whoami", manifests)
    lab = Lab(f"kubelvs-t{secrets.token_hex(3)}")
    proc = None
    log = tmp_path / "director.log"
    try:
        client = lab.host("cl", ["10.240.0.50/24"] + [f"{a}/24" for a in SOURCES])
        director = lab.host("dir", ["10.240.0.10/24", f"{VIP}/32"])
        lab.sysctl(director.netns, "net.ipv4.conf.all.send_redirects", 0)
        lab.sysctl(director.netns, "net.ipv4.conf.eth0.send_redirects", 0)
        for name, ip in (("node1", "10.240.0.101"), ("node2", "10.240.0.102")):
            node = lab.host(name, [f"{ip}/24"])
            lab.run(node.netns, "ip", "addr", "add", f"{VIP}/32", "dev", "lo")  # what the node agent will do
            for conf in ("all", "eth0"):
                lab.sysctl(node.netns, f"net.ipv4.conf.{conf}.arp_ignore", 1)
                lab.sysctl(node.netns, f"net.ipv4.conf.{conf}.arp_announce", 2)
            # 10256: kube-proxy's health port, which the director's default check probes.
            for port in (80, 8080, 10256):
                lab.start_python(
                    node.netns, "kubelvs.lab.servers", "http", "--name", name, "--port", str(port)
                )
        for role in ("node1", "node2"):
            for port in (80, 8080, 10256):
                lab.wait_listening(lab.hosts[role].netns, port, timeout=120)  # Python starts slowly in the VM
        with log.open("w") as err:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "kubelvs",
                    "director",
                    "-f",
                    str(EXAMPLES / "director.yaml"),
                    "--from-manifests",
                    str(manifests),
                    "--backend",
                    backend,
                    "--netns",
                    director.netns,
                    "--poll",
                    "0.1",
                ],
                stdout=err,
                stderr=subprocess.STDOUT,
            )
        yield World(lab, client, director, manifests, scale=3.0 if backend == "ipvs" else 1.0)
        assert proc.poll() is None, log.read_text()
    finally:
        if proc is not None:
            terminate(proc, 10)
            with contextlib.suppress(OSError):
                sys.stderr.write(log.read_text()[-3000:])  # the director's log, shown when the test fails
        lab.teardown()


def test_whoami_converges_through_edits_with_real_traffic(world: World) -> None:
    # 1. As created: both nodes serve 10.240.0.201:80 (mh spreads the 20 sources).
    world.until(
        80, lambda seen: None not in seen.values() and set(seen.values()) == {"node1", "node2"}, timeout=180
    )

    # 2. Port change 80 -> 8080: the old port is gone entirely (no stale :80 real servers).
    def port(doc: dict[str, Any]) -> None:
        doc["items"][0]["spec"]["ports"][0]["port"] = 8080
        doc["items"][0]["spec"]["ports"][0]["targetPort"] = 8080
        doc["items"][1]["ports"][0]["port"] = 8080

    world.edit("whoami.yaml", port)
    world.until(8080, lambda seen: None not in seen.values() and set(seen.values()) == {"node1", "node2"})
    assert set(world.ask(80).values()) == {None}

    # 3. Replicas change with externalTrafficPolicy Local: one replica, on node2 -> only node2.
    def one_replica(doc: dict[str, Any]) -> None:
        doc["items"][0]["spec"]["externalTrafficPolicy"] = "Local"
        doc["items"][1]["endpoints"] = [k.endpoint("node2", "10.230.2.7")]

    world.edit("whoami.yaml", one_replica)
    world.until(8080, lambda seen: set(seen.values()) == {"node2"})

    # ... scaled to three, two on node1: both nodes again.
    def three(doc: dict[str, Any]) -> None:
        doc["items"][1]["endpoints"] = [
            k.endpoint("node1", "10.230.1.5"),
            k.endpoint("node1", "10.230.1.6"),
            k.endpoint("node2", "10.230.2.7"),
        ]

    world.edit("whoami.yaml", three)
    world.until(8080, lambda seen: None not in seen.values() and set(seen.values()) == {"node1", "node2"})

    # 4. Node removed (back to Cluster policy): only node1 answers.
    def cluster(doc: dict[str, Any]) -> None:
        doc["items"][0]["spec"]["externalTrafficPolicy"] = "Cluster"

    world.edit("whoami.yaml", cluster)

    def drop_node2(doc: dict[str, Any]) -> None:
        doc["items"] = [n for n in doc["items"] if n["metadata"]["name"] != "node2"]

    world.edit("nodes.yaml", drop_node2)
    world.until(8080, lambda seen: set(seen.values()) == {"node1"})
