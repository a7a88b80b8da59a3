"""Render findings as text or JSON (doctor layer).

Both say which finding ids were not checked (unknown) and why: the input-unparsed or
check-failed finding that lists them. Text output escapes control characters: names
and lines quoted from a bundle come from another host and must not drive the terminal.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from ..formats.tokens import printable
from .examined import Examined
from .findings import Finding, Severity

__all__ = ["exit_code", "render_json", "render_markdown", "render_text", "unknown"]


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


def render_text(findings: Sequence[Finding], *, host: str = "", examined: Examined | None = None) -> str:
    """The report; ``examined`` (what was looked at) first when given."""
    out = [f"== {_line(host)} =="] if host else []
    if examined is not None:
        out += [*(_line(line) for line in examined.lines()), ""]
    if not findings:
        return "\n".join([*out, "no findings"]) + "\n"
    counts = {s: sum(1 for f in findings if f.severity is s) for s in Severity}
    not_checked = unknown(findings)
    totals = ", ".join(f"{n} {s}" for s, n in sorted(counts.items(), reverse=True) if n)
    out.append(totals + (f"; {len(not_checked)} not checked (unknown)" if not_checked else ""))
    for f in findings:
        out.append("")
        grade = f"{f.severity}, likely" if f.confidence == "likely" else str(f.severity)
        out.append(f"[{grade}] {f.id}: {_line(f.summary)}")
        for line in f.explanation.splitlines():
            out.append(f"  {_line(line)}")
        if f.evidence:
            out.append("  evidence:")
            out.extend(f"    {_line(e)}" for e in f.evidence)
        if f.fix:
            out.append("  fix:")
            out.extend(f"    {_line(c)}" for c in f.fix)
        if f.to_confirm:
            out.append("  to confirm:")
            out.extend(f"    {_line(c)}" for c in f.to_confirm)
    if not_checked:
        out.append("")
        out.append("not checked (unknown: neither found nor ruled out):")
        for f in findings:
            if f.unknown:
                out.append(f"  {', '.join(f.unknown)}: because of {_line(f.subject)} (see {f.id} above)")
    return "\n".join(out) + "\n"


def render_json(
    findings: Sequence[Finding] | Mapping[str, Sequence[Finding]],
    *,
    examined: Examined | Mapping[str, Examined] | None = None,
) -> str:
    """The report as JSON; with ``examined``, each host's also says what was looked at."""
    if isinstance(findings, Mapping):
        per_host = examined if isinstance(examined, Mapping) else {}
        hosts = {h: _json_report(fs, per_host.get(h)) for h, fs in findings.items()}
        return json.dumps({"hosts": hosts}, indent=2)
    return json.dumps(_json_report(findings, examined if isinstance(examined, Examined) else None), indent=2)


def _json_report(findings: Sequence[Finding], examined: Examined | None) -> dict[str, Any]:
    report: dict[str, Any] = {} if examined is None else {"examined": examined.to_json()}
    return {**report, "findings": [f.to_json() for f in findings], "unknown": unknown(findings)}


# ---------------------------------------------------------------------- markdown

_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]<>#|~@!])")


def _md(text: str) -> str:
    """Prose from a report (it quotes names from the capture) as inert Markdown text."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", _line(text))


def _fenced(lines: Sequence[str], info: str = "") -> list[str]:
    """A code block whose fence is longer than any backtick run inside it (a pasted line
    holding ``` must not end it)."""
    runs = [len(m) for line in lines for m in re.findall(r"`+", line)]
    fence = "`" * max(3, max(runs, default=0) + 1)
    return [fence + info, *(_line(line) for line in lines), fence]


def render_markdown(
    findings: Sequence[Finding] | Mapping[str, Sequence[Finding]],
    *,
    examined: Examined | Mapping[str, Examined] | None = None,
    preamble: Sequence[str] = (),
) -> str:
    """The report ready to paste back into a ticket: what was examined, each finding with
    its evidence and fix, what to capture next. ``preamble``: lines shown first, verbatim
    in a code block (paste mode: what the paste was read as)."""
    out = ["## kubelvs doctor", ""]
    if preamble:
        out += [*_fenced(preamble), ""]
    if isinstance(findings, Mapping):
        per_host = examined if isinstance(examined, Mapping) else {}
        for host, fs in findings.items():
            out += [f"### {_md(host)}", "", *_markdown_host(fs, per_host.get(host), level="####")]
    else:
        out += _markdown_host(findings, examined if isinstance(examined, Examined) else None, level="###")
    return "\n".join(out).rstrip("\n") + "\n"


def _markdown_host(findings: Sequence[Finding], examined: Examined | None, *, level: str) -> list[str]:
    out: list[str] = []
    if examined is not None:
        checked = ", ".join(f"{n} {what}" for what, n in examined.counts.items()) or "nothing"
        out += [
            f"**Examined:** {_md(examined.origin)}; role {_md(examined.role)} ({_md(examined.role_reason)}); "
            f"data plane {_md(examined.data_plane)}; checked {_md(checked)}.",
            "",
        ]
        if examined.missing:
            out += [f"**Missing:** {_md(', '.join(examined.missing))}.", ""]
    counts = {s: sum(1 for f in findings if f.severity is s) for s in Severity}
    totals = ", ".join(f"{n} {s}" for s, n in sorted(counts.items(), reverse=True) if n)
    out += [f"**Findings:** {totals or 'none'}.", ""]
    for f in findings:
        grade = f"{f.severity} (likely)" if f.confidence == "likely" else str(f.severity)
        out += [f"{level} {grade}: `{f.id}`", "", _md(f.summary), ""]
        out += [_md(line) for line in f.explanation.splitlines()] + [""]
        if f.evidence:
            out += ["Evidence:", "", *_fenced(f.evidence), ""]
        if f.fix:
            out += ["Fix:", "", *_fenced(f.fix, "sh"), ""]
        if f.to_confirm:
            out += ["To confirm:", "", *_fenced(f.to_confirm, "sh"), ""]
        if f.unknown:
            out += [f"Not checked because of it: {_md(', '.join(f.unknown))}.", ""]
    if examined is not None and examined.capture_next:
        width = max(len(c.command) for c in examined.capture_next)
        lines = [
            f"{c.command.ljust(width)}   # needed for {', '.join(c.decides)}" for c in examined.capture_next
        ]
        out += [f"{level} What to capture next", "", "Most useful first:", "", *_fenced(lines, "sh"), ""]
    return out
