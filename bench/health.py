"""Health-check benchmarks (machine kernel; nftables; a fresh network namespace per case).

    .venv/bin/python bench/health.py --out bench/results [--targets 1000] [--services 10000]

1. Probe load: the director's checker probing ``--targets`` real servers (distinct
   addresses on ``lo`` of a namespace, one TCP listener each) at a 1 s interval for
   ``--seconds``: probes per second sustained, the process's CPU per second (one core is
   1.0), and the drift of the real intervals from the configured one (how late each probe
   started, p50/p99/max, as a share of the interval). Target: p99 under 10% at 1,000.
2. Node failure at scale: ``--services`` virtual services x 10 nodes (DR, ``mh``, the
   same nodes in every service: what the Kubernetes source programs) programmed into
   nftables by the director program (config file source, TCP checks, fall 1); one node's
   listener is closed; measured: from the checker's DOWN transition to the end of the
   sync that programmed weight 0 for that node in every service (one batch), and the
   same with the in-memory backend (the control plane alone) as the baseline. Target:
   under 500 ms on nftables. The kernel is read back afterwards to check the result.

Writes ``health.json`` and ``health.md`` into ``--out``. A benchmark: nothing here passes
or fails on a number.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import platform
import resource
import secrets
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from kubelvs.app.director import DirectorOptions, DirectorProgram, start_director
from kubelvs.app.health import HealthChecker
from kubelvs.backends import BackendName, open_backend
from kubelvs.backends.memory import MemoryBackend
from kubelvs.kernel.netns import entered
from kubelvs.model import CheckKind, HealthCheck
from kubelvs.probes.direct import probe_direct
from kubelvs.roles.health import Status, TargetKey
from kubelvs.sources.file import ConfigFileSource

NODE_NET = "10.9"


class Netns:
    def __init__(self) -> None:
        self.name = f"kubelvs-bench-{secrets.token_hex(3)}"

    def __enter__(self) -> str:
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        subprocess.run(["ip", "-n", self.name, "link", "set", "lo", "up"], check=True)
        return self.name

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["ip", "netns", "del", self.name], check=False)


def addresses(ns: str, count: int) -> list[str]:
    out = [f"{NODE_NET}.{i // 250}.{i % 250 + 1}" for i in range(count)]
    script = "".join(f"address add {a}/32 dev lo\n" for a in out)
    subprocess.run(
        ["ip", "-n", ns, "-batch", "-"], input=script.replace("address", "addr"), text=True, check=True
    )
    return out


class Listeners:
    """One listening TCP socket per address, inside ``ns``, accepted and closed in a thread."""

    def __init__(self, ns: str, addrs: list[str], port: int = 80) -> None:
        self.socks: dict[str, socket.socket] = {}
        self.ns = ns
        with entered(ns):
            for a in addrs:
                s = socket.socket()
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((a, port))
                s.listen(1024)
                s.setblocking(False)
                self.socks[a] = s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        import selectors

        sel = selectors.DefaultSelector()
        for s in list(self.socks.values()):
            sel.register(s, selectors.EVENT_READ)
        while not self._stop.is_set():
            for key, _ in sel.select(0.2):
                try:
                    conn, _ = key.fileobj.accept()  # type: ignore[union-attr]
                    conn.close()
                except OSError:
                    pass

    def close(self, address: str) -> None:
        s = self.socks.pop(address)
        s.close()

    def reopen(self, address: str, port: int = 80) -> None:
        """Listen on ``address`` again. Not accepted (the thread watches the first
        sockets): a TCP check's connect completes in the backlog all the same."""
        with entered(self.ns):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((address, port))
            s.listen(1024)
        self.socks[address] = s

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)
        for s in self.socks.values():
            s.close()


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def probe_load(count: int, seconds: float) -> dict[str, Any]:
    check = HealthCheck(kind=CheckKind.TCP, interval=1.0, timeout=0.5)
    with Netns() as ns:
        addrs = addresses(ns, count)
        listeners = Listeners(ns, addrs)
        try:
            targets = [TargetKey(ipaddress.ip_address(a), 80, check) for a in addrs]

            async def main() -> HealthChecker:
                async def probe(t: TargetKey) -> tuple[bool, str]:
                    return await probe_direct(t.address, t.port, t.check, netns=ns)

                checker = HealthChecker(probe, lambda _t: None)
                checker.set_targets(targets)
                stop = asyncio.Event()
                task = asyncio.create_task(checker.run(stop))
                await asyncio.sleep(2.0)  # every target probed once: the schedule is set
                checker.lateness.clear()
                before_probes, before_cpu, started = checker.probes, cpu(), time.monotonic()
                await asyncio.sleep(seconds)
                elapsed = time.monotonic() - started
                checker.bench = (checker.probes - before_probes, cpu() - before_cpu, elapsed)  # type: ignore[attr-defined]
                stop.set()
                await task
                return checker

            checker = asyncio.run(main())
        finally:
            listeners.stop()
    probes, used, elapsed = checker.bench  # type: ignore[attr-defined]
    late = sorted(checker.lateness)
    down = sum(1 for s in checker.states.values() if s.status is not Status.UP)
    return {
        "targets": count,
        "interval_s": 1.0,
        "seconds": round(elapsed, 1),
        "probes_per_second": round(probes / elapsed, 1),
        "cpu_per_second": round(used / elapsed, 3),
        "lateness_p50_ms": round(1000 * statistics.median(late), 2),
        "lateness_p99_ms": round(1000 * late[int(len(late) * 0.99) - 1], 2),
        "lateness_max_ms": round(1000 * late[-1], 2),
        "drift_p99_share": round(late[int(len(late) * 0.99) - 1] / 1.0, 4),
        "targets_not_up": down,
    }


def _config(n: int, nodes: list[str]) -> str:
    # What the Kubernetes source programs: DR, mh, every service on the same nodes.
    rss = ", ".join(f"{{address: {a}, port: 80, forward: dr}}" for a in nodes)
    lines = [
        "owned_cidrs: [10.96.0.0/12]",
        "recommended_sysctls: false",
        "health_defaults: {kind: tcp, interval: 0.5, timeout: 0.25, fall: 1, rise: 1}",
        "services:",
    ]
    for i in range(n):
        vip = ipaddress.IPv4Address(int(ipaddress.IPv4Address("10.96.0.0")) + i)
        lines.append(f"  - {{vip: {vip}, port: 80, scheduler: mh, realservers: [{rss}]}}")
    return "\n".join(lines) + "\n"


def node_failure(n: int, backend_name: str, tmp: Path, cycles: int = 5) -> dict[str, Any]:
    """The director in one namespace, the 10 nodes' addresses in another, on a veth link
    (DR real servers on a connected subnet: the peer answers ARP for all ten). One node
    fails and comes back ``cycles`` times, then fails once more: the medians of the
    check's verdict -> every service programmed, each way (this machine's CPU is shared,
    one sample can be off by a third)."""
    with Netns() as director, Netns() as peer:
        subprocess.run(
            ["ip", "-n", director, "link", "add", "v0", "type", "veth", "peer", "name", "v1", "netns", peer],
            check=True,
        )
        script = "".join(f"addr add {NODE_NET}.0.{i + 1}/24 dev v1\n" for i in range(10))
        subprocess.run(["ip", "-n", peer, "-batch", "-"], input=script, text=True, check=True)
        for ns, dev in ((director, "v0"), (peer, "v1")):
            subprocess.run(["ip", "-n", ns, "link", "set", dev, "up"], check=True)
        subprocess.run(["ip", "-n", director, "addr", "add", f"{NODE_NET}.0.254/24", "dev", "v0"], check=True)
        nodes = [f"{NODE_NET}.0.{i + 1}" for i in range(10)]
        listeners = Listeners(peer, nodes)
        config = tmp / f"health-{backend_name}.yaml"
        config.write_text(_config(n, nodes))
        try:
            backend: Any = (
                MemoryBackend()
                if backend_name == "memory"
                else open_backend(_name(backend_name), netns=director)
            )
            steps: list[tuple[float, int]] = []  # (when a step ended, operations it applied)

            async def main() -> dict[str, Any]:
                options = DirectorOptions(netns=director, resync_seconds=3600, check_seconds=3600)
                source = ConfigFileSource(config, poll_seconds=3600)
                t0 = time.monotonic()
                program: DirectorProgram = await start_director(options, source, backend=backend)
                step = program.step

                def timed(full: bool) -> float | None:
                    again = step(full)
                    result = program.last_result
                    steps.append((time.monotonic(), len(result.applied) if result is not None else 0))
                    return again

                program.loop.step = timed
                stop = asyncio.Event()
                task = asyncio.create_task(program.run(stop))
                while not steps:
                    await asyncio.sleep(0.05)
                cold = time.monotonic() - t0
                checker = program.health.checker
                while len(checker.states) < 10 or any(
                    s.status is not Status.UP for s in checker.states.values()
                ):
                    await asyncio.sleep(0.05)
                await asyncio.sleep(0.5)
                victim = nodes[3]
                target = next(t for t in checker.states if str(t.address) == victim)

                async def transition(status: Status) -> float:
                    """ms from the check's verdict to the step that edited every service."""
                    while checker.states[target].status is not status:
                        await asyncio.sleep(0.005)
                    at = checker.states[target].since
                    while not any(ops >= n for _, ops in steps[before:]):
                        await asyncio.sleep(0.005)
                    programmed = next(t for t, ops in steps[before:] if ops >= n)
                    return round((programmed - at) * 1000, 1)

                down: list[float] = []
                up: list[float] = []
                for _ in range(cycles):
                    before = len(steps)
                    listeners.close(victim)
                    down.append(await transition(Status.DOWN))
                    await asyncio.sleep(0.3)
                    before = len(steps)
                    listeners.reopen(victim)
                    up.append(await transition(Status.UP))
                    await asyncio.sleep(0.3)
                # The read-back below looks at a node left down.
                before = len(steps)
                listeners.close(victim)
                down.append(await transition(Status.DOWN))
                stop.set()
                await task
                await program.close()
                return {
                    "cold_sync_s": round(cold, 2),
                    "down_to_programmed_ms": statistics.median(down),
                    "up_to_programmed_ms": statistics.median(up),
                    "down_samples_ms": down,
                    "up_samples_ms": up,
                }

            out = asyncio.run(main())
            if backend_name != "memory":
                with open_backend(_name(backend_name), netns=director) as check:
                    services = check.read().services
                zero = sum(
                    1
                    for vs in services.values()
                    for rs in vs.realservers
                    if str(rs.address) == nodes[3] and rs.weight == 0
                )
                out["services_with_weight_0_read_back"] = zero
        finally:
            listeners.stop()
    return {"services": n, "nodes": 10, "backend": backend_name, **out}


def _name(backend: str) -> BackendName:
    if backend not in ("ipvs", "nftables"):
        raise SystemExit(f"--backends: {backend!r} is not memory, ipvs or nftables")
    return "ipvs" if backend == "ipvs" else "nftables"


def markdown(r: dict[str, Any]) -> str:
    lines = [
        "# Health checks",
        "",
        f"Machine: {platform.machine()} {os.cpu_count()} CPUs, Linux {platform.release()}, Python "
        f"{platform.python_version()}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load average "
        f"{os.getloadavg()[0]:.1f} (other work on the machine shows in the absolute figures).",
        "",
    ]
    p = r.get("probe_load")
    if p is not None:
        lines += [
            "## Probe load (TCP connect, 1 s interval)",
            "",
            "| targets | probes/s | CPU per second (1.0 = one core) | lateness p50 | p99 | max "
            "| drift p99 / interval |",
            "| --- | --- | --- | --- | --- | --- | --- |",
            f"| {p['targets']} | {p['probes_per_second']} | {p['cpu_per_second']} | "
            f"{p['lateness_p50_ms']} ms | {p['lateness_p99_ms']} ms | {p['lateness_max_ms']} ms | "
            f"{p['drift_p99_share'] * 100:.2f}% (target < 10%) |",
            "",
        ]
    lines += [
        "## Node failure: DOWN -> programmed in every service (one batch)",
        "",
        "Medians over the failures and recoveries of one node (samples in the JSON).",
        "",
        "| backend | services x nodes | cold sync | DOWN -> programmed | UP -> programmed "
        "| failures | read back: weight 0 |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for f in r["node_failure"]:
        lines.append(
            f"| {f['backend']} | {f['services']} x {f['nodes']} | {f['cold_sync_s']} s | "
            f"{f['down_to_programmed_ms']:.1f} ms | {f['up_to_programmed_ms']:.1f} ms | "
            f"{len(f['down_samples_ms'])} | "
            f"{f.get('services_with_weight_0_read_back', '-')} |"
        )
    lines.append("")
    lines.append("Target for nftables: DOWN -> programmed under 500 ms at 10,000 services.")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    p.add_argument("--targets", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--services", type=int, default=10_000)
    p.add_argument("--backends", default="memory,nftables", help="node failure with these (ipvs: in the VM)")
    p.add_argument("--no-probe-load", action="store_true", help="only the node failure")
    p.add_argument("--one", help=argparse.SUPPRESS)  # the node failure with this backend, JSON on stdout
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = args.out / "tmp"
    tmp.mkdir(exist_ok=True)
    if args.one:
        print(json.dumps(node_failure(args.services, args.one, tmp)))
        return 0
    backends = args.backends.split(",")
    # Each backend in a process of its own: a director's first load pauses the collector
    # and freezes what it built (kubelvs.bulk), and a second director in the same process
    # would run with what the first left behind.
    runs = [
        subprocess.run(
            [sys.executable, __file__, "--out", str(args.out), "--services", str(args.services), "--one", b],
            check=True,
            capture_output=True,
            text=True,
        )
        for b in backends
    ]
    results: dict[str, Any] = {"node_failure": [json.loads(r.stdout.splitlines()[-1]) for r in runs]}
    if not args.no_probe_load:
        results["probe_load"] = probe_load(args.targets, args.seconds)
    name = "health" if "ipvs" not in backends else "health-ipvs"
    (args.out / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / f"{name}.md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
