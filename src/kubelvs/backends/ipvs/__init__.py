"""Kernel IPVS through generic netlink."""

from .backend import IpvsBackend

__all__ = ["IpvsBackend"]
