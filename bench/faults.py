"""Fault injection: failed requests and repair time per fault, for one backend.

Runs the suite of kubelvs.lab.faults (the same one tests/faults/test_faults.py asserts):
a DR lab with a client opening a new connection through the VIP every 50 ms (100 ms in
the VM), and each fault injected in turn - kill -9 of the director and of a node agent,
damage to the kernel's tables, services, real servers and sysctls, a worker's VIP and
ARP setting, the config file rewritten in place, a real server nobody answers ARP for,
the Kubernetes API server away (the stand-in server of tests/kubernetes/apiserver.py).
Targets: 0 failed requests for every fault that does not take real servers out of the
data path; tampering repaired within 2 s.

    .venv/bin/python bench/faults.py --backend nftables                      # this machine
    scripts/vm-run -- .venv/bin/python bench/faults.py --backend ipvs        # IPVS, in the VM
Results: bench/results/faults-<backend>.json and .md. Exit 1 when a target was missed.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.faults.standin import StandInKube  # noqa: E402

from kubelvs.lab.faults import markdown, run_suite  # noqa: E402
from kubelvs.lab.topology import down  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", choices=("nftables", "ipvs"), required=True)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    p.add_argument(
        "--only", nargs="+", metavar="FAULT", help="run only these faults (kubelvs.lab.faults.FAULTS)"
    )
    p.add_argument(
        "--logs", type=Path, metavar="DIR", help="keep the lab's logs (director, agents, stream) here"
    )
    args = p.parse_args()
    prefix = f"kubelvs-bf{secrets.token_hex(3)}"
    try:
        with tempfile.TemporaryDirectory() as tmp, StandInKube(Path(tmp)) as api:
            suite = run_suite(
                args.backend,
                prefix=prefix,
                api=api,
                only=args.only,
                logs_to=args.logs,
                log=lambda line: print(line, flush=True),
            )
    finally:
        down(prefix)  # also when the runner failed half-way
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"faults-{args.backend}"
    stem.with_suffix(".json").write_text(json.dumps(suite.as_json(), indent=2) + "\n")
    report = markdown(suite)
    stem.with_suffix(".md").write_text(report)
    print(report)
    return 0 if suite.ok else 1


if __name__ == "__main__":
    sys.exit(main())
