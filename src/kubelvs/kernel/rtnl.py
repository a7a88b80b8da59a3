"""Kernel-interface layer, plumbing: rtnetlink sockets inside a network namespace.

``kernel.iproute`` builds its typed functions on ``call``: a pyroute2 ``IPRoute``
socket opened inside the namespace it is given (a socket keeps the namespace it was
made in), used for one function's requests and closed; pyroute2's NetlinkError turned
into a ``KernelError`` naming the request, the namespace and the kernel's reason.

pyroute2's synchronous ``IPRoute`` runs its own asyncio loop, which cannot run inside a
thread whose loop is already running (the Kubernetes node agent and the probes call the
layer from one), so there each call runs in a short-lived worker thread that enters the
caller's namespace first.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import importlib
import os
from collections.abc import Callable, Iterator
from typing import Any, TypeVar, cast

from ..errors import KernelError
from . import netns as _netns

__all__ = ["call", "code_of", "index_of", "names", "netlink_error", "reason", "where"]

T = TypeVar("T")

_pyroute2: tuple[Any, type[Exception]] | None = None


def _load() -> tuple[Any, type[Exception]]:
    """pyroute2's IPRoute and NetlinkError, imported on first use: importing pyroute2
    takes a third of a second or more, which a command that never touches a link (a
    dry run, a validation) should not pay."""
    global _pyroute2
    if _pyroute2 is None:
        iproute_class = importlib.import_module("pyroute2").IPRoute
        exceptions = importlib.import_module("pyroute2.netlink.exceptions")
        netlink_error = cast(type[Exception], exceptions.NetlinkError)
        _pyroute2 = (iproute_class, netlink_error)
    return _pyroute2


def netlink_error() -> type[Exception]:
    """pyroute2's NetlinkError (for ``except`` clauses inside ``call``'s function)."""
    return _load()[1]


def code_of(exc: Exception) -> int | None:
    """The errno of a NetlinkError."""
    code = getattr(exc, "code", None)
    return code if isinstance(code, int) else None


def where(netns: str | None) -> str:
    """`` in network namespace NAME`` for messages ("" for the caller's own)."""
    return f" in network namespace {netns}" if netns else ""


def reason(exc: Exception) -> str:
    """The kernel's reason of a NetlinkError, as text."""
    code = code_of(exc)
    text = str(exc.args[1]) if len(exc.args) > 1 and exc.args[1] else ""
    return text or (os.strerror(code) if code else str(exc))


@contextlib.contextmanager
def _socket(netns: str | None) -> Iterator[Any]:
    """An IPRoute socket made inside ``netns`` (it keeps that namespace)."""
    iproute_class = _load()[0]  # imported outside the namespace
    try:
        with _netns.entered(netns):
            try:
                # groups=0: no event subscriptions, this socket only asks and reads answers.
                ipr = iproute_class(groups=0, ext_ack=True)
            except OSError as exc:
                reason = exc.strerror or exc
                raise KernelError(f"cannot open an rtnetlink socket{where(netns)}: {reason}") from exc
    except FileNotFoundError:
        raise KernelError(f"network namespace {netns!r} does not exist") from None
    except OSError as exc:
        raise KernelError(f"cannot enter network namespace {netns!r}: {exc.strerror or exc}") from exc
    try:
        yield ipr
    finally:
        ipr.close()


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def call(netns: str | None, what: str, fn: Callable[[Any], T]) -> T:
    """``fn(ipr)`` with a socket in ``netns``; NetlinkError -> KernelError naming ``what``."""

    def run() -> T:
        with _socket(netns) as ipr:
            try:
                return fn(ipr)
            except netlink_error() as exc:
                raise KernelError(f"{what}{where(netns)}: {reason(exc)}") from exc

    if not _loop_running():
        return run()
    # setns is per thread: the worker enters the calling thread's namespace itself
    # rather than rely on which thread created it.
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:

        def in_worker() -> T:
            with _netns.entered_fd(own):
                return run()

        with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="kubelvs-rtnl") as pool:
            return pool.submit(in_worker).result()
    finally:
        os.close(own)


def index_of(ipr: Any, netns: str | None, name: str) -> int:
    """Device ``name``'s ifindex; KernelError "device 'NAME' does not exist" when none."""
    try:
        (msg,) = ipr.link("get", ifname=name)
    except netlink_error() as exc:
        if code_of(exc) == errno.ENODEV:
            raise KernelError(f"device {name!r} does not exist{where(netns)}") from None
        raise
    return int(msg["index"])


def names(ipr: Any) -> dict[int, str]:
    """ifindex -> device name, for every device of the socket's namespace."""
    return {int(m["index"]): str(m.get("ifname")) for m in ipr.link("dump")}
