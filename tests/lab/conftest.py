"""Lab fixtures: a unique prefix ``kubelvs-t<token>`` per test, and ``lab down`` of it
afterwards even when the test fails."""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator

import pytest

from kubelvs.lab.topology import down


@pytest.fixture
def prefix() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    name = f"kubelvs-t{secrets.token_hex(3)}"
    try:
        yield name
    finally:
        down(name)


def root_links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False
