"""``kubelvs doctor`` on the lab (issue 6's "done when"): nothing of severity warning or
worse on a healthy lab; on each broken scenario (its run here is the scenario's test too:
symptom reproduced, then fixed), while the symptom is there, the right finding first on
the right host - and gone once the scenario's fix is in.

The machine's kernel runs the director with the nftables backend (the doctor reads its
table from ``nft -j list ruleset``); the VM tier (``kernel_ipvs``) runs the same with IPVS,
plus rp-filter, which needs LVS-TUN.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from kubelvs.doctor import Finding, Severity
from kubelvs.lab.doctor import diagnose, lab_bundles
from kubelvs.lab.scenarios import ScenarioResult, run_scenario
from kubelvs.lab.topology import LAB_TIMEOUTS, LabSpec, build, lab_namespaces
from kubelvs.model import Forward, Timeouts

MACHINE = pytest.mark.netns
VM = pytest.mark.kernel_ipvs

HOSTS = ["dir1", "node1", "node2"]


def _serious(site: dict[str, list[Finding]]) -> dict[str, list[str]]:
    return {
        h: [f"{f.severity} {f.id}: {f.summary}" for f in fs if f.severity >= Severity.WARNING]
        for h, fs in site.items()
    }


def _healthy_lab(prefix: str, backend: str) -> None:
    running = build(LabSpec(prefix=prefix, backend=backend))
    try:
        info = running.info
        assert info.backend == backend
        bundles = lab_bundles(info)
        assert list(bundles) == HOSTS
        # The doctor is not blind: it sees the director's table, its role, the Service, the VIPs.
        director = bundles["dir1"]
        assert director.role == "director"
        assert director.services_source == ("ipvs" if backend == "ipvs" else "nftables")
        (svc,) = director.services or []
        assert str(svc.key) == "TCP 10.240.0.201:80"
        assert [(str(rs.address), rs.forward) for rs in svc.realservers] == [
            ("10.240.0.101", Forward.DR),
            ("10.240.0.102", Forward.DR),
        ]
        assert director.kube is not None and [sp.ref for sp in director.kube.ports] == ["default/whoami:web"]
        for node in ("node1", "node2"):
            assert bundles[node].role == "node"
            assert "10.240.0.201" in {
                str(a) for a in bundles[node].local_addresses
            }  # the agent put the VIP up
        if backend == "ipvs":
            # What a healthy director has that kernel defaults lack: the recommended sysctls
            # (applied by kubelvs director) and the lab config's timeouts.
            assert director.sysctl("net.ipv4.vs.expire_nodest_conn") == 1
            assert director.timeouts == Timeouts(*LAB_TIMEOUTS)
            assert director.timeouts.tcp > (director.sysctl("net.ipv4.tcp_keepalive_time") or 0)
        site = diagnose(info)
        assert _serious(site) == {h: [] for h in HOSTS}, site
        # The CLI says the same, with the doctor's exit status.
        out = subprocess.run(
            [sys.executable, "-m", "kubelvs", "lab", "doctor", "--prefix", prefix, "-o", "json"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert out.returncode == 0, out.stdout + out.stderr
        doc = json.loads(out.stdout)
        assert list(doc["hosts"]) == HOSTS
        assert all(f["severity"] == "info" for h in doc["hosts"].values() for f in h["findings"])
        # Each host's report says what it looked at: the role, and the director's data plane.
        assert doc["hosts"]["dir1"]["examined"]["role"] == "director"
        plane = "IPVS" if backend == "ipvs" else "the kubelvs nftables table"
        assert doc["hosts"]["dir1"]["examined"]["data_plane"].startswith(plane)
        assert doc["hosts"]["node1"]["examined"]["role"] == "node"
    finally:
        running.teardown()


@MACHINE
def test_healthy_lab_nothing_of_warning_or_worse(prefix: str) -> None:
    _healthy_lab(prefix, "nftables")


@VM
def test_healthy_lab_nothing_of_warning_or_worse_with_ipvs(prefix: str) -> None:
    _healthy_lab(prefix, "ipvs")


#: scenario -> hosts the doctor must blame (with the finding it must put first), and the
#: hosts it must find clean while the symptom is there.
EXPECTED = {
    "stale-realserver": ({"dir1": "stale-realserver"}, []),
    "worker-local-vip": ({"node1": "local-vip-loop"}, ["node2"]),
    # arp_ignore=0 is the cause of the ARP answers (error); arp_announce=0 is reported after it.
    "dr-arp": ({"node1": "dr-arp-ignore", "node2": "dr-arp-ignore"}, ["dir1"]),
    "rp-filter": ({"node1": "rp-filter-strict", "node2": "rp-filter-strict"}, []),
}
#: scenario -> findings the doctor must report on a host too (after the first).
ALSO = {"dr-arp": {"node1": "vip-arp-conflict", "node2": "vip-arp-conflict"}}


def _check_scenario(name: str, prefix: str, backend: str) -> None:
    result = run_scenario(name, prefix=prefix, backend=backend)
    assert isinstance(result, ScenarioResult)  # these scenarios report a before and an after phase
    assert result.backend == backend
    assert result.ok, result.render()
    assert result.before.expected, result.render()  # the symptom was reproduced ...
    assert result.after is not None and result.after.expected, result.render()  # ... and fixed
    blamed, clean = EXPECTED[name]
    before = result.before.doctor
    for host, fid in blamed.items():
        findings = before[host]
        assert findings and findings[0]["id"] == fid, result.render()
        # ordered as the doctor promises: by severity, worst first
        ranks = [int(Severity[f["severity"].upper()]) for f in findings]
        assert ranks == sorted(ranks, reverse=True)
    for host, fid in ALSO.get(name, {}).items():
        assert fid in [f["id"] for f in before[host]], result.render()
    for host in clean:
        assert not [f for f in before[host] if f["severity"] != "info"], result.render()
    assert result.after is not None
    for findings in result.after.doctor.values():  # the fix removed it, and left nothing else
        assert not [f for f in findings if f["severity"] != "info"], result.render()
    assert set(result.after.doctor) >= set(blamed)
    assert lab_namespaces(prefix) == []


@MACHINE
@pytest.mark.parametrize("name", ["stale-realserver", "worker-local-vip", "dr-arp"])
def test_scenario_doctor_names_the_cause_first(name: str, prefix: str) -> None:
    _check_scenario(name, prefix, "nftables")


@VM
@pytest.mark.parametrize("name", ["stale-realserver", "worker-local-vip", "dr-arp", "rp-filter"])
def test_scenario_doctor_names_the_cause_first_with_ipvs(name: str, prefix: str) -> None:
    _check_scenario(name, prefix, "ipvs")


@MACHINE
def test_scenario_cli_prints_the_doctors_first_finding(prefix: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "kubelvs", "lab", "scenario", "worker-local-vip", "--prefix", prefix],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    before, after = out.stdout.split("\nAFTER: ")
    assert (
        "doctor on node1: [error] local-vip-loop: DR real server without VIP 10.240.0.201 "
        "has accept_local=1 on eth0" in before
    )
    assert "doctor on node1: nothing of severity warning or worse" in after
    off = subprocess.run(
        [
            sys.executable,
            "-m",
            "kubelvs",
            "lab",
            "scenario",
            "stale-realserver",
            "--prefix",
            prefix,
            "--no-doctor",
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert off.returncode == 0, off.stdout + off.stderr
    doc = json.loads(off.stdout)
    assert doc["before"]["doctor"] == {} and doc["after"]["doctor"] == {}
