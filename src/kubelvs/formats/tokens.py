"""Strict readers of the numbers and words found in command output (formats layer).

Why not ``int()`` and ``str.isdigit()``: ``int()`` accepts much more than the tools
print (signs, underscores, surrounding spaces, ``0x`` with base 16, digits of any
script) and raises on strings of 4,300 digits or more; ``isdigit()`` is true for
superscripts that ``int()`` then rejects. The parsers read captures that can hold
anything, so every field goes through these: the result is a number the tool could
have printed, or None - never an exception.
"""

from __future__ import annotations

import ipaddress
import re

__all__ = [
    "MAX_PROBLEMS",
    "decimal",
    "hexadecimal",
    "ip_address",
    "lines",
    "printable",
    "quote",
    "signed_decimal",
]

#: How many problems a parser quotes per file (it counts them all): a file of garbage
#: must not turn into a million problem strings.
MAX_PROBLEMS = 20

_DECIMAL = re.compile(r"[0-9]{1,20}")  # 20 digits: every unsigned 64-bit counter
_SIGNED = re.compile(r"-?[0-9]{1,20}")
_HEX = re.compile(r"[0-9A-Fa-f]{1,32}")  # 32 digits: an IPv6 address


def lines(text: str) -> list[str]:
    """The lines of a capture, split at ``\\n`` only (a trailing ``\\r`` stays: callers strip).

    ``str.splitlines`` also splits at form feeds, ``\\x1c``-``\\x1e``, NEL and the Unicode
    line separators: one such byte of junk would shift the line number of every later
    line, and evidence quotes ``file:line``. Editors, ``grep -n`` and ``sed -n`` count
    ``\\n`` alone."""
    return text.split("\n")


def decimal(text: str, *, high: int | None = None) -> int | None:
    """``"80"`` -> 80; None for anything but 1-20 ASCII digits, or above ``high``."""
    if not _DECIMAL.fullmatch(text):
        return None
    value = int(text)
    return value if high is None or value <= high else None


def signed_decimal(text: str) -> int | None:
    """``"-1"`` -> -1 (``/proc/net/snmp``'s MaxConn, sysctl values); None if not a number."""
    return int(text) if _SIGNED.fullmatch(text) else None


def hexadecimal(text: str, *, high: int | None = None) -> int | None:
    """``"0050"`` -> 80 (``/proc`` prints addresses and ports in hex, without ``0x``)."""
    if not _HEX.fullmatch(text):
        return None
    value = int(text, 16)
    return value if high is None or value <= high else None


def ip_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An address as the tools print it; None for anything else, including the scoped
    form ``fe80::1%eth0`` that ipaddress accepts but no LVS table holds."""
    if "%" in text or len(text) > 45:  # 45: the longest IPv6 text (IPv4-mapped, full)
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def quote(text: str, limit: int = 120) -> str:
    """A line as a problem message quotes it: repr (control characters escaped), cut at
    ``limit`` characters so an over-long line of junk does not flood the report."""
    stripped = text.strip()
    if len(stripped) <= limit:
        return repr(stripped)
    return repr(stripped[:limit]) + f"... ({len(stripped)} characters)"


def printable(text: str, limit: int = 200) -> str:
    """``text`` with control characters (and lone surrogates) escaped as repr would, cut at
    ``limit``: names and lines from a capture go into one-line messages and terminals."""
    if text.isprintable() and len(text) <= limit:
        return text
    out = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[:limit])
    return out + ("..." if len(text) > limit else "")
