"""Reading a user's text file (the config, an ``ipvsadm -Sn`` save file, the node
agent's config) before any parser sees it: the formats layer, no I/O beyond the read.

Why a gate in front of the parsers: the YAML parser stops at a NUL byte and returns
what came before, so a config cut by a NUL validated as "valid" and ``apply`` deleted
every service after it; a file that is not UTF-8 crashed every command in the
decoder; a 50 MB file took 1.4 GB. So every text file is read here, as bytes, with a
size limit, and only clean UTF-8 text goes on:

- at most ``MAX_TEXT_BYTES`` (16 MiB). The largest config kubelvs is measured with,
  10,000 services x 10 real servers, is 3.9 MiB as the benchmark writes it, 5.0 MiB as
  ``ipvsadm -Sn`` rules, 6.9 MiB written by hand with a flow mapping per real server,
  9.2 MiB as ``config_document`` writes it (every real-server key) and 14.5 MiB in the
  most verbose form there is (block style, IPv6, every key of every real server
  spelled out). 16 MiB takes all of them, and bounds what a wrong file costs: about
  300 MiB to parse 16 MiB of YAML, where a 50 MB one took 1.4 GB. A larger table
  needs ``limit`` raised;
- no BOM-marked UTF-16 or UTF-32 (named as such); a UTF-8 byte-order mark is dropped;
- no NUL byte, no invalid UTF-8, no control character but tab, line feed and carriage
  return (YAML's printable set: such characters belong escaped in a double-quoted
  string), each reported at its file:line:column;
- only regular files, and ``-`` for standard input (same checks). A FIFO is refused
  without blocking on it (opened non-blocking), a directory, device or socket is
  refused by name; a missing file, a symlink loop or a permission problem is one
  clear line, never a traceback.

Nothing heavy is imported here (no json, no yaml): one-shot commands are timed
against ``ipvsadm -R`` including their start-up.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import sys
from collections.abc import Callable
from typing import BinaryIO

from ..errors import ParseError

__all__ = [
    "MAX_TEXT_BYTES",
    "STDIN",
    "TextFileError",
    "check_text",
    "decode_text",
    "read_text_file",
    "source_name",
]

#: Default size limit of a text file (see the module docstring for why 16 MiB).
MAX_TEXT_BYTES = 16 * 1024 * 1024

#: The path that means standard input.
STDIN = "-"

_STDIN_NAME = "<stdin>"
_CHUNK = 1 << 20

# C0 controls but tab, LF and CR; DEL; C1 controls but NEL; the two noncharacters at the
# end of the BMP. (Surrogates cannot survive strict UTF-8 decoding.) Compiled on first use
# (re caches it): most runs never need it, and start-up counts.
_FORBIDDEN = "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x84\x86-\x9f\ufffe\uffff]"

# Bytes that start a forbidden character in UTF-8: the ASCII ones themselves, 0xc2 for the
# C1 controls (U+0080-U+009F are c2 80 - c2 9f), 0xef for U+FFFE and U+FFFF (ef bf be/bf).
# Single bytes: each search is a memchr, 0.1 ms for 6 MB.
_SUSPECT_BYTES = tuple(bytes([b]) for b in (*range(0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F, 0xC2, 0xEF))

_BOMS = (  # UTF-32 first: its little-endian mark starts with UTF-16's
    (b"\xff\xfe\x00\x00", "UTF-32", "little-endian"),
    (b"\x00\x00\xfe\xff", "UTF-32", "big-endian"),
    (b"\xff\xfe", "UTF-16", "little-endian"),
    (b"\xfe\xff", "UTF-16", "big-endian"),
)
_UTF8_BOM = b"\xef\xbb\xbf"

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)
_STDIN_HINT = " (to read a stream, give - and redirect it to standard input)"


class TextFileError(ParseError):
    """A text file could not be read, or is not clean UTF-8 text; names the file and,
    when the problem is at a place in it, the line and column (both from 1)."""

    def __init__(self, source: str, line: int | None, column: int | None, reason: str) -> None:
        super().__init__(source, line, reason)
        self.column = column
        where = source
        if line is not None:
            where += f":{line}" + (f":{column}" if column is not None else "")
        self.args = (f"{where}: {reason}",)


def source_name(path: str | os.PathLike[str]) -> str:
    """How errors name ``path``: ``<stdin>`` for ``-``, else the path as given."""
    text = os.fspath(path)
    if text == STDIN:
        return _STDIN_NAME
    return text if text.isprintable() else repr(text)[1:-1]  # a control character stays visible


def read_text_file(
    path: str | os.PathLike[str],
    *,
    limit: int = MAX_TEXT_BYTES,
    stdin: BinaryIO | None = None,
) -> str:
    """The text of the user's file ``path`` (``-``: standard input, or ``stdin`` when
    given), checked as the module docstring says; raises ``TextFileError`` otherwise."""
    name = source_name(path)
    if os.fspath(path) == STDIN:
        stream = stdin if stdin is not None else getattr(sys.stdin, "buffer", None)
        if stream is None:
            raise TextFileError(name, None, None, "standard input is closed")
        try:
            data = _read_chunks(stream.read, limit)
        except OSError as exc:
            raise TextFileError(name, None, None, f"cannot read: {_strerror(exc)}") from None
    else:
        data = _read_regular_file(os.fspath(path), name, limit)
    if len(data) > limit:
        raise TextFileError(name, None, None, _too_large(None, limit))
    return decode_text(data, name)


def decode_text(data: bytes, source: str) -> str:
    """``data`` as text: UTF-8 (a leading byte-order mark dropped), no NUL, no control
    characters but tab, LF and CR. ``TextFileError`` names the first problem's place."""
    for bom, encoding, order in _BOMS:
        if data.startswith(bom):
            raise TextFileError(
                source,
                1,
                1,
                f"the file is {encoding}; kubelvs reads UTF-8 only "
                f"(its byte-order mark says {encoding} {order}; convert it: iconv -f {encoding} -t UTF-8)",
            )
    data = data.removeprefix(_UTF8_BOM)
    if _looks_like_utf16(data):
        nul = data.find(b"\x00")
        raise _at_byte(
            data,
            nul,
            source,
            "NUL byte (0x00): the file looks like UTF-16 without a byte-order mark; kubelvs reads UTF-8 only",
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        check_text(
            data[: exc.start].decode("utf-8"), source
        )  # a NUL or control character before it comes first
        raise _bad_utf8(data, exc, source) from None
    # The regular expression costs 40 ms on a 6 MB config, memchr-speed searches for the
    # bytes that could start a forbidden character 2 ms: run it only if one is there.
    if any(suspect in data for suspect in _SUSPECT_BYTES):
        check_text(text, source)
    return text


def check_text(text: str, source: str) -> None:
    """Raise ``TextFileError`` at the first NUL or control character of ``text``."""
    found = re.search(_FORBIDDEN, text)
    if found is None:
        return
    pos = found.start()
    char = text[pos]
    line = text.count("\n", 0, pos) + 1
    column = pos - (text.rfind("\n", 0, pos) + 1) + 1
    if char == "\x00":
        reason = "NUL byte (0x00): not text; is the file cut, binary or UTF-16?"
    else:
        reason = (
            f"control character U+{ord(char):04X} is not allowed in a text file "
            "(in YAML, write it escaped in a double-quoted string)"
        )
    raise TextFileError(source, line, column, reason)


# ---------------------------------------------------------------- reading


def _read_regular_file(path: str, name: str, limit: int) -> bytes:
    # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer, forever.
    # It changes nothing for a regular file. O_NOCTTY: a terminal must not become ours.
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise TextFileError(name, None, None, _open_reason(exc)) from None
    except ValueError:  # a NUL in the path, or a character the file system cannot encode
        raise TextFileError(name, None, None, "not a usable file name") from None
    try:
        try:
            info = os.fstat(fd)
        except OSError as exc:
            raise TextFileError(name, None, None, f"cannot read: {_strerror(exc)}") from None
        if not stat.S_ISREG(info.st_mode):
            kind = next((label for test, label in _KINDS if test(info.st_mode)), "a special file")
            hint = "" if stat.S_ISDIR(info.st_mode) else _STDIN_HINT
            raise TextFileError(name, None, None, f"is {kind}, not a regular file{hint}")
        if info.st_size > limit:  # before reading a byte of it
            raise TextFileError(name, None, None, _too_large(info.st_size, limit))
        try:
            # One read of the whole file as fstat sizes it, then on to the end of the file:
            # a read may return less than asked on a network file system (9p, NFS, FUSE),
            # and the file may have grown (or be a /proc file, whose size says 0). Only an
            # empty read is the end: a short one taken for it truncated a config.
            first = os.read(fd, info.st_size + 1) if info.st_size else b""
            return first + _read_chunks(lambda n: os.read(fd, n), limit - len(first))
        except OSError as exc:
            raise TextFileError(name, None, None, f"cannot read: {_strerror(exc)}") from None
    finally:
        os.close(fd)


def _read_chunks(read: Callable[[int], bytes | None], limit: int) -> bytes:
    """At most ``limit + 1`` bytes: one more than allowed is enough to know it is too many."""
    parts: list[bytes] = []
    left = limit + 1
    while left > 0:
        chunk = read(min(left, _CHUNK))
        if not chunk:
            break
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def _open_reason(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "too many levels of symbolic links (a symlink loop?)"
    if exc.errno == errno.ENXIO:  # open(2) of a socket
        return f"is a socket, not a regular file{_STDIN_HINT}"
    if exc.errno == errno.ENOENT:
        return "no such file or directory"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    return f"cannot open: {_strerror(exc)}"


def _strerror(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _too_large(size: int | None, limit: int) -> str:
    most = f"{limit:,} bytes ({limit / 2**20:g} MiB)"
    if size is None:
        return f"is more than {most}, the most kubelvs reads from a text file"
    return f"is {size:,} bytes; kubelvs reads at most {most} from a text file"


# ---------------------------------------------------------------- places and reasons


def _at_byte(data: bytes, pos: int, source: str, reason: str) -> TextFileError:
    """The error at byte offset ``pos``: line from 1, column in characters from 1."""
    line_start = data.rfind(b"\n", 0, pos) + 1
    line = data.count(b"\n", 0, pos) + 1
    column = len(data[line_start:pos].decode("utf-8", errors="replace")) + 1
    return TextFileError(source, line, column, reason)


def _bad_utf8(data: bytes, exc: UnicodeDecodeError, source: str) -> TextFileError:
    byte = data[exc.start]
    return _at_byte(
        data,
        exc.start,
        source,
        f"not UTF-8 at byte 0x{byte:02x} ({exc.reason}); kubelvs reads UTF-8 only "
        "(if the file is Latin-1, convert it: iconv -f LATIN1 -t UTF-8)",
    )


def _looks_like_utf16(data: bytes) -> bool:
    """ASCII text as UTF-16 without a byte-order mark: a NUL in every other byte."""
    head = data[:64]
    if len(head) < 4 or b"\x00" not in head:
        return False
    return head[1::2].count(0) == len(head[1::2]) or head[0::2].count(0) == len(head[0::2])
