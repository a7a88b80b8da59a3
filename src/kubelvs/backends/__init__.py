"""Kernel data planes: the only code that touches the kernel's load-balancing state.

``ipvs`` (kernel IPVS over generic netlink), ``nftables`` (the same semantics in nftables
tables) and ``memory`` (an in-memory table: the runnable specification of the protocol).
"""

from .base import Backend, BackendName, ipvs_available, open_backend

__all__ = ["Backend", "BackendName", "ipvs_available", "open_backend"]
