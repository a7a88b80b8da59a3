"""HA figures (`make bench-ha`): the director-failover (VRRP pair) and director-loss (BGP
ECMP) scenarios, several rounds on one backend, each on a fresh lab.

Per round: the VRRP gap for new connections, established connections broken on
failover and failback; the BGP reconvergence (BFD) and connections broken with ``mh``
and in the control run (which must break some: the measurement sees breakage).
Ratios: the gap to VRRP's own master-down interval (3 adverts and the skew: the least
any VRRP takeover can take), the reconvergence to BFD's detection time (3 x 100 ms).
Results: bench/results/ha-<backend>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from kubelvs.lab.scenarios import director_failover, director_loss
from kubelvs.lab.spec import BFD_INTERVAL, VRRP_ADVERT, vrrp_priority

#: RFC 5798: Master_Down_Interval = 3 x Advertisement_Interval + Skew_Time, with
#: Skew_Time = (256 - Priority) x Advertisement_Interval / 256 (the backup's priority).
MASTER_DOWN_MS = (3 * VRRP_ADVERT + (256 - vrrp_priority("dir2")) * VRRP_ADVERT / 256) * 1000
BFD_DETECT_MS = 3 * BFD_INTERVAL * 1000


def rounds(backend: str, count: int) -> dict[str, Any]:
    failover, loss = [], []
    for i in range(count):
        f = director_failover.run(prefix=f"kubelvs-bha{i}", backend=backend, log=lambda _: None)
        failover.append(f.as_json())
        g = director_loss.run(prefix=f"kubelvs-bhl{i}", backend=backend, log=lambda _: None)
        loss.append(g.as_json())
    return {"failover": failover, "loss": loss}


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(statistics.median(known), 1) if known else None


def markdown(doc: dict[str, Any]) -> str:
    f, g = doc["failover"], doc["loss"]
    gap = _median([r["gap_ms"] for r in f])
    reconverge = _median([r["mh"]["reconverge_ms"] for r in g])
    lines = [
        f"# HA: VRRP pair and BGP ECMP directors, backend {doc['backend']}",
        "",
        f"Kernel {doc['kernel']}; {doc['when']}; {len(f)} rounds, each on a fresh lab "
        "(docs/lab.md: director-failover, director-loss).",
        "",
        "## VRRP pair (adverts every 100 ms): the master dies under load",
        "",
        "| round | gap for new connections (ms) | VIP on the backup after (ms) | new connections failed | "
        "established broken: failover / failback (of 50) |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for i, r in enumerate(f, 1):
        lines.append(
            f"| {i} | {r['gap_ms']} | {r['takeover_ms']} | {r['new_failed']} of {r['new_total']} | "
            f"{r['established_broken']} / {r['failback_broken']} |"
        )
    ratio = f"{gap / MASTER_DOWN_MS:.2f}" if gap is not None else "-"
    lines += [
        "",
        f"Median gap {gap} ms: {ratio}x VRRP's master-down interval ({MASTER_DOWN_MS:.0f} ms). "
        "Target: under 1,500 ms, 0 established connections broken.",
        "",
        "## BGP ECMP, 3 directors (BFD 3 x 100 ms): one dies under load (100 long-lived connections)",
        "",
        "| round | router without it after (ms) | broken with mh | broken in the control | control |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for i, r in enumerate(g, 1):
        lines.append(
            f"| {i} | {r['mh']['reconverge_ms']} | {r['mh']['broken']} of {r['mh']['total']} | "
            f"{r['control']['broken']} of {r['control']['total']} | {r['control']['how']} |"
        )
    ratio = f"{reconverge / BFD_DETECT_MS:.2f}" if reconverge is not None else "-"
    lines += [
        "",
        f"Median reconvergence {reconverge} ms: {ratio}x BFD's detection time ({BFD_DETECT_MS:.0f} ms). "
        "Target: under 1,000 ms, 0 connections broken with mh (the control must break some).",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("nftables", "ipvs"), default="nftables")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    doc = {
        "backend": args.backend,
        "kernel": platform.release(),
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        **rounds(args.backend, args.rounds),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"ha-{args.backend}.json").write_text(json.dumps(doc, indent=1) + "\n")
    (args.out / f"ha-{args.backend}.md").write_text(markdown(doc))
    sys.stdout.write(markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
