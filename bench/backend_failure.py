"""Detection time against the configured one, and failed requests during a backend kill
under load: the lab scenario ``backend-failure`` (docs/lab.md), several rounds.

    .venv/bin/python bench/backend_failure.py [--rounds 5]                         # nftables, this machine
    scripts/vm-run -- .venv/bin/python bench/backend_failure.py --backend ipvs     # IPVS, in the VM

Each round builds a fresh DR lab whose director checks every node through the data path
(``mode: vip``, interval 0.5 s, timeout 0.3 s, fall 2, rise 2), sends 25 new connections
a second through the VIP, kills node1's pods, waits for the director to mark node1 down,
and starts them again. Reported per round and as medians: the detection time, its ratio
to the configured worst case ``fall * interval + timeout`` (target: at most 1.10, that is
within the configuration + 10%), the failed requests beside the requests sent, and the
time until node1 was up again (``rise`` good probes).

Writes ``backend_failure-<backend>.json`` and ``.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from kubelvs.lab.scenarios import backend_failure
from kubelvs.lab.topology import down

CONFIGURED_MS = (backend_failure.FALL * backend_failure.INTERVAL + backend_failure.TIMEOUT) * 1000
TARGET_RATIO = 1.10


def one_round(backend: str) -> dict[str, Any]:
    prefix = f"kubelvs-bb{secrets.token_hex(3)}"
    try:
        result = backend_failure.run(prefix=prefix, backend=backend, log=lambda _: None, doctor=False)
    finally:
        down(prefix)  # also when the scenario failed half-way
    out = result.as_json()
    detect = result.detect_ms
    out["detect_ratio"] = None if detect is None else round(detect / CONFIGURED_MS, 3)
    return out


def markdown(rounds: list[dict[str, Any]], backend: str) -> str:
    detects = [r["detect_ms"] for r in rounds if r["detect_ms"] is not None]
    ratios = [r["detect_ratio"] for r in rounds if r["detect_ratio"] is not None]
    worst = max(ratios) if len(ratios) == len(rounds) else None
    lines = [
        f"# Backend failure under load, backend {backend}",
        "",
        f"Machine: {platform.machine()} {os.cpu_count()} CPUs, Linux {platform.release()}, Python "
        f"{platform.python_version()}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load average "
        f"{os.getloadavg()[0]:.1f}.",
        "",
        f"Checks: tcp through the data path, interval {backend_failure.INTERVAL * 1000:.0f} ms, timeout "
        f"{backend_failure.TIMEOUT * 1000:.0f} ms, fall {backend_failure.FALL}, rise {backend_failure.RISE}: "
        f"configured worst-case detection {CONFIGURED_MS:.0f} ms. {backend_failure.RATE:.0f} new "
        "connections a second through the VIP; node1's pods (one of two nodes) killed, then restarted.",
        "",
        "| round | detection | / configured | failed / requests (allowed) | node1 up again | scenario |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for i, r in enumerate(rounds, 1):
        detect = "never" if r["detect_ms"] is None else f"{r['detect_ms']:.0f} ms"
        ratio = "-" if r["detect_ratio"] is None else f"{r['detect_ratio']:.2f}"
        recover = "never" if r["recover_ms"] is None else f"{r['recover_ms']:.0f} ms"
        lines.append(
            f"| {i} | {detect} | {ratio} | {r['failed_requests']} / {r['requests']} "
            f"({r['allowed_failures']}) | {recover} | {'ok' if r['ok'] else 'FAILED'} |"
        )
    summary = f"Median detection {statistics.median(detects):.0f} ms" if detects else "No detection"
    if worst is None:
        summary += "; a round never detected the failure (target NOT met)."
    else:
        verdict = "met" if worst <= TARGET_RATIO else "NOT met"
        summary += (
            f"; worst ratio to the configured {worst:.2f} (target at most {TARGET_RATIO:.2f}: {verdict})."
        )
    return "\n".join([*lines, "", summary]) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", choices=("nftables", "ipvs"), default="nftables")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = p.parse_args()
    rounds = []
    for i in range(args.rounds):
        rounds.append(one_round(args.backend))
        print(f"round {i + 1}: {json.dumps(rounds[-1])}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"backend_failure-{args.backend}"
    stem.with_suffix(".json").write_text(
        json.dumps({"configured_ms": CONFIGURED_MS, "rounds": rounds}, indent=2) + "\n"
    )
    stem.with_suffix(".md").write_text(markdown(rounds, args.backend))
    print(stem.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
