"""``kubelvs node -f`` as a real long-running process: ``--revert`` while it runs is refused
with the PID that holds the namespace (it used to be undone within a second without a
word), and a config file rewritten with binary junk keeps the last good state (it used to
kill the agent with a traceback)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from .test_node_agent import VIP, _lo_v4, node  # noqa: F401 - node is a fixture

pytestmark = pytest.mark.netns

CONFIG = (
    f"owned_cidrs: [{VIP}/32]\nservices:\n  - name: whoami\n    vip: {VIP}\n    port: 80\n    scheduler: rr\n"
    "    forward: dr\n    realservers:\n      - address: 10.240.0.101\n"
)


def until(what: str, condition: Callable[[], bool], log: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}; agent log:\n{log.read_text()}")
        time.sleep(0.1)


def test_revert_while_running_is_refused_and_bad_config_keeps_the_state(node: str, tmp_path: Path) -> None:  # noqa: F811
    cfg, log, state = tmp_path / "lab.yaml", tmp_path / "agent.log", tmp_path / "state"
    cfg.write_text(CONFIG)
    base = [
        sys.executable,
        "-m",
        "kubelvs",
        "node",
        "--netns",
        node,
        "--interface",
        "eth0",
        "--vip-device",
        "lo",
        "--state-dir",
        str(state),
    ]
    with log.open("wb") as out:
        agent = subprocess.Popen(
            [*base, "-f", str(cfg), "--poll", "0.1", "--settle", "0.2"], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        until("the VIP on lo", lambda: f"{VIP}/32" in _lo_v4(node), log)
        revert = subprocess.run([*base, "--revert"], capture_output=True, text=True, timeout=30)
        assert revert.returncode == 2
        assert f"a node agent (pid {agent.pid}) is running for this namespace" in revert.stderr
        time.sleep(1.0)
        assert f"{VIP}/32" in _lo_v4(node)  # nothing was undone behind the running agent

        cfg.write_bytes(os.urandom(300))  # a binary config
        until("the rejection", lambda: "config rejected" in log.read_text(), log)
        time.sleep(0.5)
        assert agent.poll() is None and f"{VIP}/32" in _lo_v4(node)
        assert "Traceback" not in log.read_text()
    finally:
        agent.send_signal(signal.SIGTERM)
        rc = agent.wait(timeout=15)
    assert rc == 0, log.read_text()
    # Stopped: the node stays configured, and now --revert may undo it.
    assert subprocess.run([*base, "--revert"], capture_output=True, text=True, timeout=30).returncode == 0
    assert f"{VIP}/32" not in _lo_v4(node)
