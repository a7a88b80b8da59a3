"""The suite's result as markdown (the benchmark's table and notes)."""

from __future__ import annotations

from .suite import SuiteResult


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
        "bounds by that much). For a restart the repair is the time until the new process synced (its "
        "start-up included); for the API server's outage, from the server's stop (it stays away "
        f"{s.outage:g} s) until the Service created meanwhile is programmed. Tampering: someone changed "
        "the kernel or a worker behind kubelvs; its damage was seen before the repair.",
        "",
        f"Machine: {suite.machine}; {suite.date}; the run took {suite.duration_s:g} s."
        + (
            " The VM emulates its CPU (qemu without KVM): Python start-ups take minutes there."
            if suite.backend == "ipvs"
            else ""
        ),
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
            f" While the config-file director was replaced by the Kubernetes one (not a fault: the runner "
            f"empties the table on purpose, so that the new director programs it from nothing): "
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
