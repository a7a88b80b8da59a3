"""python -m kubelvs.lab.faults stream: the client's request stream inside the lab."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

from .stream import stream


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m kubelvs.lab.faults stream ...``: the client's stream (the runner starts it)."""
    parser = argparse.ArgumentParser(prog="python -m kubelvs.lab.faults", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "stream", help="open a connection with one HTTP GET every INTERVAL; one JSON line each"
    )
    p.add_argument("--target", required=True, help="HOST:PORT")
    p.add_argument("--interval", type=float, default=0.05)
    p.add_argument("--timeout", type=float, default=2.0)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument(
        "--limit", type=float, default=3600.0, help="seconds after which the stream ends by itself"
    )
    args = parser.parse_args(argv)
    host, _, port = args.target.rpartition(":")
    asyncio.run(
        stream(host, int(port), interval=args.interval, timeout=args.timeout, out=args.out, limit=args.limit)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
