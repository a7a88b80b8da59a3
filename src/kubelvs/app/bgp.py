"""The director's BGP announcer: bird, run and supervised by the director, announces the
VIPs this director can serve (docs/ha.md).

    director step -> update(spec, VIPs)   bird.conf rewritten when the set changed;
                                          ``birdc configure`` (no session is reset)
    every second  -> birdc show protocols  each session's state, for the state file
    planned stop  -> every route withdrawn, ``withdraw_delay`` seconds for the routers
                     to move the flows, then bird stops

A VIP is announced once the director has programmed it and while at least one of its
real servers may take traffic (the caller decides: app/director.py). A dead director's
routes go with its BGP sessions (BFD: in ``bfd_interval x bfd_multiplier``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ..sources.bgp import BgpSpec
from .bird import announceable, parse_protocols, peer_protocol, render
from .daemon import SupervisedDaemon

__all__ = ["BIRD", "BIRDC", "BgpAnnouncer"]

BIRD, BIRDC = "bird", "birdc"
POLL_SECONDS = 1.0


class BgpAnnouncer(SupervisedDaemon):
    name = "bird"

    def __init__(
        self, runtime_dir: Path, *, netns: str | None, on_change: Callable[[], None] = lambda: None
    ) -> None:
        super().__init__(runtime_dir, "bird.conf", netns=netns, on_change=on_change)
        self.socket = runtime_dir / "bird.ctl"
        self.spec: BgpSpec | None = None
        self.announced: tuple[str, ...] = ()
        self.sessions: dict[str, str] = {}  # peer address -> BGP state (Established, Active, ...)

    def update(self, spec: BgpSpec | None, vips: Iterable[str]) -> None:
        """What to announce now (called after every director step): the VIPs among ``vips``
        that a peer of their family receives."""
        self.spec = spec
        self.announced = tuple(sorted(announceable(spec, vips)))
        self.set_config(render(spec, self.announced) if spec is not None else None)

    def document(self) -> dict[str, Any]:
        return {
            "running": self.pid is not None,
            "pid": self.pid,
            "starts": self.starts,
            "announced": list(self.announced),
            "sessions": dict(sorted(self.sessions.items())),
        }

    # ------------------------------------------------------------------ the daemon

    def argv(self) -> list[str]:
        (self.dir / "bird.pid").unlink(missing_ok=True)
        return [BIRD, "-f", "-c", str(self.config), "-s", str(self.socket), "-P", str(self.dir / "bird.pid")]

    async def birdc(self, *command: str) -> str:
        argv = [BIRDC, "-s", str(self.socket), *command]
        if self.netns is not None:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 10)
        return out.decode(errors="replace")

    async def reload(self, proc: asyncio.subprocess.Process) -> None:
        out = await self.birdc("configure")
        if "Reconfigured" not in out and "Reconfiguration in progress" not in out:
            self.log.error("bird did not take its new configuration: %s", out.strip())

    async def before_stop(self, proc: asyncio.subprocess.Process) -> None:
        if self.spec is None or not self.announced:
            return
        self.announced = ()
        self._wanted = render(self.spec, ())
        self._write()
        await self.reload(proc)
        self.log.info("bird: every VIP withdrawn; stopping in %.1f s", self.spec.withdraw_delay)
        await asyncio.sleep(self.spec.withdraw_delay)

    def stopped(self) -> None:
        self.sessions = {}

    async def run(self, stop: asyncio.Event) -> None:
        poll = asyncio.create_task(self._poll(stop))
        try:
            await super().run(stop)
        finally:
            poll.cancel()
            await asyncio.gather(poll, return_exceptions=True)

    async def _poll(self, stop: asyncio.Event) -> None:
        """Each session's state, every second, while bird runs."""
        while not stop.is_set():
            await asyncio.sleep(POLL_SECONDS)
            if self.pid is None or self.spec is None:
                continue
            with contextlib.suppress(OSError, TimeoutError):
                states = parse_protocols(await self.birdc("show", "protocols"))
                names = {peer_protocol(p.address): p.address for p in self.spec.peers}
                sessions = {names[n]: state for n, state in states.items() if n in names}
                if sessions != self.sessions:
                    self.sessions = sessions
                    self.on_change()
