"""A helper daemon the director runs and supervises (keepalived for VRRP, bird for BGP):
one configuration file, rewritten and reloaded when what it should say changes.

    update(text)  -> the file is written; the daemon started (text not None and it is
                     not running), reloaded (it runs), or stopped (text None)
    it exits      -> started again after 1 s, doubling up to 30 s
    stop          -> ``before_stop`` (e.g. withdraw routes), then SIGTERM

The daemon runs in the director's namespace, in the foreground, as a child that gets
SIGTERM when the director dies (``PR_SET_PDEATHSIG``), so nothing it announces outlives
the director. Its output goes to the director's log.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["RELOAD_AFTER", "RESTART_FIRST", "RESTART_MAX", "SupervisedDaemon"]

_PR_SET_PDEATHSIG = 1
RESTART_FIRST, RESTART_MAX = 1.0, 30.0
#: Seconds after a start before a reload is sent: a daemon may die of a SIGHUP that
#: comes before it set its signal handlers (keepalived does), or refuse a control
#: connection before it listens (bird).
RELOAD_AFTER = 1.0


def _die_with_parent() -> None:  # runs in the child between fork and exec
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class SupervisedDaemon:
    """Subclasses say how to start (``argv``), reload (``reload``) and what to do
    before a stop; this class keeps the daemon running while ``run`` runs."""

    name = "daemon"

    def __init__(
        self,
        runtime_dir: Path,
        config_name: str,
        *,
        netns: str | None,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.on_change = on_change  # what ``document`` shows changed: started, stopped, a state
        self.dir = runtime_dir
        self.netns = netns
        self.config = runtime_dir / config_name
        self.log = logging.getLogger(f"kubelvs.{self.name}")
        self._wanted: str | None = None  # the configuration the daemon should run; None: none
        self._changed = asyncio.Event()
        self.pid: int | None = None
        self.starts = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._relay_task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ for subclasses

    def argv(self) -> list[str]:
        raise NotImplementedError

    async def prepare(self) -> None:
        """Before the first start (the runtime directory exists)."""

    async def reload(self, proc: asyncio.subprocess.Process) -> None:
        proc.send_signal(signal.SIGHUP)

    async def before_stop(self, proc: asyncio.subprocess.Process) -> None:
        """A planned stop, the daemon still running (e.g. withdraw what it announces)."""

    def stopped(self) -> None:
        """The daemon is gone (exited, or stopped)."""

    # ------------------------------------------------------------------ desired

    def set_config(self, text: str | None) -> None:
        if text != self._wanted:
            self._wanted = text
            self._changed.set()

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
                    self.log.error(
                        "%s exited with status %s; starting it again in %.0f s",
                        self.name,
                        proc.returncode,
                        backoff,
                    )
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(stopped), backoff)
                    backoff = min(backoff * 2, RESTART_MAX)
        finally:  # also when cancelled: what the daemon announces goes with the director
            stopped.cancel()
            if self._proc is not None and self._proc.returncode is None:
                await self._stop(self._proc, planned=True)

    async def _supervise(self, proc: asyncio.subprocess.Process, stopped: asyncio.Task[Any]) -> None:
        """Until the daemon exits or the director stops: reload it when its config changes."""
        exited = asyncio.create_task(proc.wait())
        ready_at = time.monotonic() + RELOAD_AFTER
        try:
            while True:
                changed = asyncio.create_task(self._changed.wait())
                done, _ = await asyncio.wait({exited, changed, stopped}, return_when=asyncio.FIRST_COMPLETED)
                changed.cancel()
                if exited in done:
                    self._gone()
                    return
                if stopped in done or self._wanted is None:
                    await self._stop(proc, planned=True)
                    return
                if (wait := ready_at - time.monotonic()) > 0:
                    await asyncio.wait({exited, stopped}, timeout=wait)
                    continue  # look again: it may have exited, or be told to stop
                self._changed.clear()
                self._write()
                self.log.info("%s: configuration changed, reloading", self.name)
                await self.reload(proc)
        finally:
            if not exited.done():
                exited.cancel()

    async def _start(self) -> asyncio.subprocess.Process:
        if self.starts == 0:
            self.dir.mkdir(parents=True, exist_ok=True)
            await self.prepare()
        self._changed.clear()  # what it starts with is the latest: no reload for it
        self._write()
        argv = self.argv()
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
        self.log.info("%s started (pid %d): %s", self.name, proc.pid, self.config)
        self.on_change()
        assert proc.stdout is not None
        self._relay_task = asyncio.create_task(self._relay(proc.stdout))
        return proc

    async def _stop(self, proc: asyncio.subprocess.Process, *, planned: bool) -> None:
        if proc.returncode is None:
            if planned:
                with contextlib.suppress(Exception):  # best effort: the stop goes on
                    await asyncio.wait_for(self.before_stop(proc), 5)
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        self._gone()

    def _gone(self) -> None:
        self.pid = None
        self.stopped()
        self.on_change()

    def _write(self) -> None:
        assert self._wanted is not None
        tmp = self.config.with_suffix(".tmp")
        tmp.write_text(self._wanted)
        os.replace(tmp, self.config)

    async def _relay(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            text = line.decode(errors="replace").rstrip()
            # keepalived prefixes its console lines with a date: the director's log has its own.
            if text[:3].isalpha() and ": " in text:
                text = text.split(": ", 1)[1]
            self.log.info("%s: %s", self.name, text)
