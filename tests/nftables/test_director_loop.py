"""``kubelvs director -f``: the long-running file mode, as a real process against the
nftables backend in a namespace the test made. Edits converge (a port edit, which once
left a stale real server, included), a bad edit or a missing file keeps the last good
state, SIGTERM ends it."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kubelvs.backends import open_backend
from kubelvs.model import DesiredState, ServiceKey, VirtualService
from kubelvs.sources.config import parse_config, parse_yaml, to_desired

pytestmark = pytest.mark.netns

HEAD = "owned_cidrs: [10.240.0.0/24]\nrecommended_sysctls: false\nservices:\n"


def _service(port: int, target: int, pods: tuple[int, ...]) -> str:
    rss = ", ".join(f"{{address: 10.0.1.{p}, port: {target}}}" for p in pods)
    return (
        f"  - {{name: redis, vip: 10.240.0.201, port: {port}, scheduler: rr, forward: nat,"
        f" realservers: [{rss}]}}\n"
    )


def _desired(text: str) -> DesiredState:
    return to_desired(parse_config(parse_yaml(text, source="test")))


@pytest.fixture
def director(netns: str, tmp_path: Path) -> Iterator[tuple[Path, Path, subprocess.Popen[bytes]]]:
    config, log = tmp_path / "lb.yaml", tmp_path / "director.log"
    config.write_text(HEAD + _service(80, 80, (2, 3)))
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kubelvs",
                "director",
                "-f",
                str(config),
                "--backend",
                "nftables",
                "--netns",
                netns,
                "--poll",
                "0.1",
                "--resync",
                "3600",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield config, log, proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _kernel(netns: str) -> dict[ServiceKey, VirtualService]:
    backend = open_backend("nftables", netns=netns)
    try:
        return dict(backend.read().services)
    finally:
        backend.close()


def _until(what: str, condition: Callable[[], bool], log: Path, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}; director log:\n{log.read_text()}")


def test_edits_converge_and_bad_edits_keep_the_last_good_state(
    netns: str, director: tuple[Path, Path, subprocess.Popen[bytes]]
) -> None:
    config, log, proc = director
    first = _desired(config.read_text())
    _until("the first sync", lambda: _kernel(netns) == dict(first.services), log)

    # The port edit that once left a stale real server: port/targetPort 80 -> 6379, and one more pod.
    edited = HEAD + _service(6379, 6379, (2, 3, 4))
    config.write_text(edited)
    _until("the edit", lambda: _kernel(netns) == dict(_desired(edited).services), log)

    config.write_text(HEAD + _service(6379, 6379, (2,)).replace("scheduler: rr", "scheduler: nope"))
    _until("the rejection", lambda: "config rejected" in log.read_text(), log)
    assert "services[0] (redis).scheduler: unknown IPVS scheduler 'nope'" in log.read_text()
    assert _kernel(netns) == dict(_desired(edited).services)  # unchanged: last good state

    config.unlink()  # a config manager replacing the file by rename: briefly missing
    _until(
        "the missing-file message",
        lambda: "is missing; the kernel keeps the last good state" in log.read_text(),
        log,
    )
    time.sleep(0.5)
    assert proc.poll() is None
    assert _kernel(netns) == dict(_desired(edited).services)

    fixed = HEAD + _service(6379, 6379, (3,))
    config.write_text(fixed)
    _until("the fix", lambda: _kernel(netns) == dict(_desired(fixed).services), log)
    # Only what changed was planned (two pods removed); logged just after the sync.
    _until("the log of the fix", lambda: "incremental sync: 2 change(s)" in log.read_text(), log)

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
    assert _kernel(netns) == dict(_desired(fixed).services)  # stopping leaves traffic flowing
