"""The gate every user's text file passes before a parser sees it (kubelvs.formats.textfile),
and the config loader behind it: each failure a user met is a test here.

- a NUL byte cut the config silently (the YAML parser stops there and returns what
  came before), so ``validate`` said valid and ``apply`` deleted every later service;
- a file that is not UTF-8 (random bytes, UTF-16) crashed every command;
- special files: a FIFO must not block, a device must not be read forever.
"""

from __future__ import annotations

import io
import os
import pwd
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml_rs

from kubelvs.errors import ConfigError, KubelvsError, ParseError
from kubelvs.formats.textfile import (
    MAX_TEXT_BYTES,
    TextFileError,
    decode_text,
    read_text_file,
)
from kubelvs.sources.config import load_config, parse_config, parse_yaml, to_desired

GOOD = """\
owned_cidrs: [10.240.0.0/24]
timeouts: {tcp: 900, tcpfin: 30, udp: 300}
services:
  - name: a
    vip: 10.240.0.201
    port: 80
    scheduler: mh
    realservers:
      - {address: 10.240.0.101}
      - {address: 10.240.0.102}
  - name: b
    vip: 10.240.0.202
    port: 80
    scheduler: rr
    realservers:
      - {address: 10.240.0.101}
  - name: c
    vip: 10.240.0.203
    port: 80
    scheduler: rr
    realservers:
      - {address: 10.240.0.101}
"""


def write(tmp_path: Path, data: bytes, name: str = "lb.yaml") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def failure(path: str | Path, **kw: object) -> TextFileError:
    with pytest.raises(TextFileError) as info:
        read_text_file(path, **kw)  # type: ignore[arg-type]
    return info.value


# ---------------------------------------------------------------- NUL bytes


def test_a_nul_byte_no_longer_cuts_the_config_silently(tmp_path: Path) -> None:
    # The user's file: `{ head -10 good.yaml; printf '\0'; tail -n +11 good.yaml; }`.
    lines = GOOD.encode().splitlines(keepends=True)
    cut = b"".join(lines[:10]) + b"\0" + b"".join(lines[10:])
    # Why the gate exists: the parser alone takes the part before the NUL for the whole
    # file, a valid config without services b and c, which apply would then delete.
    alone = to_desired(parse_config(yaml_rs.loads(cut.decode(), parse_datetime=False)))
    assert [s.name for s in alone.services.values()] == ["a"]
    path = write(tmp_path, cut)
    with pytest.raises(TextFileError) as info:
        load_config(path)
    err = info.value
    assert (err.source, err.line, err.column) == (str(path), 11, 1)
    assert str(err) == f"{path}:11:1: NUL byte (0x00): not text; is the file cut, binary or UTF-16?"
    assert isinstance(err, ParseError) and isinstance(err, KubelvsError)


def test_a_nul_before_a_value_is_named_not_read_as_null(tmp_path: Path) -> None:
    # It was reported as "services: must be a list, got null".
    err = failure(write(tmp_path, b"services:\0 []\n"))
    assert (err.line, err.column) == (1, 10)


@pytest.mark.parametrize("where", [0, 1, len(GOOD) // 2, len(GOOD) - 1])
def test_a_nul_anywhere_is_refused_with_its_line_and_column(tmp_path: Path, where: int) -> None:
    data = GOOD.encode()
    err = failure(write(tmp_path, data[:where] + b"\0" + data[where:]))
    before = data[:where]
    assert err.line == before.count(b"\n") + 1
    assert err.column == where - (before.rfind(b"\n") + 1) + 1


def test_parse_yaml_refuses_a_nul_in_text_that_came_from_elsewhere() -> None:
    with pytest.raises(ParseError) as info:
        parse_yaml("a: 1\nb: 2\0\nc: 3\n", source="inline")
    assert str(info.value) == "inline:2:5: NUL byte (0x00): not text; is the file cut, binary or UTF-16?"


# ---------------------------------------------------------------- encodings


def test_random_bytes_are_a_clear_error_not_a_traceback(tmp_path: Path) -> None:
    # Fixed bytes, as `head -c 300 /dev/urandom` gave: 0xc6 starts a two-byte sequence
    # that the next byte does not continue.
    err = failure(write(tmp_path, bytes([0xC6, 0x41, 0x9D, 0x00, 0xFF, 0x10])))
    assert (err.line, err.column) == (1, 1)
    assert err.reason.startswith(
        "not UTF-8 at byte 0xc6 (invalid continuation byte); kubelvs reads UTF-8 only"
    )


@pytest.mark.parametrize(
    ("encoding", "named", "order"),
    [
        ("utf-16", "UTF-16", "little-endian"),  # Python writes the BOM in the machine's order
        ("utf-32", "UTF-32", "little-endian"),
    ],
)
def test_a_bom_marked_utf16_or_utf32_file_is_named(
    tmp_path: Path, encoding: str, named: str, order: str
) -> None:
    err = failure(write(tmp_path, GOOD.encode(encoding)))
    assert (err.line, err.column) == (1, 1)
    assert err.reason.startswith(f"the file is {named}; kubelvs reads UTF-8 only")
    assert order in err.reason


def test_big_endian_utf16_is_named_too(tmp_path: Path) -> None:
    err = failure(write(tmp_path, b"\xfe\xff" + GOOD.encode("utf-16-be")))
    assert err.reason.startswith("the file is UTF-16; kubelvs reads UTF-8 only")
    assert "big-endian" in err.reason


def test_utf16_without_a_bom_is_recognised_by_its_nuls(tmp_path: Path) -> None:
    err = failure(write(tmp_path, GOOD.encode("utf-16-le")))
    assert (err.line, err.column) == (1, 2)
    assert "looks like UTF-16 without a byte-order mark" in err.reason


def test_latin1_is_refused_at_the_byte(tmp_path: Path) -> None:
    err = failure(write(tmp_path, "owned_cidrs: []\nservices:\n  - name: café\n".encode("latin-1")))
    assert (err.line, err.column) == (3, 14)
    assert "byte 0xe9" in err.reason and "iconv -f LATIN1 -t UTF-8" in err.reason


def test_a_utf8_bom_is_dropped_and_the_config_loads(tmp_path: Path) -> None:
    path = write(tmp_path, b"\xef\xbb\xbf" + GOOD.encode())
    assert len(to_desired(load_config(path)).services) == 3  # not "unknown key '\ufeffowned_cidrs'"


def test_utf8_names_tabs_and_crlf_are_fine(tmp_path: Path) -> None:
    text = GOOD.replace("name: a", "name: café-ü-日本").replace("\n", "\r\n")
    path = write(tmp_path, text.encode())
    desired = to_desired(load_config(path))
    assert sorted(s.name for s in desired.services.values()) == ["b", "c", "café-ü-日本"]
    assert read_text_file(write(tmp_path, b"a:\t1\n", "tab.yaml")) == "a:\t1\n"


@pytest.mark.parametrize(
    ("char", "code"),
    [
        ("\x1b", "001B"),
        ("\x07", "0007"),
        ("\x7f", "007F"),
        ("\x9b", "009B"),
        ("\ufffe", "FFFE"),
        ("\x0c", "000C"),
    ],
)
def test_control_characters_are_refused_where_they_are(tmp_path: Path, char: str, code: str) -> None:
    # The YAML parser takes them into plain scalars (an escape sequence in a service
    # name, printed by every later command); YAML allows them only escaped.
    text = GOOD.replace("name: b", f"name: b{char}x")
    err = failure(write(tmp_path, text.encode()))
    assert (err.line, err.column) == (11, 12)
    assert err.reason.startswith(f"control character U+{code} is not allowed")


def test_an_escaped_control_character_in_a_quoted_string_is_allowed(tmp_path: Path) -> None:
    text = GOOD.replace("name: b", 'name: "b\\ex"')
    desired = to_desired(load_config(write(tmp_path, text.encode())))
    assert "b\x1bx" in {s.name for s in desired.services.values()}


def test_decode_text_reports_the_first_problem() -> None:
    with pytest.raises(TextFileError) as info:
        decode_text(b"ok\n\x01 then \xff", "x")
    assert (info.value.line, info.value.column) == (2, 1)  # the control character comes first
    with pytest.raises(TextFileError) as info:
        decode_text(b"ok\n\xff then \x01", "x")
    assert (info.value.line, info.value.column, "not UTF-8" in info.value.reason) == (2, 1, True)


# ---------------------------------------------------------------- size


def test_a_file_over_the_limit_is_refused_before_it_is_read(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    with path.open("wb") as f:
        f.truncate(MAX_TEXT_BYTES + 1)  # sparse: the size alone must refuse it
    err = failure(path)
    assert (
        err.reason == "is 16,777,217 bytes; kubelvs reads at most 16,777,216 bytes (16 MiB) from a text file"
    )
    assert MAX_TEXT_BYTES == 16 * 2**20


def test_the_limit_is_a_parameter_and_exact(tmp_path: Path) -> None:
    path = write(tmp_path, b"a: 1\n")
    assert read_text_file(path, limit=5) == "a: 1\n"
    assert failure(path, limit=4).reason.startswith("is 5 bytes; kubelvs reads at most 4 bytes")


# ---------------------------------------------------------------- standard input


def test_dash_reads_standard_input_with_the_same_checks() -> None:
    assert read_text_file("-", stdin=io.BytesIO(GOOD.encode())) == GOOD
    err = failure("-", stdin=io.BytesIO(b"a: 1\0"))
    assert (err.source, err.line, err.column) == ("<stdin>", 1, 5)
    err = failure("-", stdin=io.BytesIO(b"x" * 11), limit=10)
    assert err.reason == "is more than 10 bytes (9.53674e-06 MiB), the most kubelvs reads from a text file"


def test_load_config_reads_a_real_pipe_on_dash() -> None:
    code = (
        "import sys; from kubelvs.sources.config import load_config, to_desired;"
        "print(len(to_desired(load_config('-')).services))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], input=GOOD.encode(), capture_output=True, timeout=60, check=False
    )
    assert done.returncode == 0 and done.stdout == b"3\n", done.stderr


# ---------------------------------------------------------------- files that are not files


def test_missing_file_directory_and_not_a_directory(tmp_path: Path) -> None:
    assert str(failure(tmp_path / "nope.yaml")) == f"{tmp_path}/nope.yaml: no such file or directory"
    assert failure(tmp_path).reason == "is a directory, not a regular file"
    plain = write(tmp_path, b"a: 1\n")
    assert failure(plain / "x").reason == "cannot open: Not a directory"


def test_symlink_loop_and_dangling_symlink(tmp_path: Path) -> None:
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    assert failure(tmp_path / "a").reason == "too many levels of symbolic links (a symlink loop?)"
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    assert failure(tmp_path / "dangling").reason == "no such file or directory"
    (tmp_path / "good").symlink_to(write(tmp_path, b"a: 1\n"))
    assert read_text_file(tmp_path / "good") == "a: 1\n"  # a symlink to a file is that file


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    result: list[object] = []

    def attempt() -> None:
        try:
            read_text_file(fifo)
        except TextFileError as exc:
            result.append(exc)

    reader = threading.Thread(target=attempt, daemon=True)
    reader.start()
    reader.join(timeout=10)
    if reader.is_alive():  # unblock the thread (it waits for a writer) and fail
        with open(fifo, "wb"):
            pass
        pytest.fail("reading a FIFO blocked")
    (err,) = result
    assert isinstance(err, TextFileError)
    assert err.reason.startswith("is a named pipe (FIFO), not a regular file (to read a stream, give -")


def test_devices_and_sockets_are_refused(tmp_path: Path) -> None:
    assert failure("/dev/zero").reason.startswith("is a character device, not a regular file")  # endless
    assert failure("/dev/null").reason.startswith("is a character device")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(tmp_path / "sock"))
        assert failure(tmp_path / "sock").reason.startswith("is a socket, not a regular file")


def test_a_name_that_cannot_be_a_path_is_an_error_shown_escaped() -> None:
    err = failure("a\0b.yaml")
    assert str(err) == "a\\x00b.yaml: not a usable file name"


def test_permission_denied_is_one_line(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to read as another user")
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user nobody")
    path = write(tmp_path, b"a: 1\n")
    path.chmod(0o600)  # root's, not readable by nobody
    tmp_path.chmod(0o755)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child drops to nobody and reports what the reader said
        status = 1
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            try:
                read_text_file(path)
                message = "read it"
            except TextFileError as exc:
                message = str(exc)
            os.write(write_end, message.encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        said = f.read().decode()
    assert os.waitpid(pid, 0)[1] == 0
    assert said == f"{path}: permission denied"


# ---------------------------------------------------------------- what the YAML parser itself lets out


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        ("a: 1\n? {a: [1]}\n: 1\n", None, "cannot read this YAML: unhashable type: 'list'"),  # TypeError
        ("a: [1,\n", 1, "unclosed bracket '['"),
        ("a: 1\na: 2\n", None, "duplicate mapping key: 'a'"),
        (
            "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n"  # alias expansion bomb
            + "".join(f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n" for p, c in zip("abcdefg", "bcdefgh"))
            + "z: [*h, *h]\n",
            None,
            None,
        ),
        ("a: " + "[" * 300 + "]" * 300 + "\n", 1, None),  # flow nesting deeper than the parser takes
    ],
)
def test_every_parser_failure_is_a_parse_error(
    tmp_path: Path, text: str, line: int | None, reason: str | None
) -> None:
    with pytest.raises(ParseError) as info:
        load_config(write(tmp_path, text.encode()))
    if line is not None:
        assert info.value.line == line
    if reason is not None:
        assert info.value.reason == reason


def test_a_parser_message_quoting_a_huge_line_is_cut(tmp_path: Path) -> None:
    with pytest.raises(ParseError) as info:
        load_config(write(tmp_path, b"a: [" + b"x" * 1_000_000 + b"\n"))
    assert len(str(info.value)) < 300


def test_deep_block_nesting_is_a_config_error_not_a_crash(tmp_path: Path) -> None:
    text = "services:\n" + "".join(" " * (2 + i) + "- \n" for i in range(0, 6000, 2))
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text.encode()))
    assert [str(e) for e in info.value.errors] == ["services[0]: must be a mapping of keys, got list"]


def _mount_type(path: Path) -> str:
    """The file system type of the mount holding ``path`` (the longest mount point above it)."""
    best, kind = "", ""
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        point = fields[1].replace("\\040", " ")
        if (str(path) == point or str(path).startswith(point.rstrip("/") + "/")) and len(point) > len(best):
            best, kind = point, fields[2]
    return kind


@pytest.mark.kernel_ipvs  # the VM tier, for its 9p share (the repository, read-write in the guest)
def test_a_config_on_a_network_file_system_is_read_whole() -> None:
    """A read of a regular file may return less than asked on 9p, NFS or FUSE (the VM's
    9p share returns about 500 KB per read of a file opened O_NONBLOCK, as the loader
    opens it); taking that short read for the end cut a 5 MB config at its ~1,000th
    service: the loader must read on to the end of the file."""
    share = Path(__file__).resolve().parents[2] / ".vmtmp"
    if _mount_type(share) != "9p":
        pytest.skip(f"{share} is not on a 9p share here")
    services = 10_000
    text = "owned_cidrs: [10.96.0.0/12]\nservices:\n" + "".join(
        f"  - {{vip: 10.96.{i // 250}.{i % 250 + 1}, port: 80, realservers: "
        + "["
        + ", ".join(f"{{address: 10.9.0.{n}, port: 80, forward: nat}}" for n in range(1, 11))
        + "]}\n"
        for i in range(services)
    )
    path = share / f"big-config-{os.getpid()}.yaml"
    path.write_text(text)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # as the loader opens it (a FIFO must not block)
        try:
            first = os.read(fd, len(text) + 1)
        finally:
            os.close(fd)
        if len(first) == len(text):
            pytest.skip("this share returned the whole file in one read: nothing to prove here")
        assert read_text_file(path) == text
        assert len(to_desired(load_config(path)).services) == services
    finally:
        path.unlink()
