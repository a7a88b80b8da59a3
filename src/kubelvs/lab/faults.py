"""Fault injection in the lab (lab layer): break a running DR lab while a client keeps
opening connections through the VIP, and measure what the break cost and how long the
repair took. The CI test (tests/faults/) and the benchmark (bench/faults.py) run the
same suite; the benchmark commits its figures.

    client ── one new connection, one HTTP GET, every ``interval`` ──> VIP ── dir1 ── node1/node2

For every fault the runner notes the injection time, then polls the lab's state until
it is what it was before the fault: the director's table read back through the
backend (``open_backend(...).read()``: owned services, real servers, weights,
timeouts, the director's sysctls), for nftables also the ``kubelvs`` tables listed by
``nft -j`` (tables, chains, rules, map elements; handles and counters left out), and
on every worker the VIP held and the effective ``arp_ignore``/``arp_announce``.

- **failed requests**: the stream's requests that *ended* between this fault's
  injection and the next fault's (a request in flight at the injection is affected by
  it; one that ends later is counted where it ends).
- **repair time**: from the injection until the state is back (and the fault's own
  condition holds: a restarted process synced, a new service programmed) *and* traffic
  flows again (the first successful request after the window's last failed one). The
  poll that sees the state back ends after the repair: the figure is an upper bound,
  by at most one poll.

Classes (``Fault.removes_realserver``): a fault that takes real servers out of the
data path (a deleted table, service, slot or real server) may fail requests until it
is repaired; every other fault must fail none. A *tampering* fault (someone changed
the kernel or a node behind kubelvs) must be repaired within ``REPAIR_TARGET``
seconds. The processes' restarts and the config file's changes have no time target
beyond their own (the settle time); the API server's outage must change nothing.

The stream runs in its own process inside the client namespace
(``python -m kubelvs.lab.faults stream``), so that the runner's polling cannot delay it;
both stamp with ``time.monotonic()`` (one clock for every process of the machine).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, cast

import yaml

from ..backends import Backend, BackendName, open_backend
from ..errors import KubelvsError, LabError
from ..kernel import iproute, sysctl
from ..kernel.netns import entered
from ..model import (
    DesiredState,
    ObservedState,
    ServiceKey,
    VirtualService,
    kernel_version,
    recommended_sysctls,
)
from ..planner import plan
from ..sources.config import load_config, parse_config, parse_yaml, to_desired
from .netlab import Process
from .spec import LAB_TIMEOUTS
from .topology import LabSpec, RunningLab, build

__all__ = [
    "FAULTS",
    "REPAIR_TARGET",
    "Fault",
    "FaultResult",
    "Image",
    "Request",
    "Settings",
    "StandInApi",
    "SuiteResult",
    "main",
    "markdown",
    "run_suite",
]

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


# ====================================================================== the stream


@dataclass(frozen=True, slots=True)
class Request:
    """One request of the stream: a new TCP connection with one HTTP GET."""

    start: float  # time.monotonic() before connecting
    end: float  # when it answered or failed
    ok: bool
    server: str = ""  # the pod that answered
    error: str = ""  # why it failed: "connection refused", "timed out", ...


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.errno is not None:
        return {
            errno.ECONNREFUSED: "connection refused",
            errno.ECONNRESET: "connection reset",
            errno.EHOSTUNREACH: "no route to host",
            errno.ENETUNREACH: "network unreachable",
        }.get(exc.errno, exc.strerror or str(exc))
    return f"{type(exc).__name__}: {exc}"


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
        return Request(start, time.monotonic(), False, error=_reason(exc))


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


# ====================================================================== the lab's state


@dataclass(frozen=True, slots=True)
class NodeImage:
    """What the node agent keeps on a worker."""

    vip: bool  # the VIP is on one of its devices
    arp_ignore: int  # effective: max(all, interface)
    arp_announce: int

    def describe(self) -> str:
        vip = "held" if self.vip else "missing"
        return f"VIP {vip}, arp_ignore {self.arp_ignore}, arp_announce {self.arp_announce}"


@dataclass(frozen=True, slots=True)
class Image:
    """The lab's state as far as kubelvs keeps it: the director's table and the workers."""

    services: Mapping[ServiceKey, VirtualService]  # owned ones
    timeouts: Any
    sysctls: Mapping[str, int]
    ruleset: str  # the nftables tables, normalised ("" with IPVS)
    nodes: Mapping[str, NodeImage]
    error: str = ""  # the read failed

    def differences(self, now: Image, *, only: Iterable[ServiceKey] | None = None) -> list[str]:
        """How ``now`` differs from this image, one phrase each (empty: the same).
        ``only``: compare these services and the nodes, nothing else."""
        if now.error:
            return [now.error]
        out: list[str] = []
        keys = set(self.services) | set(now.services) if only is None else set(only)
        for key in sorted(keys, key=ServiceKey.sort_key):
            want, have = self.services.get(key), now.services.get(key)
            if want != have:
                out.append(f"{key}: {_service_text(have)} (want {_service_text(want)})")
        if only is None:
            if now.timeouts != self.timeouts:
                out.append(f"timeouts {now.timeouts} (want {self.timeouts})")
            for name, value in sorted(self.sysctls.items()):
                if now.sysctls.get(name) != value:
                    out.append(f"{name}={now.sysctls.get(name)} (want {value})")
            if now.ruleset != self.ruleset:
                out.append("nftables tables differ from the repaired state")
        for node, want_node in sorted(self.nodes.items()):
            have_node = now.nodes.get(node)
            if have_node != want_node:
                seen = have_node.describe() if have_node else "unreadable"
                out.append(f"{node}: {seen} (want {want_node.describe()})")
        return out


def _service_text(vs: VirtualService | None) -> str:
    if vs is None:
        return "absent"
    rss = ", ".join(f"{rs.key} w={rs.weight}" for rs in vs.realservers)
    return f"{vs.scheduler} [{rss}]"


def nft_tables(netns: str) -> str:
    """The ``kubelvs`` tables of ``netns`` as ``nft -j`` lists them, normalised: no
    handles, no counter values, no elements of the sets the packet path fills, set
    elements sorted; rules kept in their chain's order."""
    proc = subprocess.run(
        ["ip", "netns", "exec", netns, "nft", "-j", "list", "ruleset"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if proc.returncode != 0:
        raise LabError(f"nft -j list ruleset (in {netns}): {proc.stderr.strip()}")
    from ..backends.nftables.schema import COUNTER_SETS, TABLE

    things: list[str] = []
    rules: dict[str, list[str]] = {}
    for item in json.loads(proc.stdout)["nftables"]:
        ((kind, body),) = item.items()
        if kind == "metainfo" or (body.get("table") if kind != "table" else body.get("name")) != TABLE:
            continue
        body = _without_counts({k: v for k, v in body.items() if k != "handle"})
        if kind in ("set", "map") and body["name"] in COUNTER_SETS:
            body.pop("elem", None)  # the packet path adds them
        elif kind in ("set", "map") and "elem" in body:
            body["elem"] = sorted(json.dumps(e, sort_keys=True) for e in body["elem"])
        if kind == "rule":
            rules.setdefault(f"{body['family']} {body['chain']}", []).append(
                json.dumps(body["expr"], sort_keys=True)
            )
        else:
            things.append(json.dumps({kind: body}, sort_keys=True))
    return json.dumps({"objects": sorted(things), "rules": rules}, sort_keys=True)


def _without_counts(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: ({} if k == "counter" else _without_counts(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_counts(v) for v in value]
    return value


def node_image(netns: str, vip: str, interface: str = "eth0") -> NodeImage:
    """Whether the worker holds ``vip`` (binding to it succeeds only for a local address;
    cheaper than an address dump, which matters in the VM) and its effective ARP settings."""
    with entered(netns):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((vip, 0))
                held = True
            except OSError as exc:
                if exc.errno != errno.EADDRNOTAVAIL:
                    raise
                held = False

        def effective(key: str) -> int:
            return max(sysctl.read(f"net.ipv4.conf.{name}.{key}") or 0 for name in ("all", interface))

        return NodeImage(vip=held, arp_ignore=effective("arp_ignore"), arp_announce=effective("arp_announce"))


class Observer:
    """Reads the lab's state: the director's table through the backend (in the
    director's namespace), the nftables tables, the workers."""

    def __init__(self, running: RunningLab, owns: Callable[[ServiceKey], bool]) -> None:
        self.running = running
        self.netns = running.info.directors["dir1"]
        self.backend: Backend = open_backend(cast(BackendName, running.info.backend), netns=self.netns)
        self.owns = owns
        self.sysctl_names = sorted(
            recommended_sysctls(self.backend.name, kernel_version(os.uname().release), ())
        )
        self.reads = 0
        self.read_seconds = 0.0

    def image(self) -> Image:
        started = time.monotonic()
        nodes: dict[str, NodeImage] = {}
        try:
            state = self.backend.read(sysctls=self.sysctl_names)
            ruleset = nft_tables(self.netns) if self.backend.name == "nftables" else ""
            for node in self.running.info.nodes:
                nodes[node.name] = node_image(node.netns, self.running.info.spec.vip)
        except (KubelvsError, OSError) as exc:
            return Image({}, None, {}, "", nodes, error=f"read failed: {exc}")
        finally:
            self.reads += 1
            self.read_seconds += time.monotonic() - started
        services = {k: v for k, v in state.services.items() if self.owns(k)}
        return Image(services, state.timeouts, dict(state.sysctls), ruleset, nodes)

    def close(self) -> None:
        self.backend.close()


# ====================================================================== faults


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
        if proc.popen.poll() is None:
            proc.popen.send_signal(signal.SIGTERM)
            try:
                proc.popen.wait(self.settings.request_timeout + 30)
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait(10)
        self.running.lab.stop(proc)
        self.stream = None

    # ------------------------------------------------------------------ waiting and measuring

    def until(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if time.monotonic() > deadline:
                raise LabError(f"{what} within {timeout:.0f} s")
            time.sleep(0.05)

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
            if image.error or not nodes_ok or plan(desired, _as_observed(image)).ops:
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


# ---------------------------------------------------------------------- the faults


#: What the repairing process logs when it repairs (the director: a full sync on its
#: check's word; the agent: one line per change).
DIRECTOR_REPAIRS = ("director-dir1", "changed by someone else")
AGENT_REPAIRS = ("agent-node1", "node: ")


def _tampered(
    suite: Suite, act: Callable[[], None], *, repairer: tuple[str, str] = DIRECTOR_REPAIRS, what: str = ""
) -> Outcome:
    """Someone changes the kernel or a node behind kubelvs (``act``), then the repair is
    waited for. The damage must have been real: the first poll saw it, or the repairing
    process logged a repair after the injection (a poll in the VM can be slower than the
    agent's repair)."""
    log, marker = repairer
    offset = suite.log_size(log)
    t0 = time.monotonic()
    act()
    first = suite.differences()
    repaired, diff = suite.wait_repaired(t0)
    out = Outcome(t0, repaired, notes=[what] if what else [])
    out.checks["damage seen before the repair"] = bool(first) or suite.logged_since(log, offset, marker)
    out.notes += diff
    return suite.finish(out)


def _command(*argv: str) -> Callable[[Suite], Outcome]:
    """A command run in the director's namespace (``{vip}``, ``{port}``, ``{rs}``: the
    VIP, its port, the last worker's address)."""

    def run(suite: Suite) -> Outcome:
        spec = suite.info.spec
        args = [a.format(vip=spec.vip, port=spec.port, rs=suite.info.nodes[-1].ip) for a in argv]
        return _tampered(suite, lambda: suite.run_in("dir1", *args))

    return run


def _flush_ingress_chain(suite: Suite) -> Outcome:
    """``nft flush chain`` of the DR ingress hook (``dr_in_<ifindex>`` of eth0)."""
    link = iproute.link(suite.director_ns, "eth0")
    if link is None:
        raise LabError(f"no eth0 in {suite.director_ns}")
    chain = f"dr_in_{link.index}"
    return _tampered(suite, lambda: suite.run_in("dir1", "nft", "flush", "chain", "netdev", "kubelvs", chain))


def _delete_slot(suite: Suite) -> Outcome:
    """``nft delete element`` of the last real server's slot in ``dr_slots``."""
    spec = suite.info.spec
    element = f"{{ {spec.vip} . tcp . {spec.port} . {len(suite.info.nodes) - 1} }}"
    return _tampered(
        suite,
        lambda: suite.run_in("dir1", "nft", "delete", "element", "netdev", "kubelvs", "dr_slots", element),
    )


def _director_sysctl(suite: Suite) -> Outcome:
    return _tampered(
        suite, lambda: suite.running.lab.sysctl(suite.director_ns, "net.ipv4.vs.expire_nodest_conn", 0)
    )


def _node_vip_deleted(suite: Suite) -> Outcome:
    """The VIP deleted from the device the agent put it on (``lo``, or ``kubelvs0`` where
    the kernel has dummy devices)."""
    node = suite.info.nodes[0]
    vip = suite.info.spec.vip
    held = [a for a in iproute.addresses(node.netns) if a.address == vip]
    if not held:
        raise LabError(f"{node.name} does not hold {vip}")
    device = held[0].device
    return _tampered(
        suite,
        lambda: iproute.delete_address(node.netns, device, f"{vip}/32"),
        repairer=AGENT_REPAIRS,
        what=f"deleted {vip}/32 from {device} on {node.name}",
    )


def _node_arp_ignore(suite: Suite) -> Outcome:
    netns = suite.info.nodes[0].netns

    def act() -> None:
        for name in ("all", "eth0"):
            suite.running.lab.sysctl(netns, f"net.ipv4.conf.{name}.arp_ignore", 0)

    return _tampered(suite, act, repairer=AGENT_REPAIRS)


def _restart(suite: Suite, key: str, log: str, synced: str, start: Callable[[], object]) -> Outcome:
    """kill -9 of the lab process ``key``; started again ``down`` seconds later; repaired
    once the new process logged ``synced`` and the state is as before."""
    offset = suite.log_size(log)
    t0 = time.monotonic()
    suite.kill(key)
    time.sleep(suite.settings.down)
    start()
    repaired, diff = suite.wait_repaired(
        t0, ready=lambda: suite.logged_since(log, offset, synced), timeout=suite.settings.start_timeout
    )
    out = Outcome(t0, repaired, notes=diff)
    out.checks["restarted process synced"] = repaired is not None
    return suite.finish(out)


def _kill_director(suite: Suite) -> Outcome:
    return _restart(
        suite, "director dir1", "director-dir1", "full sync", lambda: suite.running.start_director("dir1")
    )


def _kill_agent(suite: Suite) -> Outcome:
    # The agent prints a line after its first sync ("node: in sync (1 VIP(s))" when nothing changed).
    return _restart(suite, "agent node1", "agent-node1", "node: ", lambda: suite.running.start_agent("node1"))


def _config_non_atomic(suite: Suite) -> Outcome:
    """The config rewritten in place: truncated, then written in two parts 0.3 s apart;
    the first part is a valid config with one real server fewer. The director must read
    neither the empty nor the half-written file (it reads a file once it stayed the same
    for its settle time), so nothing may change, and it must read the final file."""
    text = suite.config.read_text()
    cut = text.index("\n", text.index("- address:")) + 1
    half = _desired_of(text[:cut], "the half-written config")
    lost = _realservers(suite.desired) - _realservers(half)
    if lost < 1:
        raise LabError("the half-written config would remove no real server: the fault would prove nothing")
    offset = suite.log_size("director-dir1")
    t0 = time.monotonic()
    with suite.config.open("w"):
        pass  # truncated
    time.sleep(0.3)
    with suite.config.open("a") as f:
        f.write(text[:cut])
    time.sleep(0.3)
    with suite.config.open("a") as f:
        f.write(text[cut:])
    changed = suite.watch(SETTLE + 1.0)  # past the settle time after the last write
    read_back = f"{suite.config.name} changed"
    repaired, diff = suite.wait_repaired(
        t0, ready=lambda: suite.logged_since("director-dir1", offset, read_back)
    )
    out = Outcome(t0, repaired, unchanged=not changed)
    out.checks["director read the final file"] = repaired is not None
    out.notes += [f"the half-written file would remove {lost} real server(s)"]
    out.notes += [f"changed meanwhile: {d}" for d in changed] + diff
    return suite.finish(out)


def _desired_of(text: str, source: str) -> DesiredState:
    return to_desired(parse_config(parse_yaml(text, source=source), source=source))


def _realservers(state: DesiredState) -> int:
    return sum(len(vs.realservers) for vs in state.services.values())


def _config_unreachable(suite: Suite) -> Outcome:
    """Two services added in one edit (atomic rename): one whose only DR real server
    nobody answers ARP for, one served by the workers. The existing service must keep
    serving and the new one must be programmed."""
    spec = suite.info.spec
    doc = yaml.safe_load(suite.config.read_text())
    doc["owned_cidrs"] = [*doc.get("owned_cidrs", []), f"{UNREACHABLE_VIP}/32", f"{EXTRA_VIP}/32"]
    base = {"port": spec.port, "scheduler": spec.scheduler, "forward": "dr"}
    workers = [{"address": n.ip} for n in suite.info.nodes]
    doc["services"] += [
        {"name": "unreachable", "vip": UNREACHABLE_VIP, **base, "realservers": [{"address": UNREACHABLE_RS}]},
        {"name": "extra", "vip": EXTRA_VIP, **base, "realservers": workers},
    ]
    new_text = yaml.safe_dump(doc, sort_keys=False)
    desired = _desired_of(new_text, "the edited config")
    extra = next(k for k in desired.services if str(k.address) == EXTRA_VIP)
    unreachable = next(k for k in desired.services if str(k.address) == UNREACHABLE_VIP)
    existing = list(suite.desired.services)
    expected = suite.expected
    assert expected is not None

    def new_programmed() -> list[str]:
        image = suite.observer.image()
        out = expected.differences(image, only=existing)
        if plan(desired, _as_observed(image), keys=[extra]).ops:
            have, want = image.services.get(extra), desired.services[extra]
            out.append(f"{extra}: {_service_text(have)} (want {_service_text(want)})")
        return out

    suite.observer.owns = desired.ownership.owns
    tmp = suite.config.with_suffix(".tmp")
    tmp.write_text(new_text)
    t0 = time.monotonic()
    tmp.replace(suite.config)
    repaired, diff = suite.wait_repaired(t0, differences=new_programmed)
    out = Outcome(t0, repaired, notes=diff)
    out.checks["new service programmed"] = repaired is not None
    suite.finish(out, new_programmed)
    image = suite.observer.image()
    out.notes.append(f"{unreachable} (nobody answers ARP): {_service_text(image.services.get(unreachable))}")
    # The edit changed what the director must hold: later repairs come back to this.
    suite.desired = desired
    suite.expected = image
    return out


def _as_observed(image: Image) -> ObservedState:
    return ObservedState(services=dict(image.services), timeouts=image.timeouts, sysctls=dict(image.sysctls))


def _api_outage(suite: Suite) -> Outcome:
    """The API server away for ``outage`` seconds while a Service is created: nothing in
    the kernel or on the nodes may change meanwhile; after it returns the director
    catches up with the new Service."""
    api, expected = suite.api, suite.expected
    if api is None or expected is None:
        raise LabError("api-outage needs the stand-in API server and a Kubernetes director")
    t0 = time.monotonic()
    api.stop()
    api.publish({}, {"extra": EXTRA_VIP}, suite.info.spec.port)
    changed = suite.watch(suite.settings.outage)
    back = time.monotonic()
    api.start()

    def converged() -> list[str]:
        image = suite.observer.image()
        out = expected.differences(image, only=list(expected.services))
        if not any(str(k.address) == EXTRA_VIP for k in image.services):
            out.append(f"no service for {EXTRA_VIP} yet")
        return out

    repaired, diff = suite.wait_repaired(back, differences=converged)
    out = Outcome(t0, repaired, unchanged=not changed)
    out.checks["new Service programmed after the server returned"] = repaired is not None
    out.notes += [f"changed during the outage: {d}" for d in changed] + diff
    if repaired is not None:
        out.notes.append(f"the new Service was programmed {repaired - back:.2f} s after the server returned")
    return suite.finish(out, converged)


BOTH = ("nftables", "ipvs")
FAULTS: tuple[Fault, ...] = (
    Fault(
        "director-kill",
        "kill -9 of the director, restarted 1 s later",
        "process",
        False,
        False,
        BOTH,
        _kill_director,
    ),
    Fault(
        "agent-kill",
        "kill -9 of node1's agent, restarted 1 s later",
        "process",
        False,
        False,
        BOTH,
        _kill_agent,
    ),
    Fault(
        "nft-delete-netdev-table",
        "nft delete table netdev kubelvs",
        "kernel",
        True,
        True,
        ("nftables",),
        _command("nft", "delete", "table", "netdev", "kubelvs"),
    ),
    Fault(
        "nft-delete-ip-table",
        "nft delete table ip kubelvs",
        "kernel",
        False,
        True,
        ("nftables",),
        _command("nft", "delete", "table", "ip", "kubelvs"),
    ),
    Fault(
        "nft-flush-chain",
        "nft flush chain netdev kubelvs dr_in_N (the DR ingress hook)",
        "kernel",
        True,
        True,
        ("nftables",),
        _flush_ingress_chain,
    ),
    Fault(
        "nft-delete-element",
        "nft delete element: node2's slot in dr_slots",
        "kernel",
        True,
        True,
        ("nftables",),
        _delete_slot,
    ),
    Fault(
        "ipvs-delete-service",
        "ipvsadm -D -t VIP:80",
        "kernel",
        True,
        True,
        ("ipvs",),
        _command("ipvsadm", "-D", "-t", "{vip}:{port}"),
    ),
    Fault(
        "ipvs-delete-realserver",
        "ipvsadm -d -t VIP:80 -r node2:80",
        "kernel",
        True,
        True,
        ("ipvs",),
        _command("ipvsadm", "-d", "-t", "{vip}:{port}", "-r", "{rs}:{port}"),
    ),
    Fault(
        "ipvs-edit-weight",
        "ipvsadm -e -t VIP:80 -r node2:80 -g -w 5",
        "kernel",
        False,
        True,
        ("ipvs",),
        _command("ipvsadm", "-e", "-t", "{vip}:{port}", "-r", "{rs}:{port}", "-g", "-w", "5"),
    ),
    Fault(
        "ipvs-timeouts",
        "ipvsadm --set 900 120 300",
        "kernel",
        False,
        True,
        ("ipvs",),
        _command("ipvsadm", "--set", "900", "120", "300"),
    ),
    Fault(
        "director-sysctl",
        "net.ipv4.vs.expire_nodest_conn=0 on the director",
        "kernel",
        False,
        True,
        ("ipvs",),
        _director_sysctl,
    ),
    Fault("node-vip-deleted", "the VIP deleted from node1", "node", False, True, BOTH, _node_vip_deleted),
    Fault(
        "node-arp-ignore", "arp_ignore=0 on node1 (all and eth0)", "node", False, True, BOTH, _node_arp_ignore
    ),
    Fault(
        "config-non-atomic",
        "config truncated, then written in two parts 0.3 s apart",
        "config",
        False,
        False,
        BOTH,
        _config_non_atomic,
    ),
    Fault(
        "config-unreachable",
        f"config: a DR real server nobody answers ARP for ({UNREACHABLE_RS}) beside a new service",
        "config",
        False,
        False,
        BOTH,
        _config_unreachable,
    ),
    Fault(
        "api-outage",
        "Kubernetes API server away for 5 s (a Service created meanwhile)",
        "kubernetes",
        False,
        False,
        BOTH,
        _api_outage,
    ),
)


# ---------------------------------------------------------------------- the Kubernetes director


def kube_config_text(spec: LabSpec) -> str:
    tcp, fin, udp = LAB_TIMEOUTS
    return (
        "# Written by the fault-injection runner: the lab's external IPs from the Kubernetes API.\n"
        f"owned_cidrs: [{KUBE_CIDR}]\n"
        f"timeouts: {{tcp: {tcp}, tcpfin: {fin}, udp: {udp}}}\n"
        "kubernetes:\n"
        f"  external_ip_cidrs: [{KUBE_CIDR}]\n"
        f"  default_scheduler: {spec.scheduler}\n"
        "  health: {enabled: false}   # the lab's workers run no kube-proxy health port\n"
    )


def switch_to_kubernetes(suite: Suite, api: StandInApi) -> None:
    """Replace the lab's config-file director by ``kubelvs director --kubernetes`` against
    ``api`` (started in the root namespace, where the stand-in listens on loopback, and
    programming the director's namespace with ``--netns``), from an empty table."""
    info = suite.info
    suite.running.stop("director dir1")
    if suite.backend == "nftables":
        for family in ("ip", "netdev"):
            suite.running.run("dir1", "nft", "delete", "table", family, "kubelvs", check=False)
    else:
        suite.running.run("dir1", "ipvsadm", "-C")
    api.publish({n.name: n.ip for n in info.nodes}, {"whoami": info.spec.vip}, info.spec.port)
    config = Path(info.state_dir) / "director-kubernetes.yaml"
    config.write_text(kube_config_text(info.spec))
    with suite.kube_log.open("ab") as out:
        suite.kube_director = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kubelvs",
                "director",
                "-f",
                str(config),
                "--kubernetes",
                "--kubeconfig",
                str(api.kubeconfig),
                "--backend",
                suite.backend,
                "--netns",
                suite.director_ns,
                "--state-file",
                str(Path(info.state_dir) / "director-kubernetes.state.json"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    owned = to_desired(
        parse_config(parse_yaml(config.read_text(), source=str(config)), source=str(config))
    ).ownership
    suite.observer.owns = owned.owns
    vip = info.spec.vip

    def serving() -> bool:
        if suite.kube_director is not None and suite.kube_director.poll() is not None:
            raise LabError(f"the Kubernetes director exited: {suite.kube_log.read_text()[-3000:]}")
        image = suite.observer.image()
        return any(
            str(k.address) == vip and len(v.realservers) == len(info.nodes) for k, v in image.services.items()
        )

    suite.until(serving, suite.settings.start_timeout, "the Kubernetes director did not program the Service")
    # Stable: the same image twice, 2 s apart, and traffic answered since.
    while True:
        first = suite.observer.image()
        time.sleep(2.0)
        if not first.differences(suite.observer.image()):
            break
    suite.expected = first
    since = time.monotonic()
    suite.until(
        lambda: any(r.ok and r.start > since for r in read_requests(suite.stream_file)),
        suite.settings.start_timeout,
        "no traffic through the Kubernetes director",
    )


def stop_kube_director(suite: Suite) -> None:
    proc = suite.kube_director
    if proc is None:
        return
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    suite.kube_director = None


# ---------------------------------------------------------------------- running the suite


def attribute(requests: Sequence[Request], windows: Sequence[tuple[str, float]]) -> dict[str, list[Request]]:
    """Requests by the window their end falls into (windows: (label, start), in order)."""
    out: dict[str, list[Request]] = {label: [] for label, _ in windows}
    starts = [start for _, start in windows]
    for r in requests:
        index = max((i for i, s in enumerate(starts) if s <= r.end), default=None)
        if index is not None:
            out[windows[index][0]].append(r)
    return out


def flow_restored(requests: Sequence[Request], injected: float) -> float | None:
    """When traffic flowed again: the start of the first successful request after the
    last failed one (``injected`` when none failed; None when none succeeded after it)."""
    failed = [r.start for r in requests if not r.ok]
    if not failed:
        return injected
    last = max(failed)
    later = [r.start for r in requests if r.ok and r.start > last]
    return min(later) if later else None


def _result(
    fault: Fault, backend: str, outcome: Outcome | None, error: str, requests: list[Request]
) -> FaultResult:
    failed = [r for r in requests if not r.ok]
    target_failed = None if fault.removes_realserver else 0
    target_ms = round(REPAIR_TARGET * 1000) if fault.tampering else None
    result = FaultResult(
        fault=fault.name,
        title=fault.title,
        backend=backend,
        kind=fault.kind,
        removes_realserver=fault.removes_realserver,
        requests=len(requests),
        failed=len(failed),
        errors=dict(Counter(r.error for r in failed)),
        repair_ms=None,
        state_ms=None,
        flow_ms=None,
        target_failed=target_failed,
        target_repair_ms=target_ms,
        met=False,
    )
    if outcome is None:
        result.notes.append(f"not run to the end: {error}")
        return result
    result.checks = dict(outcome.checks)
    if outcome.unchanged is not None:
        result.checks["kernel and nodes unchanged"] = outcome.unchanged
    result.notes = list(outcome.notes)
    flow = flow_restored(requests, outcome.injected)
    if outcome.repaired is not None:
        result.state_ms = round((outcome.repaired - outcome.injected) * 1000)
    if flow is not None:
        result.flow_ms = round(max(0.0, flow - outcome.injected) * 1000)
    if result.state_ms is not None and result.flow_ms is not None:
        result.repair_ms = max(result.state_ms, result.flow_ms)
    result.met = (
        result.repair_ms is not None
        and all(result.checks.values())
        and (target_failed is None or len(failed) <= target_failed)
        and (target_ms is None or result.repair_ms <= target_ms)
    )
    return result


def _tracebacks(directory: Path) -> list[str]:
    out = []
    for path in sorted(directory.glob("*.log")):
        text = path.read_text(errors="replace")
        if "Traceback (most recent call last)" in text:
            at = text.index("Traceback (most recent call last)")
            out.append(f"{path.name}:\n{text[at : at + 3000]}")
    return out


def run_suite(
    backend: str,
    *,
    prefix: str,
    api: StandInApi | None = None,
    settings: Settings | None = None,
    only: Sequence[str] | None = None,
    log: Callable[[str], None] = lambda line: None,
) -> SuiteResult:
    """Build a DR lab (``backend``: nftables or ipvs), run every fault of ``FAULTS`` for
    that backend (``only``: these names) while the stream runs, and remove the lab, also
    on failure. ``api``: the stand-in API server for ``api-outage`` (skipped without)."""
    settings = settings or Settings.for_backend(backend)
    faults = [f for f in FAULTS if backend in f.backends and (only is None or f.name in only)]
    if api is None:
        faults = [f for f in faults if f.kind != "kubernetes"]
    began = time.monotonic()

    def stamped(line: str) -> None:
        log(f"[{time.monotonic() - began:7.1f} s] {line}")

    stamped(f"building the lab {prefix} ({backend})")
    running = build(LabSpec(prefix=prefix, backend=backend))
    suite: Suite | None = None
    try:
        suite = Suite(running, settings, stamped)
        suite.api = api
        return _run(suite, faults, began)
    finally:
        if suite is not None:
            try:
                stop_kube_director(suite)
                suite.stop_stream()
            finally:
                suite.observer.close()
        running.teardown()


def _run(suite: Suite, faults: list[Fault], began: float) -> SuiteResult:
    s = suite.settings
    suite.establish()
    suite.log("the lab is in sync with its config; starting the client's stream")
    suite.start_stream()
    suite.log("the stream is answered")
    suite.windows.append(("baseline", time.monotonic()))
    time.sleep(s.baseline)
    outcomes: dict[str, tuple[Outcome | None, str]] = {}
    for fault in faults:
        if fault.kind == "kubernetes" and suite.api is not None and suite.kube_director is None:
            suite.windows.append(("setup", time.monotonic()))
            suite.log("switching to a Kubernetes director (not a fault: its failures are not counted)")
            switch_to_kubernetes(suite, suite.api)
        try:
            suite.settle()
        except LabError as exc:
            outcomes[fault.name] = (None, str(exc))
            suite.windows.append((fault.name, time.monotonic()))
            suite.log(f"{fault.name}: {exc}")
            continue
        suite.log(f"{fault.name}: {fault.title}")
        try:
            outcome = fault.run(suite)
        except (KubelvsError, OSError, subprocess.SubprocessError) as exc:
            suite.windows.append((fault.name, time.monotonic()))
            outcomes[fault.name] = (None, str(exc))
            suite.log(f"    failed: {exc}")
            continue
        suite.windows.append((fault.name, outcome.injected))
        suite.windows.sort(key=lambda w: w[1])
        outcomes[fault.name] = (outcome, "")
        if outcome.repaired is not None:
            suite.log(f"    repaired after {outcome.repaired - outcome.injected:.2f} s")
        else:
            suite.log("    NOT repaired: " + "; ".join(outcome.notes))
    suite.stop_stream()
    requests = read_requests(suite.stream_file)
    by_window = attribute(requests, suite.windows)
    results = []
    for fault in faults:
        seen, error = outcomes.get(fault.name, (None, "not run"))
        results.append(_result(fault, suite.backend, seen, error, by_window.get(fault.name, [])))
    baseline = by_window.get("baseline", [])
    setup = by_window.get("setup", [])
    observer = suite.observer
    return SuiteResult(
        backend=suite.backend,
        settings=s,
        results=results,
        baseline_requests=len(baseline),
        baseline_failed=sum(not r.ok for r in baseline),
        setup_requests=len(setup),
        setup_failed=sum(not r.ok for r in setup),
        tracebacks=_tracebacks(Path(suite.info.state_dir)),
        reads=observer.reads,
        read_ms=round(observer.read_seconds / max(1, observer.reads) * 1000, 1),
        duration_s=round(time.monotonic() - began, 1),
        machine=f"{platform.machine()} {os.cpu_count()} CPUs, Linux {platform.release()}, "
        f"Python {platform.python_version()}",
        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    )


# ---------------------------------------------------------------------- report


def markdown(suite: SuiteResult) -> str:
    s = suite.settings
    lines = [
        f"# Fault injection, backend {suite.backend}",
        "",
        "A DR lab (one director, two workers with two pods each); a client opens a new connection with "
        f"one HTTP GET to the VIP every {s.interval * 1000:g} ms (timeout {s.request_timeout:g} s) for the "
        "whole run. Failed requests: those that ended between the fault's injection and the next fault's. "
        "Repair: from the injection until the director's table (read back through the backend"
        + (", and the nftables tables as `nft -j` lists them" if suite.backend == "nftables" else "")
        + "), the workers' VIP and ARP settings are back, the fault's own condition holds, and traffic "
        f"flows again (one poll of the state took {suite.read_ms:g} ms on average: the figures are upper "
        "bounds by that much).",
        "",
        f"Machine: {suite.machine}; {suite.date}; the run took {suite.duration_s:g} s.",
        "",
        "| fault | class | failed / requests | repair | target | met |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in suite.results:
        kind = "removes real servers" if r.removes_realserver else "keeps real servers"
        repair = "not repaired" if r.repair_ms is None else f"{r.repair_ms} ms"
        lines.append(
            f"| {r.title} | {r.kind}, {kind} | {r.failed} / {r.requests} | {repair} | {r.target_text()} | "
            f"{'yes' if r.met else '**no**'} |"
        )
    lines += [
        "",
        f"Before the first fault: {suite.baseline_failed} failed of {suite.baseline_requests} requests."
        + (
            f" While the config-file director was replaced by the Kubernetes one (not a fault): "
            f"{suite.setup_failed} failed of {suite.setup_requests}."
            if suite.setup_requests
            else ""
        ),
        "",
        "Notes per fault (errors of the failed requests, checks, observations):",
        "",
    ]
    for r in suite.results:
        parts = []
        if r.errors:
            parts.append("errors: " + ", ".join(f"{n} {e}" for e, n in sorted(r.errors.items())))
        if r.state_ms is not None and r.flow_ms is not None:
            parts.append(f"state back after {r.state_ms} ms, traffic after {r.flow_ms} ms")
        parts += [f"{name}: {'yes' if ok else 'NO'}" for name, ok in r.checks.items()]
        parts += r.notes
        lines.append(f"- `{r.fault}`: " + ("; ".join(parts) if parts else "nothing to note"))
    if suite.tracebacks:
        lines += ["", "Tracebacks in the lab's logs:", ""] + [f"```\n{t}\n```" for t in suite.tracebacks]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------- command line


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
