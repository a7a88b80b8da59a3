"""Kernel-interface layer: sysctls through /proc/sys.

``read``/``write``/``exists`` act in the calling thread's network namespace (the
backends call them inside ``netns.entered``) and raise OSError as open(2) does;
``read_in``/``write_in``/``conf_devices`` take the namespace by name and raise
KernelError, as the rest of the layer (``kernel.iproute``) does.
"""

from __future__ import annotations

import os

from ..errors import KernelError
from .netns import entered
from .netns import path_of as netns_path

__all__ = ["conf_devices", "exists", "path_of", "read", "read_in", "write", "write_in"]


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


def _where(netns: str | None) -> str:
    return f" in network namespace {netns}" if netns else ""


def _check_namespace(netns: str | None) -> None:
    if netns is not None and not os.path.exists(netns_path(netns)):
        raise KernelError(f"network namespace {netns!r} does not exist")


def read_in(netns: str | None, name: str) -> int | None:
    """``read`` inside namespace ``netns`` (None: the caller's); None when it does not exist."""
    _check_namespace(netns)
    try:
        with entered(netns):
            return read(name)
    except (OSError, ValueError) as exc:
        raise KernelError(f"cannot read sysctl {name}{_where(netns)}: {exc}") from exc


def write_in(netns: str | None, name: str, value: int) -> None:
    """``write`` inside namespace ``netns``; a sysctl that does not exist is an error."""
    _check_namespace(netns)
    try:
        with entered(netns):
            if not exists(name):
                raise KernelError(f"sysctl {name} does not exist{_where(netns)}")
            write(name, value)
    except OSError as exc:
        raise KernelError(f"cannot set sysctl {name}={value}{_where(netns)}: {exc.strerror or exc}") from exc


def conf_devices(netns: str | None) -> list[str]:
    """The entries of net/ipv4/conf: every IPv4 device's name, plus ``all`` and ``default``."""
    _check_namespace(netns)
    with entered(netns):
        return sorted(os.listdir("/proc/sys/net/ipv4/conf"))
