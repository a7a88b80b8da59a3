"""The interface every kernel data plane implements, and how one is chosen.

Backends are the only code that touches the kernel's load-balancing state. They
read the whole table at once and apply a plan; they never decide what to change.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Literal, Protocol

from ..errors import BackendUnavailable, FieldError
from ..model import DesiredState, ObservedState
from ..planner import Operation

__all__ = ["Backend", "BackendName", "open_backend", "ipvs_available"]

BackendName = Literal["auto", "ipvs", "nftables"]


class Backend(Protocol):
    """A kernel load-balancing data plane in one network namespace."""

    name: str

    def read(self, *, sysctls: Iterable[str] = ()) -> ObservedState:
        """The whole table: services, real servers, counters, timeouts, and the named sysctls."""
        ...

    def apply(self, ops: Sequence[Operation]) -> None:
        """Apply ``ops`` in order. On failure raise ApplyError naming the operation;
        the kernel is left in a state from which a new read + plan + apply converges."""
        ...

    def problems(self, desired: DesiredState) -> list[FieldError]:
        """What in ``desired`` this backend or kernel cannot do (empty when all is possible)."""
        ...

    def refresh(self) -> list[str]:
        """Upkeep of what the programmed state depends on outside the plan (nftables DR:
        the real servers' MAC addresses). Called on every full sync; returns what changed."""
        ...

    def close(self) -> None: ...


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
