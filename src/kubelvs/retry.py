"""Backoff between retries: 0.5 s doubling up to a cap, with jitter (a leaf module)."""

from __future__ import annotations

import random

__all__ = ["Backoff"]


class Backoff:
    """0.5, 1, 2, 4 ... ``maximum`` seconds with +-20 % jitter; ``reset`` after a success."""

    def __init__(self, maximum: float, *, first: float = 0.5, jitter: float = 0.2) -> None:
        self.maximum, self.first, self.jitter = maximum, first, jitter
        self._next = first

    def reset(self) -> None:
        self._next = self.first

    def next(self) -> float:
        delay = min(self._next, self.maximum)
        self._next = min(self._next * 2, self.maximum)
        return delay * (1 + random.uniform(-self.jitter, self.jitter))
