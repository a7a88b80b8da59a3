"""The production incidents kubelvs is built around (docs/incidents.md) as lab scenarios:
each shows the symptom with real TCP connections, applies the fix, and shows it gone.

A scenario passes (``ok``) only when the symptom was reproduced *and* then fixed; a
scenario that cannot reproduce its symptom fails too (it would prove nothing).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from ..doctor import diagnose, digest, first_line
from ..topology import LabInfo, down, lab_namespaces

__all__ = ["SCENARIOS", "Outcome", "Phase", "Scenario", "ScenarioResult", "examine", "run_scenario"]


@dataclass
class Phase:
    """One half of a scenario: what was measured, and whether it looked as expected."""

    title: str
    expected: bool  # before: the symptom showed; after: the fix worked
    facts: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: ``kubelvs doctor`` run while this phase's state was in place: per host, the findings
    #: (id, severity, summary) worst first; empty when the doctor was not run.
    doctor: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


@dataclass
class ScenarioResult:
    name: str
    backend: str
    before: Phase
    after: Phase | None  # None when the symptom could not be reproduced (then not ok)

    @property
    def ok(self) -> bool:
        return self.before.expected and self.after is not None and self.after.expected

    def as_json(self) -> dict[str, Any]:
        return {
            "scenario": self.name,
            "backend": self.backend,
            "ok": self.ok,
            "before": asdict(self.before),
            "after": asdict(self.after) if self.after else None,
        }

    def render(self) -> str:
        lines = [f"scenario {self.name} (director backend {self.backend})"]
        for label, phase in (("BEFORE", self.before), ("AFTER", self.after)):
            if phase is None:
                lines.append(f"{label}: not run (the symptom did not show)")
                continue
            mark = "as expected" if phase.expected else "NOT as expected"
            lines.append(f"{label}: {phase.title} -> {mark}")
            for k, v in phase.facts.items():
                lines.append(f"    {k}: {v}")
            for n in phase.notes:
                lines.append(f"    {n}")
            for host, findings in phase.doctor.items():
                lines.append(f"    doctor on {host}: {first_line(findings)}")
        lines.append("result: " + ("symptom reproduced, then fixed" if self.ok else "FAILED"))
        return "\n".join(lines)


#: Seconds to wait at most for a director's SYN_RECV entries of a failed phase to go
#: (IPVS's SYN_RECV timeout is 60 s from the last SYN; slack for the emulated VM).
SYN_RECV_EXPIRY = 150.0


def ipvs_states(netns: str, run: Callable[..., Any]) -> list[str]:
    """The states of the IPVS connection entries in ``netns`` (none without IPVS)."""
    text = run(netns, "cat", "/proc/net/ip_vs_conn", check=False).stdout
    return [parts[7] for parts in (line.split() for line in text.splitlines()[1:]) if len(parts) >= 8]


def wait_syn_recv_expired(netns: str, run: Callable[..., Any]) -> float:
    """Wait (at most SYN_RECV_EXPIRY) until the director in ``netns`` holds no SYN_RECV
    entry; return the seconds waited. A failed phase leaves them for 60 s: what the next
    phase shows of the connection table (and what the doctor reads in it, as
    ``syn-recv-stuck``) must be that phase's own."""
    start = time.monotonic()
    while "SYN_RECV" in ipvs_states(netns, run) and time.monotonic() - start < SYN_RECV_EXPIRY:
        time.sleep(1)
    return time.monotonic() - start


def examine(
    phase: Phase, info: LabInfo, *, enabled: bool, hosts: list[str] | None = None, kubectl: str | None = None
) -> None:
    """The scenarios' doctor step: run ``kubelvs doctor`` on ``hosts`` of the lab (default:
    every director and worker, as one site) while the phase's state (the symptom, or the
    fix) is in place, and keep its findings in the phase."""
    if enabled:
        phase.doctor = digest(diagnose(info, hosts=hosts, kubectl=kubectl))


class Outcome(Protocol):
    """What a scenario returns: a verdict, a text report and the JSON one."""

    @property
    def ok(self) -> bool: ...

    def as_json(self) -> dict[str, Any]: ...

    def render(self) -> str: ...


@dataclass(frozen=True)
class Scenario:
    summary: str
    run: Callable[..., Outcome]
    needs: str = ""  # e.g. "kernel with ipip + IPVS (VM tier)"


def _registry() -> dict[str, Scenario]:
    from . import (
        backend_failure,
        director_failover,
        director_loss,
        dr_arp,
        rp_filter,
        stale_realserver,
        worker_local_vip,
    )

    return {
        "backend-failure": Scenario(backend_failure.SUMMARY, backend_failure.run),
        "director-failover": Scenario(director_failover.SUMMARY, director_failover.run),
        "director-loss": Scenario(director_loss.SUMMARY, director_loss.run),
        "stale-realserver": Scenario(stale_realserver.SUMMARY, stale_realserver.run),
        "worker-local-vip": Scenario(worker_local_vip.SUMMARY, worker_local_vip.run),
        "dr-arp": Scenario(dr_arp.SUMMARY, dr_arp.run),
        "rp-filter": Scenario(rp_filter.SUMMARY, rp_filter.run, needs=rp_filter.NEEDS),
    }


class _Lazy(dict[str, Scenario]):
    """Imports the scenario modules on first use (the CLI lists them without a lab)."""

    def _load(self) -> None:
        if not super().__len__():
            self.update(_registry())

    def __iter__(self):  # type: ignore[no-untyped-def]
        self._load()
        return super().__iter__()

    def __getitem__(self, key: str) -> Scenario:
        self._load()
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        self._load()
        return super().__contains__(key)

    def items(self):  # type: ignore[no-untyped-def]
        self._load()
        return super().items()

    def __len__(self) -> int:
        self._load()
        return super().__len__()


SCENARIOS: dict[str, Scenario] = _Lazy()


def run_scenario(
    name: str,
    *,
    prefix: str = "kubelvs-scn",
    backend: str = "auto",
    log: Callable[[str], None] | None = None,
    doctor: bool = True,
) -> Outcome:
    """Run one scenario in a fresh lab ``prefix`` and always remove the lab afterwards.
    ``doctor``: also run ``kubelvs doctor`` on the affected hosts in both phases."""
    if lab_namespaces(prefix):
        down(prefix)
    try:
        return SCENARIOS[name].run(
            prefix=prefix, backend=backend, log=log or (lambda _m: None), doctor=doctor
        )
    finally:
        down(prefix)
