"""Shared fixtures. Every network namespace a test creates carries the project's
prefix ``kubelvs-t`` and is deleted at teardown, also when the test fails."""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Callable, Iterator

import pytest

NETNS_PREFIX = "kubelvs-t"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@pytest.fixture
def make_netns() -> Iterator[Callable[[str], str]]:
    """Factory: ``make_netns("dir")`` creates ``kubelvs-t<random>-dir`` with lo up."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    created: list[str] = []
    token = secrets.token_hex(3)

    def make(role: str = "ns") -> str:
        name = f"{NETNS_PREFIX}{token}-{role}"
        _ip("netns", "add", name)
        created.append(name)
        _ip("-n", name, "link", "set", "lo", "up")
        return name

    try:
        yield make
    finally:
        for name in reversed(created):
            # Processes still inside would keep the namespace alive; kill only ours by PID.
            pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout.split()
            for pid in pids:
                subprocess.run(["kill", "-9", pid], capture_output=True)
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


@pytest.fixture
def netns(make_netns: Callable[[str], str]) -> str:
    """One fresh namespace (IPVS tables and nftables rulesets are per namespace)."""
    return make_netns("ns")
