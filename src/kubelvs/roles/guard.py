"""The deletion guard: a long-running director does not delete most of what it serves
in one step on the word of one new desired state.

A config truncated by a NUL byte or a half-written file, a Kubernetes list that came
back empty, an operator's wrong ``-f``: each looks like "delete almost everything" and
is applied within a second. The guard holds back deletions of whole virtual services
when, net of the services the same step adds, they exceed ``max_share`` of the owned
services the kernel holds, until the same deletions have been asked for during
``settle_seconds`` (a mistake is usually corrected sooner) or the operator allowed it
(``kubelvs director --allow-mass-delete``). Everything else in the step (adds, edits,
real-server changes) goes ahead. Pure: the clock is passed in.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from ..model import ServiceKey

__all__ = ["DeletionGuard", "GuardSettings", "HeldDeletion"]


@dataclass(frozen=True, slots=True)
class GuardSettings:
    max_share: float = 0.5
    """Deleting more than this share of the owned services in one step is held back
    (net of the services the step adds: a port edit replaces a key, it loses nothing)."""
    settle_seconds: float = 30.0
    """The same deletions asked for this long go ahead."""
    enabled: bool = True
    """False: ``--allow-mass-delete`` (the operator confirmed)."""


@dataclass(frozen=True, slots=True)
class HeldDeletion:
    """Deletions the guard holds back, and since when (the caller's clock)."""

    keys: frozenset[ServiceKey]
    owned: int  # owned services the kernel held when it tripped
    since: float
    until: float

    def describe(self) -> str:
        return (
            f"holding back the deletion of {len(self.keys)} of {self.owned} owned virtual service(s) "
            f"for {self.until - self.since:.0f} s (more than the deletion guard's share at once); "
            "they go ahead if the desired state stays the same, or run with --allow-mass-delete"
        )


class DeletionGuard:
    def __init__(self, settings: GuardSettings) -> None:
        self.settings = settings
        self.held: HeldDeletion | None = None

    def check(
        self, removed: Collection[ServiceKey], added: int, owned: int, now: float
    ) -> frozenset[ServiceKey]:
        """The keys among ``removed`` (owned services the step deletes) to hold back now;
        empty when the step may go ahead. ``added``: services the step creates;
        ``owned``: owned services in the kernel before the step."""
        s = self.settings
        net = len(removed) - added
        if not s.enabled or not removed or net <= 0 or net <= s.max_share * owned:
            self.held = None
            return frozenset()
        keys = frozenset(removed)
        held = self.held
        if held is None or held.keys != keys:
            held = self.held = HeldDeletion(keys, owned, now, now + s.settle_seconds)
        if now >= held.until:
            self.held = None  # asked for long enough: let it go
            return frozenset()
        return keys
