"""Paste mode: one text with several command outputs mixed together, as people paste them
into an issue thread, split into the files of a bundle.

    read_paste(text) -> Paste(texts={bundle file name: text}, sections, unplaced)

Each section is recognised by the prompt line before it (``$ ipvsadm -Ln``,
``root@node1:~# sysctl -a | grep rp_filter``, ``[root@lb ~]# cat /proc/net/ip_vs``) when
there is one, else by its shape (``IP Virtual Server version``, ``net.x.y = v``, ``Ip:``
followed by indented counters...). Blank lines, code fences and a common indentation are
ignored; a section continues while its lines fit its shape, so outputs pasted back to back
without prompts are still told apart. Lines that fit no section are kept as ``unplaced``,
with their line numbers, so that the report can say what it could not use.

A few outputs are rewritten into the form the bundle reads: ``nstat`` into
``/proc/net/netstat`` (its TcpExt, IpExt and MPTcpExt counters), single values
(``sysctl -n KEY``, ``cat /proc/sys/...``, ``grep . /proc/sys/...``, ``conntrack -C``)
into ``sysctl`` lines, and ``uname -a`` into the release. The line map (``origin``) takes every line of every
produced file back to its line in the paste, for the evidence the findings quote.
What each output looks like, and which output a prompt's command prints, is in
``paste_shapes.py``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace

from ..formats.tokens import printable
from .analyse import analyse
from .bundle import FILES, Bundle
from .checks_site import check_directors_agree
from .findings import Finding
from .paste_shapes import (
    CUT_SHORT,
    EMPTY_IS_OUTPUT,
    FENCE,
    HEADER,
    HEX_SERVICE,
    JSON,
    JSON_KIND,
    LISTING_KIND,
    NSTAT_KIND,
    PROC_SYS,
    PROC_SYS_KIND,
    PROMPT,
    SHAPES,
    UNAME_A,
    UNAME_KIND,
    UNUSED,
    VALUE_KIND,
    Kind,
    command_kind,
)

#: Outputs that are a whole IPVS table: each pasted one may be another director's.
_TABLE_FILES = ("ipvsadm-Ln.txt", "proc-net-ip_vs.txt")

__all__ = ["Paste", "Section", "analyse_paste", "describe", "read_paste", "relocate"]


@dataclass(frozen=True, slots=True)
class Section:
    """One recognised section of the paste."""

    name: str  # the bundle file it went into, or UNUSED
    what: str  # the command it is the output of
    first: int  # its first and last line in the paste (1-based)
    last: int
    by: str  # "prompt" (a prompt line named the command) or "shape"

    def to_json(self) -> dict[str, object]:
        return {"file": self.name, "command": self.what, "lines": [self.first, self.last], "by": self.by}


@dataclass(frozen=True)
class Paste:
    texts: dict[str, str]
    sections: tuple[Section, ...]
    unplaced: tuple[tuple[int, str], ...]  # (paste line, text) of lines no section took
    #: file -> the paste line of each of its lines (1-based both), for the evidence
    origin: dict[str, tuple[int, ...]] = field(default_factory=dict)
    #: every IPVS table pasted (ipvsadm -Ln, /proc/net/ip_vs), with its lines: two or more
    #: are compared as the tables of directors of the same VIPs
    tables: tuple[tuple[Section, tuple[tuple[int, str], ...]], ...] = ()

    def bundle(self) -> Bundle:
        return Bundle(self.texts, origin="paste")

    def directors(self) -> dict[str, Bundle]:
        """One director per pasted table ("lines 3-9"), when there are two or more."""
        if len(self.tables) < 2:
            return {}
        return {
            _table_name(section): Bundle(
                {section.name: "\n".join(t for _, t in lines) + "\n", "role.txt": "director\n"},
                origin="paste",
            )
            for section, lines in self.tables
        }

    def paste_line(self, name: str, line: int) -> int | None:
        lines = self.origin.get(name, ())
        return lines[line - 1] if 0 < line <= len(lines) else None

    def to_json(self) -> dict[str, object]:
        return {
            "sections": [s.to_json() for s in self.sections],
            "unplaced": [{"line": n, "text": t} for n, t in self.unplaced],
        }


@dataclass
class _Open:
    kind: Kind
    by: str
    lines: list[tuple[int, str]] = field(default_factory=list)
    command: str = ""  # the prompt's command as typed


def read_paste(text: str) -> Paste:
    """Split ``text`` into bundle files; never raises."""
    builder = _Builder()
    raw = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    indent = _common_indent(raw)
    numbered = [(n, line[indent:].rstrip()) for n, line in enumerate(raw, 1)]
    i = 0
    while i < len(numbered):
        n, line = numbered[i]
        i += 1
        if not line.strip() or FENCE.match(line):
            continue
        prompt = PROMPT.match(line)
        if prompt is not None and (kind := command_kind(prompt.group("command"))) is not None:
            builder.close()
            builder.open(kind, "prompt", command=prompt.group("command"))
            continue
        current = builder.current
        # A JSON document right after its prompt is that command's output (kubectl -o json,
        # nft -j, ip -j addr); any other is named by its content.
        awaited = (
            current is not None
            and current.by == "prompt"
            and not current.lines
            and (current.kind.name == JSON_KIND or current.kind.name in FILES)
        )
        if line.startswith(("{", "[")) and (awaited or not builder.fits(line)):
            consumed, document = _json_lines(numbered, i - 1)
            if consumed:
                if not awaited:
                    builder.close()
                    builder.open(replace(JSON, hint=_json_name(document)), "shape")
                builder.take(consumed)
                builder.close()
                i += len(consumed) - 1
                continue
        if current is not None and builder.fits(line) and not (current.lines and HEADER.match(line)):
            current.lines.append((n, line))
            continue
        if (
            current is not None
            and builder.cut_short()
            and not any(k.start is not None and k.start.match(line) for k in SHAPES)
        ):  # the rest of a row a hard wrap cut: joined back
            first, text = current.lines[-1]
            current.lines[-1] = (first, f"{text} {line.strip()}")
            continue
        shape = next((k for k in SHAPES if k.start is not None and k.start.match(line)), None)
        if shape is not None:
            builder.close()
            builder.open(shape, "shape")
            builder.take([(n, line)])
            continue
        builder.unplaced.append((n, line))
    builder.close()
    return builder.result()


def _json_name(document: object) -> str:
    if isinstance(document, dict) and "nftables" in document:
        return "nft.json"
    if isinstance(document, dict) and "apiVersion" in document and "kind" in document:
        return "kubectl.json"
    return UNUSED  # ip -j, ...


class _Builder:
    def __init__(self) -> None:
        self.current: _Open | None = None
        self.texts: dict[str, list[str]] = {}
        self.origin: dict[str, list[int]] = {}
        self.sections: list[Section] = []
        self.unplaced: list[tuple[int, str]] = []
        self.tables: list[tuple[Section, tuple[tuple[int, str], ...]]] = []

    def open(self, kind: Kind, by: str, *, command: str = "") -> None:
        self.current = _Open(kind, by, command=command.strip()[:80])

    def take(self, lines: list[tuple[int, str]]) -> None:
        assert self.current is not None
        self.current.lines.extend(lines)

    def fits(self, line: str) -> bool:
        """Does ``line`` continue the open section? An output known only from its prompt
        (``cat /etc/...``) takes any line until one that starts a recognisable section;
        a single value takes one line."""
        current = self.current
        if current is None:
            return False
        if current.kind.fits is not None:
            return bool(current.kind.fits.match(line))
        if not current.lines:
            return True
        if current.kind.name in (VALUE_KIND, UNAME_KIND) or line.startswith(("{", "[")):
            return False  # one line only; a JSON document is an output of its own
        return not any(k.start is not None and k.name != UNUSED and k.start.match(line) for k in SHAPES)

    def cut_short(self) -> bool:
        """The open section's last line is a row a hard wrap cut short."""
        current = self.current
        if current is None or not current.lines:
            return False
        pattern = CUT_SHORT.get(current.kind.name)
        return pattern is not None and bool(pattern.match(current.lines[-1][1]))

    def close(self) -> None:
        section, self.current = self.current, None
        if section is not None and not section.lines and section.kind.name in EMPTY_IS_OUTPUT:
            self.texts.setdefault(section.kind.name, [])
            self.origin.setdefault(section.kind.name, [])
        if section is None or not section.lines:
            return
        name, lines = _finish(section)
        what = section.command or FILES.get(name, section.kind.what)
        self.sections.append(Section(name, what, section.lines[0][0], section.lines[-1][0], section.by))
        if name not in FILES:
            return
        self.texts.setdefault(name, []).extend(text for _, text in lines)
        self.origin.setdefault(name, []).extend(n for n, _ in lines)
        if name in _TABLE_FILES:
            self.tables.append((self.sections[-1], tuple(lines)))

    def result(self) -> Paste:
        texts = {name: "\n".join(lines) + "\n" for name, lines in self.texts.items()}
        origin = {name: tuple(lines) for name, lines in self.origin.items()}
        return Paste(texts, tuple(self.sections), tuple(self.unplaced), origin, tuple(self.tables))


def _finish(section: _Open) -> tuple[str, list[tuple[int, str]]]:
    """The bundle file a closed section becomes, and its lines in that file's form."""
    kind, lines, hinted = section.kind.name, section.lines, section.kind.hint
    if kind == LISTING_KIND:
        if hinted:
            return hinted, lines
        texts = [t for _, t in lines]
        if any(t.startswith("Prot") and "CPS" in t.split() for t in texts):
            return UNUSED, lines  # --rate: no check reads rates
        if any(t.startswith("Prot") and "Conns" in t.split() for t in texts):
            return "ipvsadm-Ln-stats.txt", lines
        if any(HEX_SERVICE.match(t) for t in texts):
            return "proc-net-ip_vs.txt", lines
        return "ipvsadm-Ln.txt", lines
    if kind == "sysctl.txt" and hinted == "sysctl-conf.txt":
        return hinted, lines
    if kind == NSTAT_KIND:
        return _nstat(lines)
    if kind == PROC_SYS_KIND:
        return "sysctl.txt", [_proc_sys_line(n, t) for n, t in lines]
    if kind == VALUE_KIND:
        n, value = lines[0]
        return "sysctl.txt", [(n, f"{hinted} = {value.strip()}")]
    if kind == UNAME_KIND:
        n, line = lines[0]
        match = UNAME_A.match(line)
        return "uname.txt", [(n, match.group("release") if match else line.strip())]
    if kind == JSON_KIND:
        return hinted, lines
    return kind, lines


# ---------------------------------------------------------------------- rewrites


def _proc_sys_line(n: int, text: str) -> tuple[int, str]:
    match = PROC_SYS.match(text)
    if match is None:
        return n, text
    return n, f"{match.group('path').replace('/', '.')} = {match.group('value').strip()}"


#: nstat names are the /proc/net/netstat section and the field run together.
_EXT = ("TcpExt", "IpExt", "MPTcpExt")


def _nstat(lines: list[tuple[int, str]]) -> tuple[str, list[tuple[int, str]]]:
    """``nstat -az`` as ``/proc/net/netstat`` (the TcpExt counters the checks read)."""
    fields: dict[str, list[tuple[str, str]]] = {}
    first = lines[0][0]
    for _, text in lines:
        words = text.split()
        if len(words) < 2 or not words[1].isdigit():
            continue
        section = next((s for s in _EXT if words[0].startswith(s) and len(words[0]) > len(s)), None)
        if section is not None:
            fields.setdefault(section, []).append((words[0][len(section) :], words[1]))
    out: list[tuple[int, str]] = []
    for section, pairs in fields.items():
        out.append((first, f"{section}: " + " ".join(name for name, _ in pairs)))
        out.append((first, f"{section}: " + " ".join(value for _, value in pairs)))
    return "proc-net-netstat.txt", out


def _json_lines(numbered: list[tuple[int, str]], start: int) -> tuple[list[tuple[int, str]], object]:
    """The lines from ``start`` that hold one whole JSON document, and the document; no
    lines when they do not hold one.
    One pass over the characters (strings and escapes skipped) finds where the outermost
    bracket closes; the document is parsed once, there."""
    depth, in_string, escaped = 0, False, False
    for j in range(start, len(numbered)):
        for char in numbered[j][1]:
            if in_string:
                if escaped:
                    escaped = False
                elif char == "\\":
                    escaped = True
                elif char == '"':
                    in_string = False
            elif char == '"':
                in_string = True
            elif char in "{[":
                depth += 1
            elif char in "}]":
                depth -= 1
                if depth == 0:
                    document = "\n".join(line for _, line in numbered[start : j + 1])
                    try:
                        return numbered[start : j + 1], json.loads(document)
                    except (ValueError, RecursionError):  # RecursionError: nested too deep
                        return [], None
    return [], None


def _common_indent(lines: list[str]) -> int:
    widths = [len(line) - len(line.lstrip(" \t")) for line in lines if line.strip()]
    return min(widths, default=0)


# ---------------------------------------------------------------------- the report

_EVIDENCE = re.compile(
    r"^(?:(?P<table>lines \d+-\d+): )?(?P<file>[\w.-]+\.(?:txt|json|yaml))(?::(?P<line>\d+))?: (?P<rest>.*)$",
    re.DOTALL,
)


def _table_name(section: Section) -> str:
    return f"lines {section.first}-{section.last}"


def analyse_paste(paste: Paste, bundle: Bundle | None = None) -> list[Finding]:
    """The findings of a paste as one host (``bundle``: its bundle, if already made), plus,
    when it holds two or more IPVS tables, the comparison of those tables as the directors
    of the same VIPs; evidence pointing into the paste."""
    findings = analyse(bundle if bundle is not None else paste.bundle())
    seen = set()
    for found in check_directors_agree(paste.directors()).values():
        for f in found:
            if f.summary not in seen:
                seen.add(f.summary)
                findings.append(f)
    findings.sort(key=Finding.sort_key)
    return relocate(paste, findings)


def relocate(paste: Paste, findings: list[Finding]) -> list[Finding]:
    """The findings with their evidence pointing into the paste ("line 12 (ipvsadm -Ln): ...")
    instead of into the bundle files the paste was split into."""

    tables = {_table_name(section): lines for section, lines in paste.tables}

    def one(evidence: str) -> str:
        match = _EVIDENCE.match(evidence)
        if match is None or match.group("file") not in paste.texts:
            return evidence
        name, rest = match.group("file"), match.group("rest")
        number = int(match.group("line") or 1)
        if match.group("table") in tables:  # a line of one pasted table
            own = tables[match.group("table")]
            line = own[number - 1][0] if 0 < number <= len(own) else None
        else:
            line = paste.paste_line(name, number)
        section = next((s for s in paste.sections if line is not None and s.first <= line <= s.last), None)
        if section is None:
            return evidence
        return f"line {line} ({section.what}): {rest}"

    return [replace(f, evidence=tuple(one(e) for e in f.evidence)) for f in findings]


def describe(paste: Paste, *, unplaced_shown: int = 20) -> str:
    """What the paste was read as: each section with its lines, and the lines not placed."""
    out = [f"paste: {len(paste.sections)} section(s) recognised, {len(paste.unplaced)} line(s) not placed"]
    for s in paste.sections:
        how = "not analysed" if s.name not in FILES else f"by {s.by}"
        span = f"line {s.first}" if s.first == s.last else f"lines {s.first}-{s.last}"
        out.append(f"  {span}: {printable(s.what, limit=80)} ({how})")
    if paste.unplaced:
        out.append("  not placed (no known output looks like them):")
        out.extend(f"    line {n}: {printable(t, limit=120)}" for n, t in paste.unplaced[:unplaced_shown])
        if len(paste.unplaced) > unplaced_shown:
            out.append(f"    ... and {len(paste.unplaced) - unplaced_shown} more")
    return "\n".join(out) + "\n"
