"""Removing a lab by its prefix alone, also after the process that built it crashed:
processes recorded by PID (only while they are still the lab's), every process inside
its namespaces, the namespaces (their links go with them), its state directory, and the
state files of its directors."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

from ..app.state import remove_director_state
from ..errors import LabError
from .netlab import NETNS_PREFIX
from .spec import DEFAULT_PREFIX, state_dir

__all__ = ["down", "lab_namespaces"]


def lab_namespaces(prefix: str) -> list[str]:
    """Namespaces of the lab ``prefix`` that exist now (``<prefix>-*``)."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    return [n for n in names if n.startswith(prefix + "-")]


def down(prefix: str = DEFAULT_PREFIX) -> list[str]:
    """Remove the lab ``prefix`` by name alone: works after a crash of the process that
    built it. Kills the processes recorded by PID (when they still run our command) and
    every process inside its namespaces, deletes the namespaces (their links go with
    them) and the lab's state directory. Returns what it removed."""
    if not prefix.startswith(NETNS_PREFIX) or "/" in prefix:
        raise LabError(f"prefix: {prefix!r} must start with {NETNS_PREFIX!r}")
    removed: list[str] = []
    sdir = state_dir(prefix)
    try:
        pids = json.loads((sdir / "lab.json").read_text()).get("pids", {})
    except (OSError, ValueError):
        pids = {}
    inodes = set()
    for name in lab_namespaces(prefix):
        with contextlib.suppress(OSError):
            inodes.add(os.stat(f"/run/netns/{name}").st_ino)
    for key, pid in pids.items():
        if _is_ours(int(pid), str(sdir), inodes):
            _kill(int(pid))
            removed.append(f"process {pid} ({key})")
    for name in reversed(lab_namespaces(prefix)):
        for pid in subprocess.run(
            ["ip", "netns", "pids", name], capture_output=True, text=True, check=False
        ).stdout.split():
            _kill(int(pid))
            removed.append(f"process {pid} (in {name})")
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
        removed.append(f"namespace {name}")
        remove_director_state(name)  # named after its namespace
    if sdir.exists():
        shutil.rmtree(sdir, ignore_errors=True)
        removed.append(f"directory {sdir}")
    return removed


def _is_ours(pid: int, sdir: str, inodes: set[int]) -> bool:
    """Only kill a recorded PID while it is still a process of this lab (PIDs are
    reused): it runs inside one of the lab's namespaces, or names the lab's directory."""
    try:
        if os.stat(f"/proc/{pid}/ns/net").st_ino in inodes:
            return True
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return sdir in cmdline


def _kill(pid: int) -> None:
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGKILL)
