"""The client's traffic during a fault run: one new connection with one HTTP GET every
interval, one JSON line per request, read back by the runner."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..traffic import error_text


@dataclass(frozen=True, slots=True)
class Request:
    """One request of the stream: a new TCP connection with one HTTP GET."""

    start: float  # time.monotonic() before connecting
    end: float  # when it answered or failed
    ok: bool
    server: str = ""  # the pod that answered
    error: str = ""  # why it failed: "connection refused", "timed out", ...


async def _get(host: str, port: int, timeout: float) -> Request:
    start = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
                data = await reader.read()
            finally:
                writer.close()
        head, _, body = data.partition(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0]
        if b" 200 " not in status + b" ":
            return Request(start, time.monotonic(), False, error=f"HTTP {status.decode(errors='replace')!r}")
        server = str(json.loads(body)["server"])
        return Request(start, time.monotonic(), True, server=server)
    except (OSError, TimeoutError, ValueError, KeyError) as exc:
        return Request(start, time.monotonic(), False, error=error_text(exc))


async def stream(host: str, port: int, *, interval: float, timeout: float, out: Path, limit: float) -> None:
    """Open a connection to ``host:port`` every ``interval`` seconds (a late tick is not
    made up: the stream never bursts), each answered or failed within ``timeout``; one
    JSON line per request in ``out``. Ends after ``limit`` seconds or on SIGTERM/SIGINT,
    after the requests in flight have ended."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    pending: set[asyncio.Task[Request]] = set()
    deadline = time.monotonic() + limit
    with out.open("a") as sink:

        def record(task: asyncio.Task[Request]) -> None:
            pending.discard(task)
            sink.write(json.dumps(asdict(task.result())) + "\n")
            sink.flush()

        tick = time.monotonic()
        while not stop.is_set() and time.monotonic() < deadline:
            task = asyncio.create_task(_get(host, port, timeout))
            pending.add(task)
            task.add_done_callback(record)
            tick = max(tick + interval, time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, tick - time.monotonic()))
        if pending:
            await asyncio.wait(set(pending))


def read_requests(path: Path) -> list[Request]:
    """The requests recorded so far (a line still being written is skipped)."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        try:
            out.append(Request(**json.loads(line)))
        except (ValueError, TypeError):
            continue
    return out
