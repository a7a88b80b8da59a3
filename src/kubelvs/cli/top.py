"""``kubelvs top``: a live view of the load-balancing table, like ``watch ipvsadm -Ln --rate``
with names, health and drains.

Each frame is two reads of the kernel's table (either backend, any ``--netns``) an
interval apart: rates are the counters' differences over the time between the reads.
Service and node names, health and drains come from the running director's state file
(``kubelvs status`` reads the same); without a director the view shows the kernel alone.

Keys in the live view: ``c`` new connections/s, ``p`` packets/s, ``b`` bits/s, ``a``
active connections, ``n`` name (the sort order; again: reversed), ``/`` filter (a
substring of the VIP, service name, real server or node; empty: none), ``q`` quit.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import select
import sys
import time
from collections.abc import Iterator
from typing import Any

from ..formats.top import SORT_KEYS, Frame, frame, render
from . import exit_codes
from .args import add_backend_args

__all__ = ["register"]

# ---------------------------------------------------------------------------- command


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("top", help="live rates per VIP and real server (like watch ipvsadm -Ln --rate)")
    p.add_argument("--once", action="store_true", help="print one frame and exit (for scripts and tests)")
    p.add_argument(
        "--interval", type=float, default=1.0, metavar="SECONDS", help="between frames (default 1)"
    )
    p.add_argument("--sort", choices=sorted(SORT_KEYS.values()), default="name")
    p.add_argument(
        "--filter", default="", metavar="TEXT", help="only services matching TEXT (VIP, name, node)"
    )
    p.add_argument("-o", "--output", choices=("text", "json"), default="text", help="with --once")
    p.add_argument(
        "--state-file", metavar="PATH", help="the director's state file (default: its usual place)"
    )
    add_backend_args(p)
    p.set_defaults(func=cmd_top)


def cmd_top(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..app.state import read_director_state, state_path
    from ..backends import open_backend

    if args.interval <= 0:
        from ..errors import ConfigError, FieldError

        raise ConfigError([FieldError("--interval", f"{args.interval} is not above 0")])
    state = Path(args.state_file) if args.state_file else state_path(args.netns)
    with open_backend(args.backend, netns=args.netns) as backend:
        frames = _frames(backend, args.interval, lambda: read_director_state(state))
        if args.once:
            f = next(frames)
            if args.output == "json":
                print(json.dumps(f.as_dict(), indent=1))
            else:
                sys.stdout.write(render(f, sort=args.sort, filter_text=args.filter))
            return exit_codes.OK
        _live(frames, args.sort, args.filter)
    return exit_codes.OK


def _frames(backend: Any, interval: float, director: Any) -> Iterator[Frame]:
    before, at = backend.read(), time.monotonic()
    while True:
        time.sleep(max(0.0, interval - (time.monotonic() - at)))
        after, now = backend.read(), time.monotonic()
        yield frame(backend.name, before, after, now - at, director())
        before, at = after, now


def _live(frames: Iterator[Frame], sort: str, filter_text: str) -> None:
    reverse = False
    with _cbreak():
        for f in frames:
            sys.stdout.write("\x1b[H\x1b[2J" + render(f, sort=sort, reverse=reverse, filter_text=filter_text))
            sys.stdout.write("keys: c conn/s  p pkt/s  b bit/s  a active  n name  / filter  q quit\n")
            sys.stdout.flush()
            while _key_ready(0.0):
                key = sys.stdin.read(1)
                if key == "q":
                    return
                if key in SORT_KEYS:
                    reverse = not reverse if SORT_KEYS[key] == sort else False
                    sort = SORT_KEYS[key]
                elif key == "/":
                    filter_text = _prompt("filter: ")


def _key_ready(timeout: float) -> bool:
    return bool(sys.stdin.isatty() and select.select([sys.stdin], [], [], timeout)[0])


def _prompt(text: str) -> str:
    with _cooked():
        return input(text).strip()


@contextlib.contextmanager
def _cbreak() -> Iterator[None]:
    """Single keys without Enter, when stdin is a terminal."""
    if not sys.stdin.isatty():
        yield
        return
    import termios
    import tty

    saved = termios.tcgetattr(sys.stdin)
    tty.setcbreak(sys.stdin.fileno())
    try:
        yield
    finally:
        termios.tcsetattr(sys.stdin, termios.TCSADRAIN, saved)


@contextlib.contextmanager
def _cooked() -> Iterator[None]:
    if not sys.stdin.isatty():
        yield
        return
    import termios

    fd = sys.stdin.fileno()
    raw = termios.tcgetattr(fd)
    cooked = list(raw)
    cooked[3] |= termios.ICANON | termios.ECHO
    termios.tcsetattr(fd, termios.TCSADRAIN, cooked)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, raw)
