"""``kubelvs lab up --metrics``: the director's /metrics, scraped over the lab's network
from the client's namespace, against the kernel's own counters read back, with real
requests through the VIP; a config edit seen on /metrics; the node agent's /metrics.
nftables on the machine's kernel, IPVS in the VM tier."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from kubelvs.backends import open_backend
from kubelvs.lab.spec import AGENT_METRICS_PORT, METRICS_PORT
from kubelvs.lab.topology import load_info
from kubelvs.model import RealServerKey, RealServerStats, ServiceKey

from .test_demo_and_scenarios import BOTH_BACKENDS, _kubelvs

FETCH = (
    "import sys, urllib.request\n"
    "sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())"
)
WEB = {"service": "whoami", "local_address": "10.240.0.201", "local_port": "80", "proto": "TCP"}
NODES = ("10.240.0.101", "10.240.0.102")


def _scrape(prefix: str, url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = subprocess.run(
        ["ip", "netns", "exec", f"{prefix}-client", sys.executable, "-c", FETCH, url],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    found = [v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls]
    assert len(found) == 1, (name, labels, found)
    return found[0]


#: Requests to the VIP one after another until killed (from the client's namespace).
LOOP = (
    "import time, urllib.request\n"
    "while True:\n"
    "    try:\n"
    "        urllib.request.urlopen('http://10.240.0.201/', timeout=2).read()\n"
    "    except OSError:\n"
    "        time.sleep(0.05)\n"
)


def _wait_for_packets(backend: str, netns: str, key: ServiceKey, above: float) -> None:
    """Until the virtual service's real servers counted more than ``above`` packets in."""
    deadline = time.monotonic() + 60
    with open_backend(backend, netns=netns) as kernel:  # type: ignore[arg-type]
        while sum(st.in_packets for (k, _), st in kernel.read().stats.items() if k == key) <= above:
            assert time.monotonic() < deadline, "the client's requests never reached the director"
            time.sleep(0.2)


def _scrape_while_the_kernel_holds_still(
    backend: str, netns: str, prefix: str, url: str
) -> tuple[
    dict[tuple[str, frozenset[tuple[str, str]]], float],
    dict[tuple[ServiceKey, RealServerKey], RealServerStats],
]:
    """A scrape of ``url`` and the kernel's counters, read before and after it and equal:
    a scrape that straddles one of IPVS's summing rounds is taken again."""
    deadline = time.monotonic() + 60
    with open_backend(backend, netns=netns) as kernel:  # type: ignore[arg-type]
        while True:
            first = kernel.read().stats
            page = _scrape(prefix, url)
            if kernel.read().stats == first:
                return page, dict(first)
            assert time.monotonic() < deadline, "the kernel's counters never held still for a scrape"


def _requests(prefix: str, count: int) -> list[str]:
    probe = _kubelvs(
        "lab", "exec", "--prefix", prefix, "client", "--", sys.executable, "-m", "kubelvs.lab.servers",
        "probe", "--target", "10.240.0.201:80", "--count", str(count),
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr
    return [json.loads(line)["server"] for line in probe.stdout.splitlines()]


@pytest.mark.parametrize("backend", BOTH_BACKENDS)
def test_lab_metrics_follow_the_kernel_and_the_config(backend: str, prefix: str) -> None:
    up = _kubelvs("lab", "up", "--prefix", prefix, "--backend", backend, "--metrics")
    assert up.returncode == 0, up.stdout + up.stderr
    info = load_info(prefix)
    director = f"http://10.240.0.2:{METRICS_PORT}/metrics"
    key = ServiceKey.parse("TCP 10.240.0.201:80")

    before = _scrape(prefix, director)
    served = _requests(prefix, 12)
    assert len(served) == 12
    # IPVS sums its per-CPU counters into the ones it exports every two seconds (its rate
    # estimator; later still on the VM's emulated CPU right after the services were made):
    # wait until the requests show, then scrape between two equal reads of the kernel.
    at_least = _value(before, "kubelvs_virtual_service_packets_total", direction="in", **WEB) + 12 * 3
    _wait_for_packets(backend, info.directors["dir1"], key, above=at_least - 1)
    after, stats = _scrape_while_the_kernel_holds_still(backend, info.directors["dir1"], prefix, director)
    # Every real server's counters on /metrics are the kernel's (no traffic in between),
    # and the virtual service's are their sums; the requests moved them.
    vs_in = 0.0
    for node in NODES:
        st = stats[(key, next(rs for k, rs in stats if k == key and str(rs.address) == node))]
        labels = {**WEB, "remote_address": node}
        assert _value(after, "kubelvs_realserver_packets_total", direction="in", **labels) == st.in_packets
        assert _value(after, "kubelvs_realserver_bytes_total", direction="in", **labels) == st.in_bytes
        assert _value(after, "kubelvs_realserver_scheduled_connections_total", **labels) == st.conns
        assert _value(after, "kubelvs_realserver_weight", **labels) == 1
        assert _value(after, "kubelvs_realserver_up", **labels) == 1
        assert _value(after, "kubelvs_realserver_draining", **labels) == 0
        vs_in += st.in_packets
    assert _value(after, "kubelvs_virtual_service_packets_total", direction="in", **WEB) == vs_in
    grew = vs_in - _value(before, "kubelvs_virtual_service_packets_total", direction="in", **WEB)
    assert grew >= 12 * 3  # at least SYN, request and ACKs of each connection went through
    new_conns = _value(after, "kubelvs_virtual_service_connections_total", **WEB) - _value(
        before, "kubelvs_virtual_service_connections_total", **WEB
    )
    # IPVS counts the connections it scheduled; the nftables data plane keeps no table.
    assert new_conns == (12 if backend == "ipvs" else 0)
    agent = _scrape(prefix, f"http://10.240.0.101:{AGENT_METRICS_PORT}/metrics")
    assert _value(agent, "kubelvs_node_vips") == 1

    # kubelvs top --once, while requests flow: the VIP by name, both real servers moving.
    # One client process loops on requests (started here, ended by its PID); top runs
    # once the kernel's counters show it sending (the VM's emulated CPU starts slowly).
    flow = subprocess.Popen(
        ["ip", "netns", "exec", f"{prefix}-client", sys.executable, "-c", LOOP],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_packets(backend, info.directors["dir1"], key, vs_in + 12 * 3)
        where = ("--netns", info.directors["dir1"], "--backend", backend, "--interval", "2")
        top = _kubelvs("top", "--once", "-o", "json", *where)
        table = _kubelvs("top", "--once", *where)
    finally:
        flow.kill()
        flow.wait(10)
    assert top.returncode == 0 and table.returncode == 0, top.stderr + table.stderr
    (row,) = json.loads(top.stdout)["services"]
    assert (row["what"], row["name"]) == ("TCP 10.240.0.201:80", "whoami")
    assert row["in_packets_per_s"] > 0 and row["in_bits_per_s"] > 0
    assert sorted(rs["what"] for rs in row["realservers"]) == [f"{n}:80" for n in NODES]
    assert all(rs["weight"] == 1 for rs in row["realservers"])
    assert row["in_packets_per_s"] == pytest.approx(sum(rs["in_packets_per_s"] for rs in row["realservers"]))
    assert "TCP 10.240.0.201:80" in table.stdout and "whoami" in table.stdout and "PKT/s IN" in table.stdout

    # A config edit: node2 leaves (no drain), node1's weight goes to 3. /metrics follows,
    # the event is counted as programmed, and the virtual service's totals keep what
    # node2 had counted.
    config = Path(info.config)
    original = config.read_text()
    edited = original.replace(
        "      - address: 10.240.0.101\n      - address: 10.240.0.102\n",
        "      - {address: 10.240.0.101, weight: 3}\n",
    )
    assert edited != original
    config.write_text("graceful: false\n" + edited)
    deadline = time.monotonic() + 60
    while True:
        now = _scrape(prefix, director)
        weights = {ls for (n, ls), _ in now.items() if n == "kubelvs_realserver_weight"}
        # The kernel first, then the step's counts (kept when it returns): both, to go on.
        if (
            len(weights) == 1
            and _value(now, "kubelvs_realserver_weight", remote_address=NODES[0]) == 3
            and _value(now, "kubelvs_network_programming_duration_seconds_count") >= 1
        ):
            break
        assert time.monotonic() < deadline, "the edit never showed on /metrics"
        time.sleep(0.3)
    assert _value(now, "kubelvs_virtual_service_packets_total", direction="in", **WEB) >= vs_in
    assert _value(now, "kubelvs_sync_operations_total", op="delete_realserver") >= 1
    assert _value(now, "kubelvs_sync_operations_total", op="edit_realserver") >= 1
    programmed = _value(now, "kubelvs_network_programming_duration_seconds_count")
    assert programmed >= 1
    assert _value(now, "kubelvs_network_programming_duration_seconds_sum") / programmed < 10
