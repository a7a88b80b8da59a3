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
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from ..model import ObservedState, RealServerStats, ServiceKey
from . import exit_codes
from .args import add_backend_args
from .render import health_of

__all__ = ["Frame", "Row", "frame", "register", "render"]

SORT_KEYS = {"c": "conns_per_s", "p": "packets_per_s", "b": "bits_per_s", "a": "active", "n": "name"}


@dataclass(slots=True)
class Row:
    """One virtual service or one of its real servers, over one interval."""

    what: str  # "TCP 10.240.0.201:80" or "10.240.0.101:80"
    name: str  # the Service's, or the real server's node
    conns_per_s: float
    in_packets_per_s: float
    out_packets_per_s: float
    in_bits_per_s: float
    out_bits_per_s: float
    active: int
    inactive: int
    weight: int | None = None  # real servers only
    health: str = ""  # "up", "down", "unknown" (checked real servers)
    drain: str = ""  # "draining, 3 connection(s) left, 12s"
    realservers: list[Row] = field(default_factory=list)

    @property
    def packets_per_s(self) -> float:
        return self.in_packets_per_s + self.out_packets_per_s

    @property
    def bits_per_s(self) -> float:
        return self.in_bits_per_s + self.out_bits_per_s

    def matches(self, text: str) -> bool:
        return text in self.what or text in self.name or any(rs.matches(text) for rs in self.realservers)


@dataclass(slots=True)
class Frame:
    backend: str
    seconds: float
    services: list[Row]
    counts_connections: bool  # IPVS counts connections; the nftables data plane keeps none

    def as_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "seconds": round(self.seconds, 3),
            "counts_connections": self.counts_connections,
            "services": [asdict(r) for r in self.services],
        }


def frame(
    backend: str,
    before: ObservedState,
    after: ObservedState,
    seconds: float,
    director: Mapping[str, Any] | None = None,
) -> Frame:
    """The rates between two reads ``seconds`` apart, with the director's names, health
    and drains (pure)."""
    names = ((director or {}).get("names") or {}).get("services") or {}
    nodes = ((director or {}).get("names") or {}).get("realservers") or {}
    drains = {(d["service"], d["realserver"]): d for d in (director or {}).get("drains") or []}
    now = time.time()
    services = []
    for key in sorted(after.services, key=ServiceKey.sort_key):
        vs = after.services[key]
        rows = []
        for rs in vs.realservers:
            a = after.stats.get((key, rs.key), _ZERO)
            b = before.stats.get((key, rs.key), _ZERO)
            health = health_of(director, key, rs)
            drain = drains.get((str(key), str(rs.key)))
            rows.append(
                Row(
                    what=str(rs.key),
                    name=nodes.get(str(rs.address), ""),
                    **_rates(a, b, seconds),
                    weight=rs.weight,
                    health=str(health.get("status", "")) if health is not None else "",
                    drain="" if drain is None else _drain_text(drain, now),
                )
            )
        total = Row(
            what=str(key),
            name=names.get(str(key), vs.name),
            conns_per_s=sum(r.conns_per_s for r in rows),
            in_packets_per_s=sum(r.in_packets_per_s for r in rows),
            out_packets_per_s=sum(r.out_packets_per_s for r in rows),
            in_bits_per_s=sum(r.in_bits_per_s for r in rows),
            out_bits_per_s=sum(r.out_bits_per_s for r in rows),
            active=sum(r.active for r in rows),
            inactive=sum(r.inactive for r in rows),
            realservers=rows,
        )
        services.append(total)
    return Frame(backend, seconds, services, counts_connections=backend != "nftables")


_ZERO = RealServerStats()


def _rates(a: RealServerStats, b: RealServerStats, seconds: float) -> dict[str, Any]:
    def per_s(now: int, then: int) -> float:
        # A counter that went back: the real server was deleted and added again meanwhile.
        return max(0, now - then) / seconds if seconds > 0 else 0.0

    return {
        "conns_per_s": per_s(a.conns, b.conns),
        "in_packets_per_s": per_s(a.in_packets, b.in_packets),
        "out_packets_per_s": per_s(a.out_packets, b.out_packets),
        "in_bits_per_s": 8 * per_s(a.in_bytes, b.in_bytes),
        "out_bits_per_s": 8 * per_s(a.out_bytes, b.out_bytes),
        "active": a.active_conns,
        "inactive": a.inactive_conns,
    }


def _drain_text(drain: Mapping[str, Any], now: float) -> str:
    conns = drain.get("connections")
    left = f"{conns} conn left" if conns is not None else "conns unknown"
    return f"draining, {left}, {max(0, int(now - float(drain.get('since') or now)))}s"


def render(f: Frame, *, sort: str = "name", reverse: bool = False, filter_text: str = "") -> str:
    """The frame as text (what ``--once`` prints and the live view shows)."""
    shown = [s for s in f.services if not filter_text or s.matches(filter_text)]
    attr = SORT_KEYS.get(sort, sort)
    numeric = attr != "name"

    def order(r: Row) -> Any:
        return getattr(r, attr) if numeric else (r.name or r.what)

    shown.sort(key=order, reverse=reverse != numeric)  # numbers: largest first
    conns = (lambda v: _si(v)) if f.counts_connections else (lambda v: "-")
    lines = [
        f"kubelvs top - {f.backend}, {len(f.services)} virtual service(s), rates over {f.seconds:.1f} s"
        + (f", filter {filter_text!r}" if filter_text else ""),
        f"{'VIRTUAL SERVICE / REAL SERVER':<32} {'NAME':<24} {'CONN/s':>7} {'PKT/s IN':>9} {'PKT/s OUT':>9} "
        f"{'BIT/s IN':>9} {'BIT/s OUT':>9} {'ACTIVE':>7} {'INACT':>7} {'WEIGHT':>6} HEALTH",
    ]
    for s in shown:
        lines.append(_line(s, conns, indent=""))
        for r in sorted(s.realservers, key=order, reverse=reverse != numeric):
            lines.append(_line(r, conns, indent="  -> "))
    return "\n".join(lines) + "\n"


def _line(r: Row, conns: Any, *, indent: str) -> str:
    weight = "" if r.weight is None else str(r.weight)
    tail = " ".join(t for t in (r.health, r.drain) if t)
    return (
        f"{indent + r.what:<32} {r.name[:24]:<24} {conns(r.conns_per_s):>7} {_si(r.in_packets_per_s):>9} "
        f"{_si(r.out_packets_per_s):>9} {_si(r.in_bits_per_s):>9} {_si(r.out_bits_per_s):>9} "
        f"{r.active:>7} {r.inactive:>7} {weight:>6} {tail}"
    ).rstrip()


def _si(value: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= size:
            return f"{value / size:.1f}{unit}"
    return f"{value:.1f}" if value and value < 10 else f"{value:.0f}"


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
