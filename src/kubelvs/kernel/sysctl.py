"""Read and write sysctls through /proc/sys (in the caller's network namespace)."""

from __future__ import annotations

import os

__all__ = ["exists", "path_of", "read", "write"]


def path_of(name: str) -> str:
    """``net.ipv4.vs.conntrack`` -> /proc/sys/net/ipv4/vs/conntrack.

    As with sysctl(8), a name containing '/' is taken as a path, so that interface
    names with dots can be given: ``net/ipv4/conf/eth0.100/rp_filter``.
    """
    return "/proc/sys/" + (name if "/" in name else name.replace(".", "/"))


def read(name: str) -> int | None:
    """The sysctl's integer value, or None when it does not exist here."""
    try:
        with open(path_of(name)) as f:
            return int(f.read().split()[0])
    except FileNotFoundError:
        return None


def write(name: str, value: int) -> None:
    with open(path_of(name), "w") as f:
        f.write(f"{value}\n")


def exists(name: str) -> bool:
    return os.path.exists(path_of(name))
