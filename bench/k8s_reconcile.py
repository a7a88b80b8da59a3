"""Benchmark of the Kubernetes source at scale: 10,000 Services x 10 nodes.

The whole director runs in one process: watches against the stand-in API server
(tests/kubernetes/apiserver.py, the real wire protocol over loopback HTTP), the store,
the coalescer (100 ms between steps, as kube-proxy's minSyncPeriod: each single change
below comes after a quiet spell and goes at once; the burst's later events wait), the
mapping with IPAM, and the planner, with a data plane that is either the in-memory
reference (``memory``: control-plane cost alone), nftables in a fresh network namespace
(``nftables``: the kernel programmed), or IPVS in a fresh namespace (``ipvs``, in the
VM: ``scripts/vm-run -- .venv/bin/python bench/k8s_reconcile.py --backend ipvs``).

Health checks are off (the nodes here are made-up addresses; bench/health.py measures a
node failure by check). Measured: the time from the LAST event to the end of the sync that programmed it
(``ReconcileLoop.last_programmed``), for one Service edit, a burst of 100 edits, and a
node going NotReady (which touches every Service). Also measured: the first full
reconcile after the initial list, and the director's memory (RSS growth while it
builds its state; the stand-in server's own copies are counted before that). Baseline,
measured in the same run: a full recompute plus a full sync of everything, which is
what kube-proxy's syncProxyRules does on every change. The ratios compare against it.
A benchmark, not a timed test: nothing here passes or fails on a number.

    .venv/bin/python bench/k8s_reconcile.py [--services 10000] [--nodes 10] [--backend memory|nftables|ipvs]
Results: bench/results/k8s_reconcile-<backend>[-<services> unless 10,000].json and .md
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import platform
import secrets
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Literal

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.kubernetes import k8sobjects as k  # noqa: E402
from tests.kubernetes.apiserver import FakeApiServer  # noqa: E402

from kubelvs.app.director import DirectorOptions, start_director  # noqa: E402
from kubelvs.backends.memory import MemoryBackend  # noqa: E402
from kubelvs.model import Ownership  # noqa: E402
from kubelvs.sources.config import Config  # noqa: E402
from kubelvs.sources.kubernetes.api import KubeApi  # noqa: E402
from kubelvs.sources.kubernetes.desired import KubernetesSource  # noqa: E402
from kubelvs.sources.kubernetes.mapping import Mapper  # noqa: E402
from kubelvs.sources.kubernetes.settings import parse_kubernetes  # noqa: E402

OWNED = "10.128.0.0/12"
POOL = "10.128.0.0/13"  # 524,288 addresses: room for the 100,000-Service run


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def node_ip(i: int) -> str:
    return f"192.168.10.{i + 1}"


class NftNamespace:
    """A fresh namespace with permanent neighbours for the node addresses (nftables DR needs
    their MACs; IPVS needs them routable)."""

    def __init__(self, nodes: int) -> None:
        self.name = f"kubelvs-bench-{secrets.token_hex(3)}"
        subprocess.run(["ip", "netns", "add", self.name], check=True)

        def sh(*args: str) -> None:
            subprocess.run(["ip", "-n", self.name, *args], check=True)

        sh("link", "set", "lo", "up")
        sh("link", "add", "v0", "type", "veth", "peer", "name", "v1")
        sh("link", "set", "v0", "up")
        sh("link", "set", "v1", "up")
        sh("addr", "add", "192.168.10.254/24", "dev", "v0")
        for i in range(nodes):
            sh(
                "neigh",
                "replace",
                node_ip(i),
                "lladdr",
                f"02:00:00:00:0a:{i + 1:02x}",
                "dev",
                "v0",
                "nud",
                "permanent",
            )

    def close(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)


async def wait(cond: Any, timeout: float = 600) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise TimeoutError("benchmark step did not converge")
        await asyncio.sleep(0.01)


async def bench(
    n_services: int,
    n_nodes: int,
    backend_name: Literal["memory", "nftables", "ipvs"],
    baseline_rounds: int = 3,
) -> dict[str, Any]:
    server = FakeApiServer(bookmark_interval=5)
    await server.start()
    for i in range(n_nodes):
        server.put(k.node(f"node{i}", node_ip(i)))
    for i in range(n_services):
        name = f"svc{i:05d}"
        ns = f"ns{i % 50}"
        server.put(
            k.service(
                name,
                namespace=ns,
                type="LoadBalancer",
                created=f"2026-11-20T10:{i // 3600 % 60:02d}:{i % 60:02d}Z",
            )
        )
        eps = k.endpointslice(
            name,
            [
                k.endpoint(f"node{i % n_nodes}", f"10.230.{i // 250}.{i % 250}"),
                k.endpoint(f"node{(i + 1) % n_nodes}", f"10.231.{i // 250}.{i % 250}"),
            ],
            namespace=ns,
        )
        server.put(eps)
    server.history.clear()  # the stand-in's own event log is not the director's memory
    rss_server = rss_mib()

    settings = parse_kubernetes(
        # No health checks: their probes would go to the made-up node addresses (from the
        # host's namespace with the memory backend) and their transitions would land in the
        # middle of the measurements; bench/health.py measures a node failure by check.
        {
            "lb_pools": [{"name": "default", "cidrs": [POOL]}],
            "coalesce_ms": 100,
            "health": {"enabled": False},
        },
        Ownership(cidrs=(ipaddress.ip_network(OWNED),)),
    )
    nsobj = None
    if backend_name in ("nftables", "ipvs"):
        from kubelvs.backends import open_backend

        nsobj = NftNamespace(n_nodes)
        backend: Any = open_backend(backend_name, netns=nsobj.name)
    else:
        backend = MemoryBackend()
    api = KubeApi.for_url(server.url)
    source = KubernetesSource(Config(), settings=settings, api=api, write_status=False)
    stop = asyncio.Event()
    results: dict[str, Any] = {"services": n_services, "nodes": n_nodes, "backend": backend_name}
    program = None
    try:
        t0 = time.perf_counter()
        # The same assembly as `kubelvs director --kubernetes` (app.director.start_director).
        program = await start_director(DirectorOptions(resync_seconds=3600), source, backend=backend)
        loop = program.loop
        tasks = [asyncio.create_task(program.run(stop))]

        class _Last:  # what the director synced last, read by the checks below
            @property
            def last_desired(self) -> Any:
                assert program is not None
                return program.last_synced

        reconciler = _Last()
        await wait(lambda: loop.steps >= 1)
        results["initial_list_map_full_sync_s"] = time.perf_counter() - t0
        results["virtual_services"] = len(reconciler.last_desired.services) if reconciler.last_desired else 0
        results["realservers"] = (
            sum(len(v.realservers) for v in reconciler.last_desired.services.values())
            if reconciler.last_desired
            else 0
        )
        results["rss_director_mib"] = round(rss_mib() - rss_server, 1)
        results["rss_total_mib"] = round(rss_mib(), 1)

        async def after(change: Any, check: Any) -> float:
            before = loop.steps
            await asyncio.sleep(0.3)
            change()
            t_last = time.monotonic()
            await wait(lambda: loop.steps > before and check())
            return loop.last_programmed - t_last

        one = []
        for r in range(5):
            name, ns = f"svc{r * 7:05d}", f"ns{(r * 7) % 50}"
            svc = server.get("Service", ns, name)
            svc["spec"]["ports"][0]["port"] = 8000 + r
            one.append(
                await after(
                    lambda s=svc: server.put(s),
                    lambda r=r: any(
                        key.port == 8000 + r
                        for key in (reconciler.last_desired.services if reconciler.last_desired else {})
                    ),
                )
            )
        results["one_service_edit_s"] = statistics.median(one)
        results["one_service_recomputed"] = source.mapper.recomputed

        def burst() -> None:
            for j in range(100):
                i = (n_services // 2 + j) % n_services
                name, ns = f"svc{i:05d}", f"ns{i % 50}"
                svc = server.get("Service", ns, name)
                svc["spec"]["ports"][0]["port"] = 9000
                server.put(svc)

        results["burst_100_edits_s"] = await after(
            burst,
            lambda: (
                sum(
                    1
                    for key in (reconciler.last_desired.services if reconciler.last_desired else {})
                    if key.port == 9000
                )
                == 100
            ),
        )
        results["burst_reconciles"] = loop.steps

        def set_ready(name: str, ready: bool) -> None:
            node = server.get("Node", "", name)
            node["status"]["conditions"][1]["status"] = "True" if ready else "False"
            server.put(node)

        def nodes_everywhere(count: int) -> bool:
            services = reconciler.last_desired.services if reconciler.last_desired else {}
            return all(len(v.realservers) == count for v in list(services.values())[:50])

        # One node after another goes NotReady and comes back: the median of five of each
        # (one sample on a shared CPU varied by a quarter between runs).
        down, up = [], []
        for r in range(5):
            name = f"node{r % n_nodes}"
            down.append(
                await after(lambda n=name: set_ready(n, False), lambda: nodes_everywhere(n_nodes - 1))
            )
            up.append(await after(lambda n=name: set_ready(n, True), lambda: nodes_everywhere(n_nodes)))
        results["node_not_ready_s"] = statistics.median(down)
        results["node_ready_again_s"] = statistics.median(up)
        results["node_not_ready_samples_s"] = [round(t, 4) for t in down]

        # The program stops first: its loop checks the backend between steps (in a thread),
        # and a backend is used by one thread at a time (two on one netlink socket take
        # each other's replies).
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # Baseline: recompute everything and sync everything (kube-proxy's way), same state.
        base_times = []
        for _ in range(baseline_rounds):
            source.mapper = Mapper(settings)  # nothing cached: everything is recomputed
            t = time.perf_counter()
            await asyncio.to_thread(program.step, True)  # full: read the kernel, compare all
            base_times.append(time.perf_counter() - t)
        results["baseline_full_recompute_and_sync_s"] = statistics.median(base_times)
        base = results["baseline_full_recompute_and_sync_s"]
        results["ratio_one_edit_to_baseline"] = results["one_service_edit_s"] / base
        results["ratio_burst_to_baseline"] = results["burst_100_edits_s"] / base
        results["ratio_node_to_baseline"] = results["node_not_ready_s"] / base
        results["rss_peak_mib"] = round(rss_mib(), 1)
    finally:
        if program is not None:
            await program.close()  # the source (API client) and the backend
        else:
            await api.close()
            backend.close()
        await server.close()
        if nsobj is not None:
            nsobj.close()
    return results


def markdown(r: dict[str, Any]) -> str:
    rows = [
        (
            "first reconcile after the initial list (list + map + full sync)",
            f"{r['initial_list_map_full_sync_s']:.2f} s",
            "",
        ),
        (
            "one Service edit: last event -> programmed (median of 5)",
            f"{r['one_service_edit_s'] * 1000:.0f} ms",
            f"{r['ratio_one_edit_to_baseline']:.2f}",
        ),
        (
            "100 Service edits in a burst: last event -> programmed",
            f"{r['burst_100_edits_s'] * 1000:.0f} ms",
            f"{r['ratio_burst_to_baseline']:.2f}",
        ),
        (
            "one node NotReady (every Service changes): last event -> programmed (median of 5)",
            f"{r['node_not_ready_s'] * 1000:.0f} ms",
            f"{r['ratio_node_to_baseline']:.2f}",
        ),
        (
            "the same node Ready again: last event -> programmed (median of 5)",
            f"{r['node_ready_again_s'] * 1000:.0f} ms",
            "",
        ),
        (
            "baseline: full recompute + full sync (kube-proxy's way)",
            f"{r['baseline_full_recompute_and_sync_s'] * 1000:.0f} ms",
            "1.00",
        ),
        ("director memory (RSS growth while building its state)", f"{r['rss_director_mib']} MiB", ""),
        ("process RSS at the end (stand-in server included)", f"{r['rss_peak_mib']} MiB", ""),
    ]
    out = [
        f"# Kubernetes source: {r['services']:,} Services x {r['nodes']} nodes, backend {r['backend']}",
        "",
        f"{r['virtual_services']:,} virtual services, {r['realservers']:,} real servers; "
        "coalescing 100 ms between reconciles (kube-proxy's minSyncPeriod: a change after a "
        "quiet spell, as each single one here, goes at once; a burst's later events wait; "
        "included in the latencies).",
        f"Machine: {r['machine']}; {r['date']}; load average at the end {r.get('loadavg_1m_at_end', '?')}"
        " (absolute times depend on it; the ratios were measured in the same run).",
        *(
            [
                "Run in the VM (qemu with an emulated CPU, no KVM; "
                "the host's 2 cores shared with other work):",
                "Python runs 10-20x slower there than on the host, "
                "so read the ratios, not the absolute times.",
                "The baseline reads the whole IPVS table back, as a full resync does.",
            ]
            if r["backend"] == "ipvs"
            else []
        ),
        "",
        "| step | time | ratio to baseline |",
        "| --- | --- | --- |",
        *[f"| {a} | {b} | {c} |" for a, b, c in rows],
        "",
        "NotReady samples: " + ", ".join(f"{t * 1000:.0f} ms" for t in r.get("node_not_ready_samples_s", [])),
        "",
    ]
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--services", type=int, default=10_000)
    p.add_argument("--nodes", type=int, default=10)
    p.add_argument("--backend", choices=("memory", "nftables", "ipvs"), default="memory")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    p.add_argument(
        "--baseline-rounds", type=int, default=3, help="full recompute + sync rounds (median); 1 in the VM"
    )
    a = p.parse_args()
    r = asyncio.run(bench(a.services, a.nodes, a.backend, a.baseline_rounds))
    r["machine"] = (
        f"{platform.machine()} {os.cpu_count()} CPUs, Linux {platform.release()}, "
        f"Python {platform.python_version()}"
    )
    r["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    r["loadavg_1m_at_end"] = round(os.getloadavg()[0], 1)  # other work on the machine skews absolute times
    a.out.mkdir(parents=True, exist_ok=True)
    # The 10,000-Service run is the reference; other sizes are kept beside it.
    stem = a.out / (f"k8s_reconcile-{a.backend}" + ("" if a.services == 10_000 else f"-{a.services}"))
    stem.with_suffix(".json").write_text(json.dumps(r, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(r))
    print(markdown(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
