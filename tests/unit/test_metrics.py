"""``/metrics`` of the director program (``app.metrics``) over real HTTP, with the config
file as its source and the in-memory backend; the Grafana dashboard against what the
code exports. The lab test (tests/lab/test_metrics.py) checks the kernel counters."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from kubelvs import __version__
from kubelvs.app.director import DirectorOptions, start_director
from kubelvs.app.metrics import _Totals, parse_address
from kubelvs.backends.memory import MemoryBackend
from kubelvs.errors import ConfigError
from kubelvs.model import RealServerKey, RealServerStats, ServiceKey
from kubelvs.sources.file import ConfigFileSource

from .test_director_program import until

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "kubelvs-dashboard.json"

CONFIG = """owned_cidrs: [10.240.0.0/24]
recommended_sysctls: false
services:
  - {name: web, vip: 10.240.0.201, port: 80, scheduler: rr,
     realservers: [{address: 10.240.0.101, weight: 2}, {address: 10.240.0.102}]}
"""

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scrape(port: int) -> tuple[str, Samples]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        assert reply.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        text = reply.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return text, samples


def _value(samples: Samples, name: str, **labels: str) -> float:
    """The one sample of ``name`` whose labels include ``labels``."""
    found = [v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls]
    assert len(found) == 1, (name, labels, found)
    return found[0]


def _run_director(tmp_path: Path, body: object) -> None:
    config = tmp_path / "lb.yaml"
    config.write_text(CONFIG)
    port = _free_port()
    options = DirectorOptions(resync_seconds=3600, metrics_address=("127.0.0.1", port))

    async def main() -> None:
        source = ConfigFileSource(config, poll_seconds=0.05, settle_seconds=0.1)
        program = await start_director(options, source, backend=MemoryBackend())
        stop = asyncio.Event()
        task = asyncio.create_task(program.run(stop))
        try:
            assert program.metrics_server is not None
            await asyncio.wait_for(program.metrics_server.listening.wait(), 10)
            await until(lambda: program.last_result is not None)
            await body(program, config, port)  # type: ignore[operator]
        finally:
            stop.set()
            await task
            await program.close()

    asyncio.run(main())


async def _scrape_until(port: int, ready: Callable[[Samples], bool]) -> Samples:
    """Scrape until ``ready``: what a step did is counted after it programmed the kernel
    (its duration once it returned), so a scrape may fall between the two."""
    for _ in range(200):
        _, samples = await asyncio.to_thread(_scrape, port)
        if ready(samples):
            return samples
        await asyncio.sleep(0.05)
    pytest.fail("/metrics never showed it")


def _has(samples: Samples, name: str, **labels: str) -> float | None:
    found = [v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls]
    return found[0] if len(found) == 1 else None


def test_the_director_serves_its_table_and_its_reconciles(tmp_path: Path) -> None:
    async def body(program: object, config: Path, port: int) -> None:
        s = await _scrape_until(
            port, lambda s: _has(s, "kubelvs_sync_duration_seconds_count", kind="full") == 1
        )
        assert _value(s, "kubelvs_build_info", version=__version__) == 1
        web = {"service": "web", "local_address": "10.240.0.201", "local_port": "80", "proto": "TCP"}
        assert _value(s, "kubelvs_realserver_weight", remote_address="10.240.0.101", **web) == 2
        assert _value(s, "kubelvs_realserver_weight", remote_address="10.240.0.102", **web) == 1
        assert _value(s, "kubelvs_realserver_up", remote_address="10.240.0.101", **web) == 1  # no check
        assert _value(s, "kubelvs_realserver_draining", remote_address="10.240.0.101", **web) == 0
        assert _value(s, "kubelvs_sync_operations_total", op="add_service") == 1
        assert _value(s, "kubelvs_sync_operations_total", op="add_realserver") == 2
        programmed_before = _value(s, "kubelvs_network_programming_duration_seconds_count")

        # An edit: the weight follows, one partial step, one event programmed.
        config.write_text(CONFIG.replace("weight: 2", "weight: 5"))
        s = await _scrape_until(
            port,
            lambda s: (
                _has(s, "kubelvs_realserver_weight", remote_address="10.240.0.101", **web) == 5
                and _has(s, "kubelvs_network_programming_duration_seconds_count") == programmed_before + 1
            ),
        )
        assert _value(s, "kubelvs_sync_operations_total", op="edit_realserver") == 1
        assert _value(s, "kubelvs_sync_duration_seconds_count", kind="partial") >= 1

    _run_director(tmp_path, body)


def test_the_dashboard_queries_only_metrics_the_code_exports(tmp_path: Path) -> None:
    exported: set[str] = set()

    async def body(program: object, config: Path, port: int) -> None:
        text, _ = await asyncio.to_thread(_scrape, port)
        for family in text_string_to_metric_families(text):
            exported.add(family.name)
            exported.update(s.name for s in family.samples)
            if family.type == "counter":  # the parser names the family without _total
                exported.add(f"{family.name}_total")
            if family.type == "histogram":
                exported.update(f"{family.name}_{x}" for x in ("bucket", "sum", "count"))

    _run_director(tmp_path, body)
    exported.add("kubelvs_node_vips")  # the node agent's (tests/lab/test_metrics.py scrapes it)
    doc = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in doc["panels"] for t in p["targets"]]
    used = {name for e in exprs for name in re.findall(r"\bkubelvs_[a-z_]+", e)}
    assert len(doc["panels"]) >= 10 and used
    assert used <= exported, f"the dashboard queries metrics nobody exports: {sorted(used - exported)}"
    # Every metric the issue names is exported.
    assert {
        "kubelvs_virtual_service_connections_total",
        "kubelvs_virtual_service_packets_total",
        "kubelvs_virtual_service_bytes_total",
        "kubelvs_realserver_connections",
        "kubelvs_realserver_weight",
        "kubelvs_realserver_up",
        "kubelvs_realserver_draining",
        "kubelvs_sync_duration_seconds_bucket",
        "kubelvs_network_programming_duration_seconds_bucket",
        "kubelvs_sync_operations_total",
        "kubelvs_errors_total",
        "kubelvs_kubernetes_watch_restarts_total",
        "kubelvs_ipam_addresses",
        "kubelvs_bgp_session_up",
        "kubelvs_vrrp_state",
        "kubelvs_build_info",
    } <= exported


def test_a_virtual_service_total_keeps_what_its_real_servers_that_left_counted() -> None:
    key = ServiceKey.parse("TCP 10.240.0.201:80")
    a, b = RealServerKey.parse("10.240.0.101:80"), RealServerKey.parse("10.240.0.102:80")
    totals = _Totals()
    totals.update(
        {(key, a): RealServerStats(conns=7, in_packets=70), (key, b): RealServerStats(conns=3)}, {key}
    )
    totals.update({(key, b): RealServerStats(conns=4)}, {key})  # a left
    assert totals.departed[key].conns == 7 and totals.departed[key].in_packets == 70
    totals.update({(key, b): RealServerStats(conns=1)}, {key})  # b deleted and added again: counts anew
    assert totals.departed[key].conns == 7 + 4
    totals.update({}, {key})  # every real server left: the service keeps its total
    assert totals.departed[key].conns == 7 + 4 + 1
    totals.update({}, set())  # the service left: its total starts again if it comes back
    assert key not in totals.departed


def test_a_bad_metrics_address_names_the_flag() -> None:
    assert parse_address("127.0.0.1:9565") == ("127.0.0.1", 9565)
    assert parse_address("[::1]:9565") == ("::1", 9565)
    assert parse_address("off") is None
    for bad in ("9565", "localhost", "127.0.0.1:0", "127.0.0.1:99999", ":9565"):
        with pytest.raises(ConfigError, match="--metrics-address"):
            parse_address(bad)


def test_an_address_in_use_is_retried_and_the_director_programs_anyway(tmp_path: Path) -> None:
    config = tmp_path / "lb.yaml"
    config.write_text(CONFIG)
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    backend = MemoryBackend()

    async def main() -> None:
        options = DirectorOptions(resync_seconds=3600, metrics_address=("127.0.0.1", port))
        program = await start_director(options, ConfigFileSource(config), backend=backend)
        server, registry = program.metrics_server, program.metrics.registry
        assert server is not None
        server.RETRY_SECONDS = 0.2
        stop = asyncio.Event()
        task = asyncio.create_task(program.run(stop))
        try:
            await until(lambda: program.last_result is not None)
            await until(
                lambda: (
                    (registry.get_sample_value("kubelvs_errors_total", {"kind": "metrics_listen"}) or 0) >= 1
                )
            )
            assert not server.listening.is_set()
            assert len(backend.read().services) == 1  # programmed all the same
            holder.close()
            await asyncio.wait_for(server.listening.wait(), 10)  # the retry binds
        finally:
            stop.set()
            await task
            await program.close()

    try:
        asyncio.run(main())
    finally:
        holder.close()
