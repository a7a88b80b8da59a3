"""The running director's own state, published for ``kubelvs status``.

The kernel shows what is programmed; only the director knows what it could not program
(services the kernel refuses, retried with backoff), what it holds back (the deletion
guard) and how healthy each real server is (its checks). It writes that to a small JSON
file after every sync that changes it (atomically: a temporary file renamed over the old
one), one file per network namespace, like keepalived's state dumps; ``kubelvs status``
reads it back beside the kernel's table.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from ..kernel.netns import current_name
from ..model import ObservedState, RealServerKey, ServiceKey
from ..roles.director import Director
from .health import DirectorHealth

__all__ = [
    "STATE_DIR",
    "DirectorStateFile",
    "daemons_dir",
    "drains_to_restore",
    "read_director_state",
    "remove_director_state",
    "state_path",
]

STATE_DIR = Path("/run/kubelvs/director")


def state_path(netns: str | None, directory: Path = STATE_DIR) -> Path:
    """The state file of the director of ``netns`` (None: the namespace this process runs
    in: its name when it has one, as under ``ip netns exec``, else ``host``)."""
    return directory / f"{netns or current_name() or 'host'}.json"


def remove_director_state(netns: str, directory: Path = STATE_DIR) -> None:
    """Forget the director of ``netns`` once its namespace is gone (a lab's, a test's):
    its state file and its helper daemons' directory."""
    state = state_path(netns, directory)
    state.unlink(missing_ok=True)
    shutil.rmtree(daemons_dir(state), ignore_errors=True)


def daemons_dir(state_file: Path) -> Path:
    """The files of the director's helper daemons (keepalived, bird: configuration, PID
    files, control socket, notify FIFO), by its state file."""
    return state_file.with_name(state_file.stem + ".d")


class DirectorStateFile:
    def __init__(self, path: Path | None, *, backend: str, source: str) -> None:
        self.path = path
        self.backend = backend
        self.source = source
        self._last: dict[str, Any] | None = None

    def write(
        self,
        director: Director,
        health: DirectorHealth | None = None,
        extra: dict[str, Any] | None = None,  # "names", "vrrp", "bgp": documents of the program
    ) -> None:
        if self.path is None:
            return
        doc = self.document(director)
        if health is not None:
            doc["health"] = health.document()
        doc.update(extra or {})
        if doc == self._last:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".state-")
        with os.fdopen(fd, "w") as f:
            json.dump({**doc, "updated": time.time()}, f, indent=1)
        os.replace(tmp, self.path)
        self._last = doc

    def document(self, director: Director) -> dict[str, Any]:
        now_mono, now_wall = director.clock(), time.time()

        def wall(mono: float) -> float:
            return round(now_wall - (now_mono - mono), 3)

        failing = [
            {
                "service": str(f.key),
                "operation": f.operation,
                "reason": f.reason,
                "attempts": f.attempts,
                "since": wall(f.since),
                "retry_at": wall(f.retry_at),
            }
            for f in sorted(director.failures.values(), key=lambda f: ServiceKey.sort_key(f.key))
        ]
        held = director.guard.held if director.guard is not None else None
        picture = director.observed
        drains = [
            {
                "service": str(key),
                "realserver": str(rs),
                "since": wall(since),
                "connections": _connections(picture, key, rs),
            }
            for (key, rs), since in sorted(
                director.drains.items(), key=lambda kv: (kv[0][0].sort_key(), kv[0][1].sort_key())
            )
        ]
        return {
            "pid": os.getpid(),
            "backend": self.backend,
            "source": self.source,
            "failing": failing,
            "drains": drains,
            "held_deletions": None
            if held is None
            else {
                "services": sorted(str(k) for k in held.keys),
                "owned": held.owned,
                "since": wall(held.since),
                "until": wall(held.until),
                "message": held.describe(),
            },
        }


def read_director_state(path: Path) -> dict[str, Any] | None:
    """The state a running director published, or None when there is none (no director,
    or its process is gone: a file left by a killed director is not shown as current)."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict):
        return None
    pid = doc.get("pid")
    if not isinstance(pid, int) or not _alive(pid):
        return None
    return doc


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _connections(picture: ObservedState | None, key: ServiceKey, rs: RealServerKey) -> int | None:
    stats = picture.stats.get((key, rs)) if picture is not None else None
    return None if stats is None else stats.active_conns + stats.inactive_conns


def drains_to_restore(path: Path, now_mono: float) -> dict[tuple[ServiceKey, RealServerKey], float]:
    """The drains a previous run of this director left in its state file, with their start
    on this run's clock: a restart goes on draining them instead of forgetting them (or
    starting their timeout anew). Read whatever process wrote the file."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    drains = doc.get("drains") if isinstance(doc, dict) else None
    out: dict[tuple[ServiceKey, RealServerKey], float] = {}
    now_wall = time.time()
    for entry in drains if isinstance(drains, list) else []:
        try:
            key = ServiceKey.parse(str(entry["service"]))
            rs = RealServerKey.parse(str(entry["realserver"]))
            since = float(entry["since"])
        except (KeyError, TypeError, ValueError):
            continue  # a damaged entry: that drain restarts with the next sync
        out[(key, rs)] = now_mono - max(0.0, now_wall - since)
    return out
