"""What ``kubelvs explain`` says of one flow, whatever the data plane: the entry of the
connection table that decides it, and the scheduler's choice for a new flow."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FlowEntry", "Prediction"]


@dataclass(frozen=True, slots=True)
class Prediction:
    """Which real server a new flow gets, and why (``realserver`` None: none, or not
    predictable from the table alone: ``predictable`` says which)."""

    realserver: str | None  # "10.240.0.101:80"
    predictable: bool
    why: str
    slot: int | None = None
    slots: int | None = None


@dataclass(frozen=True, slots=True)
class FlowEntry:
    """An entry of the data plane's connection state that sends the flow to its real
    server before any scheduler is asked: the flow's own connection, or (IPVS
    persistence) the client's template."""

    realserver: str  # "10.240.0.101:80"
    kind: str  # "connection" or "persistence template"
    state: str  # the kernel's: ESTABLISHED, TIME_WAIT, NONE (a template) ...
