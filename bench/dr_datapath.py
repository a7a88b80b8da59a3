"""DR data path: IPVS-DR vs nftables-DR vs direct-to-server, in ONE run (run it in the VM).

    scripts/vm-run -- .venv/bin/python bench/dr_datapath.py --out bench/results

One bridge segment: client, director (VIP on eth0), one real server (VIP on lo,
arp_ignore/arp_announce) running ``kubelvs.lab.servers http``. Three paths, same
server, same client (curl, so the client is not Python):

* ``direct``: client -> real server's own address (no director at all, baseline);
* ``ipvs-dr``: client -> VIP, director programmed by the IPVS backend;
* ``nftables-dr``: client -> VIP, director programmed by the nftables backend.

Requests/second: ``--requests`` GETs, a new TCP connection each (``Connection:
close``), one curl process. Throughput: ``--size`` bytes downloaded ``--repeat``
times. Rounds alternate the paths; medians are reported with ratios to ``direct``.
Absolute numbers under emulation (no KVM) mean little; the ratios are the result.
The server is Python, so requests/second is bounded by it on every path alike.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import platform
import secrets
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from kubelvs.backends.base import ipvs_available, open_backend  # noqa: E402
from kubelvs.lab.netlab import Lab  # noqa: E402
from kubelvs.model import DesiredState, Forward, Ownership, Protocol, RealServer, ServiceKey, VirtualService  # noqa: E402
from kubelvs.roles.director import Director  # noqa: E402

VIP = "10.0.0.200"


def build(lab: Lab) -> tuple[str, str, str]:
    client = lab.host("cl", ["10.0.0.10/24"])
    director = lab.host("dir", ["10.0.0.2/24", f"{VIP}/32"])
    rs = lab.host("rs1", ["10.0.0.11/24"])
    lab.run(rs.netns, "ip", "addr", "add", f"{VIP}/32", "dev", "lo")
    for conf in ("all", "eth0"):
        lab.sysctl(rs.netns, f"net.ipv4.conf.{conf}.arp_ignore", 1)
        lab.sysctl(rs.netns, f"net.ipv4.conf.{conf}.arp_announce", 2)
    lab.start_python(rs.netns, "kubelvs.lab.servers", "http", "--name", "rs1", "--port", "80")
    lab.wait_listening(rs.netns, 80)
    return client.netns, director.netns, rs.ip


def desired(rs_ip: str) -> DesiredState:
    key = ServiceKey(4, Protocol.TCP, ipaddress.ip_address(VIP), 80)
    svc = VirtualService(key=key, scheduler="rr").with_realservers([RealServer(ipaddress.ip_address(rs_ip), 80, 1, Forward.DR)])
    return DesiredState(services={key: svc}, ownership=Ownership(cidrs=(ipaddress.ip_network("10.0.0.0/24"),)))


def rps(lab: Lab, client: str, host: str, n: int) -> float:
    urls = [f"http://{host}/"] * n
    t = time.perf_counter()
    lab.run(client, "curl", "-s", "-o", "/dev/null", "-H", "Connection: close", "--max-time", "300", *urls, timeout=400)
    return n / (time.perf_counter() - t)


def throughput(lab: Lab, client: str, host: str, size: int, repeat: int) -> float:
    urls = [f"http://{host}/bytes/{size}"] * repeat
    t = time.perf_counter()
    lab.run(client, "curl", "-s", "-o", "/dev/null", "--max-time", "300", *urls, timeout=400)
    return size * repeat * 8 / (time.perf_counter() - t) / 1e6  # Mbit/s


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--size", type=int, default=20_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    paths = ["direct", "nftables-dr"] + (["ipvs-dr"] if ipvs_available() else [])
    results: dict[str, dict[str, list[float]]] = {p: {"rps": [], "mbit_s": []} for p in paths}
    with Lab(f"kubelvs-bench{secrets.token_hex(2)}") as lab:
        client, director_ns, rs_ip = build(lab)
        backends = {name: open_backend(name.split("-")[0], netns=director_ns) for name in paths if name != "direct"}  # type: ignore[arg-type]
        empty = DesiredState(ownership=desired(rs_ip).ownership)
        for _ in range(args.rounds):
            for path in paths:
                for name, backend in backends.items():  # exactly one data plane holds the VIP
                    Director(backend).sync(desired(rs_ip) if name == path else empty)
                host = rs_ip if path == "direct" else VIP
                results[path]["rps"].append(rps(lab, client, host, args.requests))
                results[path]["mbit_s"].append(throughput(lab, client, host, args.size, args.repeat))
                print(path, results[path]["rps"][-1], results[path]["mbit_s"][-1], flush=True)
        for backend in backends.values():
            Director(backend).sync(empty)
    med = {p: {k: statistics.median(v) for k, v in r.items()} for p, r in results.items()}
    report = {
        "benchmark": "dr_datapath",
        "kernel": platform.release(),
        "requests": args.requests,
        "bytes": args.size * args.repeat,
        "rounds": args.rounds,
        "median": med,
        "ratio_to_direct": {p: {k: med[p][k] / med["direct"][k] for k in med[p]} for p in med},
        "raw": results,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "dr_datapath.json").write_text(json.dumps(report, indent=2) + "\n")
    md = [
        "# DR data path: IPVS vs nftables vs direct (same run)",
        "",
        f"Kernel {report['kernel']} (VM, emulated CPU: read the ratios, not the absolute numbers).",
        f"{args.requests} requests (new connection each) and {args.repeat} x {args.size // 1_000_000} MB per round; "
        f"median of {args.rounds} rounds. Server: Python http.server; client: curl.",
        "",
        "| path | requests/s | ratio to direct | throughput (Mbit/s) | ratio to direct |",
        "|---|---:|---:|---:|---:|",
    ]
    for p in paths:
        r = report["ratio_to_direct"][p]  # type: ignore[index]
        md.append(f"| {p} | {med[p]['rps']:.0f} | {r['rps']:.2f} | {med[p]['mbit_s']:.0f} | {r['mbit_s']:.2f} |")
    (out / "dr_datapath.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
