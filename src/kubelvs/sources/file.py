"""The YAML config file as a source of the director's desired state.

The file is polled (``poll_seconds``). A change is read only once the file has stayed
the same for ``settle_seconds``: an editor or a configuration manager that rewrites the
file in place (truncate, then write, maybe in several writes) must not make the
director delete the services the half-written file lacks and add them back a second
later. Replacing the file by an atomic rename is still the recommended way
(docs/config.md). A file that goes missing, or is rejected (bad YAML, bad values, not
UTF-8), leaves the last good desired state in force, and the reason is logged once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import KubelvsError
from ..model import DesiredState
from .config import Config, load_config, to_desired
from .desired import DesiredUpdate, SourceGauges, SyncOutcome

__all__ = ["ConfigFileSource", "config_guard", "file_stamp"]

log = logging.getLogger("kubelvs.sources.file")

Stamp = tuple[int, int, int]


def file_stamp(path: Path) -> Stamp | None:
    """When the file last changed (mtime, size, inode); None while it is missing (an
    editor or a configuration manager replacing it by rename)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class ConfigFileSource:
    """The desired state in ``path``, followed as the file changes."""

    coalesce_seconds = 0.0  # the settle time already gathers a burst of writes

    def __init__(
        self,
        path: Path,
        *,
        poll_seconds: float = 1.0,
        settle_seconds: float = 1.0,
        resync_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.poll_seconds = poll_seconds
        self.settle_seconds = settle_seconds
        self.resync_seconds = resync_seconds
        self.clock = clock
        self.description = f"config file {path}"
        self.config: Config | None = None
        self._desired: DesiredState | None = None
        self._loaded: Stamp | None = None  # the stamp of the file the config came from
        self._rejected: Stamp | None = None  # the stamp of the last file rejected (logged once)
        self.rejections = 0

    async def open(self) -> None:
        self._loaded = file_stamp(self.path)
        self.config, self._desired = _load(self.path)

    @property
    def ready(self) -> bool:
        return self._desired is not None

    def start(self, stop: asyncio.Event, wake: Callable[[], None]) -> list[asyncio.Task[None]]:
        return [asyncio.create_task(self._follow(stop, wake))]

    async def _follow(self, stop: asyncio.Event, wake: Callable[[], None]) -> None:
        seen = self._loaded  # the stamp seen at the last poll
        seen_since = self.clock()
        missing_logged = False
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), self.poll_seconds)
                return
            except TimeoutError:
                pass
            stamp = file_stamp(self.path)
            now = self.clock()
            if stamp != seen:
                seen, seen_since = stamp, now
                continue  # changed since the last poll: wait until it settles
            if stamp is None:
                if not missing_logged:
                    log.warning("%s is missing; the kernel keeps the last good state", self.path)
                    missing_logged = True
                continue
            missing_logged = False
            if stamp in (self._loaded, self._rejected) or now - seen_since < self.settle_seconds:
                continue
            try:
                config, desired = await asyncio.to_thread(_load, self.path)
            except KubelvsError as exc:
                self._rejected = stamp
                self.rejections += 1
                log.error(
                    "config rejected, the kernel keeps the last good state (%s):\n  %s",
                    self.path,
                    str(exc).replace("\n", "\n  "),
                )
                continue
            self._loaded, self._rejected = stamp, None
            self.config, self._desired = config, desired
            log.info("%s changed", self.path)
            wake()

    def current(self, *, full: bool) -> DesiredUpdate:
        assert self.config is not None and self._desired is not None, "open() first"
        return DesiredUpdate(
            self._desired,
            None,
            recommended_sysctls=self.config.recommended_sysctls,
            graceful=self.config.graceful,
            deletion_guard=config_guard(self.config),
            vrrp=self.config.vrrp,
            bgp=self.config.bgp,
        )

    async def after_sync(self, outcome: SyncOutcome) -> None:
        pass

    def gauges(self) -> SourceGauges:
        return SourceGauges()

    async def close(self) -> None:
        pass


def _load(path: Path) -> tuple[Config, DesiredState]:
    """The config and its validated desired state; the project's errors when either fails."""
    config = load_config(path)
    return config, to_desired(config)


def config_guard(config: Config) -> tuple[float, float] | None:
    g = config.deletion_guard
    return None if g is None else (g.max_share, g.settle_seconds)
