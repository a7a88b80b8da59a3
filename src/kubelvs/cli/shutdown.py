"""Graceful stop for long-running commands (director, node agent)."""

from __future__ import annotations

import signal
from types import FrameType

__all__ = ["StopFlag"]


class StopFlag:
    """Becomes true on SIGTERM or SIGINT, so a loop can finish its current step and exit 0
    instead of dying half-way through applying a plan."""

    def __init__(self) -> None:
        self._stopping = False
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)

    def _handle(self, _sig: int, _frame: FrameType | None) -> None:
        self._stopping = True

    def __bool__(self) -> bool:
        return self._stopping
