"""Running the suite: build the lab, start the stream, inject every fault in turn, and
attribute requests and repair times to faults."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from ...errors import KubelvsError, LabError
from ..topology import LabSpec, build
from .catalogue import FAULTS
from .kubernetes import stop_kube_director, switch_to_kubernetes
from .stream import Request, read_requests
from .suite import REPAIR_TARGET, Fault, FaultResult, Outcome, Settings, StandInApi, Suite, SuiteResult


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
    result.met = result.meets()
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
    logs_to: Path | None = None,
) -> SuiteResult:
    """Build a DR lab (``backend``: nftables or ipvs), run every fault of ``FAULTS`` for
    that backend (``only``: these names) while the stream runs, and remove the lab, also
    on failure. ``api``: the stand-in API server for ``api-outage`` (skipped without).
    ``logs_to``: copy the lab's logs (director, agents, pods, stream) there first."""
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
        if logs_to is not None:
            logs_to.mkdir(parents=True, exist_ok=True)
            for path in Path(running.info.state_dir).glob("*.log"):
                shutil.copy(path, logs_to / path.name)
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
            try:
                switch_to_kubernetes(suite, suite.api)
            except (KubelvsError, OSError, subprocess.SubprocessError) as exc:
                outcomes[fault.name] = (None, f"switching to the Kubernetes director: {exc}")
                suite.log(f"    failed: {exc}")
                continue
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
