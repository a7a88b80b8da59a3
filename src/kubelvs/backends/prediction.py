"""What ``kubelvs explain`` says of a new flow, whatever the data plane."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Prediction"]


@dataclass(frozen=True, slots=True)
class Prediction:
    """Which real server a new flow gets, and why (``realserver`` None: none, or not
    predictable from the table alone: ``predictable`` says which)."""

    realserver: str | None  # "10.240.0.101:80"
    predictable: bool
    why: str
    slot: int | None = None
    slots: int | None = None
