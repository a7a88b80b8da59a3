"""Render findings as text or JSON."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from .findings import Finding, Severity

__all__ = ["render_text", "render_json", "exit_code"]


def exit_code(findings: Sequence[Finding]) -> int:
    """0 when nothing is of severity warning or worse, 1 otherwise."""
    return 1 if any(f.severity >= Severity.WARNING for f in findings) else 0


def render_text(findings: Sequence[Finding], *, host: str = "") -> str:
    head = f"== {host} ==\n" if host else ""
    if not findings:
        return head + "no findings\n"
    out = [head.rstrip("\n")] if head else []
    counts = {s: sum(1 for f in findings if f.severity is s) for s in Severity}
    out.append(", ".join(f"{n} {s}" for s, n in sorted(counts.items(), reverse=True) if n))
    for f in findings:
        out.append("")
        out.append(f"[{f.severity}] {f.id}: {f.summary}")
        for line in f.explanation.splitlines():
            out.append(f"  {line}")
        if f.evidence:
            out.append("  evidence:")
            out.extend(f"    {e}" for e in f.evidence)
        if f.fix:
            out.append("  fix:")
            out.extend(f"    {c}" for c in f.fix)
    return "\n".join(out) + "\n"


def render_json(findings: Sequence[Finding] | Mapping[str, Sequence[Finding]]) -> str:
    if isinstance(findings, Mapping):
        return json.dumps({"hosts": {h: {"findings": [f.to_json() for f in fs]} for h, fs in findings.items()}}, indent=2)
    return json.dumps({"findings": [f.to_json() for f in findings]}, indent=2)
