"""What ``kubelvs top`` shows (pure): per virtual service and real server, the rates
between two reads of the kernel's table, with the running director's names, health and
drains; and the frame as text. ``cli/top.py`` runs it live; ``kubelvs demo`` shows one
frame of its requests."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from ..model import NO_TRAFFIC, ObservedState, RealServerStats, ServiceKey
from .director_state import health_of

__all__ = ["SORT_KEYS", "Frame", "Row", "frame", "render"]

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
            "seconds": round(self.seconds, 6),
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
            a = after.stats.get((key, rs.key), NO_TRAFFIC)
            b = before.stats.get((key, rs.key), NO_TRAFFIC)
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
        f"kubelvs top - {f.backend}, {len(f.services)} virtual service(s), rates over {f.seconds:.2f} s"
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
