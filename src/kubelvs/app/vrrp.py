"""The director's VRRP announcer: keepalived, run and supervised by the director, holds
the VIPs while this director is the master (docs/ha.md).

    director step -> update(spec, VIPs)   keepalived.conf rewritten when it changed,
                                          keepalived started, or reloaded (SIGHUP)
    keepalived    -> notify_fifo          INSTANCE "kubelvs_51" MASTER 150: the role
                                          of each virtual router, in the state file

keepalived removes the VIPs when it stops, and its last advert has priority 0, so the
backup takes over at once on a planned stop; it gets SIGTERM when the director dies
(app/daemon.py). If it exits, it is started again; meanwhile the backup holds the VIPs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ..sources.vrrp import VrrpSpec
from .daemon import SupervisedDaemon
from .keepalived import Instance, instance_name, instances, render

__all__ = ["KEEPALIVED", "VrrpAnnouncer", "parse_notify"]

KEEPALIVED = "keepalived"


def parse_notify(line: str) -> tuple[str, str] | None:
    """``INSTANCE "kubelvs_51" MASTER 150`` -> (``kubelvs_51``, ``MASTER``); None otherwise."""
    parts = line.split()
    if len(parts) >= 3 and parts[0] == "INSTANCE":
        return parts[1].strip('"'), parts[2]
    return None


class VrrpAnnouncer(SupervisedDaemon):
    """keepalived for the VIPs the director serves, while ``run`` runs."""

    name = "keepalived"

    def __init__(
        self,
        runtime_dir: Path,
        *,
        netns: str | None,
        priority: int | None,
        router_id: str,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        super().__init__(runtime_dir, "keepalived.conf", netns=netns, on_change=on_change)
        self.priority = priority
        self.router_id = router_id
        self.fifo = runtime_dir / "notify.fifo"
        self.roles: dict[str, tuple[str, float]] = {}  # instance -> (state, since: wall time)
        self.held: list[Instance] = []  # the instances keepalived is configured with
        self._reader: asyncio.Task[None] | None = None

    def update(self, spec: VrrpSpec | None, vips: Iterable[str]) -> None:
        """What keepalived should hold now (called after every director step)."""
        held = instances(spec, vips, priority=self.priority) if spec is not None else []
        self.held = held
        self.set_config(
            render(spec, held, fifo=self.fifo, router_id=self.router_id) if spec and held else None
        )

    def vips_of_instances(self) -> dict[str, tuple[str, ...]]:
        return {instance_name(i.virtual_router_id): i.vips for i in self.held}

    def document(self) -> dict[str, Any]:
        """For the state file (``kubelvs status``)."""
        return {
            "running": self.pid is not None,
            "pid": self.pid,
            "starts": self.starts,
            "instances": {
                name: {"state": s, "since": round(t, 3)} for name, (s, t) in sorted(self.roles.items())
            },
        }

    @property
    def master(self) -> bool:
        return any(state == "MASTER" for state, _ in self.roles.values())

    # ------------------------------------------------------------------ the daemon

    def argv(self) -> list[str]:
        pids = [self.dir / "keepalived.pid", self.dir / "vrrp.pid"]
        for stale in pids:  # a killed keepalived leaves them, and then refuses to start
            stale.unlink(missing_ok=True)
        return [
            KEEPALIVED,
            "--dont-fork",
            "--log-console",
            "--vrrp",
            "--use-file",
            str(self.config),
            "--pid",
            str(pids[0]),
            "--vrrp_pid",
            str(pids[1]),
        ]

    async def prepare(self) -> None:
        # The FIFO exists before keepalived writes to it.
        with contextlib.suppress(FileNotFoundError):
            self.fifo.unlink()
        os.mkfifo(self.fifo, 0o600)
        self._reader = asyncio.create_task(self._read_notifications())

    def stopped(self) -> None:
        now = time.time()
        self.roles = {name: ("STOPPED", now) for name in self.roles}

    async def run(self, stop: asyncio.Event) -> None:
        try:
            await super().run(stop)
        finally:
            if self._reader is not None:
                self._reader.cancel()
                await asyncio.gather(self._reader, return_exceptions=True)

    async def _read_notifications(self) -> None:
        """keepalived's notify_fifo. Opened read-write: no end of file when keepalived
        restarts (a FIFO reader sees EOF when its last writer closes)."""
        fd = os.open(self.fifo, os.O_RDWR | os.O_NONBLOCK)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", buffering=0)
        )
        try:
            while line := await reader.readline():
                parsed = parse_notify(line.decode(errors="replace"))
                if parsed is None:
                    continue
                name, state = parsed
                if self.roles.get(name, ("", 0.0))[0] != state:
                    self.log.info("vrrp %s: %s", name, state)
                    self.roles[name] = (state, time.time())
                    self.on_change()
        finally:
            transport.close()
