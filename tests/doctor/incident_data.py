"""The TIME_WAIT incident reported counts, not the table: `ipvsadm -lnc | wc -l` = 23776
and 10003 of them TIME_WAIT. ``write_incident_timewait_table`` writes a table with exactly those
counts (2 header lines + 23774 entries) in ipvsadm 1.31's -Lnc layout, so the finding the
incident's author arrived at can be checked against the numbers he saw. Deterministic."""

from __future__ import annotations

import random
from pathlib import Path

INCIDENT_LINES = 23776
INCIDENT_TIME_WAIT = 10003


def incident_timewait_rows() -> list[str]:
    rng = random.Random(20181206)
    entries = INCIDENT_LINES - 2
    states = (
        ["TIME_WAIT"] * INCIDENT_TIME_WAIT
        + ["FIN_WAIT"] * 900
        + ["CLOSE_WAIT"] * 120
        + ["SYN_RECV"] * 40
        + ["ESTABLISHED"] * (entries - INCIDENT_TIME_WAIT - 900 - 120 - 40)
    )
    rng.shuffle(states)
    vips = [
        f"10.{96 + i % 16}.{i * 7 % 256}.{i * 13 % 250 + 1}:{[80, 6379, 3306, 443][i % 4]}" for i in range(60)
    ]
    rows = []
    for n, state in enumerate(states):
        vip = vips[n % len(vips)]
        port = vip.rsplit(":", 1)[1]
        dest = f"172.26.{n % 40}.{(n // 40) % 250 + 1}:{port}"
        client = f"192.168.{rng.randrange(1, 60)}.{rng.randrange(1, 254)}:{rng.randrange(1024, 65535)}"
        expire = {
            "TIME_WAIT": rng.randrange(0, 120),
            "FIN_WAIT": rng.randrange(0, 120),
            "SYN_RECV": rng.randrange(0, 60),
            "CLOSE_WAIT": rng.randrange(0, 60),
        }.get(state, rng.randrange(0, 900))
        rows.append(f"TCP {expire // 60:02d}:{expire % 60:02d}  {state:<11} {client:<21} {vip:<21} {dest}")
    return rows


def write_incident_timewait_table(path: Path) -> None:
    head = [
        "IPVS connection entries",
        "pro expire state       source             virtual            destination",
    ]
    path.write_text("\n".join(head + incident_timewait_rows()) + "\n")
