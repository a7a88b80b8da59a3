"""director-loss: one of three active directors dies under load; the router spreads its
flows over the other two, which must send every one of them to the node it was on.

A DR lab with three directors behind a router; each director announces the VIP by BGP
(bird, BFD every 100 ms) and the router spreads flows over them by ECMP (L4 hash).
100 long-lived TCP connections stream through the VIP (HTTP keep-alive, one request
every 100 ms each). Then dir1 dies as a machine does: link down, director killed
(SIGKILL). The router drops its route when BFD misses it, and re-hashes its flows (and,
with hash-threshold multipath, some of the others') onto dir2 and dir3, which never
saw them: each must pick the node the flow is on, or the node answers with a reset.

Run twice, each on a fresh lab:
- ``mh``: the HA configuration: Maglev with port hashing, the same table on every
  director; on IPVS with ``sloppy_tcp`` (recommended by the director for BGP), so that
  a mid-flow packet is scheduled. No connection may break.
- ``control``: one that must break flows, so that the run is shown to see breakage:
  on IPVS ``rr`` without ``sloppy_tcp`` (each director's own state); on nftables, whose
  DR path is stateless for every scheduler, dir3's table lacks node2.

JSON: ``{"mh": {"total", "broken", "reconverge_ms"}, "control": {"total", "broken",
"how"}, "backend"}``. It passes when ``mh`` broke none and the control broke some.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

from ...backends import BackendName, open_backend
from ...errors import LabError
from ...kernel import iproute
from ..spec import READY_TIMEOUT, LabSpec
from ..topology import RunningLab, build
from ..traffic import LongLived, wait_until

__all__ = ["SUMMARY", "LossResult", "run"]

SUMMARY = "one of three BGP ECMP directors dies under load: with mh on every director no flow breaks"

CONNECTIONS = 100
SETTLE = 3.0  # seconds after the router re-converged for broken connections to show


@dataclass
class Run:
    total: int = 0
    broken: int = 0
    reconverge_ms: float | None = None  # death -> the router's route without dir1
    how: str = ""
    by_reason: dict[str, int] = field(default_factory=dict)


@dataclass
class LossResult:
    backend: str
    mh: Run
    control: Run
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            self.mh.total == CONNECTIONS
            and self.mh.broken == 0
            and self.mh.reconverge_ms is not None
            and self.control.total == CONNECTIONS
            and self.control.broken > 0
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "scenario": "director-loss",
            "backend": self.backend,
            "mh": asdict(self.mh),
            "control": asdict(self.control),
            "notes": self.notes,
            "ok": self.ok,
        }

    def render(self) -> str:
        def ms(value: float | None) -> str:
            return "never" if value is None else f"{value:.0f} ms"

        lines = [
            f"scenario director-loss (director backend {self.backend})",
            "3 directors behind a router (BGP, BFD 100 ms, ECMP); dir1 dies (link down, director killed)",
            f"mh: {self.mh.how}: {self.mh.broken} of {self.mh.total} long-lived connections broke; "
            f"the router dropped dir1 after {ms(self.mh.reconverge_ms)}",
            f"control: {self.control.how}: {self.control.broken} of {self.control.total} broke"
            + (
                f" ({', '.join(f'{n} {r}' for r, n in self.control.by_reason.items())})"
                if self.control.by_reason
                else ""
            ),
        ]
        lines += [f"  {n}" for n in self.notes]
        lines.append("result: " + ("OK" if self.ok else "FAILED") + " (mh must break none, the control some)")
        return "\n".join(lines)


def _lose_dir1(running: RunningLab, log: Callable[[str], None]) -> Run:
    info = running.info
    spec = info.spec
    out = Run()
    with LongLived(info.client, spec.vip, spec.port, CONNECTIONS) as long_lived:
        out.total = long_lived.opened
        time.sleep(2.0)  # a steady state first
        log("dir1 dies: link down, director killed")
        died = time.time()
        iproute.set_link_down(info.directors["dir1"], "eth0")
        running.crash("director dir1")
        if wait_until(lambda: info.director_ips["dir1"] not in running.router_paths(), 30):
            out.reconverge_ms = round((time.time() - died) * 1000, 1)
        time.sleep(SETTLE)
    out.broken = len(long_lived.broken)
    for _, why in long_lived.broken.values():
        out.by_reason[why] = out.by_reason.get(why, 0) + 1
    return out


def _without_node2(running: RunningLab, director: str) -> None:
    """Restart ``director`` with a config that lacks node2: its table differs from the others'."""
    info = running.info
    node2 = next(n.ip for n in info.nodes if n.name == "node2")
    text = Path(info.config).read_text()
    reduced = Path(info.state_dir) / f"director-{director}-without-node2.yaml"
    reduced.write_text(text.replace(f"      - address: {node2}\n", ""))
    running.stop(f"director {director}")  # it withdraws the VIP on the way out
    running.start_director(director, config=str(reduced))

    def lacks_node2() -> bool:
        with open_backend(cast(BackendName, info.backend), netns=info.directors[director]) as backend:
            services = backend.read().services
        return bool(services) and all(
            str(rs.address) != node2 for vs in services.values() for rs in vs.realservers
        )

    if not wait_until(lacks_node2, READY_TIMEOUT):
        raise LabError(f"{director} did not drop node2 from its table")
    running.wait_router_paths(len(info.directors))  # announcing again


def run(*, prefix: str, backend: str, log: Callable[[str], None], doctor: bool = True) -> LossResult:
    base = LabSpec(prefix=prefix, topology="dr", backend=backend, directors=3, router=True, bgp=True)
    log("lab up: dr, 3 directors announcing the VIP by BGP, mh with port hashing")
    running = build(LabSpec(**{**asdict(base), "scheduler": "mh", "flags": ("mh-port",)}))
    result = LossResult(running.info.backend, Run(), Run())
    try:
        result.mh = _lose_dir1(running, log)
        result.mh.how = "mh with port hashing on every director" + (
            ", sloppy_tcp" if result.backend == "ipvs" else ""
        )
    finally:
        running.teardown()
    if result.backend == "ipvs":
        how = "rr without sloppy_tcp (each director knows only its own flows)"
        control = LabSpec(**{**asdict(base), "extra_config": "sysctls: {net.ipv4.vs.sloppy_tcp: 0}\n"})
    else:
        how = "mh with port hashing, but dir3's table lacks node2"
        control = LabSpec(**{**asdict(base), "scheduler": "mh", "flags": ("mh-port",)})
    log(f"control: {how}")
    running = build(control)
    try:
        if result.backend != "ipvs":
            _without_node2(running, "dir3")
        result.control = _lose_dir1(running, log)
        result.control.how = how
    finally:
        running.teardown()
    return result
