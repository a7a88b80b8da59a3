"""``kubelvs demo`` and the incidents' scenarios, end to end with real TCP connections.

The machine's kernel runs them with the nftables backend (``netns``); the VM tier
(``kernel_ipvs``) runs the same with IPVS, plus the scenarios that need ipip.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from typing import Any

import pytest

from kubelvs.lab.demo import DemoResult, run_demo
from kubelvs.lab.scenarios import SCENARIOS
from kubelvs.lab.topology import LabSpec, lab_namespaces

from .conftest import root_links

MACHINE = pytest.mark.netns
VM = pytest.mark.kernel_ipvs
#: nftables on the machine's kernel, IPVS in the VM tier.
BOTH_BACKENDS = [pytest.param("nftables", marks=MACHINE), pytest.param("ipvs", marks=VM)]


def _kubelvs(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kubelvs", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def _scenario(name: str, backend: str, prefix: str, *, timeout: float) -> dict[str, Any]:
    """``kubelvs lab scenario NAME -o json`` on ``backend``: its JSON, once it exited 0."""
    result = _kubelvs(
        "lab", "scenario", name, "--prefix", prefix, "--backend", backend, "-o", "json", timeout=timeout
    )
    doc: dict[str, Any] = json.loads(result.stdout)
    assert result.returncode == 0, json.dumps(doc, indent=1)
    assert doc["ok"] and doc["backend"] == backend
    return doc


@MACHINE
def test_demo_json_spreads_over_every_pod_and_proves_dr(prefix: str) -> None:
    links = root_links()
    result = _kubelvs("demo", "--prefix", prefix, "-n", "40", "-o", "json")  # 40: see DemoResult.ok
    assert result.returncode == 0, result.stdout + result.stderr
    doc = json.loads(result.stdout)
    assert doc["requests"] == doc["succeeded"] == 40
    assert set(doc["by_node"]) == {"node1", "node2"}
    assert set(doc["by_pod"]) == {"whoami-node1-1", "whoami-node1-2", "whoami-node2-1", "whoami-node2-2"}
    assert sum(doc["by_pod"].values()) == sum(doc["by_node"].values()) == 40
    assert doc["replies_via_director"] == 0  # DR: no reply crossed the director ...
    assert doc["requests_via_director"] >= 40 * 3  # ... while every request did (SYN, ACK, GET, ACK, FIN)
    assert doc["backend"] == "nftables"
    # kubelvs top over the requests: the director's own counters agree with the client's.
    (vip,) = doc["top"]["services"]
    assert (vip["what"], vip["name"]) == ("TCP 10.240.0.201:80", "whoami")
    window = doc["top"]["seconds"]  # rounded to the ms: a few % on a window of 40 ms
    assert vip["in_packets_per_s"] * window == pytest.approx(doc["requests_via_director"], rel=0.1)
    assert {rs["what"] for rs in vip["realservers"] if rs["in_packets_per_s"] > 0} == {
        "10.240.0.101:80",
        "10.240.0.102:80",
    }
    # kubelvs lab explain of the last request: the slot nftables hashed it to is the node
    # whose pod answered (by_node counts it; a lone request's node is checked below).
    (explained,) = doc["explain"]["directors"].values()
    assert explained["prediction"]["predictable"] and explained["entry"] is None  # DR: no state
    assert explained["realserver"] in ("10.240.0.101:80", "10.240.0.102:80")
    assert lab_namespaces(prefix) == [] and root_links() == links  # the demo took its lab down


@MACHINE
def test_demo_text_shows_the_curl_table(prefix: str) -> None:
    result = _kubelvs("demo", "--prefix", prefix, "-n", "12", "--pods", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "$ curl http://10.240.0.201   x12, from the client 10.240.0.10" in result.stdout
    assert "DR: every reply bypassed the director" in result.stdout
    rows = [
        line
        for line in result.stdout.splitlines()
        if re.match(r"^\s+\d+\s+whoami-node\d-1\s+node\d\s+10\.230\.", line)
    ]
    assert len(rows) == 12  # one row per curl: pod, node, RemoteAddr
    assert "$ kubelvs top --once   (the director, over the requests)" in result.stdout
    assert re.search(r"^TCP 10\.240\.0\.201:80\s+whoami\s+-\s+\S+", result.stdout, re.MULTILINE)


@MACHINE
def test_nat_replies_do_cross_the_director_so_the_counter_is_not_blind(prefix: str) -> None:
    result = run_demo(LabSpec(prefix=prefix, topology="nat"), 12)
    assert result.succeeded == 12
    assert result.replies_via_director > 0
    assert {a["client"].split(":")[0] for a in result.answers} == {"192.168.58.36"}  # no SNAT in NAT mode
    assert result.ok


def _explained_where_answered(result: DemoResult) -> None:
    """The demo's explain names the node whose pod answered its last request, on every
    director, and the directors agree."""
    node = [a for a in result.answers if a["ok"]][-1]["node"]
    assert result.explain is not None and result.explain["agree"] is True, result.explain
    for doc in result.explain["directors"].values():
        assert doc["realserver"] == f"10.240.0.10{node[-1]}:80", doc


@MACHINE
def test_two_directors_behind_an_ecmp_router(prefix: str) -> None:
    result = run_demo(LabSpec(prefix=prefix, router=True, directors=2), 40)
    assert result.ok, result.as_json()
    assert result.replies_via_director == 0
    assert result.explain is not None and len(result.explain["directors"]) == 2
    _explained_where_answered(result)


@VM
def test_demo_with_ipvs(prefix: str) -> None:
    result = run_demo(LabSpec(prefix=prefix, backend="ipvs"), 40)
    assert result.backend == "ipvs"
    assert result.ok, result.as_json()
    # rr: no prediction; the flow's own IPVS connection entry says where it went.
    _explained_where_answered(result)
    (doc,) = result.explain["directors"].values()  # type: ignore[index]
    assert doc["entry"]["kind"] == "connection" and not doc["prediction"]["predictable"]


@VM
def test_tun_demo_with_ipvs(prefix: str) -> None:
    result = run_demo(LabSpec(prefix=prefix, topology="tun", backend="ipvs"), 40)
    assert result.ok, result.as_json()


@VM
def test_tun_demo_with_nftables(prefix: str) -> None:
    result = run_demo(LabSpec(prefix=prefix, topology="tun", backend="nftables"), 40)
    assert result.backend == "nftables"
    assert result.ok, result.as_json()
    assert result.replies_via_director == 0


def test_scenario_list() -> None:
    result = _kubelvs("lab", "scenario", "--list")
    assert result.returncode == 0
    names = [line.split()[0] for line in result.stdout.splitlines()]
    assert names == [
        "backend-failure",
        "director-failover",
        "director-loss",
        "stale-realserver",
        "worker-local-vip",
        "dr-arp",
        "rp-filter",
    ]
    assert list(SCENARIOS) == names


@MACHINE
def test_scenario_cli_exit_code_and_json(prefix: str) -> None:
    result = _kubelvs("lab", "scenario", "stale-realserver", "--prefix", prefix, "-o", "json")
    assert result.returncode == 0, result.stdout + result.stderr
    doc = json.loads(result.stdout)
    assert (
        doc["ok"]
        and doc["before"]["facts"]["succeeded"] == "10/20"
        and doc["after"]["facts"]["succeeded"] == "20/20"
    )
    assert doc["before"]["facts"]["errors"] == ["connection refused"]
    bad = _kubelvs("lab", "scenario", "no-such-thing")
    assert bad.returncode == 2 and "is not one of" in bad.stderr


@pytest.mark.parametrize("backend", BOTH_BACKENDS)
def test_backend_failure_is_detected_in_time_and_recovered(backend: str, prefix: str) -> None:
    doc = _scenario("backend-failure", backend, prefix, timeout=900)
    assert set(doc) >= {
        "detect_ms",
        "recover_ms",
        "failed_requests",
        "requests",
        "probe_interval_ms",
        "fall",
        "rise",
    }
    bound = doc["fall"] * doc["probe_interval_ms"] + 300 + 500  # fall x interval + timeout (+ 500 ms)
    assert 0 < doc["detect_ms"] <= bound
    assert doc["programmed_ms"] >= doc["detect_ms"]
    assert (
        doc["requests"] >= 20 * 5 and doc["failed_after_detection"] == 0 and doc["node1_after_recovery"] > 0
    )
    assert lab_namespaces(prefix) == []


@pytest.mark.parametrize("backend", BOTH_BACKENDS)
def test_director_failover_keeps_established_flows(backend: str, prefix: str) -> None:
    """The VRRP pair: the master dies (link down, SIGKILL), the backup takes the VIP
    within the target, no established connection breaks, nor on the failback (IPVS: with
    the connection sync daemons both ways; nftables: stateless)."""
    doc = _scenario("director-failover", backend, prefix, timeout=900)
    assert set(doc) >= {"gap_ms", "new_failed", "established_total", "established_broken", "failback_broken"}
    assert doc["gap_ms"] < 1500
    if backend == "nftables":
        # The death was real: new connections stopped until the backup's master-down
        # timer (3 adverts of 100 ms and a skew, counted from the last advert, which came
        # up to 100 ms before the death: 249 ms was seen); otherwise the next one would
        # pass within 50 ms. Not in the VM: under its emulated CPU, adverts come late and
        # the backup may have taken over before the kill (162 ms was seen there).
        assert doc["gap_ms"] >= 150
    assert doc["established_total"] == 50 and doc["established_broken"] == doc["failback_broken"] == 0
    assert doc["established_answering_at_end"] == 50  # every one still answered after the failback
    # Traffic ran throughout: new connections at 20/s over the ~8 s of the run.
    assert doc["new_total"] >= 100 and doc["new_failed"] < doc["new_total"] / 4
    assert doc["failback_ms"] is not None
    assert lab_namespaces(prefix) == []


@pytest.mark.parametrize("backend", BOTH_BACKENDS)
def test_director_loss_breaks_no_flow_with_mh_and_some_without(backend: str, prefix: str) -> None:
    """Three BGP ECMP directors, one dies: with mh on every director (IPVS: sloppy_tcp) none
    of 100 long-lived connections breaks; the control (IPVS: rr without sloppy_tcp;
    nftables: one director's table lacks a node) breaks some, so breakage is seen."""
    doc = _scenario("director-loss", backend, prefix, timeout=1800)
    assert set(doc["mh"]) >= {"total", "broken", "reconverge_ms"} and set(doc["control"]) >= {
        "total",
        "broken",
        "how",
    }
    assert doc["mh"]["total"] == doc["control"]["total"] == 100
    assert doc["mh"]["broken"] == 0 < doc["control"]["broken"]
    assert set(doc["control"]["by_reason"]) == {"connection reset"}  # the node had no such connection
    # BFD: 3 x 100 ms on this machine's kernel. Under the VM's emulated CPU the 100 ms
    # timers slip towards bird's 3 s hold time, plus the lab's polling of the router
    # (docs/ha.md): 4.1 s and 5.1 s were seen there; the target is held on the machine.
    assert 0 < doc["mh"]["reconverge_ms"] < (5000 if backend == "nftables" else 10000)
    assert lab_namespaces(prefix) == []


@pytest.mark.parametrize("backend", BOTH_BACKENDS)
def test_dual_stack_demo_proves_dr_over_both_families(prefix: str, backend: str) -> None:
    """``kubelvs demo --ip-family dual``: requests to the Service's IPv4 and IPv6 VIPs, each
    family spread over both nodes' pods and answered around the director."""
    result = _kubelvs(
        "demo", "--ip-family", "dual", "--backend", backend, "--prefix", prefix, "-n", "40", "-o", "json"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    doc = json.loads(result.stdout)
    assert doc["ok"] and doc["ip_family"] == "dual" and doc["backend"] == backend
    v4, v6 = doc, doc["ipv6"]
    assert (v4["vip"], v6["vip"]) == ("10.240.0.201", "fd00:240::201")
    assert (v4["client"], v6["client"]) == ("10.240.0.10", "fd00:240::10")
    for family in (v4, v6):
        assert family["requests"] == family["succeeded"] == 40
        assert set(family["by_node"]) == {"node1", "node2"}
        assert family["replies_via_director"] == 0  # DR: no reply crossed the director ...
        assert family["requests_via_director"] >= 40 * 3  # ... while every request did
    (v6_service,) = [s for s in v6["top"]["services"] if s["what"] == "TCP [fd00:240::201]:80"]
    assert v6_service["name"] == "whoami-v6"
    if backend == "nftables":  # IPVS folds its counters every 2 s: not within the demo's window
        assert {rs["what"] for rs in v6_service["realservers"] if rs["in_packets_per_s"] > 0} == {
            "[fd00:240::101]:80",
            "[fd00:240::102]:80",
        }
    assert lab_namespaces(prefix) == []
