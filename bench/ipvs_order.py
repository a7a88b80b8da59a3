"""The cost of one Maglev order on every director (IPVS, run in the VM tier: `make bench-ha`).

IPVS builds ``mh``/``sh`` tables from each service's destination list, in the order the
destinations were added; kubelvs keeps one (canonical) order (backends/ipvs/order.py).
For N ``mh`` services x 10 real servers, in a fresh namespace:

- cold sync (the canonical order comes free: ascending adds, each at the head);
- a node joins with a higher address than the others, in every service (the usual
  growth: lands at the head, nothing is re-added) - the baseline;
- a node joins with a lower address, in every service: every destination above it is
  deleted and at once re-added (10 per service);
- the same change without the order kept (the backend's plain pipelined apply, the
  order step skipped): what keeping the order costs on top.

Each step's result is checked against /proc/net/ip_vs (every list descending). Results:
bench/results/ipvs_order.json and .md; VM timings are emulated-CPU times: only the ratios
measured in the same run mean something.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from kubelvs.backends.ipvs import IpvsBackend
from kubelvs.model import (
    DesiredState,
    Forward,
    ObservedState,
    Ownership,
    RealServer,
    ServiceKey,
    VirtualService,
)
from kubelvs.planner import apply_ops, plan

OWNED = Ownership(cidrs=(ipaddress.ip_network("10.200.0.0/16"),))


def desired(n: int, nodes: list[str]) -> DesiredState:
    services = {}
    for i in range(n):
        key = ServiceKey(4, "tcp", ipaddress.ip_address(f"10.200.{i // 256}.{i % 256}"), 80)  # type: ignore[arg-type]
        rss = [RealServer(ipaddress.ip_address(a), 80, 1, Forward.DR) for a in nodes]
        services[key] = VirtualService(key=key, scheduler="mh").with_realservers(rss)
    return DesiredState(services=services, ownership=OWNED)


def in_order(ns: str) -> tuple[int, int]:
    """(services, services whose destination list is descending) from /proc/net/ip_vs."""
    text = subprocess.run(
        ["ip", "netns", "exec", ns, "cat", "/proc/net/ip_vs"], capture_output=True, text=True, check=True
    ).stdout
    lists: list[list[str]] = []
    for line in text.splitlines():
        parts = line.split()
        if parts[:1] == ["TCP"]:
            lists.append([])
        elif parts[:1] == ["->"] and lists:
            lists[-1].append(parts[1])
    return len(lists), sum(1 for dests in lists if dests == sorted(dests, reverse=True))


def step(
    backend: IpvsBackend, want: DesiredState, now: ObservedState, *, keep_order: bool = True
) -> tuple[float, int, ObservedState]:
    """Plan against what the kernel holds (``now``: no read, whose decoding would dwarf
    what is measured under emulation) and apply; seconds applying, operations, the new state."""
    ops = plan(want, now).ops
    start = time.perf_counter()
    if keep_order:
        backend.apply(ops)
    else:
        backend._apply(ops)  # the pipelined apply alone, the order step skipped
    return time.perf_counter() - start, len(ops), apply_ops(now, ops)


def measure(n: int) -> dict[str, object]:
    base = [f"10.1.0.{20 + i}" for i in range(10)]
    grown = [*base, "10.1.0.99"]  # a node above the others
    both = [*grown, "10.1.0.5"]  # then one below
    rows: list[dict[str, object]] = []

    def run(steps: list[tuple[str | None, list[str], bool]]) -> None:
        ns = f"kubelvs-bench-order-{os.getpid()}"
        subprocess.run(["ip", "netns", "add", ns], check=True)
        # lo up: IPVS refuses a destination whose address type it cannot tell (EINVAL).
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        try:
            with IpvsBackend(netns=ns) as backend:
                now = ObservedState()
                for name, nodes, keep in steps:
                    seconds, ops, now = step(backend, desired(n, nodes), now, keep_order=keep)
                    if name is not None:
                        total, ordered = in_order(ns)
                        rows.append(
                            {
                                "step": name,
                                "seconds": round(seconds, 3),
                                "operations": ops,
                                "services": total,
                                "in_order": ordered,
                            }
                        )
        finally:
            subprocess.run(["ip", "netns", "del", ns], check=False)

    run(
        [
            ("cold sync (10 real servers)", base, True),
            ("a node joins above the others", grown, True),
            ("a node joins below the others (order kept)", both, True),
        ]
    )
    run(
        [
            (None, base, True),
            (None, grown, True),
            ("a node joins below the others (order not kept)", both, False),
        ]
    )
    return {"services": n, "rows": rows}


def markdown(doc: dict[str, object]) -> str:
    lines = [
        "# IPVS: one Maglev order on every director",
        "",
        f"Kernel {doc['kernel']}; {doc['when']}. VM timings are emulated-CPU times: compare the ratios.",
        "",
    ]
    for run in doc["runs"]:  # type: ignore[attr-defined]
        base = next(r["seconds"] for r in run["rows"] if r["step"] == "a node joins above the others")
        lines += [
            f"## {run['services']:,} mh services x 10 real servers",
            "",
            "| step | apply (s) | ratio to 'joins above' | operations | lists in canonical order |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for r in run["rows"]:
            lines.append(
                f"| {r['step']} | {r['seconds']} | {r['seconds'] / base:.2f} | {r['operations']} | "
                f"{r['in_order']} / {r['services']} |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, nargs="+", default=[1000])
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    doc: dict[str, object] = {
        "kernel": platform.release(),
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "runs": [measure(n) for n in args.services],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ipvs_order.json").write_text(json.dumps(doc, indent=1) + "\n")
    (args.out / "ipvs_order.md").write_text(markdown(doc))
    sys.stdout.write(markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
