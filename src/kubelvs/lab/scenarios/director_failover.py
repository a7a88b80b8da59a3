"""director-failover: the master of a VRRP pair of directors dies under load; the backup
takes the VIP over, and gives it back when the master returns.

A DR lab with two directors that move the VIP with VRRP (keepalived run by each
``kubelvs director``; adverts every 100 ms; dir1 has the higher priority). Long-lived
TCP connections stream through the VIP (HTTP keep-alive, one request every 100 ms
each) while a client opens new connections at a steady rate. Then dir1 dies as a
machine does: its link goes down and its director is killed (SIGKILL), so nothing
says goodbye: dir2 notices the missing adverts, takes the VIP and sends gratuitous ARP.
Later dir1 comes back (link up, director started): it syncs its table, then preempts.

Measured: ``gap_ms``, from the death to the first new connection that succeeded after
it; ``new_failed``, new connections that failed (each gives up after 1 s);
``established_broken`` and ``failback_broken``, long-lived connections that broke (a
reset, or no answer within 5 s) on the failover and on the failback. It passes when
the gap stayed under 1.5 s and no established connection broke either way: both
directors forward a flow to the same node without shared state (nftables: the DR path
is a stateless hash of the flow; IPVS needs the connection sync daemon, not run here).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from ...kernel import iproute
from ..spec import READY_TIMEOUT, VRRP_ADVERT
from ..topology import LabSpec, RunningLab, build
from ..traffic import LongLived, NewConnections, wait_until

__all__ = ["SUMMARY", "FailoverResult", "run"]

SUMMARY = (
    "the master of a VRRP pair of directors dies under load: the backup takes over; established flows survive"
)

LONG_LIVED = 50
RATE = 20.0  # new connections a second
GAP_TARGET_MS = 1500.0


@dataclass
class FailoverResult:
    backend: str
    gap_ms: float | None = None
    new_failed: int = 0
    new_total: int = 0
    established_total: int = 0
    established_broken: int = 0
    failback_broken: int = 0
    established_answering_at_end: int = 0  # answered in the last 3 s, after the failback
    advert_interval_ms: float = VRRP_ADVERT * 1000
    takeover_ms: float | None = None  # death -> the VIP on dir2
    failback_ms: float | None = None  # dir1's director started -> the VIP back on dir1
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            self.gap_ms is not None
            and self.gap_ms < GAP_TARGET_MS
            and self.established_total == LONG_LIVED
            and self.established_broken == 0
            and self.failback_ms is not None
            and self.failback_broken == 0
            and self.established_answering_at_end == LONG_LIVED
        )

    def as_json(self) -> dict[str, Any]:
        return {"scenario": "director-failover", **asdict(self), "ok": self.ok}

    def render(self) -> str:
        def ms(value: float | None) -> str:
            return "never" if value is None else f"{value:.0f} ms"

        lines = [
            f"scenario director-failover (director backend {self.backend})",
            f"VRRP pair dir1 (master) + dir2, adverts every {self.advert_interval_ms:.0f} ms",
            f"dir1 died (link down, director killed): the VIP on dir2 after {ms(self.takeover_ms)}; "
            f"first new connection through it after {ms(self.gap_ms)} (target < {GAP_TARGET_MS:.0f} ms)",
            f"new connections: {self.new_total}, failed {self.new_failed}",
            f"long-lived connections: {self.established_total}, broken on failover "
            f"{self.established_broken}, on failback {self.failback_broken}; "
            f"{self.established_answering_at_end} still answering at the end",
            f"dir1 back: the VIP on dir1 {ms(self.failback_ms)} after its director started",
        ]
        lines += [f"  {n}" for n in self.notes]
        lines.append("result: " + ("OK" if self.ok else "FAILED"))
        return "\n".join(lines)


def _holds_vip(running: RunningLab, director: str) -> bool:
    vip = f"{running.info.spec.vip}/32"
    return any(a.cidr == vip for a in iproute.addresses(running.info.directors[director]))


def run(*, prefix: str, backend: str, log: Callable[[str], None], doctor: bool = True) -> FailoverResult:
    spec = LabSpec(prefix=prefix, topology="dr", backend=backend, directors=2, vrrp=True)
    log("lab up: dr, two directors moving the VIP with VRRP")
    running = build(spec)
    info = running.info
    result = FailoverResult(info.backend)
    try:
        if not wait_until(lambda: _holds_vip(running, "dir1") and not _holds_vip(running, "dir2"), 30):
            result.notes.append("dir1 never became the only holder of the VIP")
            return result
        dir1 = info.directors["dir1"]
        with (
            LongLived(info.client, spec.vip, spec.port, LONG_LIVED) as long_lived,
            NewConnections(info.client, spec.vip, spec.port, rate=RATE) as stream,
        ):
            result.established_total = long_lived.opened
            time.sleep(2.0)  # a steady state first
            log("dir1 dies: link down, director killed")
            iproute.set_link_down(dir1, "eth0")
            # After the link went down, not before: a connection sent in between still went
            # through dir1 and made a gap of a few ms.
            died = time.time()
            running.crash("director dir1")
            if wait_until(lambda: _holds_vip(running, "dir2"), 10):
                result.takeover_ms = round((time.time() - died) * 1000, 1)
            time.sleep(3.0)
            log("dir1 comes back: link up, director started")
            back = time.time()
            iproute.set_link_up(dir1, "eth0")
            running.start_director("dir1")
            # A director's start may take minutes on the VM tier's emulated CPU.
            if wait_until(
                lambda: _holds_vip(running, "dir1") and not _holds_vip(running, "dir2"), READY_TIMEOUT
            ):
                result.failback_ms = round((time.time() - back) * 1000, 1)
            time.sleep(3.0)  # connections that broke on the failback have done so by now
            end = time.time()
            result.established_answering_at_end = sum(1 for t in long_lived.answered.values() if t > end - 3)
        result.established_broken = long_lived.broken_between(died, back)
        result.failback_broken = long_lived.broken_between(back, float("inf"))
        sent = stream.results
        result.new_total = len(sent)
        result.new_failed = sum(1 for s in sent if not s.result.ok)
        after = [s.done for s in sent if s.sent >= died and s.result.ok]
        if after:
            result.gap_ms = round((min(after) - died) * 1000, 1)
        reasons = sorted({why for _, why in long_lived.broken.values()})
        if reasons:
            result.notes.append(f"long-lived connections broke: {', '.join(reasons)}")
        return result
    finally:
        running.teardown()
