"""``kubelvs lab up|status|exec|down`` as a user runs them (separate processes), and
that ``down`` leaves nothing behind - also after the building process was killed."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kubelvs.lab.netlab import LabError
from kubelvs.lab.topology import (
    LabSpec,
    NodeInfo,
    PodInfo,
    build,
    director_config,
    lab_namespaces,
    load_info,
    proxy_ruleset,
    state_dir,
)
from kubelvs.sources.config import parse_config, parse_yaml, to_desired

from .conftest import alive, root_links

pytestmark = pytest.mark.netns

KUBELVS = [sys.executable, "-m", "kubelvs"]


def _kubelvs(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*KUBELVS, *args], capture_output=True, text=True, timeout=timeout, check=False)


def test_up_status_exec_down_leave_nothing_behind(prefix: str) -> None:
    links_before = root_links()
    up = _kubelvs("lab", "up", "--prefix", prefix)
    assert up.returncode == 0, up.stderr
    info = load_info(prefix)
    assert info.backend == "nftables" or info.backend == "ipvs"
    # Every namespace carries the prefix; pods sit behind their node.
    assert set(lab_namespaces(prefix)) == set(info.namespaces)
    assert {
        f"{prefix}-{r}" for r in ("sw", "client", "dir1", "node1", "node2", "node1-pod1", "node2-pod2")
    } <= set(info.namespaces)
    pids = dict(info.pids)
    assert len(pids) == 4 + 2 + 1  # 4 pods, 2 node agents, 1 director
    assert all(alive(p) for p in pids.values())

    status = _kubelvs("lab", "status", "--prefix", prefix, "-o", "json")
    assert status.returncode == 0, status.stdout + status.stderr
    doc = json.loads(status.stdout)
    assert all(doc["processes"].values()) and not doc["missing"]

    # exec: a request from the client through the director, answered by a pod.
    probe = _kubelvs(
        "lab",
        "exec",
        "--prefix",
        prefix,
        "client",
        "--",
        sys.executable,
        "-m",
        "kubelvs.lab.servers",
        "probe",
        "--target",
        "10.240.0.201:80",
        "--count",
        "8",
    )
    assert probe.returncode == 0, probe.stderr
    answers = [json.loads(line) for line in probe.stdout.splitlines()]
    assert {a["server"] for a in answers} <= set(info.pod_node()) and len(answers) == 8
    # The node agent put the VIP on node1's lo.
    lo = _kubelvs("lab", "exec", "--prefix", prefix, "node1", "--", "ip", "-o", "addr", "show", "dev", "lo")
    assert "10.240.0.201/32" in lo.stdout

    down = _kubelvs("lab", "down", "--prefix", prefix)
    assert down.returncode == 0 and "removed" in down.stdout
    assert lab_namespaces(prefix) == []
    assert not any(alive(p) for p in pids.values())
    assert root_links() == links_before
    assert not state_dir(prefix).exists()
    assert "nothing to remove" in _kubelvs("lab", "down", "--prefix", prefix).stdout  # idempotent
    assert _kubelvs("lab", "status", "--prefix", prefix).returncode == 2


def test_down_cleans_up_after_the_building_process_was_killed(prefix: str) -> None:
    links_before = root_links()
    # A process that builds the lab and then "crashes" (SIGKILL: no teardown runs).
    code = (
        "import sys, time\n"
        "from kubelvs.lab.topology import LabSpec, build\n"
        f"build(LabSpec(prefix={prefix!r}))\n"
        "print('built', flush=True)\n"
        "time.sleep(300)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "built"
        pids = dict(load_info(prefix).pids)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    assert lab_namespaces(prefix) and all(alive(p) for p in pids.values())  # the crash left it all
    assert _kubelvs("lab", "down", "--prefix", prefix).returncode == 0
    assert lab_namespaces(prefix) == []
    assert not any(alive(p) for p in pids.values())
    assert root_links() == links_before


def test_down_cleans_up_a_lab_killed_half_way_through_building(prefix: str) -> None:
    proc = subprocess.Popen(
        [*KUBELVS, "lab", "up", "--prefix", prefix, "--nodes", "3"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while len(lab_namespaces(prefix)) < 4 and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert lab_namespaces(prefix)
    assert _kubelvs("lab", "down", "--prefix", prefix).returncode == 0
    assert lab_namespaces(prefix) == []


def test_bad_specs_are_refused_naming_the_field_before_anything_is_made(prefix: str) -> None:
    for spec, field in [
        (LabSpec(prefix="lab"), "prefix"),
        (LabSpec(prefix=prefix, vip="10.9.9.9"), "vip"),
        (LabSpec(prefix=prefix, vip="10.240.0.101"), "vip"),
        (LabSpec(prefix=prefix, directors=2), "directors"),
        (LabSpec(prefix=prefix, nodes=0), "nodes"),
        (LabSpec(prefix=prefix, topology="xdp"), "topology"),  # type: ignore[arg-type]
        (LabSpec(prefix=prefix, ip_family="ipv5"), "ip_family"),  # type: ignore[arg-type]
        (LabSpec(prefix=prefix, ip_family="dual", topology="nat"), "topology"),
        (LabSpec(prefix=prefix, ip_family="ipv6", vrrp=True), "vrrp"),
        (LabSpec(prefix=prefix, ip_family="dual", vip6="10.240.0.9"), "vip6"),
        (LabSpec(prefix=prefix, ip_family="dual", vip6="fd00:240::101"), "vip6"),  # node1's
        (LabSpec(prefix=prefix, ip_family="dual", vip6="fd00:999::1"), "vip6"),
    ]:
        with pytest.raises(LabError, match=f"^{field}: "):
            build(spec)
        assert lab_namespaces(prefix) == []
    result = _kubelvs("lab", "up", "--prefix", prefix, "--nodes", "0")
    assert result.returncode == 2 and "nodes: 0 is not within" in result.stderr


def test_a_second_up_with_the_same_prefix_is_refused(prefix: str) -> None:
    running = build(LabSpec(prefix=prefix, nodes=1, pods=1, director=False, agents=False))
    try:
        with pytest.raises(LabError, match="already up"):
            build(LabSpec(prefix=prefix))
        assert set(lab_namespaces(prefix)) == set(running.info.namespaces)  # the first one untouched
    finally:
        running.teardown()


def _nodes() -> list[NodeInfo]:
    """Two workers with one pod each, as a dual-stack lab records them."""
    return [
        NodeInfo(
            f"node{i}",
            f"ns{i}",
            f"10.240.0.10{i}",
            "",
            f"10.230.{i}.0/24",
            (PodInfo(f"whoami-node{i}-1", f"node{i}", "p", f"10.230.{i}.10", f"fd00:230:{i}::10"),),
            ip6=f"fd00:240::10{i}",
        )
        for i in (1, 2)
    ]


def test_generated_config_and_kube_proxy_rules_follow_the_whoami_setup() -> None:
    spec = LabSpec()
    nodes = _nodes()
    desired = to_desired(parse_config(parse_yaml(director_config(spec, nodes), source="lab")))
    (svc,) = desired.services.values()
    assert str(svc.key) == "TCP 10.240.0.201:80" and svc.scheduler == "rr"
    assert [str(r) for r in svc.realservers] == ["10.240.0.101:80 dr w=1", "10.240.0.102:80 dr w=1"]
    rules = proxy_ruleset(spec, nodes[0])
    assert "fib saddr type != local goto svc" in rules  # -m addrtype ! --src-type LOCAL
    assert "fib daddr type local goto svc" in rules  # -m addrtype --dst-type LOCAL
    assert "dnat to 10.230.1.10:8080" in rules and "masquerade" in rules
    nat = director_config(LabSpec(topology="nat"), nodes)
    assert "forward: nat" in nat and "port: 8080" in nat


def test_dual_stack_config_and_kube_proxy_rules_have_a_service_and_a_table_per_family() -> None:
    spec = LabSpec(ip_family="dual")
    nodes = _nodes()
    desired = to_desired(parse_config(parse_yaml(director_config(spec, nodes), source="lab")))
    assert {str(k): [str(r) for r in s.realservers] for k, s in desired.services.items()} == {
        "TCP 10.240.0.201:80": ["10.240.0.101:80 dr w=1", "10.240.0.102:80 dr w=1"],
        "TCP [fd00:240::201]:80": ["[fd00:240::101]:80 dr w=1", "[fd00:240::102]:80 dr w=1"],
    }
    rules = proxy_ruleset(spec, nodes[0])
    assert "table ip kubelvs_lab_proxy" in rules and "table ip6 kubelvs_lab_proxy" in rules
    assert "ip6 daddr fd00:240::201 tcp dport 80 fib saddr type != local goto svc" in rules
    assert "dnat to [fd00:230:1::10]:8080" in rules
    only6 = director_config(LabSpec(ip_family="ipv6"), nodes)
    assert "10.240.0.201" not in only6 and "owned_cidrs: [fd00:240::201/128]" in only6


def test_state_dir_is_under_run(prefix: str) -> None:
    assert state_dir(prefix) == Path("/run/kubelvs/lab") / prefix


def test_a_director_that_refuses_the_config_fails_lab_up_with_its_reason(prefix: str) -> None:
    if load_backend_name() != "nftables":
        pytest.skip("wlc is refused by the nftables backend only")
    result = _kubelvs("lab", "up", "--prefix", prefix, "--scheduler", "wlc", "--pods", "1", "--nodes", "1")
    assert result.returncode == 2
    assert "director dir1 did not sync; it exited with status 2" in result.stderr
    assert "services[whoami].scheduler: 'wlc' needs per-connection counts" in result.stderr
    assert lab_namespaces(prefix) == []  # a failed up removes what it built


def test_tun_is_refused_without_ipip(prefix: str) -> None:
    from kubelvs.backends.nftables.backend import tun_supported

    if tun_supported():
        pytest.skip("this kernel has ipip (the VM tier runs the tun lab)")
    result = _kubelvs("lab", "up", "--prefix", prefix, "--topology", "tun")
    assert result.returncode == 2 and "topology: tun needs IPIP tunnels" in result.stderr
    assert lab_namespaces(prefix) == []


def load_backend_name() -> str:
    from kubelvs.backends.base import ipvs_available

    return "ipvs" if ipvs_available() else "nftables"
