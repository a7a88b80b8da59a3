"""Probes of a real server's own address: TCP connect, HTTP(S) GET, UDP send/expect, and a
command (exec). Asynchronous, bounded by the check's timeout, and run inside the director's
network namespace (a socket made inside a namespace stays there for its whole life).

Each returns ``(ok, detail)``: the detail says what was seen ("HTTP 500", "connection
refused", "no answer within 1.0 s"), for the director's state and its logs.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
from collections.abc import Awaitable

from ..kernel.netns import entered
from ..model import IPAddress, host_text
from ..model.health import CheckKind, HealthCheck

__all__ = ["probe_direct"]

#: The most of an HTTP response a check reads (status line, headers, the start of the body).
MAX_RESPONSE = 64 * 1024


async def probe_direct(
    address: IPAddress, port: int, check: HealthCheck, *, netns: str | None
) -> tuple[bool, str]:
    """Run one probe of ``check`` against ``address:port``."""
    runner: Awaitable[tuple[bool, str]]
    match check.kind:
        case CheckKind.TCP:
            runner = _tcp(address, port, netns)
        case CheckKind.HTTP | CheckKind.HTTPS:
            runner = _http(address, port, check, netns)
        case CheckKind.UDP:
            runner = _udp(address, port, check, netns)
        case CheckKind.EXEC:
            runner = _exec(address, port, check, netns)
        case _:
            return True, "not checked"
    try:
        return await asyncio.wait_for(runner, check.timeout)
    except TimeoutError:
        return False, f"no answer within {check.timeout:g} s"
    except ssl.SSLError as exc:
        return False, f"TLS: {exc.reason or exc}"
    except OSError as exc:  # by its errno: asyncio's own text names the call, not the cause
        return False, os.strerror(exc.errno).lower() if exc.errno else str(exc)


def _socket(address: IPAddress, kind: int, netns: str | None) -> socket.socket:
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    with entered(netns):
        sock = socket.socket(family, kind)
    sock.setblocking(False)
    return sock


async def _connected(address: IPAddress, port: int, netns: str | None) -> socket.socket:
    sock = _socket(address, socket.SOCK_STREAM, netns)
    try:
        await asyncio.get_running_loop().sock_connect(sock, (str(address), port))
    except BaseException:
        sock.close()
        raise
    return sock


async def _tcp(address: IPAddress, port: int, netns: str | None) -> tuple[bool, str]:
    sock = await _connected(address, port, netns)
    sock.close()
    return True, "connected"


async def _http(address: IPAddress, port: int, check: HealthCheck, netns: str | None) -> tuple[bool, str]:
    sock = await _connected(address, port, netns)
    context = None
    if check.kind is CheckKind.HTTPS:
        context = ssl.create_default_context()
        context.check_hostname = False  # real servers are addressed by IP: no name to check
        context.verify_mode = ssl.CERT_NONE
    host = check.host or host_text(address)
    reader, writer = await asyncio.open_connection(
        sock=sock, ssl=context, server_hostname=host if context else None
    )
    try:
        request = (
            f"GET {check.path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: kubelvs-health\r\n"
            "Connection: close\r\nAccept: */*\r\n\r\n"
        )
        writer.write(request.encode())
        await writer.drain()
        data = b""
        while len(data) < MAX_RESPONSE:
            chunk = await reader.read(MAX_RESPONSE - len(data))
            if not chunk:
                break
            data += chunk
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = status_line.split()
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        return False, f"not an HTTP response: {status_line[:60]!r}"
    status = int(parts[1])
    if status not in check.expect_status:
        return False, f"HTTP {status}"
    if check.body is not None and check.body.encode() not in body:
        return False, f"HTTP {status} without {check.body!r} in the body"
    return True, f"HTTP {status}"


async def _udp(address: IPAddress, port: int, check: HealthCheck, netns: str | None) -> tuple[bool, str]:
    sock = _socket(address, socket.SOCK_DGRAM, netns)
    loop = asyncio.get_running_loop()
    try:
        # Connected: an ICMP port unreachable then fails the receive at once.
        await loop.sock_connect(sock, (str(address), port))
        await loop.sock_sendall(sock, check.send.encode())
        answer = await loop.sock_recv(sock, 65535)
    finally:
        sock.close()
    if check.expect is not None and check.expect.encode() not in answer:
        return False, f"answer without {check.expect!r}"
    return True, f"answered {len(answer)} byte(s)"


async def _exec(address: IPAddress, port: int, check: HealthCheck, netns: str | None) -> tuple[bool, str]:
    argv = [a.replace("$ADDRESS", str(address)).replace("$PORT", str(port)) for a in check.command]
    if netns is not None:
        argv = ["ip", "netns", "exec", netns, *argv]
    env = {**os.environ, "ADDRESS": str(address), "PORT": str(port)}
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        _, err = await proc.communicate()
    except asyncio.CancelledError:  # the timeout: end it (it is ours, by its PID)
        proc.kill()
        await proc.wait()
        raise
    if proc.returncode == 0:
        return True, "exit 0"
    last = err.decode(errors="replace").strip().splitlines()[-1:] or [""]
    return False, f"exit {proc.returncode}" + (f": {last[0][:120]}" if last[0] else "")
