"""Kernel data planes: the only code that touches the kernel's load-balancing state."""

from .base import Backend, BackendName, ipvs_available, open_backend

__all__ = ["Backend", "BackendName", "ipvs_available", "open_backend"]
