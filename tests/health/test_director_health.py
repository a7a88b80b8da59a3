"""Health checks in the running director (``app.director`` as the CLI assembles it, config
file source, in-memory data plane): a real server whose service stops is given weight 0
(or removed) within ``fall * interval + timeout``, comes back after ``rise`` good probes,
ramps up over ``slow_start``; ``kubelvs status`` shows each real server's health."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kubelvs.app.director import DirectorOptions, DirectorProgram, start_director
from kubelvs.app.state import read_director_state
from kubelvs.backends.memory import MemoryBackend
from kubelvs.cli.render import status_document, status_table
from kubelvs.lab.netlab import Lab, Process
from kubelvs.sources.file import ConfigFileSource

pytestmark = pytest.mark.netns

NODES = {"node1": "10.0.0.11", "node2": "10.0.0.12"}


class World:
    def __init__(self, lab: Lab, director: str, nodes: dict[str, str]) -> None:
        self.lab, self.director, self.nodes = lab, director, nodes  # nodes: name -> namespace
        self.servers: dict[str, Process] = {}

    def start(self, node: str) -> None:
        ns = self.nodes[node]
        self.servers[node] = self.lab.start_python(
            ns, "kubelvs.lab.servers", "http", "--name", node, "--port", "8080"
        )
        self.lab.wait_listening(ns, 8080)

    def stop(self, node: str) -> None:
        self.lab.stop(self.servers.pop(node))


@pytest.fixture
def world() -> Iterator[World]:
    lab = Lab(f"kubelvs-t{secrets.token_hex(3)}")
    try:
        director = lab.host("dir", ["10.0.0.2/24"]).netns
        nodes = {node: lab.host(node, [f"{address}/24"]).netns for node, address in NODES.items()}
        w = World(lab, director, nodes)
        for node in NODES:
            w.start(node)
        yield w
    finally:
        lab.teardown()


def config(health: str, nodes: tuple[str, ...] = ("node1", "node2")) -> str:
    rss = ", ".join(f"{{address: {NODES[n]}, port: 8080, weight: 4}}" for n in nodes)
    return (
        "owned_cidrs: [10.240.0.0/24]\nrecommended_sysctls: false\n"
        f"health_defaults: {health}\n"
        "services:\n"
        + "".join(
            f"  - {{name: s{i}, vip: 10.240.0.{i}, port: 80, scheduler: rr, forward: nat, "
            f"realservers: [{rss}]}}\n"
            for i in range(1, 21)
        )
    )


def weights(backend: MemoryBackend, vip: str = "10.240.0.1") -> dict[str, int]:
    return {a: w for a, _, w, _ in backend.table().get(f"TCP {vip}:80", [])}


async def until(condition: Callable[[], bool], timeout: float) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError("timed out")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


def run(
    world: World, tmp_path: Path, text: str, body: Callable[[DirectorProgram, MemoryBackend], Awaitable[None]]
) -> None:
    path = tmp_path / "lb.yaml"
    path.write_text(text)
    backend = MemoryBackend()

    async def main() -> None:
        options = DirectorOptions(
            netns=world.director, resync_seconds=3600, state_file=tmp_path / "state.json"
        )
        program = await start_director(
            options, ConfigFileSource(path, poll_seconds=0.05, settle_seconds=0.1), backend=backend
        )
        stop = asyncio.Event()
        task = asyncio.create_task(program.run(stop))
        try:
            await body(program, backend)
        finally:
            stop.set()
            await task
            await program.close()

    asyncio.run(main())


def test_a_dead_real_server_goes_to_weight_0_in_time_and_comes_back(world: World, tmp_path: Path) -> None:
    health = "{kind: http, path: /healthz, interval: 0.3, timeout: 0.2, fall: 2, rise: 2}"

    async def body(program: DirectorProgram, backend: MemoryBackend) -> None:
        await until(lambda: weights(backend) == {"10.0.0.11": 4, "10.0.0.12": 4}, 10)
        await until(lambda: program.health.checker.probes >= 4, 5)
        # 20 services on 2 nodes: 2 probes per interval, not 40.
        assert len(program.health.checker.states) == 2
        world.stop("node1")
        detected = await until(lambda: weights(backend)["10.0.0.11"] == 0, 5)
        assert detected <= 2 * 0.3 + 0.2 + 0.5  # fall * interval + timeout (+ 500 ms)
        # Every service that uses node1 changed in the same sync: one batch.
        assert all(vs[0][2] == 0 for vs in backend.table().values())
        last_apply = backend.applies[-1]
        assert len(last_apply) == 20 and {type(op).__name__ for op in last_apply} == {"EditRealServer"}

        def state() -> dict[str, Any]:
            doc: dict[str, Any] = json.loads((tmp_path / "state.json").read_text())
            return doc

        health = state()["health"]
        assert health["checks"][health["services"]["TCP 10.240.0.1:80"]] == {
            "kind": "http",
            "port": None,
            "mode": "direct",
        }
        target = "http 10.0.0.11:8080"  # as the director names its probes
        # The state file is written after the sync.
        await until(lambda: state()["health"]["targets"][target]["status"] == "down", 2)
        assert "refused" in state()["health"]["targets"][target]["detail"]
        # What `kubelvs status` shows of it (the kernel's table and the director's state file).
        director = read_director_state(tmp_path / "state.json")
        table = status_table(backend.read(), {}, director)
        line = next(line for line in table.splitlines() if "-> 10.0.0.11:8080" in line)
        assert line.split()[-2] == "down" and line.split()[-1].endswith("s")
        doc = status_document(backend.read(), {}, director=director)
        rs = next(r for s in doc["services"] for r in s["realservers"] if r["address"] == "10.0.0.11")
        assert rs["health"]["status"] == "down" and rs["weight"] == 0
        world.start("node1")
        back = await until(lambda: weights(backend)["10.0.0.11"] == 4, 5)
        assert back <= 2 * 0.3 + 0.2 + 0.5 + 0.5  # rise probes (+ the server's start)

    run(world, tmp_path, config(health), body)


def test_remove_and_slow_start(world: World, tmp_path: Path) -> None:
    health = "{kind: tcp, interval: 0.2, timeout: 0.1, fall: 1, rise: 1, on_failure: remove, slow_start: 2}"

    async def body(program: DirectorProgram, backend: MemoryBackend) -> None:
        await until(lambda: weights(backend) == {"10.0.0.11": 4, "10.0.0.12": 4}, 10)
        world.stop("node2")
        await until(lambda: weights(backend) == {"10.0.0.11": 4}, 5)
        world.start("node2")
        await until(lambda: "10.0.0.12" in weights(backend), 5)
        seen = []
        while weights(backend).get("10.0.0.12") != 4:
            seen.append(weights(backend)["10.0.0.12"])
            await asyncio.sleep(0.1)
            assert len(seen) < 60, seen
        # It came back light and ramped up: never more than the full weight, never down.
        assert seen[0] < 4 and seen == sorted(seen)

    run(world, tmp_path, config(health), body)
