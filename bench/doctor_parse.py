"""Parse speed of the doctor's big inputs: a 1,000,000-row ``ipvsadm -Lnc`` (and the same
table as /proc/net/ip_vs_conn), plus the connection-table checks over it.

Baseline, measured in the same run: reading the lines and ``str.split``-ing each one,
the least any parser must do. Results go to ``--out`` as doctor_parse.json and .md.

    .venv/bin/python bench/doctor_parse.py --rows 1000000 --out bench/results
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

from kubelvs.doctor import Bundle, analyse
from kubelvs.formats.ipvs_conn import ConnTable, format_proc_conn, parse_conn_list, parse_proc_conn

STATES = ["ESTABLISHED"] * 5 + ["TIME_WAIT"] * 3 + ["FIN_WAIT", "SYN_RECV", "CLOSE_WAIT"]


def make_table(rows: int) -> ConnTable:
    rng = random.Random(7)
    out = []
    for i in range(rows):
        vip = f"10.96.{i % 50}.{i % 200 + 1}:{80 + i % 3}"
        out.append(
            (
                "TCP",
                rng.randrange(0, 900),
                STATES[i % len(STATES)],
                f"192.168.{rng.randrange(256)}.{rng.randrange(1, 255)}:{rng.randrange(1024, 65536)}",
                vip,
                f"172.26.{i % 250}.{i % 97 + 1}:{8080 + i % 3}",
            )
        )
    return ConnTable(rows=out)


def lnc_text(table: ConnTable) -> str:
    lines = [
        "IPVS connection entries",
        "pro expire state       source             virtual            destination",
    ]
    for p, e, s, c, v, d in table.rows:
        lines.append(f"{p} {e // 60:02d}:{e % 60:02d}  {s:<11} {c:<21} {v:<21} {d}")
    return "\n".join(lines) + "\n"


def best_of(n: int, fn) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(n):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args()
    table = make_table(args.rows)
    text = lnc_text(table)
    proc = format_proc_conn(table)

    def baseline() -> None:
        for line in text.splitlines():
            line.split()

    parsed = parse_conn_list(text)
    assert len(parsed.rows) == args.rows and parsed.problems == []
    bundle_texts = {"ipvsadm-Lnc.txt": text, "ipvsadm-timeout.txt": "Timeout (tcp tcpfin udp): 900 120 300\n"}
    results = {
        "baseline_split": best_of(args.repeat, baseline),
        "parse_lnc": best_of(args.repeat, lambda: parse_conn_list(text)),
        "parse_proc_conn": best_of(args.repeat, lambda: parse_proc_conn(proc)),
        "analyse_bundle_lnc": best_of(args.repeat, lambda: analyse(Bundle(bundle_texts))),
    }
    base = results["baseline_split"]
    report = {
        "rows": args.rows,
        "bytes_lnc": len(text),
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "seconds": results,
        "ratio_to_baseline": {k: round(v / base, 2) for k, v in results.items()},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "doctor_parse.json").write_text(json.dumps(report, indent=2) + "\n")
    md = [
        f"# doctor parse benchmark ({args.rows:,} connection rows, best of {args.repeat})",
        "",
        "| step | seconds | x baseline |",
        "|---|---:|---:|",
    ]
    for k, v in results.items():
        md.append(f"| {k} | {v:.3f} | {v / base:.2f} |")
    md += [
        "",
        "baseline_split: splitlines + str.split of every line (the least any parser does).",
        "analyse_bundle_lnc: parse + every check over a bundle holding the table and the timeouts.",
    ]
    (out / "doctor_parse.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
