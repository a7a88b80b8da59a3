"""The fault-injection suite (kubelvs.lab.faults) in a DR lab with real traffic: every
fault is injected while a client opens a new connection through the VIP every 50 ms
(100 ms in the VM), and the targets are asserted per fault: no failed request unless
the fault takes real servers out of the data path, tampering repaired within 2 s, the
fault's own conditions (a restarted process synced, a new service programmed, nothing
changed by a half-written config or an API outage). bench/faults.py runs the same suite
and commits its figures.

nftables on the machine's kernel (tier 1): every fault. IPVS in the VM (``kernel_ipvs``,
tier 2): the faults whose outcome depends on the backend. The VM emulates its CPU: a
Python start-up takes minutes there, so the two faults that only start processes whose
behaviour does not depend on the backend (the node agent's restart, the Kubernetes
director of the API server's outage) run on the machine only, and a repair may take up
to VM_TIME_SCALE times the target (bench/results/faults-ipvs.md reports the plain one).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest

from kubelvs.lab.faults import FAULTS, markdown, run_suite
from kubelvs.lab.topology import down, lab_namespaces

from .standin import StandInKube

BACKENDS = [
    pytest.param("nftables", marks=pytest.mark.netns, id="nftables"),
    pytest.param("ipvs", marks=pytest.mark.kernel_ipvs, id="ipvs"),
]
#: Faults left out of the VM run (see the module docstring).
MACHINE_ONLY = ("agent-kill", "api-outage")
VM_TIME_SCALE = 3.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_fault_is_survived_and_repaired(backend: str, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    in_vm = backend == "ipvs"
    names = [f.name for f in FAULTS if backend in f.backends and not (in_vm and f.name in MACHINE_ONLY)]
    prefix = f"kubelvs-t{secrets.token_hex(3)}"
    try:
        with StandInKube(tmp_path) as api:
            suite = run_suite(backend, prefix=prefix, api=api, only=names, log=print)
    finally:
        down(prefix)  # also when the runner itself failed half-way
    assert not lab_namespaces(prefix)
    report = markdown(suite)
    print(report)
    assert [r.fault for r in suite.results] == names
    assert suite.baseline_requests > 0 and suite.baseline_failed == 0, report
    assert not suite.tracebacks, report
    for result in suite.results:
        assert result.requests > 0, f"{result.fault}: no request ended during the fault\n{report}"
        assert result.meets(VM_TIME_SCALE if in_vm else 1.0), f"{result.fault}: target missed\n{report}"
