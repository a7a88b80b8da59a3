"""The director program (``app.director``) assembled as the CLI assembles it, with the
config file as its source and the in-memory backend: it repairs a table changed behind
its back as soon as the backend says so, and publishes what it could not do."""

from __future__ import annotations

import asyncio
import gc
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from kubelvs.app.director import DirectorOptions, DirectorProgram, start_director
from kubelvs.app.state import read_director_state
from kubelvs.backends.memory import MemoryBackend
from kubelvs.errors import KubelvsError
from kubelvs.planner import DeleteService, service_of
from kubelvs.roles.guard import GuardSettings
from kubelvs.sources.file import ConfigFileSource

HEAD = "owned_cidrs: [10.240.0.0/24]\nrecommended_sysctls: false\nservices:\n"


def svc(i: int) -> str:
    return (
        f"  - {{name: s{i}, vip: 10.240.0.{i}, port: 80, scheduler: rr, "
        "realservers: [{address: 10.240.0.101}]}\n"
    )


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def run(
    tmp_path: Path,
    text: str,
    body: Callable[[DirectorProgram, MemoryBackend, Path], Awaitable[None]],
    *,
    backend: MemoryBackend | None = None,
    guard: GuardSettings | None = None,
) -> None:
    config = tmp_path / "lb.yaml"
    config.write_text(text)
    backend = backend or MemoryBackend()
    options = DirectorOptions(
        resync_seconds=3600,
        check_seconds=0.1,
        state_file=tmp_path / "state.json",
        guard=guard or GuardSettings(),
    )

    async def main() -> None:
        source = ConfigFileSource(config, poll_seconds=0.05, settle_seconds=0.1)
        program = await start_director(options, source, backend=backend)
        stop = asyncio.Event()
        task = asyncio.create_task(program.run(stop))
        try:
            await body(program, backend, config)
        finally:
            stop.set()
            await task
            await program.close()

    asyncio.run(main())


def test_a_table_changed_behind_the_directors_back_is_repaired_at_once(tmp_path: Path) -> None:
    async def body(program: DirectorProgram, backend: MemoryBackend, config: Path) -> None:
        await until(lambda: len(backend.table()) == 2)
        first = next(iter(backend.state.services))
        backend.tamper([DeleteService(first)])
        t0 = time.monotonic()
        await until(lambda: len(backend.table()) == 2)
        assert time.monotonic() - t0 < 2.0  # the resync timer is an hour: the check found it
        assert program.loop.tamper_resyncs == 1

    run(tmp_path, HEAD + svc(1) + svc(2), body)


def test_a_small_table_is_read_back_every_second_when_the_backend_cannot_tell(tmp_path: Path) -> None:
    async def body(program: DirectorProgram, backend: MemoryBackend, config: Path) -> None:
        await until(lambda: len(backend.table()) == 2)
        first = next(iter(backend.state.services))
        backend.tamper([DeleteService(first)], signal=False)  # as IPVS: no generation id to see
        t0 = time.monotonic()
        await until(lambda: len(backend.table()) == 2)
        assert time.monotonic() - t0 < 2.0
        assert program.loop.tamper_resyncs == 1

    run(tmp_path, HEAD + svc(1) + svc(2), body)


def test_refused_services_and_held_deletions_are_published_for_status(tmp_path: Path) -> None:
    refused = {"TCP 10.240.0.3:80"}
    backend = MemoryBackend(refuse=lambda op: "injected refusal" if str(service_of(op)) in refused else None)

    async def body(program: DirectorProgram, backend: MemoryBackend, config: Path) -> None:
        state_file = tmp_path / "state.json"
        await until(lambda: state_file.exists() and bool(json.loads(state_file.read_text())["failing"]))
        doc = read_director_state(state_file)
        assert doc is not None and doc["source"] == f"config file {config}"
        (failing,) = doc["failing"]
        assert failing["service"] == "TCP 10.240.0.3:80" and failing["reason"] == "injected refusal"
        assert set(backend.table()) == {"TCP 10.240.0.1:80", "TCP 10.240.0.2:80"}
        refused.clear()
        await until(lambda: "TCP 10.240.0.3:80" in backend.table())  # retried with backoff
        await until(lambda: not json.loads(state_file.read_text())["failing"])
        # Now a truncated file: most services would go at once. Held back, and said so.
        config.write_text(HEAD + svc(1))
        await until(lambda: bool(json.loads(state_file.read_text())["held_deletions"]))
        held = json.loads(state_file.read_text())["held_deletions"]
        assert held["services"] == ["TCP 10.240.0.2:80", "TCP 10.240.0.3:80"] and held["owned"] == 3
        assert len(backend.table()) == 3
        await until(lambda: len(backend.table()) == 1, timeout=5)  # settled (1 s here): deleted

    run(
        tmp_path,
        HEAD + svc(1) + svc(2) + svc(3),
        body,
        backend=backend,
        guard=GuardSettings(settle_seconds=1.0),
    )


def test_the_collector_pauses_for_the_initial_load_only(tmp_path: Path) -> None:
    # Paused from start_director until the first step is over, then the survivors are
    # frozen; the program's close gives them back to the collector (kubelvs.bulk.BulkLoad).
    config = tmp_path / "lb.yaml"
    config.write_text(HEAD + svc(1))
    backend = MemoryBackend()
    gc.unfreeze()

    async def main() -> None:
        source = ConfigFileSource(config, poll_seconds=0.05)
        program = await start_director(DirectorOptions(resync_seconds=3600), source, backend=backend)
        assert not gc.isenabled()  # the source is open: its state is loaded, nothing synced
        stop = asyncio.Event()
        task = asyncio.create_task(program.run(stop))
        try:
            await until(lambda: program.loop.steps >= 1 and gc.isenabled())
            assert len(backend.table()) == 1
            assert gc.get_freeze_count() > 1000
        finally:
            stop.set()
            await task
            await program.close()
        assert gc.isenabled() and gc.get_freeze_count() == 0

    asyncio.run(main())


def test_a_source_that_cannot_open_leaves_the_collector_running(tmp_path: Path) -> None:
    options = DirectorOptions(resync_seconds=3600, state_file=tmp_path / "state.json")
    source = ConfigFileSource(tmp_path / "missing.yaml", poll_seconds=0.05)
    with pytest.raises(KubelvsError):
        asyncio.run(start_director(options, source, backend=MemoryBackend()))
    assert gc.isenabled() and gc.get_freeze_count() == 0
