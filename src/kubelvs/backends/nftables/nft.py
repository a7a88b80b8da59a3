"""Running the ``nft`` command inside a network namespace.

The child inherits the namespace of the thread that forks it, so ``nft`` runs inside
``entered(netns)``; no ``ip netns exec`` process in between.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

from ...errors import BackendError, BackendUnavailable
from ...kernel.netns import entered

__all__ = ["Nft", "NftError"]


class NftError(BackendError):
    """``nft`` refused a command; ``stderr`` is its message, ``line`` the input line it names."""

    def __init__(self, message: str, stderr: str, line: int | None) -> None:
        self.stderr = stderr
        self.line = line
        super().__init__(message)


class Nft:
    def __init__(self, *, netns: str | None) -> None:
        path = shutil.which("nft")
        if path is None:
            raise BackendUnavailable("the nft command is not installed (Debian package nftables)")
        self.path = path
        self.netns = netns

    def _run(self, args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        with entered(self.netns):
            return subprocess.run([self.path, *args], input=stdin, capture_output=True, text=True, check=False)

    def list_table(self, family: str, table: str) -> dict[str, Any] | None:
        """The table as nft JSON, or None when it does not exist."""
        proc = self._run(["-j", "list", "table", family, table])
        if proc.returncode != 0:
            if "No such file or directory" in proc.stderr:
                return None
            raise BackendError(f"nft list table {family} {table}: {proc.stderr.strip()}")
        doc: dict[str, Any] = json.loads(proc.stdout)
        return doc

    def run_script(self, script: str) -> None:
        """Apply ``script`` (nft text) as ONE transaction: all of it or nothing."""
        proc = self._run(["-f", "-"], stdin=script)
        if proc.returncode != 0:
            line = _error_line(proc.stderr)
            message = f"nft rejected the transaction: {_first_error(proc.stderr)}{_quote(script, line)}"
            raise NftError(message, proc.stderr, line)

    def check_script(self, script: str) -> str | None:
        """Dry run (``nft -c``): None when the kernel would accept ``script``, else the error."""
        proc = self._run(["-c", "-f", "-"], stdin=script)
        return None if proc.returncode == 0 else _first_error(proc.stderr)


def _first_error(stderr: str) -> str:
    for line in stderr.splitlines():
        if "Error:" in line:
            return line.split("Error:", 1)[1].strip()
    return stderr.strip() or "unknown error"


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
