"""Render findings as text or JSON (doctor layer).

Both say which finding ids were not checked (unknown) and why: the input-unparsed or
check-failed finding that lists them. Text output escapes control characters: names
and lines quoted from a bundle come from another host and must not drive the terminal.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from ..formats.tokens import printable
from .findings import Finding, Severity

__all__ = ["exit_code", "render_json", "render_text", "unknown"]


def exit_code(findings: Sequence[Finding]) -> int:
    """0 when nothing is of severity warning or worse, 1 otherwise (an input that could not
    be read and left checks unknown is a warning: the doctor cannot call the host healthy)."""
    return 1 if any(f.severity >= Severity.WARNING for f in findings) else 0


def unknown(findings: Sequence[Finding]) -> list[dict[str, Any]]:
    """The finding ids not checked, each with why (the summaries of the findings that say so)."""
    why: dict[str, list[str]] = {}
    for f in findings:
        for fid in f.unknown:
            why.setdefault(fid, []).append(f.summary)
    return [{"id": fid, "because": reasons} for fid, reasons in why.items()]


def _line(text: str) -> str:
    return printable(text, limit=2000)


def render_text(findings: Sequence[Finding], *, host: str = "") -> str:
    head = f"== {_line(host)} ==\n" if host else ""
    if not findings:
        return head + "no findings\n"
    out = [head.rstrip("\n")] if head else []
    counts = {s: sum(1 for f in findings if f.severity is s) for s in Severity}
    not_checked = unknown(findings)
    totals = ", ".join(f"{n} {s}" for s, n in sorted(counts.items(), reverse=True) if n)
    out.append(totals + (f"; {len(not_checked)} not checked (unknown)" if not_checked else ""))
    for f in findings:
        out.append("")
        out.append(f"[{f.severity}] {f.id}: {_line(f.summary)}")
        for line in f.explanation.splitlines():
            out.append(f"  {_line(line)}")
        if f.evidence:
            out.append("  evidence:")
            out.extend(f"    {_line(e)}" for e in f.evidence)
        if f.fix:
            out.append("  fix:")
            out.extend(f"    {_line(c)}" for c in f.fix)
    if not_checked:
        out.append("")
        out.append("not checked (unknown: neither found nor ruled out):")
        for f in findings:
            if f.unknown:
                out.append(f"  {', '.join(f.unknown)}: because of {_line(f.subject)} (see {f.id} above)")
    return "\n".join(out) + "\n"


def render_json(findings: Sequence[Finding] | Mapping[str, Sequence[Finding]]) -> str:
    if isinstance(findings, Mapping):
        hosts = {
            h: {"findings": [f.to_json() for f in fs], "unknown": unknown(fs)} for h, fs in findings.items()
        }
        return json.dumps({"hosts": hosts}, indent=2)
    return json.dumps({"findings": [f.to_json() for f in findings], "unknown": unknown(findings)}, indent=2)
