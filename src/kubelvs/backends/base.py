"""The interface every kernel data plane implements, and how one is chosen.

Backends are the only code that touches the kernel's load-balancing state. They
read the whole table at once and apply a plan; they never decide what to change.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import Literal, Protocol, Self

from ..errors import BackendUnavailable, FieldError
from ..model import (
    ConnectionSync,
    DesiredState,
    FlowEntry,
    ObservedState,
    Prediction,
    RealServerKey,
    RealServerStats,
    ServiceKey,
)
from ..planner import Operation

__all__ = ["Backend", "BackendName", "ipvs_available", "open_backend"]

BackendName = Literal["auto", "ipvs", "nftables"]


class Backend(Protocol):
    """A kernel load-balancing data plane in one network namespace."""

    name: str
    #: Whether a real server's connections are the kernel's to count and end with it
    #: (IPVS: its connection entries), so that a drain waits for them. False: a leaving
    #: real server has none to wait for (``read_stats`` would say 0), and the director
    #: does not ask.
    tracks_connections: bool

    def read(self, *, sysctls: Iterable[str] = ()) -> ObservedState:
        """The whole table: services, real servers, counters, timeouts, and the named sysctls."""
        ...

    def read_stats(
        self, keys: Iterable[ServiceKey]
    ) -> Mapping[tuple[ServiceKey, RealServerKey], RealServerStats]:
        """The counters of these services' real servers only, fresh from the kernel: what
        the director needs to decide whether a leaving real server still has connections,
        at O(those services) instead of a whole read. Services that do not exist are left out."""
        ...

    def apply(self, ops: Sequence[Operation]) -> None:
        """Apply ``ops`` in order, as many as the kernel accepts.

        When some fail, the others are still applied, and ``PartialApplyError`` lists
        every operation NOT applied (refused by the kernel, or left out because an
        earlier operation of its service failed); every operation it does not list was
        applied. So, unless someone else changed the table meanwhile, the kernel holds
        ``planner.apply_ops(before, ops minus the listed ones)``: a refusal affects only
        its service. (IPVS pipelines requests: operations of a service sent in the same
        batch as its refused one are processed by the kernel too; nftables and the
        in-memory backend leave them out.) Raises BackendError when the data plane
        could not be used at all."""
        ...

    def changed_elsewhere(self) -> bool:
        """True when something other than this backend may have changed its part of
        the kernel's table since this backend last read or applied it. Must be cheap
        (the director asks every second): nftables compares the ruleset's generation
        id. A backend that cannot tell cheaply returns False (the periodic full resync
        still repairs it)."""
        ...

    def problems(self, desired: DesiredState) -> list[FieldError]:
        """What in ``desired`` this backend or kernel cannot do (empty when all is possible)."""
        ...

    def sync_connections(self, wanted: ConnectionSync) -> list[str]:
        """Make sure the kernel's connection sync runs as ``wanted`` (started if missing,
        never stopped or changed: a daemon with other settings is someone else's, and
        BackendError says so). Returns what it started. CapabilityError when this data
        plane has no connection state to share."""
        ...

    def predict(self, key: ServiceKey, client: str, client_port: int | None) -> Prediction:
        """Which real server a new flow from ``client`` gets (``kubelvs explain``),
        computed as this data plane's kernel computes it, or why it cannot be."""
        ...

    def connection_of(self, key: ServiceKey, client: str, client_port: int | None) -> FlowEntry | None:
        """The entry of the connection state that decides this flow before any scheduler
        (its own connection; IPVS persistence: the client's template); None: none, or no
        connection state to look in."""
        ...

    def refresh(self) -> list[str]:
        """Upkeep of what the programmed state depends on outside the plan (nftables DR:
        the real servers' MAC addresses). Called on every full sync; returns what changed."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Closes the backend."""
        ...


def ipvs_available() -> bool:
    """True when the kernel has IPVS, loading the module if it is one."""
    if os.path.exists("/proc/net/ip_vs"):
        return True
    import subprocess  # only when the module must be loaded: start-up of one-shot commands

    subprocess.run(["modprobe", "-q", "ip_vs"], check=False, capture_output=True)
    return os.path.exists("/proc/net/ip_vs")


def open_backend(name: BackendName = "auto", *, netns: str | None = None) -> Backend:
    """Open the named backend in ``netns`` (None: the current namespace).

    ``auto`` picks IPVS when the kernel has it, nftables otherwise.
    """
    if name == "auto":
        name = "ipvs" if ipvs_available() else "nftables"
    if name == "ipvs":
        from .ipvs import IpvsBackend

        return IpvsBackend(netns=netns)
    if name == "nftables":
        from .nftables import NftablesBackend

        return NftablesBackend(netns=netns)
    raise BackendUnavailable(f"unknown backend {name!r} (use auto, ipvs or nftables)")
