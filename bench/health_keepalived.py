"""kubelvs' health checks beside keepalived's, on the same lab, the same failure, the same run.

    scripts/vm-run -- .venv/bin/python bench/health_keepalived.py --out bench/results

IPVS (keepalived programs IPVS only), so in the VM tier. A DR lab (one director, three
nodes); every node runs a TCP server on port 10256 (as kube-proxy's health port). Two
rounds, alternating, of each:

- ``kubelvs director`` with ``health_defaults: {kind: tcp, port: 10256, interval: 1,
  timeout: 1, fall: 3, rise: 2}``;
- keepalived (Debian's package) with the equivalent ``TCP_CHECK`` on each real server:
  ``connect_port 10256``, ``delay_loop 1``, ``connect_timeout 1``, ``retry 2``,
  ``delay_before_retry 1`` (1 + 2 attempts: three failures in a row), ``inhibit_on_failure``.

Then node1's health server is stopped and the kernel's table is polled (``ipvsadm -Ln``):
the detection time is from the stop to node1's weight 0. The probe load is the number of
TCP SYNs the nodes' health port received per second (an nftables counter on each node).
Reported side by side, and as kubelvs / keepalived ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from kubelvs.lab.topology import LabSpec, RunningLab, build, down

PREFIX = "kubelvs-benchka"
VIP = "10.240.0.201"
HEALTH_PORT = 10256
COUNTER = (
    "table inet kubelvs_bench { counter syns { }\n"
    " chain in { type filter hook input priority 0; tcp dport 10256 tcp flags syn counter name syns; }\n}\n"
)


def keepalived_conf(nodes: list[str]) -> str:
    real = "".join(
        f"""    real_server {ip} 80 {{
        weight 1
        inhibit_on_failure
        TCP_CHECK {{
            connect_port {HEALTH_PORT}
            connect_timeout 1
            retry 2
            delay_before_retry 1
        }}
    }}
"""
        for ip in nodes
    )
    return f"""global_defs {{
    router_id kubelvs_bench
}}
virtual_server {VIP} 80 {{
    delay_loop 1
    lvs_sched rr
    lvs_method DR
    protocol TCP
{real}}}
"""


def weight_of(running: RunningLab, node_ip: str) -> int | None:
    out = running.run("dir1", "ipvsadm", "-Ln").stdout
    m = re.search(rf"->\s+{re.escape(node_ip)}:80\s+\S+\s+(\d+)", out)
    return int(m.group(1)) if m else None


def syns(running: RunningLab) -> int:
    total = 0
    for node in running.info.nodes:
        out = running.lab.run(
            node.netns, "nft", "-j", "list", "counter", "inet", "kubelvs_bench", "syns"
        ).stdout
        total += int(json.loads(out)["nftables"][1]["counter"]["packets"])
    return total


def one_round(checker: str, tmp: Path) -> dict[str, Any]:
    spec = LabSpec(
        prefix=PREFIX,
        topology="dr",
        backend="ipvs",
        nodes=3,
        director=False,
        health=f"{{kind: tcp, port: {HEALTH_PORT}, interval: 1, timeout: 1, fall: 3, rise: 2}}",
    )
    down(PREFIX)
    running = build(spec)
    info = running.info
    proc = None
    try:
        health = {}
        for node in info.nodes:
            running.lab.run(node.netns, "nft", "-f", "-", input=COUNTER)
            health[node.name] = running.lab.start_python(
                node.netns, "kubelvs.lab.servers", "http", "--name", node.name, "--port", str(HEALTH_PORT)
            )
            running.lab.wait_listening(node.netns, HEALTH_PORT, timeout=600)
        if checker == "kubelvs":
            running.start_director("dir1")
            running.wait_director("dir1")
        else:
            conf = tmp / "keepalived.conf"
            conf.write_text(keepalived_conf([n.ip for n in info.nodes]))
            proc = running.lab.start(
                info.directors["dir1"],
                "keepalived",
                "-n",
                "-l",
                "-D",
                "-f",
                str(conf),
                "-p",
                str(tmp / "keepalived.pid"),
                "-c",
                str(tmp / "checkers.pid"),
                "-r",
                str(tmp / "vrrp.pid"),
                log=tmp / "keepalived.log",
            )
        node1 = next(n for n in info.nodes if n.name == "node1")
        deadline = time.monotonic() + 600
        while weight_of(running, node1.ip) != 1:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{checker}: node1 never programmed with weight 1")
            time.sleep(0.2)
        time.sleep(5)  # steady probing
        s0, t0 = syns(running), time.monotonic()
        time.sleep(20)
        rate = (syns(running) - s0) / (time.monotonic() - t0)
        running.lab.stop(health["node1"])
        stopped = time.monotonic()
        detected = None
        while time.monotonic() - stopped < 120:
            if weight_of(running, node1.ip) == 0:
                detected = time.monotonic() - stopped
                break
            time.sleep(0.05)
        return {
            "checker": checker,
            "detect_s": None if detected is None else round(detected, 2),
            "syns_per_second": round(rate, 2),
        }
    finally:
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)  # ours, by its PID
        running.teardown()
        down(PREFIX)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    tmp = args.out / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    rounds = []
    for i in range(args.rounds):
        for checker in ("kubelvs", "keepalived") if i % 2 == 0 else ("keepalived", "kubelvs"):
            rounds.append(one_round(checker, tmp))
            print(rounds[-1], flush=True)

    def median(checker: str, key: str) -> float:
        return float(
            statistics.median(r[key] for r in rounds if r["checker"] == checker and r[key] is not None)
        )

    summary = {
        c: {"detect_s": median(c, "detect_s"), "syns_per_second": median(c, "syns_per_second")}
        for c in ("kubelvs", "keepalived")
    }
    ratios = {
        "detect": round(summary["kubelvs"]["detect_s"] / summary["keepalived"]["detect_s"], 2),
        "probe_load": round(
            summary["kubelvs"]["syns_per_second"] / summary["keepalived"]["syns_per_second"], 2
        ),
    }
    doc = {
        "rounds": rounds,
        "median": summary,
        "ratio_kubelvs_to_keepalived": ratios,
        "machine": f"{platform.machine()} (VM: {platform.release()})",
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    (args.out / "health_keepalived.json").write_text(json.dumps(doc, indent=2) + "\n")
    md = [
        "# Health checks: kubelvs beside keepalived (IPVS, the same lab, the same failure)",
        "",
        f"{doc['when']}, {doc['machine']}, emulated CPU: compare the ratios, not the absolute times. "
        "Both check each of 3 nodes' TCP port 10256 every 1 s with a 1 s timeout and go down after 3 "
        "failures in a row (keepalived: `delay_loop 1`, `connect_timeout 1`, `retry 2`, "
        "`delay_before_retry 1`, `inhibit_on_failure`); node1's server is stopped; detection is until "
        "`ipvsadm -Ln` shows its weight 0. Probe load: SYNs the nodes' health port received per second.",
        "",
        "| checker | detection (median) | probe SYNs/s (median) |",
        "| --- | --- | --- |",
        f"| kubelvs | {summary['kubelvs']['detect_s']} s | {summary['kubelvs']['syns_per_second']} |",
        f"| keepalived | {summary['keepalived']['detect_s']} s "
        f"| {summary['keepalived']['syns_per_second']} |",
        f"| ratio kubelvs / keepalived | {ratios['detect']} | {ratios['probe_load']} |",
        "",
        "Rounds: "
        + "; ".join(f"{r['checker']} {r['detect_s']} s, {r['syns_per_second']} SYN/s" for r in rounds),
    ]
    (args.out / "health_keepalived.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
