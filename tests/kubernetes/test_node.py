"""The node agent fed by Kubernetes (``kubelvs node --kubernetes``), against the stand-in
API server, configuring a namespace the test made. Everything is read back from the
kernel: addresses on lo, arp_ignore/arp_announce on the L2 interface.

Decisions under test (docs/kubernetes.md, "Node agent"): the node holds the VIPs of the
DR/TUN virtual services in which the director's mapping makes it a real server; its own
NotReady/cordoned state keeps them (a drain still sends it established connections,
and the held VIP is harmless behind arp_ignore/arp_announce); excluded or deleted, it
holds none; Local policy without a local endpoint: none; an API outage changes nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Self

import pytest
import yaml

from kubelvs.app.node import KubernetesNodeSource, NodeOptions, NodeProgram, NodeWant, start_node
from kubelvs.cli.main import main
from kubelvs.kernel import sysctl
from kubelvs.kernel.netns import entered
from kubelvs.roles.node import NodeAgent
from kubelvs.sources.config import parse_config

from . import k8sobjects as k
from .apiserver import FakeApiServer, ServerThread
from .test_runner import CONFIG, WHOAMI_DIR
from .test_watch import until

pytestmark = pytest.mark.netns

SECTION = {
    "external_ip_cidrs": ["10.240.0.192/26", "fd00:240::/64"],
    "lb_pools": [{"name": "default", "cidrs": ["10.240.0.224/28"]}],
    "coalesce_ms": 20,
    "backoff_max_seconds": 0.2,
    "watch_timeout_seconds": 30,
}


def _ip(ns: str, *args: str) -> str:
    return subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True, text=True).stdout


def held(ns: str) -> set[str]:
    """The 10.240.0.x addresses on lo (the VIPs), read from the kernel."""
    (link,) = json.loads(_ip(ns, "-j", "addr", "show", "dev", "lo"))
    return {a["local"] for a in link["addr_info"] if a["local"].startswith("10.240.0.")}


def conf(ns: str, name: str) -> int | None:
    with entered(ns):
        return sysctl.read(name)


@pytest.fixture
def node1(make_netns: Callable[[str], str]) -> str:
    """node1's network namespace: eth0 (a veth end) with 10.240.0.101/24, default route."""
    ns = make_netns("node1")
    _ip(ns, "link", "add", "eth0", "type", "veth", "peer", "name", "peer0")
    _ip(ns, "addr", "add", "10.240.0.101/24", "dev", "eth0")
    _ip(ns, "link", "set", "eth0", "up")
    _ip(ns, "link", "set", "peer0", "up")
    _ip(ns, "route", "add", "default", "via", "10.240.0.1")
    return ns


def kubeconfig(path: Path, url: str) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "stand-in", "cluster": {"server": url}}],
                "users": [{"name": "node", "user": {"token": "n0de"}}],
                "contexts": [{"name": "c", "context": {"cluster": "stand-in", "user": "node"}}],
                "current-context": "c",
            }
        )
    )
    return path


class NodeStack:
    """The agent of node1 as ``kubelvs node --kubernetes`` runs it, assembled by the same
    builder (``app.node.start_node``): the Kubernetes node source (list + watch through a
    kubeconfig), the loop, a real NodeAgent on the namespace; running inside ``async with``."""

    def __init__(self, kubeconfig: Path, ns: str, tmp: Path, *, resync: float = 30.0) -> None:
        config = parse_config({"owned_cidrs": ["10.240.0.0/24", "fd00:240::/64"], "kubernetes": SECTION})
        self.node_source = KubernetesNodeSource(config, "node1", netns=ns, kubeconfig=kubeconfig)
        self.source = self.node_source.objects
        self.agent = NodeAgent(interface="eth0", netns=ns, vip_device="lo", state_dir=tmp / "state")
        self.options = NodeOptions(netns=ns, resync_seconds=resync)
        self.reports: list[tuple[NodeWant, list[str]]] = []
        self.program: NodeProgram | None = None
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    @property
    def loop(self) -> Any:
        assert self.program is not None
        return self.program.loop

    async def __aenter__(self) -> Self:
        self.program = await start_node(
            self.options,
            self.node_source,
            lambda want, changes: self.reports.append((want, [str(c) for c in changes])),
            agent=self.agent,
        )
        self.task = asyncio.create_task(self.program.run(self.stop))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.stop.set()
        if self.task is not None:
            await self.task
        if self.program is not None:
            await self.program.close()


def run_node(
    ns: str, tmp: Path, body: Callable[[FakeApiServer, NodeStack], Awaitable[None]], *, resync: float = 30.0
) -> None:
    """Runs ``body`` with node1's agent (in ``ns``) started against a fresh stand-in API
    server that serves ``cluster()``; stops the agent, then the server, even on failure."""

    async def amain() -> None:
        server = FakeApiServer()
        await server.start()
        try:
            for obj in cluster():
                server.put(obj)
            async with NodeStack(kubeconfig(tmp / "kubeconfig", server.url), ns, tmp, resync=resync) as n:
                await body(server, n)
        finally:
            await server.close()

    asyncio.run(amain())


async def wait_held(
    ns: str, want: set[str], timeout: float = 8.0, read: Callable[[str], set[str]] = held
) -> None:
    # The agent runs ip(8) in a worker thread; poll the kernel without blocking the loop.
    async def current() -> set[str]:
        return await asyncio.to_thread(read, ns)

    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while (got := await current()) != want:
        if loop.time() > end:
            raise AssertionError(f"lo holds {sorted(got)}, expected {sorted(want)}")
        await asyncio.sleep(0.05)


def cluster() -> list[dict[str, Any]]:
    """node1 (us) and node2; Services that node1 serves and ones it must not hold."""
    nat = k.service(
        "nat", type="NodePort", external_ips=["10.240.0.203"], annotations={"kubelvs.io/forward": "nat"}
    )
    return [
        k.node("node1", "10.240.0.101"),
        k.node("node2", "10.240.0.102"),
        k.service("whoami", external_ips=["10.240.0.201"]),  # externalIP, DR, policy Cluster
        k.service("lb", type="LoadBalancer", created="2026-11-20T10:00:01Z"),  # IPAM: 10.240.0.225
        nat,  # NAT: the node needs no VIP
        k.service("rogue", external_ips=["10.240.0.50"]),  # outside external_ip_cidrs: not programmed
        k.service("local", external_ips=["10.240.0.204"], local=True),  # endpoints on node2 only
        k.endpointslice("local", [k.endpoint("node2", "10.230.2.9")]),
    ]


def test_node_holds_the_vips_it_serves_and_drops_deleted_ones(node1: str, tmp_path: Path) -> None:
    async def body(server: FakeApiServer, n: NodeStack) -> None:
        await wait_held(node1, {"10.240.0.201", "10.240.0.225"})
        assert conf(node1, "net.ipv4.conf.eth0.arp_ignore") == 1
        assert conf(node1, "net.ipv4.conf.eth0.arp_announce") == 2
        want = n.reports[-1][0]
        assert (want.vips, want.mode, want.found) == (("10.240.0.201", "10.240.0.225"), "dr", True)

        server.delete("Service", "default", "whoami")
        await wait_held(node1, {"10.240.0.225"})

        # Local policy: a ready endpoint on node1 makes it a real server (VIP held); only a
        # terminating, still serving one keeps it at weight 0 (held: its connections
        # finish); none left: not a real server, no VIP.
        def slice_(*eps: k.Obj) -> k.Obj:
            return k.endpointslice("local", list(eps))

        server.put(slice_(k.endpoint("node2", "10.230.2.9"), k.endpoint("node1", "10.230.1.4")))
        await wait_held(node1, {"10.240.0.225", "10.240.0.204"})
        server.put(
            slice_(
                k.endpoint("node2", "10.230.2.9"),
                k.endpoint("node1", "10.230.1.4", ready=False, serving=True, terminating=True),
            )
        )
        await asyncio.sleep(0.3)
        assert held(node1) == {"10.240.0.225", "10.240.0.204"}
        server.put(slice_(k.endpoint("node2", "10.230.2.9")))
        await wait_held(node1, {"10.240.0.225"})

        # The last VIP goes: the node is put back as found (the agent's semantics).
        server.delete("Service", "default", "lb")
        await wait_held(node1, set())
        state = tmp_path / "state"  # nothing recorded any more (the running agent's lock aside)
        await until(lambda: not state.exists() or not any(p.suffix != ".lock" for p in state.iterdir()))
        assert conf(node1, "net.ipv4.conf.eth0.arp_ignore") == 0
        assert conf(node1, "net.ipv4.conf.eth0.arp_announce") == 0

    run_node(node1, tmp_path, body)


def test_a_dual_stack_service_puts_both_vips_on_lo(node1: str, tmp_path: Path) -> None:
    """One VIP per family, held when the node has an address of that family (docs/ipv6.md)."""

    def lo_v6(ns: str) -> set[str]:
        (link,) = json.loads(_ip(ns, "-j", "addr", "show", "dev", "lo"))
        return {f"{a['local']}/{a['prefixlen']}" for a in link["addr_info"] if a["local"].startswith("fd00:")}

    async def body(server: FakeApiServer, n: NodeStack) -> None:
        await wait_held(node1, {"10.240.0.201", "10.240.0.225"})
        dual = k.service("dual", external_ips=["10.240.0.205", "fd00:240::205"])
        dual["spec"].update(ipFamilies=["IPv4", "IPv6"], ipFamilyPolicy="RequireDualStack")
        server.put(dual)
        await asyncio.sleep(0.5)
        assert await asyncio.to_thread(lo_v6, node1) == set(), "node1 has no IPv6 address yet: no IPv6 VIP"
        server.put(k.node("node1", "10.240.0.101", address6="fd00:240::101", rv="2"))
        await wait_held(node1, {"fd00:240::205/128"}, read=lo_v6)
        assert held(node1) == {"10.240.0.201", "10.240.0.225", "10.240.0.205"}
        both = ("10.240.0.201", "10.240.0.205", "10.240.0.225", "fd00:240::205")
        await until(lambda: n.reports[-1][0].vips == both)  # reported once the sync is done
        server.delete("Service", "default", "dual")
        await wait_held(node1, set(), read=lo_v6)
        await wait_held(node1, {"10.240.0.201", "10.240.0.225"})

    run_node(node1, tmp_path, body)


def test_cordoned_or_notready_node_keeps_its_vips_excluded_or_deleted_drops_them(
    node1: str, tmp_path: Path
) -> None:
    async def body(server: FakeApiServer, n: NodeStack) -> None:
        await wait_held(node1, {"10.240.0.201", "10.240.0.225"})
        server.put(k.node("node1", "10.240.0.101", unschedulable=True))  # kubectl cordon
        await asyncio.sleep(0.3)
        assert held(node1) == {"10.240.0.201", "10.240.0.225"}
        server.put(k.node("node1", "10.240.0.101", ready=False, unschedulable=True))
        # Still following the Services while cordoned and NotReady: a new one it would serve ...
        server.put(k.service("later", external_ips=["10.240.0.205"], created="2026-11-22T00:00:00Z"))
        await wait_held(node1, {"10.240.0.201", "10.240.0.225", "10.240.0.205"})
        server.delete("Service", "default", "later")  # ... and a deletion
        await wait_held(node1, {"10.240.0.201", "10.240.0.225"})
        server.put(k.node("node1", "10.240.0.101"))  # uncordoned, Ready: nothing to do
        await asyncio.sleep(0.3)
        assert held(node1) == {"10.240.0.201", "10.240.0.225"}

        # Excluded from load balancers: a standing decision, not a drain: nothing held.
        server.put(
            k.node(
                "node1",
                "10.240.0.101",
                labels={"node.kubernetes.io/exclude-from-external-load-balancers": ""},
            )
        )
        await wait_held(node1, set())
        server.put(k.node("node1", "10.240.0.101"))
        await wait_held(node1, {"10.240.0.201", "10.240.0.225"})
        # Deleted from the cluster: nothing held.
        server.delete("Node", "", "node1")
        await wait_held(node1, set())
        assert n.reports[-1][0].found is False

    run_node(node1, tmp_path, body)


def test_api_outage_and_500s_keep_the_vips_then_converge(node1: str, tmp_path: Path) -> None:
    async def body(server: FakeApiServer, n: NodeStack) -> None:
        await wait_held(node1, {"10.240.0.201", "10.240.0.225"})
        await server.stop()
        await asyncio.sleep(1.5)  # several resyncs and watch retries while the API is away
        assert held(node1) == {"10.240.0.201", "10.240.0.225"}
        assert conf(node1, "net.ipv4.conf.eth0.arp_ignore") == 1
        assert n.loop.failures == 0 and sum(s.errors for s in n.source.stats.values()) >= 3
        assert n.loop.steps >= 3  # the resync steps ran, and changed nothing
        server.delete("Service", "default", "whoami")  # changed while the node could not see it
        server.put(k.service("new", external_ips=["10.240.0.206"], created="2026-11-22T00:00:00Z"))
        await server.start()
        await wait_held(node1, {"10.240.0.225", "10.240.0.206"})

        # 500s on every request for a while (watches dropped, re-lists refused): kept.
        server.fail_next(12, 500)
        server.drop_watches()
        await until(lambda: not server._fail, timeout=10)
        assert held(node1) == {"10.240.0.225", "10.240.0.206"}
        server.delete("Service", "default", "new")
        await wait_held(node1, {"10.240.0.225"})

    run_node(node1, tmp_path, body, resync=0.3)


# ------------------------------------------------------------------ the CLI, as processes


def kubelvs(
    *args: str, env: dict[str, str] | None = None, check: bool = True, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "kubelvs", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_once_dry_run_revert_and_errors_through_the_cli(
    api_server: tuple[ServerThread, Path], node1: str, tmp_path: Path
) -> None:
    st, kc = api_server
    for obj in cluster():
        st.call(st.server.put, obj)
    common = [
        "node",
        "--kubernetes",
        "--kubeconfig",
        str(kc),
        "-f",
        str(CONFIG),
        "--netns",
        node1,
        "--vip-device",
        "lo",
        "--state-dir",
        str(tmp_path / "state"),
    ]

    # --dry-run -o json: the VIPs it would hold; nothing is touched (and nothing written to the API).
    dry = kubelvs(*common, "--node-name", "node1", "--dry-run", "-o", "json")
    assert json.loads(dry.stdout) == {
        "node": "node1",
        "found": True,
        "vips": ["10.240.0.201", "10.240.0.225"],
        "mode": "dr",
    }
    assert held(node1) == set() and conf(node1, "net.ipv4.conf.eth0.arp_ignore") == 0
    assert not (tmp_path / "state").exists()

    # --once, the node name from NODE_NAME (as the DaemonSet's Downward API sets it).
    once = kubelvs(*common, "--once", "-o", "json", env={"NODE_NAME": "node1"})
    report = json.loads(once.stdout)
    assert (
        report["node"] == "node1"
        and report["vips"] == ["10.240.0.201", "10.240.0.225"]
        and report["mode"] == "dr"
    )
    assert {"action": "add", "target": "10.240.0.201/32 dev lo", "detail": ""} in report["changes"]
    assert held(node1) == {"10.240.0.201", "10.240.0.225"}
    assert (
        conf(node1, "net.ipv4.conf.eth0.arp_ignore") == 1
        and conf(node1, "net.ipv4.conf.eth0.arp_announce") == 2
    )
    assert (
        json.loads(kubelvs(*common, "--once", "-o", "json", "--node-name", "node1").stdout)["changes"] == []
    )
    assert not any(m != "GET" for m, _ in st.server.requests)  # the node agent only reads

    # node2's view of the same cluster (dry run): the same VIPs, plus the Local one it hosts.
    dry2 = json.loads(kubelvs(*common, "--node-name", "node2", "--dry-run", "-o", "json").stdout)
    assert dry2["vips"] == ["10.240.0.201", "10.240.0.204", "10.240.0.225"]

    # Errors name the field; nothing changes.
    bad = kubelvs(*common, "--once", env={"NODE_NAME": ""}, check=False)
    assert bad.returncode == 2 and "node-name: give --node-name or set NODE_NAME" in bad.stderr
    bad = kubelvs(*common, "--once", "--node-name", "node1", "--vip", "10.240.0.250", check=False)
    assert bad.returncode == 2 and "--vip: cannot be combined with --kubernetes" in bad.stderr
    bad = kubelvs(*common, "--once", "--node-name", "node1", "--interface", "eth9", check=False)
    assert bad.returncode == 2 and "interface: 'eth9' does not exist" in bad.stderr
    assert held(node1) == {"10.240.0.201", "10.240.0.225"}

    kubelvs(
        "node", "--revert", "--netns", node1, "--vip-device", "lo", "--state-dir", str(tmp_path / "state")
    )
    assert held(node1) == set() and conf(node1, "net.ipv4.conf.eth0.arp_ignore") == 0


def test_from_manifests_dry_run(capsys: pytest.CaptureFixture[str]) -> None:
    base = ["node", "--from-manifests", str(WHOAMI_DIR), "-f", str(CONFIG), "--dry-run", "-o", "json"]
    assert main([*base, "--node-name", "node2"]) == 0
    assert json.loads(capsys.readouterr().out)["vips"] == ["10.240.0.201"]
    assert main([*base, "--node-name", "node9"]) == 0  # no such Node: holds nothing, says so
    out = json.loads(capsys.readouterr().out)
    assert out["vips"] == [] and out["found"] is False


def test_long_running_agent_follows_the_api_and_leaves_the_node_configured_on_exit(
    api_server: tuple[ServerThread, Path], node1: str, tmp_path: Path
) -> None:
    st, kc = api_server
    for obj in cluster():
        st.call(st.server.put, obj)
    log = tmp_path / "node.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kubelvs",
                "node",
                "--kubernetes",
                "--kubeconfig",
                str(kc),
                "-f",
                str(CONFIG),
                "--node-name",
                "node1",
                "--netns",
                node1,
                "--vip-device",
                "lo",
                "--state-dir",
                str(tmp_path / "state"),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    rc: int | None = None
    try:
        deadline = time.monotonic() + 30
        while held(node1) != {"10.240.0.201", "10.240.0.225"}:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        st.call(st.server.delete, "Service", "default", "whoami")
        deadline = time.monotonic() + 15
        while held(node1) != {"10.240.0.225"}:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    assert rc == 0, log.read_text()[-3000:]
    assert held(node1) == {"10.240.0.225"}  # a stopping agent must not cut traffic
    assert conf(node1, "net.ipv4.conf.eth0.arp_ignore") == 1
    assert "delete 10.240.0.201/32 dev lo" in log.read_text()


@pytest.mark.kernel_ipvs
def test_tun_service_puts_the_agent_in_tun_mode(node1: str, tmp_path: Path) -> None:
    """A Service with forward tun: the agent brings up tunl0 with an effective rp_filter 0
    (needs ipip: the VM tier)."""
    subprocess.run(["modprobe", "-q", "ipip"], check=False)
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    objs = [
        k.node("node1", "10.240.0.101"),
        k.service("tun", external_ips=["10.240.0.202"], annotations={"kubelvs.io/forward": "tun"}),
    ]
    (manifests / "all.json").write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": objs}))
    out = kubelvs(
        "node",
        "--from-manifests",
        str(manifests),
        "-f",
        str(CONFIG),
        "--node-name",
        "node1",
        "--netns",
        node1,
        "--vip-device",
        "lo",
        "--state-dir",
        str(tmp_path / "state"),
        "--once",
        "-o",
        "json",
        timeout=600,
    )  # the emulated VM imports slowly from its 9p root
    report = json.loads(out.stdout)
    assert (report["vips"], report["mode"]) == (["10.240.0.202"], "tun")
    assert held(node1) == {"10.240.0.202"}
    (link,) = json.loads(_ip(node1, "-j", "link", "show", "dev", "tunl0"))
    assert "UP" in link["flags"]
    assert (
        max(
            conf(node1, "net.ipv4.conf.all.rp_filter") or 0, conf(node1, "net/ipv4/conf/tunl0/rp_filter") or 0
        )
        == 0
    )
