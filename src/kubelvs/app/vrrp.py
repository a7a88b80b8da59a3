"""The director's VRRP announcer: keepalived, run and supervised by the director, holds
the VIPs while this director is the master (docs/ha.md).

    director step -> update(spec, VIPs)   keepalived.conf rewritten when it changed,
                                          keepalived started, or reloaded (SIGHUP)
    keepalived    -> notify_fifo          INSTANCE "kubelvs_51" MASTER 150: the role
                                          of each virtual router, in the state file

keepalived runs in the director's namespace, in the foreground, as a child that gets
SIGTERM if the director dies (``PR_SET_PDEATHSIG``): a dead director leaves no VIP held
behind it. keepalived removes the VIPs when it stops, and its last advert has priority 0,
so the backup takes over at once on a planned stop. If keepalived exits, it is started
again (1 s, doubling to 30 s); meanwhile the backup holds the VIPs.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ..sources.vrrp import VrrpSpec
from .keepalived import instances, render

__all__ = ["KEEPALIVED", "VrrpAnnouncer", "parse_notify"]

log = logging.getLogger("kubelvs.vrrp")

KEEPALIVED = "keepalived"
_PR_SET_PDEATHSIG = 1
RESTART_FIRST, RESTART_MAX = 1.0, 30.0
#: Seconds after a start before a reload (SIGHUP) is sent: keepalived dies of a SIGHUP
#: that comes before it set its signal handlers.
RELOAD_AFTER = 1.0


def _die_with_parent() -> None:  # runs in the child between fork and exec
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def parse_notify(line: str) -> tuple[str, str] | None:
    """``INSTANCE "kubelvs_51" MASTER 150`` -> (``kubelvs_51``, ``MASTER``); None otherwise."""
    parts = line.split()
    if len(parts) >= 3 and parts[0] == "INSTANCE":
        return parts[1].strip('"'), parts[2]
    return None


class VrrpAnnouncer:
    """keepalived for the VIPs the director serves, while ``run`` runs."""

    def __init__(
        self,
        runtime_dir: Path,
        *,
        netns: str | None,
        priority: int | None,
        router_id: str,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.on_change = on_change  # the role of a virtual router changed (or keepalived stopped)
        self.dir = runtime_dir
        self.netns = netns
        self.priority = priority
        self.router_id = router_id
        self.config = runtime_dir / "keepalived.conf"
        self.fifo = runtime_dir / "notify.fifo"
        self._wanted: str | None = None  # the configuration keepalived should run; None: none
        self._changed = asyncio.Event()
        self.roles: dict[str, tuple[str, float]] = {}  # instance -> (state, since: wall time)
        self.pid: int | None = None
        self.starts = 0
        self._reader: asyncio.Task[None] | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._relay_task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ desired

    def update(self, spec: VrrpSpec | None, vips: Iterable[str]) -> None:
        """What keepalived should hold now (called after every director step)."""
        held = instances(spec, vips, priority=self.priority) if spec is not None else []
        text = render(spec, held, fifo=self.fifo, router_id=self.router_id) if spec and held else None
        if text != self._wanted:
            self._wanted = text
            self._changed.set()

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

    # ------------------------------------------------------------------ running

    async def run(self, stop: asyncio.Event) -> None:
        backoff = RESTART_FIRST
        stopped = asyncio.create_task(stop.wait())
        try:
            while not stop.is_set():
                if self._wanted is None:
                    changed = asyncio.create_task(self._changed.wait())
                    await asyncio.wait({changed, stopped}, return_when=asyncio.FIRST_COMPLETED)
                    changed.cancel()
                    self._changed.clear()
                    continue
                proc = await self._start()
                started = time.monotonic()
                await self._supervise(proc, stopped)
                if stop.is_set():
                    break
                if proc.returncode is not None:  # it died: start again, later each time
                    if time.monotonic() - started > 60:
                        backoff = RESTART_FIRST
                    log.error(
                        "keepalived exited with status %s; starting it again in %.0f s",
                        proc.returncode,
                        backoff,
                    )
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(stopped), backoff)
                    backoff = min(backoff * 2, RESTART_MAX)
        finally:  # also when cancelled: a director that stops takes its VIPs with it
            stopped.cancel()
            if self._proc is not None and self._proc.returncode is None:
                await self._stop(self._proc)
            if self._reader is not None:
                self._reader.cancel()
                await asyncio.gather(self._reader, return_exceptions=True)

    async def _supervise(self, proc: asyncio.subprocess.Process, stopped: asyncio.Task[Any]) -> None:
        """Until keepalived exits or the director stops: reload it when its config changes."""
        exited = asyncio.create_task(proc.wait())
        ready_at = time.monotonic() + RELOAD_AFTER
        try:
            while True:
                changed = asyncio.create_task(self._changed.wait())
                done, _ = await asyncio.wait({exited, changed, stopped}, return_when=asyncio.FIRST_COMPLETED)
                changed.cancel()
                if exited in done:
                    self._lost()
                    return
                if stopped in done or self._wanted is None:
                    await self._stop(proc)
                    return
                # SIGHUP before keepalived set its handlers would kill it.
                if (wait := ready_at - time.monotonic()) > 0:
                    await asyncio.wait({exited, stopped}, timeout=wait)
                    continue  # look again: it may have exited, or be told to stop
                self._changed.clear()
                self._write()
                log.info("keepalived: configuration changed, reloading")
                proc.send_signal(signal.SIGHUP)
        finally:
            if not exited.done():
                exited.cancel()

    async def _start(self) -> asyncio.subprocess.Process:
        if self._reader is None:  # the first start: the FIFO before keepalived writes to it
            self.dir.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                self.fifo.unlink()
            os.mkfifo(self.fifo, 0o600)
            self._reader = asyncio.create_task(self._read_notifications())
        self._changed.clear()  # what it starts with is the latest: no reload for it
        self._write()
        pids = [self.dir / "keepalived.pid", self.dir / "vrrp.pid"]
        for stale in pids:  # a killed keepalived leaves them, and then refuses to start
            stale.unlink(missing_ok=True)
        argv = [KEEPALIVED, "--dont-fork", "--log-console", "--vrrp", "--use-file", str(self.config)]
        argv += ["--pid", str(pids[0]), "--vrrp_pid", str(pids[1])]
        if self.netns is not None:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        self._proc, self.pid = proc, proc.pid
        self.starts += 1
        log.info("keepalived started (pid %d): %s", proc.pid, self.config)
        assert proc.stdout is not None
        self._relay_task = asyncio.create_task(self._relay(proc.stdout))
        return proc

    async def _stop(self, proc: asyncio.subprocess.Process) -> None:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)  # keepalived drops the VIPs, advertises priority 0
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        self._lost()

    def _lost(self) -> None:
        self.pid = None
        now = time.time()
        self.roles = {name: ("STOPPED", now) for name in self.roles}
        self.on_change()

    def _write(self) -> None:
        assert self._wanted is not None
        tmp = self.config.with_suffix(".tmp")
        tmp.write_text(self._wanted)
        os.replace(tmp, self.config)

    async def _relay(self, stream: asyncio.StreamReader) -> None:
        """keepalived's own log lines into the director's log."""
        while line := await stream.readline():
            text = line.decode(errors="replace").rstrip()
            # keepalived prefixes its console lines with a date: the director's log has its own.
            log.info(
                "keepalived: %s", text.split(": ", 1)[1] if text[:3].isalpha() and ": " in text else text
            )

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
                    log.info("vrrp %s: %s", name, state)
                    self.roles[name] = (state, time.time())
                    self.on_change()
        finally:
            transport.close()
