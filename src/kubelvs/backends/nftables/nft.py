"""Running nft transactions inside a network namespace (nftables backend, I/O).

Through libnftables in this process (the library the ``nft`` command is a thin
wrapper of) when it can be loaded, else through the ``nft`` command. A one-real-server
change is a transaction of a few elements: starting ``nft`` for it cost 5 ms of CPU
and 8-16 ms of wall time, the library call 1 ms. Either way the transaction runs in
the namespace of the calling thread, so both run inside ``entered(netns)``; no
``ip netns exec`` process in between.

Transactions are nft *text*: nft 1.0.6's JSON input crashes on ``dnat`` from a named
concatenated map (SIGSEGV), silently drops a ``ct timeout`` policy and asserts on
``delete ct timeout``; text has none of these bugs. A rejected transaction raises
``NftError`` with every place nft's messages point at (for an element the kernel
refused, nft 1.0.6 names its line and columns), which is how the backend finds the
service at fault; ``check`` runs a transaction without committing it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
import shutil
import subprocess

from ...errors import BackendError, BackendUnavailable
from ...kernel.netns import entered

__all__ = ["Nft", "NftError"]


class NftError(BackendError):
    """``nft`` refused a command; ``stderr`` is its message, ``line`` the input line it
    names first, ``locations`` every (line, first column, last column) its errors name
    (1-based, as nft counts)."""

    def __init__(self, message: str, stderr: str, line: int | None) -> None:
        self.stderr = stderr
        self.line = line
        self.reason = _first_error(stderr)
        self.locations = _error_locations(stderr)
        super().__init__(message)


class Nft:
    def __init__(self, *, netns: str | None) -> None:
        path = shutil.which("nft")
        if path is None:
            raise BackendUnavailable("the nft command is not installed (Debian package nftables)")
        self.path = path
        self.netns = netns
        self._ctx: _Context | None = None

    def _run(self, args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        with entered(self.netns):
            return subprocess.run(
                [self.path, *args], input=stdin, capture_output=True, text=True, check=False
            )

    def run_script(self, script: str) -> None:
        """Apply ``script`` (nft text) as ONE transaction: all of it or nothing."""
        error = self._execute(script, dry_run=False)
        if error is not None:
            raise error

    def check(self, script: str) -> NftError | None:
        """What nft and the kernel say about ``script`` as one transaction, committing
        nothing (``nft --check``: the kernel validates the whole batch, then aborts it;
        the ruleset generation does not move). None when it would be accepted."""
        return self._execute(script, dry_run=True)

    def _execute(self, script: str, *, dry_run: bool) -> NftError | None:
        lib = _library()
        if lib is not None:
            with entered(self.netns):
                if self._ctx is None:  # its netlink socket belongs to the namespace it is made in
                    self._ctx = _Context(lib)
                failed, stderr = self._ctx.run(script, dry_run=dry_run)
        else:
            proc = self._run(["-c", "-f", "-"] if dry_run else ["-f", "-"], stdin=script)
            failed, stderr = proc.returncode != 0, proc.stderr
        if not failed:
            return None
        line = _error_line(stderr)
        return NftError(
            f"nft rejected the transaction: {_first_error(stderr)}{_quote(script, line)}", stderr, line
        )

    def close(self) -> None:
        if self._ctx is not None:
            self._ctx.free()
            self._ctx = None


def _first_error(stderr: str) -> str:
    for line in stderr.splitlines():
        if "Error:" in line:
            return line.split("Error:", 1)[1].strip()
    return stderr.strip() or "unknown error"


# "/proc/self/fd/3:12:46-64: Error: ..." (or ":12:46: Error:") names the line and columns.
_LOCATION = re.compile(r":(\d+):(\d+)(?:-(\d+))?: Error:")


def _error_locations(stderr: str) -> list[tuple[int, int, int]]:
    out = []
    for m in _LOCATION.finditer(stderr):
        first = int(m.group(2))
        out.append((int(m.group(1)), first, int(m.group(3) or first)))
    return out


def _error_line(stderr: str) -> int | None:
    # "/dev/stdin:12:1-20: Error: ..." names the failing input line.
    for line in stderr.splitlines():
        if "Error:" in line:
            parts = line.split(":")
            if len(parts) > 2 and parts[1].isdigit():
                return int(parts[1])
    return None


def _quote(script: str, line: int | None) -> str:
    if line is None:
        return ""
    lines = script.splitlines()
    if not 0 < line <= len(lines):
        return ""
    text = lines[line - 1]
    return f" (in: {text[:200]}{'...' if len(text) > 200 else ''})"


class _Context:
    """One libnftables context (``struct nft_ctx``), its output and errors buffered."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self._lib = lib
        self._ptr = lib.nft_ctx_new(0)  # NFT_CTX_DEFAULT
        if not self._ptr:
            raise BackendUnavailable("libnftables: nft_ctx_new failed")
        lib.nft_ctx_buffer_output(self._ptr)  # nothing on our stdout/stderr
        lib.nft_ctx_buffer_error(self._ptr)

    def run(self, script: str, *, dry_run: bool = False) -> tuple[bool, str]:
        """(failed, error text) of ``script`` run as one transaction (``dry_run``: checked
        by the kernel, not committed).

        The script goes in as a file (an anonymous memfd): for input from a buffer
        libnftables 1.0.6 names no line number and quotes the buffer's first line as
        the failing one; for a file its errors are those of ``nft -f``."""
        fd = os.memfd_create("kubelvs-nft", os.MFD_CLOEXEC)
        try:
            data = memoryview(script.encode())
            while data:
                data = data[os.write(fd, data) :]
            self._lib.nft_ctx_set_dry_run(self._ptr, dry_run)
            try:
                rc = self._lib.nft_run_cmd_from_filename(self._ptr, f"/proc/self/fd/{fd}".encode())
            finally:
                self._lib.nft_ctx_set_dry_run(self._ptr, False)
        finally:
            os.close(fd)
        # Reading a buffer also empties it for the next command.
        self._lib.nft_ctx_get_output_buffer(self._ptr)
        errors = self._lib.nft_ctx_get_error_buffer(self._ptr) or b""
        return rc != 0, errors.decode(errors="replace")

    def free(self) -> None:
        if self._ptr:
            self._lib.nft_ctx_free(self._ptr)
            self._ptr = None


_LIB: ctypes.CDLL | None = None
_LIB_TRIED = False


def _library() -> ctypes.CDLL | None:
    """libnftables, loaded once; None when it is not installed (the nft command is used)."""
    global _LIB, _LIB_TRIED
    if not _LIB_TRIED:
        _LIB_TRIED = True
        try:
            lib = ctypes.CDLL(ctypes.util.find_library("nftables") or "libnftables.so.1")
        except OSError:
            return None
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        for name in ("nft_ctx_buffer_output", "nft_ctx_buffer_error"):
            getattr(lib, name).argtypes = [ctypes.c_void_p]
        for name in ("nft_ctx_get_output_buffer", "nft_ctx_get_error_buffer"):
            getattr(lib, name).argtypes = [ctypes.c_void_p]
            getattr(lib, name).restype = ctypes.c_char_p
        lib.nft_run_cmd_from_filename.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_ctx_set_dry_run.argtypes = [ctypes.c_void_p, ctypes.c_bool]
        lib.nft_ctx_set_dry_run.restype = None
        _LIB = lib
    return _LIB
