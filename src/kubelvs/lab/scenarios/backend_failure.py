"""backend-failure: a node's service dies under load; the director's health check takes it
out, and puts it back when it returns.

A DR lab whose director checks every node with a data-path probe (``mode: vip``: a TCP
handshake with the VIP, sent to the node's MAC as the director forwards a client's
packet, so it proves the node serves the VIP, not merely that something listens on the
node's own address). A client opens a steady stream of new connections through the VIP
(25 a second). Then every pod of node1 is killed: node1 still holds the VIP and answers
ARP, its kube-proxy rules still DNAT, but nothing answers behind them. The scenario
measures how long the director took to mark node1 down (``detect_ms``, from its state
file) and to program that (``programmed_ms``: node1's weight read back from the kernel),
how many requests failed meanwhile, then starts the pods again and measures how long until
node1 was up (``recover_ms``) and got traffic again.

It passes when node1 was detected within ``fall * interval + timeout`` (+ 500 ms), no more
requests failed than were sent to node1 in that window, none failed once the kernel
stopped sending new connections to node1, and node1 served requests again after coming
back. (The count starts at the kernel, not at the decision: a check can decide while a
sync is under way, and the next sync programs it; on an emulated CPU that is hundreds of
milliseconds later.)
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ...app.state import state_path
from ...backends import BackendName, open_backend
from ..topology import LabSpec, RunningLab, build
from ..traffic import NewConnections, wait_until

__all__ = ["NEEDS", "SUMMARY", "FailureResult", "run"]

SUMMARY = "a node's pods die under load: the health check takes the node out within fall x interval, and back"
NEEDS = ""

INTERVAL, TIMEOUT, FALL, RISE = 0.5, 0.3, 2, 2
HEALTH = f"{{kind: tcp, mode: vip, interval: {INTERVAL}, timeout: {TIMEOUT}, fall: {FALL}, rise: {RISE}}}"
RATE = 25.0  # new connections a second
SLACK = 0.5  # seconds a detection may be later than fall * interval + timeout


@dataclass
class FailureResult:
    backend: str
    detect_ms: float | None
    recover_ms: float | None
    failed_requests: int
    requests: int
    probe_interval_ms: float
    fall: int
    rise: int
    allowed_failures: int = 0
    programmed_ms: float | None = None
    failed_after_detection: int = 0
    node1_after_recovery: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        bound = (FALL * INTERVAL + TIMEOUT + SLACK) * 1000
        return (
            self.detect_ms is not None
            and self.detect_ms <= bound
            and self.failed_requests <= self.allowed_failures
            and self.programmed_ms is not None
            and self.failed_after_detection == 0
            and self.recover_ms is not None
            and self.node1_after_recovery > 0
        )

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        return {"scenario": "backend-failure", **out, "ok": self.ok}

    def render(self) -> str:
        lines = [f"scenario backend-failure (director backend {self.backend})"]
        bound = (FALL * INTERVAL + TIMEOUT + SLACK) * 1000
        lines.append(
            f"checks: tcp through the data path (vip mode), interval {self.probe_interval_ms:.0f} ms, "
            f"timeout {TIMEOUT * 1000:.0f} ms, fall {self.fall}, rise {self.rise}"
        )
        detect = "never" if self.detect_ms is None else f"{self.detect_ms:.0f} ms"
        programmed = "never" if self.programmed_ms is None else f"{self.programmed_ms:.0f} ms"
        lines.append(
            f"node1's pods killed: marked down after {detect} (bound {bound:.0f} ms), "
            f"programmed after {programmed}"
        )
        lines.append(
            f"requests: {self.requests}, failed {self.failed_requests} (allowed {self.allowed_failures}: "
            f"what went to node1 before the bound), failed once programmed {self.failed_after_detection}"
        )
        recover = "never" if self.recover_ms is None else f"{self.recover_ms:.0f} ms"
        lines.append(
            f"pods back: node1 up after {recover}, then served {self.node1_after_recovery} request(s)"
        )
        lines += [f"  {n}" for n in self.notes]
        lines.append("result: " + ("OK" if self.ok else "FAILED"))
        return "\n".join(lines)


def _health(running: RunningLab, node_ip: str) -> tuple[str, float] | None:
    """node1's state and since when (wall time), from the director's state file."""
    path = state_path(running.info.directors["dir1"])
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    targets = (doc.get("health") or {}).get("targets") or {}
    for name, state in targets.items():
        if f" via {node_ip} " in name or name.endswith(f" {node_ip}:80"):
            return str(state["status"]), float(state["since"])
    return None


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text().splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _out_of_rotation(backend: BackendName, netns: str, node_ip: str) -> bool:
    """Whether the director's kernel sends node1 no new connections: weight 0 or absent."""
    with open_backend(backend, netns=netns) as kernel:
        services = kernel.read().services
    return bool(services) and all(
        rs.weight == 0 for vs in services.values() for rs in vs.realservers if str(rs.address) == node_ip
    )


def run(*, prefix: str, backend: str, log: Callable[[str], None], doctor: bool = True) -> FailureResult:
    spec = LabSpec(prefix=prefix, topology="dr", backend=backend, health=HEALTH)
    log(f"lab up: dr, health checks {HEALTH}")
    running = build(spec)
    info = running.info
    node1 = next(n for n in info.nodes if n.name == "node1")
    pod_node = info.pod_node()
    result = FailureResult(info.backend, None, None, 0, 0, INTERVAL * 1000, FALL, RISE)
    try:
        if not wait_until(lambda: (_health(running, node1.ip) or ("", 0))[0] == "up", 60):
            result.notes.append(
                f"node1 never showed as up in the director's state (it said {_health(running, node1.ip)}); "
                "the director's log ends:\n" + _tail(running.log("director-dir1"))
            )
            return result
        with NewConnections(info.client, info.spec.vip, info.spec.port, rate=RATE, overlap=False) as stream:
            time.sleep(2.0)  # a steady state first
            log("killing node1's pods")
            killed = time.time()
            for pod in node1.pods:
                running.stop(f"pod {pod.name}")
            down = wait_until(lambda: (_health(running, node1.ip) or ("", 0))[0] == "down", 20)
            state = _health(running, node1.ip)
            detected = state[1] if down and state is not None else None
            director = info.directors["dir1"]
            backend_name: BackendName = info.backend  # type: ignore[assignment]
            out = wait_until(lambda: _out_of_rotation(backend_name, director, node1.ip), 20)
            programmed = time.time() if out else None
            time.sleep(2.0)  # traffic after the detection: none may fail
            log("starting node1's pods again")
            restarted = time.time()
            for pod in node1.pods:
                running.start_pod(pod)
            up = wait_until(lambda: (_health(running, node1.ip) or ("", 0))[0] == "up", 30)
            state = _health(running, node1.ip)
            back = state[1] if up and state is not None else None
            time.sleep(2.0)  # traffic after the recovery: node1 must get some
        sent = stream.results
        result.requests = len(sent)
        result.failed_requests = sum(1 for s in sent if not s.result.ok)
        bound = FALL * INTERVAL + TIMEOUT + SLACK
        window = [s for s in sent if killed <= s.sent < killed + bound]
        # What the window allows: the requests the scheduler sends node1 in it, a share
        # p = 1/nodes of them, with 4 standard deviations of slack (a per-flow hash spreads
        # connections at random: a false failure is rarer than 1 in 10,000).
        p = 1 / max(1, len(info.nodes))
        n = len(window)
        result.allowed_failures = math.ceil(n * p + 4 * math.sqrt(n * p * (1 - p))) + 1
        if detected is not None:
            result.detect_ms = round((detected - killed) * 1000, 1)
        if programmed is not None:
            result.programmed_ms = round((programmed - killed) * 1000, 1)
            # 0.2 s: a connection sent just before the read was scheduled by the old table.
            result.failed_after_detection = sum(
                1 for s in sent if programmed + 0.2 <= s.sent < restarted and not s.result.ok
            )
        if back is not None:
            result.recover_ms = round((back - restarted) * 1000, 1)
            result.node1_after_recovery = sum(
                1 for s in sent if s.sent >= back and s.result.ok and pod_node.get(s.result.pod) == "node1"
            )
        failures = [s.result.error for s in sent if not s.result.ok]
        if failures:
            result.notes.append(f"failures: {', '.join(sorted(set(failures)))}")
        return result
    finally:
        running.teardown()
