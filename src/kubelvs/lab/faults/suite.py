"""What a fault is, what it yields, and the running suite every fault acts on."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from ...errors import LabError
from ...model import (
    ServiceKey,
    kernel_version,
    recommended_sysctls,
)
from ...planner import plan
from ...sources.config import load_config, to_desired
from ..netlab import Process
from ..topology import RunningLab
from .state import Image, Observer, as_observed
from .stream import read_requests

#: Seconds within which a tampering fault must be repaired (the robustness target).
REPAIR_TARGET = 2.0
#: The director's and the agents' settle time for a changed config file (their default).
SETTLE = 1.0
#: The lab's VIP for the Service of the config fault and of the API server's outage: a
#: second external IP served by the same workers.
EXTRA_VIP = "10.240.0.203"
#: A DR real server nobody answers ARP for (no host of the lab has this address).
UNREACHABLE_VIP = "10.240.0.202"
UNREACHABLE_RS = "10.240.0.150"
#: What the Kubernetes director may own: the lab's external IPs.
KUBE_CIDR = "10.240.0.192/26"
STREAM_FILE = "faults-stream.jsonl"


class StandInApi(Protocol):
    """A Kubernetes API server the runner can take away: the tests' stand-in
    (tests/faults/standin.py adapts tests/kubernetes/apiserver.py)."""

    @property
    def kubeconfig(self) -> Path: ...

    def publish(self, nodes: Mapping[str, str], services: Mapping[str, str], port: int) -> None:
        """Nodes (name -> InternalIP) and Services (name -> external IP, on ``port``, one
        ready endpoint on every published node). Works while the server is stopped."""
        ...

    def stop(self) -> None:
        """An outage: stop listening and drop every connection."""
        ...

    def start(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Settings:
    """How hard the stream pushes and how long the runner waits (waiting bounds a wait;
    it measures nothing)."""

    interval: float = 0.05  # seconds between new connections
    request_timeout: float = 2.0
    baseline: float = 3.0  # seconds of traffic before the first fault
    tail: float = 2.0  # seconds the stream runs on after a repair, before the next fault
    down: float = 1.0  # seconds a killed process stays dead before it is started again
    outage: float = 5.0  # seconds the API server is away
    repair_timeout: float = 30.0  # giving up on a repair (it is then "not repaired")
    start_timeout: float = 120.0  # a restarted process's start (Python start-up in the VM is slow)
    poll: float = 0.02  # pause between two reads of the state (each read costs CPU the repair may need)

    @staticmethod
    def for_backend(backend: str) -> Settings:
        """IPVS runs in the VM (software-emulated CPU): a slower stream, longer waits."""
        if backend == "ipvs":
            return Settings(
                interval=0.1,
                request_timeout=3.0,
                tail=3.0,
                repair_timeout=120.0,
                start_timeout=600.0,
                poll=0.2,
            )
        return Settings()


@dataclass
class Outcome:
    """What one fault's own code observed (the runner adds the traffic)."""

    injected: float
    repaired: float | None  # state back (and the fault's condition held); None: not within the timeout
    unchanged: bool | None = None  # faults that must change nothing: the state never differed
    checks: dict[str, bool] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Fault:
    """One fault: how it is injected and measured (``run``), and its targets."""

    name: str
    title: str
    kind: str  # process | kernel | node | config | kubernetes
    removes_realserver: bool  # failures allowed until repaired
    tampering: bool  # repaired within REPAIR_TARGET
    backends: tuple[str, ...]
    run: Callable[[Suite], Outcome]


@dataclass
class FaultResult:
    """One fault's figures: the requests that ended during it, the repair, the targets."""

    fault: str
    title: str
    backend: str
    kind: str
    removes_realserver: bool
    requests: int
    failed: int
    errors: dict[str, int]
    repair_ms: int | None  # None: not repaired
    state_ms: int | None  # the state alone back
    flow_ms: int | None  # traffic alone back
    target_failed: int | None  # 0, or None: failures allowed
    target_repair_ms: int | None
    met: bool
    checks: dict[str, bool] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def meets(self, time_scale: float = 1.0) -> bool:
        """Every target met, the repair-time target stretched by ``time_scale`` (the CI's VM
        emulates its CPU; ``met`` is the plain target)."""
        return (
            self.repair_ms is not None
            and all(self.checks.values())
            and (self.target_failed is None or self.failed <= self.target_failed)
            and (self.target_repair_ms is None or self.repair_ms <= self.target_repair_ms * time_scale)
        )

    def target_text(self) -> str:
        parts = ["0 failed" if self.target_failed == 0 else "failures allowed"]
        if self.target_repair_ms is not None:
            parts.append(f"repair <= {self.target_repair_ms / 1000:g} s")
        return ", ".join(parts)


@dataclass
class SuiteResult:
    """A whole run on one backend."""

    backend: str
    settings: Settings
    results: list[FaultResult]
    baseline_requests: int
    baseline_failed: int
    setup_requests: int  # while switching to the Kubernetes director (not a fault)
    setup_failed: int
    tracebacks: list[str]  # logs of the lab's processes that hold a Python traceback
    reads: int
    read_ms: float  # mean time of one poll of the state
    duration_s: float
    machine: str
    date: str

    @property
    def ok(self) -> bool:
        return self.baseline_failed == 0 and not self.tracebacks and all(r.met for r in self.results)

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


class Suite:
    """The running lab, its stream and its observer: what the faults act on."""

    def __init__(self, running: RunningLab, settings: Settings, log: Callable[[str], None]) -> None:
        self.running = running
        self.settings = settings
        self.log = log
        self.info = running.info
        self.backend = running.info.backend
        self.director_ns = running.info.directors["dir1"]
        self.config = Path(running.info.config)
        self.desired = to_desired(load_config(self.config))
        self.observer = Observer(running, self.desired.ownership.owns)
        self.expected: Image | None = None
        self.stream_file = Path(self.info.state_dir) / STREAM_FILE
        self.stream: Process | None = None
        self.api: StandInApi | None = None
        self.kube_director: subprocess.Popen[bytes] | None = None
        self.kube_log = Path(self.info.state_dir) / "director-kubernetes.log"
        # (label, start): the windows requests are attributed to, in time order.
        self.windows: list[tuple[str, float]] = []

    # ------------------------------------------------------------------ traffic

    def start_stream(self) -> None:
        s = self.settings
        self.stream = self.running.lab.start_python(
            self.info.client,
            "kubelvs.lab.faults",
            "stream",
            "--target",
            f"{self.info.spec.vip}:{self.info.spec.port}",
            "--interval",
            str(s.interval),
            "--timeout",
            str(s.request_timeout),
            "--out",
            str(self.stream_file),
            log=self.running.log("faults-stream"),
        )
        self.until(
            lambda: any(r.ok for r in read_requests(self.stream_file)),
            s.start_timeout,
            "the client's stream got no answer",
        )

    def stop_stream(self) -> None:
        """SIGTERM: the stream sends no more and exits once its requests in flight ended."""
        proc = self.stream
        if proc is None:
            return
        self.running.lab.stop(proc, timeout=self.settings.request_timeout + 30)
        self.stream = None

    # ------------------------------------------------------------------ waiting and measuring

    def until(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if time.monotonic() > deadline:
                raise LabError(f"{what} within {timeout:.0f} s")
            time.sleep(max(0.05, self.settings.poll))

    def differences(self, *, only: Iterable[ServiceKey] | None = None) -> list[str]:
        assert self.expected is not None
        return self.expected.differences(self.observer.image(), only=only)

    def establish(self) -> None:
        """Wait until the director's table is what its config asks (an empty plan against
        the table read back) and every worker holds the VIP with the ARP settings; that
        image is what every repair must come back to."""
        kernel = kernel_version(os.uname().release)
        extra = recommended_sysctls(self.backend, kernel, self.desired.services.values())
        desired = replace(self.desired, sysctls={**extra, **self.desired.sysctls})
        found: list[Image] = []

        def in_sync() -> bool:
            image = self.observer.image()
            nodes_ok = all(n.vip and n.arp_ignore >= 1 and n.arp_announce >= 2 for n in image.nodes.values())
            if image.error or not nodes_ok or plan(desired, as_observed(image)).ops:
                return False
            found.append(image)
            return True

        self.until(in_sync, self.settings.start_timeout, "the lab did not converge to its config")
        self.expected = found[-1]

    def settle(self) -> None:
        """Before a fault: wait until the state is the expected one and the last request
        answered."""
        deadline = time.monotonic() + self.settings.repair_timeout
        while True:
            diff = self.differences()
            done = sorted(read_requests(self.stream_file), key=lambda r: r.end)
            if not diff and done and done[-1].ok:
                return
            if time.monotonic() > deadline:
                why = diff or [f"the last request failed: {done[-1].error if done else 'none answered'}"]
                raise LabError(
                    "the lab is not in its repaired state before the next fault: " + "; ".join(why)
                )
            time.sleep(0.1)

    def finish(self, outcome: Outcome, differences: Callable[[], list[str]] | None = None) -> Outcome:
        """After a repair: let the stream run on for ``tail`` seconds while the state must
        hold (a relapse is noted and fails the fault)."""
        if outcome.repaired is None:
            return outcome
        relapse = self.watch(self.settings.tail, differences=differences)
        outcome.checks["stayed repaired"] = not relapse
        outcome.notes += [f"after the repair: {d}" for d in relapse]
        return outcome

    def wait_repaired(
        self,
        injected: float,
        *,
        ready: Callable[[], bool] | None = None,
        differences: Callable[[], list[str]] | None = None,
        timeout: float | None = None,
    ) -> tuple[float | None, list[str]]:
        """Poll until ``ready()`` holds (it is cheap: asked first) and the state is back;
        (when, as the poll that saw it ended) or (None, what was still missing) after
        ``timeout``."""
        diff_of = differences or self.differences
        deadline = injected + (timeout or self.settings.repair_timeout)
        while True:
            last = (
                ["the fault's own condition does not hold yet"] if ready is not None and not ready() else []
            )
            last = last or diff_of()
            seen = time.monotonic()
            if not last:
                return seen, []
            if seen > deadline:
                return None, last
            time.sleep(self.settings.poll)

    def watch(self, seconds: float, *, differences: Callable[[], list[str]] | None = None) -> list[str]:
        """Poll for ``seconds``; every difference seen (empty: the state held)."""
        diff_of = differences or self.differences
        seen: list[str] = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for d in diff_of():
                if d not in seen:
                    seen.append(d)
            time.sleep(max(0.05, self.settings.poll))
        return seen

    # ------------------------------------------------------------------ processes

    def log_size(self, name: str) -> int:
        try:
            return self.running.log(name).stat().st_size
        except FileNotFoundError:
            return 0

    def logged_since(self, name: str, offset: int, text: str) -> bool:
        try:
            with self.running.log(name).open("rb") as f:
                f.seek(offset)
                return text.encode() in f.read()
        except FileNotFoundError:
            return False

    def kill(self, key: str) -> None:
        """SIGKILL the lab process recorded as ``key``, by its PID (ours: we started it)."""
        pid = self.info.pids.get(key)
        proc = next((p for p in self.running.lab.processes if p.pid == pid), None)
        if proc is None:
            raise LabError(f"no running process {key!r} in the lab")
        proc.popen.kill()
        proc.popen.wait(10)
        self.running.stop(key)  # forget it (it has exited: nothing is signalled)

    def run_in(self, role: str, *argv: str) -> None:
        self.running.run(role, *argv, timeout=120)
