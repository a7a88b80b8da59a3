"""The config file as a source: a file rewritten in place in several writes is read only
once it has settled, a rejected or missing file keeps the last good state."""

from __future__ import annotations

import asyncio
from pathlib import Path

from kubelvs.sources.file import ConfigFileSource

HEAD = "owned_cidrs: [10.240.0.0/24]\nservices:\n"


def svc(i: int) -> str:
    return (
        f"  - {{name: s{i}, vip: 10.240.0.{i}, port: 80, scheduler: rr, "
        "realservers: [{address: 10.240.0.101}]}\n"
    )


async def follow(path: Path, body: object, *, settle: float = 0.4) -> tuple[ConfigFileSource, list[set[str]]]:
    source = ConfigFileSource(path, poll_seconds=0.05, settle_seconds=settle)
    await source.open()
    seen: list[set[str]] = []

    def wake() -> None:
        seen.append({str(k) for k in source.current(full=False).desired.services})

    stop = asyncio.Event()
    tasks = source.start(stop, wake)
    try:
        await body()  # type: ignore[operator]
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    return source, seen


def test_a_file_written_in_two_steps_is_read_once_whole(tmp_path: Path) -> None:
    path = tmp_path / "lb.yaml"
    path.write_text(HEAD + svc(1) + svc(2) + svc(3))

    async def body() -> None:
        # An editor writing in place: truncate and write the first part, then the rest.
        with path.open("w") as f:
            f.write(HEAD + svc(1))
            f.flush()
            await asyncio.sleep(0.2)
            f.write(svc(2) + svc(3) + svc(4))
        await asyncio.sleep(1.0)

    _, seen = asyncio.run(follow(path, body))
    # Never the half-written file (which lacks s2 and s3): one change, the whole file.
    assert seen == [{"TCP 10.240.0.1:80", "TCP 10.240.0.2:80", "TCP 10.240.0.3:80", "TCP 10.240.0.4:80"}]


def test_a_rejected_or_missing_file_keeps_the_last_good_state(tmp_path: Path) -> None:
    path = tmp_path / "lb.yaml"
    path.write_text(HEAD + svc(1))

    async def body() -> None:
        path.write_text(HEAD + svc(1).replace("rr", "nope"))
        await asyncio.sleep(0.6)
        path.write_bytes(b"\xff\xfe" + (HEAD + svc(2)).encode("utf-16-le"))  # not UTF-8
        await asyncio.sleep(0.6)
        path.unlink()
        await asyncio.sleep(0.3)
        path.write_text(HEAD + svc(5))
        await asyncio.sleep(0.8)

    source, seen = asyncio.run(follow(path, body, settle=0.2))
    assert source.rejections == 2
    assert seen == [{"TCP 10.240.0.5:80"}]  # only the good file ever reached the director
