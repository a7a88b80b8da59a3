"""What doctor reports: a finding with its evidence and the commands that fix it.

A finding id a check could not evaluate (its input could not be read, or the check
failed) is *unknown*: listed in the ``unknown`` field of the input-unparsed or
check-failed finding that explains why, never silently reported as healthy.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from typing import Any

__all__ = ["FINDING_IDS", "SITE_IDS", "Finding", "Severity"]


class Severity(enum.IntEnum):
    """Ordered: a report lists errors first; exit 1 from WARNING up."""

    INFO = 1  # worth knowing, not breaking traffic
    WARNING = 2  # breaks or will break some traffic
    ERROR = 3  # breaking traffic now

    def __str__(self) -> str:
        return self.name.lower()


#: Every id doctor can report, in the order a report lists findings of equal severity
#: (the incidents of docs/incidents.md first: they are what users hit; causes before symptoms).
FINDING_IDS = (
    "stale-realserver",
    "local-policy-node-without-endpoint",
    "rp-filter-strict",
    "local-vip-loop",
    "dr-vip-not-on-realserver",
    "dr-arp-ignore",
    "dr-arp-announce",
    "dr-ipv6-vip-on-lan",
    "dr-ipv6-vip-proxy-ndp",
    "vip-arp-conflict",  # across hosts: after the setting on each host that causes it
    "dr-director-is-gateway",
    "dr-port-mapping",
    "ip-forward-off",
    "vip-as-client-source",
    "director-ipv6-vip-source",
    "syn-recv-stuck",  # after its causes: the report leads with the cause when both are found
    "missing-realserver",
    "missing-virtual-service",
    "directors-disagree",
    "tw-recycle-enabled",
    "paws-rejects",
    "tcpfin-timeout-long",
    "timewait-heavy",
    "conntrack-near-full",
    "conn-reuse-mode",
    "expire-nodest-conn-off",
    "ipvs-timeout-below-keepalive",
    "hash-without-fallback",
    "weight-zero-still-used",
    "persistence-template-stale",
    "weight-zero-leftover",
    "input-unparsed",
    "check-failed",
)

#: Findings about several hosts at once: only a site (several bundles) can show them.
SITE_IDS = frozenset({"vip-arp-conflict", "directors-disagree", "dr-director-is-gateway"})


@dataclass(frozen=True)
class Finding:
    id: str
    severity: Severity
    summary: str  # one line: what is wrong, with the names and numbers
    explanation: str  # plain words: what goes wrong for the user's traffic
    evidence: tuple[str, ...] = ()  # "file:line: text" the finding is based on
    fix: tuple[str, ...] = ()  # exact commands; '#' lines are remarks
    subject: str = field(default="", compare=False)  # what it is about (VIP, interface), for ordering
    # input-unparsed and check-failed only: the finding ids that could not be checked
    # because of it (unknown: neither found nor ruled out).
    unknown: tuple[str, ...] = ()
    #: "confirmed": the evidence alone proves it; "likely": it rests on kernel defaults or
    #: assumptions the explanation names (``assume``), and ``to_confirm`` says what decides it.
    confidence: str = "confirmed"
    to_confirm: tuple[str, ...] = ()  # exact commands whose output would confirm or rule it out

    def assume(self, assumptions: list[str], to_confirm: list[str]) -> Finding:
        """This finding, resting on ``assumptions`` (kernel defaults for inputs it did not
        have): likely, one severity lower (an assumption alone never fails a report), the
        assumptions said in the explanation. Unchanged when there are none."""
        if not assumptions:
            return self
        return replace(
            self,
            severity=Severity(max(Severity.INFO, self.severity - 1)),
            explanation=f"{self.explanation} Assumed, not in the input: {'; '.join(assumptions)}.",
            confidence="likely",
            to_confirm=tuple(to_confirm),
        )

    def sort_key(self) -> tuple[int, int, str]:
        order = FINDING_IDS.index(self.id) if self.id in FINDING_IDS else len(FINDING_IDS)
        return (-int(self.severity), order, self.subject)

    def to_json(self) -> dict[str, Any]:
        out = {
            "id": self.id,
            "severity": str(self.severity),
            "summary": self.summary,
            "explanation": self.explanation,
            "evidence": list(self.evidence),
            "fix": list(self.fix),
        }
        if self.unknown:
            out["unknown"] = list(self.unknown)
        out["confidence"] = self.confidence
        if self.to_confirm:
            out["to_confirm"] = list(self.to_confirm)
        return out
