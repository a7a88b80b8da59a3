"""TCP/IP counters: ``netstat -s`` text and ``/proc/net/netstat`` (or ``/proc/net/snmp``).

Both become ``{"TcpExt": {"PAWSEstab": 17855, ...}, ...}``. ``/proc/net/netstat``
already uses the kernel's counter names. ``netstat -s`` prints most counters as
English sentences ("17855 packets rejects in established connections because of
timestamp"); the sentences for the counters kubelvs doctor reads are mapped back
to kernel names, the others are kept under their sentence, and ``Name: value``
lines (counters netstat has no sentence for) keep their name.

Lines that are not counters are counted in ``bad_lines`` and the first few quoted in
``problems``; numbers are read strictly (``tokens``). Any text in, ``Counters`` out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .tokens import MAX_PROBLEMS, lines, quote, signed_decimal

__all__ = ["Counters", "format_netstat_s", "format_proc_netstat", "parse_netstat_s", "parse_proc_netstat"]

# netstat -s sentence (without the number) -> kernel counter name, per section.
_SENTENCES = {
    ("TcpExt", "packets rejects in established connections because of timestamp"): "PAWSEstab",
    ("TcpExt", "passive connections rejected because of time stamp"): "PAWSPassive",
    ("TcpExt", "active connections rejected because of time stamp"): "PAWSActive",
    ("TcpExt", "packets rejected in established connections because of timestamp"): "PAWSEstab",
    ("TcpExt", "TCP sockets finished time wait in fast timer"): "TW",
    ("TcpExt", "time wait sockets recycled by time stamp"): "TWRecycled",
    ("TcpExt", "TCP sockets finished time wait in slow timer"): "TWKilled",
    ("TcpExt", "SYNs to LISTEN sockets dropped"): "ListenDrops",
    ("TcpExt", "SYNs to LISTEN sockets ignored"): "ListenDrops",
    ("TcpExt", "times the listen queue of a socket overflowed"): "ListenOverflows",
    ("TcpExt", "SYN cookies sent"): "SyncookiesSent",
    ("TcpExt", "invalid SYN cookies received"): "SyncookiesFailed",
    ("TcpExt", "resets received for embryonic SYN_RECV sockets"): "EmbryonicRsts",
    ("Tcp", "active connection openings"): "ActiveOpens",
    ("Tcp", "active connections openings"): "ActiveOpens",
    ("Tcp", "passive connection openings"): "PassiveOpens",
    ("Tcp", "failed connection attempts"): "AttemptFails",
    ("Tcp", "connection resets received"): "EstabResets",
    ("Tcp", "connections established"): "CurrEstab",
    ("Tcp", "segments retransmitted"): "RetransSegs",
    ("Tcp", "segments retransmited"): "RetransSegs",
    ("Ip", "forwarded"): "ForwDatagrams",
    ("Ip", "total packets received"): "InReceives",
}
_NAME_OF: dict[tuple[str, str], str] = {}
for (_sec, _sentence), _name in _SENTENCES.items():
    _NAME_OF.setdefault((_sec, _name), _sentence)

# [0-9]{1,20}, not \d+: \d matches every script's digits, and int() raises on 4,300 of them.
_NUMBER_FIRST = re.compile(r"^([0-9]{1,20}) (.+)$")
_NUMBER_INSIDE = re.compile(r"^([^0-9]+?) ([0-9]{1,20}) (.+)$")
_NAME_VALUE = re.compile(r"^([A-Za-z][\w -]*): (-?[0-9]{1,20})$")


@dataclass
class Counters:
    sections: dict[str, dict[str, int]] = field(default_factory=dict)
    lines: dict[tuple[str, str], tuple[int, str]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # the first MAX_PROBLEMS
    bad_lines: int = 0

    def problem(self, text: str) -> None:
        self.bad_lines += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(text)

    def get(self, section: str, name: str) -> int | None:
        return self.sections.get(section, {}).get(name)

    def evidence(self, section: str, name: str, source: str) -> str:
        lineno, line = self.lines.get((section, name), (0, f"{section}: {name} {self.get(section, name)}"))
        return f"{source}:{lineno}: {line}" if lineno else f"{source}: {line}"


def parse_netstat_s(text: str, *, source: str = "netstat -s") -> Counters:
    out = Counters()
    section = ""
    for lineno, raw in enumerate(lines(text), 1):
        line = raw.rstrip()
        if not line.strip():
            continue
        # "TcpExt:" starts a section; "grep timestamp" output has no section lines.
        if not line[0].isspace() and line.endswith(":") and " " not in line:
            section = line[:-1]
            continue
        stripped = line.strip()
        m = _NUMBER_FIRST.match(stripped)
        if m:
            value, sentence = int(m.group(1)), m.group(2)
            sec = section
            name = _SENTENCES.get((sec, sentence))
            if name is None and not sec:  # section unknown (grepped output): find the sentence anywhere
                sec, name = next(((s, n) for (s, t), n in _SENTENCES.items() if t == sentence), ("", None))
            key = name or sentence
            out.sections.setdefault(sec, {})[key] = value
            out.lines[(sec, key)] = (lineno, stripped)
            continue
        m = _NAME_VALUE.match(stripped)
        if m:
            out.sections.setdefault(section, {})[m.group(1)] = int(m.group(2))
            out.lines[(section, m.group(1))] = (lineno, stripped)
            continue
        m = _NUMBER_INSIDE.match(stripped)
        if m:  # "Quick ack mode was activated 8 times": kept as "... activated N times"
            key = f"{m.group(1)} N {m.group(3)}"
            out.sections.setdefault(section, {})[key] = int(m.group(2))
            out.lines[(section, key)] = (lineno, stripped)
            continue
        if stripped.endswith(":"):  # "ICMP input histogram:"
            continue
        out.problem(f"{source}:{lineno}: not a counter line: {quote(stripped)}")
    return out


def parse_proc_netstat(text: str, *, source: str = "/proc/net/netstat") -> Counters:
    out = Counters()
    rows = lines(text)
    while rows and not rows[-1].strip():
        rows.pop()  # the final newline
    i = 0
    while i + 1 < len(rows):
        head, values = rows[i].split(), rows[i + 1].split()
        if not head or not values or head[0] != values[0] or not head[0].endswith(":"):
            why = "expected a header line and a value line of one section"
            out.problem(f"{source}:{i + 1}: {why}: {quote(rows[i])}")
            i += 1
            continue
        section = head[0][:-1]
        if len(head) != len(values):
            out.problem(f"{source}:{i + 2}: {len(head) - 1} names but {len(values) - 1} values (truncated?)")
        counters = out.sections.setdefault(section, {})
        for name, text_value in zip(head[1:], values[1:]):
            value = signed_decimal(text_value)
            if value is None:
                out.problem(f"{source}:{i + 2}: {name[:40]} is not a number: {quote(text_value, 40)}")
                continue
            counters[name] = value
            out.lines[(section, name)] = (i + 2, f"{section}: {name} {text_value}")
        i += 2
    if i < len(rows):
        out.problem(f"{source}:{i + 1}: header line without values (truncated?): {quote(rows[i])}")
    return out


def format_proc_netstat(counters: Counters) -> str:
    out = []
    for section, values in counters.sections.items():
        out.append(f"{section}: " + " ".join(values))
        out.append(f"{section}: " + " ".join(str(v) for v in values.values()))
    return "\n".join(out) + "\n"


def format_netstat_s(counters: Counters) -> str:
    out = []
    for section, values in counters.sections.items():
        out.append(f"{section}:")
        for name, value in values.items():
            sentence = _NAME_OF.get((section, name))
            if sentence is not None:
                out.append(f"    {value} {sentence}")
            elif " N " in name:
                out.append("    " + name.replace(" N ", f" {value} ", 1))
            elif re.fullmatch(r"[A-Za-z][\w-]*", name):
                out.append(f"    {name}: {value}")
            else:
                out.append(f"    {value} {name}")
    return "\n".join(out) + "\n"
