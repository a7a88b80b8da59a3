"""Run code inside a named network namespace (``ip netns add NAME``).

``setns`` changes the namespace of the calling thread only; sockets keep the
namespace they were created in, so a backend opens its sockets inside
``entered(name)`` and then uses them from anywhere.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Iterator

__all__ = ["NETNS_DIR", "current_name", "entered", "entered_fd", "path_of"]

NETNS_DIR = "/run/netns"
_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def path_of(name: str) -> str:
    """The file that names namespace ``name`` (what ``ip netns add NAME`` made)."""
    return os.path.join(NETNS_DIR, name)


@contextlib.contextmanager
def entered_fd(target: int) -> Iterator[None]:
    """Enter the namespace open as file descriptor ``target`` for the block; the
    thread's own namespace is restored afterwards. The caller closes ``target``."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(own)


@contextlib.contextmanager
def entered(name: str | None) -> Iterator[None]:
    """Enter namespace ``name`` for the block (``None``: stay where we are).

    A missing namespace raises FileNotFoundError (from opening its file)."""
    if name is None:
        yield
        return
    target = os.open(path_of(name), os.O_RDONLY)
    try:
        with entered_fd(target):
            yield
    finally:
        os.close(target)


def current_name() -> str | None:
    """The name of the namespace this process runs in, when it is a named one (a program
    started with ``ip netns exec NAME``); None in the host's or an unnamed namespace."""
    try:
        own = os.stat("/proc/self/ns/net").st_ino
        names = os.listdir(NETNS_DIR)
    except OSError:
        return None
    for name in sorted(names):
        try:
            if os.stat(path_of(name)).st_ino == own:
                return name
        except OSError:
            continue
    return None
