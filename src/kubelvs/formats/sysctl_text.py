"""``sysctl -a`` output and sysctl.conf files: ``name = value`` lines.

``sysctl`` prints an interface name containing dots with slashes
(``net.ipv4.conf.eth0/100.rp_filter`` is interface ``eth0.100``); ``conf_key``
undoes that. Values are kept as text (some are several numbers separated by tabs);
``int_value`` reads the first number (strictly, ``tokens``). Comment lines are skipped;
``sysctl: permission denied`` noise and lines without ``=`` are counted in ``bad_lines``
and the first few quoted in ``problems``. Any text in, a ``Sysctls`` out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .tokens import MAX_PROBLEMS, lines, quote, signed_decimal

__all__ = ["Sysctls", "conf_key", "format_sysctl", "parse_sysctl"]


@dataclass
class Sysctls:
    values: dict[str, str] = field(default_factory=dict)
    lines: dict[str, tuple[int, str]] = field(default_factory=dict)  # name -> (line number, line)
    problems: list[str] = field(default_factory=list)  # the first MAX_PROBLEMS
    bad_lines: int = 0
    noise: int = 0  # of the bad lines, sysctl's own complaints ("sysctl: permission denied on key ...")

    def int_value(self, name: str) -> int | None:
        text = self.values.get(name)
        if text is None:
            return None
        words = text.split(maxsplit=1)
        return signed_decimal(words[0]) if words else None

    def evidence(self, name: str, source: str = "sysctl.txt") -> str:
        lineno, line = self.lines.get(name, (0, f"{name} = {self.values.get(name, '?')}"))
        return f"{source}:{lineno}: {line}" if lineno else f"{source}: {line}"

    def interfaces(self, family: str = "ipv4") -> list[str]:
        """Interface names that have a ``net.<family>.conf.<iface>.*`` entry (not all/default)."""
        prefix = f"net.{family}.conf."
        names = {conf_key(n)[0] for n in self.values if n.startswith(prefix)}
        return sorted(n for n in names if n and n not in ("all", "default"))


def conf_key(name: str) -> tuple[str, str]:
    """``net.ipv4.conf.eth0/100.rp_filter`` -> (``eth0.100``, ``rp_filter``); ("", "") if not a conf key."""
    parts = name.split(".")
    if len(parts) < 5 or parts[2] != "conf":
        return "", ""
    return ".".join(parts[3:-1]).replace("/", "."), parts[-1]


def parse_sysctl(text: str, *, source: str = "sysctl -a") -> Sysctls:
    out = Sysctls()
    for lineno, raw in enumerate(lines(text), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        name, sep, value = line.partition("=")
        name = name.strip().lstrip("-")  # sysctl.conf: "-name = v" ignores errors
        if not sep or not name or len(name.split()) != 1 or not name.isprintable():
            out.bad_lines += 1
            out.noise += line.startswith("sysctl: ")
            if len(out.problems) < MAX_PROBLEMS:
                out.problems.append(f"{source}:{lineno}: not 'name = value': {quote(line)}")
            continue
        if name.startswith(("net/", "kernel/", "fs/", "vm/")):  # slash form: dots are literal
            name = ".".join(p.replace(".", "/") for p in name.split("/"))
        out.values[name] = value.strip()
        out.lines[name] = (lineno, line)
    return out


def format_sysctl(values: dict[str, str]) -> str:
    return "".join(f"{name} = {value}\n" for name, value in values.items())
