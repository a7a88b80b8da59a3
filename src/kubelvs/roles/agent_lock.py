"""One node agent per network namespace: an exclusive ``flock`` on a lock file with the
holder's PID in it. A second agent, or ``kubelvs node --revert`` while one runs, gets a
clear error naming the PID instead of undoing what the running agent keeps in place.
The kernel releases the lock of a killed holder; the holder removes the file on release."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from ..errors import NodeError

__all__ = ["AgentLock"]


def _holder_pid(fd: int) -> str:
    """The PID a lock holder wrote into the lock file ("unknown" while it is writing it)."""
    text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return text if text.isdigit() else "unknown"


class AgentLock:
    def __init__(self, path: Path, label: str) -> None:
        self.path = path
        self.label = label  # the namespace, as errors name it
        self._fd: int | None = None

    @property
    def holding(self) -> bool:
        """True while this process holds it through ``hold()``."""
        return self._fd is not None

    def _busy(self, pid: str) -> NodeError:
        return NodeError(
            f"a node agent (pid {pid}) is running for this namespace ({self.label}); stop it first"
            f" (lock {self.path})"
        )

    def _acquire(self) -> int:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise NodeError(f"state dir {self.path.parent}: {exc.strerror or exc}") from exc
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                raise NodeError(f"lock {self.path}: {exc.strerror or exc}") from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                pid = _holder_pid(fd)
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise self._busy(pid) from None
                raise NodeError(f"lock {self.path}: {exc.strerror or exc}") from exc
            # The previous holder removes the file when it lets go: if it did so after we
            # opened it, our lock is on a file nobody else will open. Start over then.
            try:
                current = os.stat(self.path)
            except FileNotFoundError:
                current = None
            mine = os.fstat(fd)
            if current is not None and (current.st_dev, current.st_ino) == (mine.st_dev, mine.st_ino):
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd

    def _release(self, fd: int) -> None:
        try:
            self.path.unlink(missing_ok=True)  # while still holding it: see _acquire
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Hold the lock for the block (the long-running loop); nested use is allowed."""
        if self._fd is not None:
            yield
            return
        fd = self._acquire()
        self._fd = fd
        try:
            yield
        finally:
            self._fd = None
            self._release(fd)

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """The lock for one operation: ours already inside ``hold()``, else taken for it."""
        if self._fd is not None:
            yield
            return
        fd = self._acquire()
        try:
            yield
        finally:
            self._release(fd)

    def holder(self) -> int | None:
        """PID of the process holding it (None: nobody; this process when it holds it
        itself). Reads without taking it."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = _holder_pid(fd)
                return int(pid) if pid.isdigit() else None
            fcntl.flock(fd, fcntl.LOCK_UN)
            return os.getpid() if self._fd is not None else None
        finally:
            os.close(fd)
