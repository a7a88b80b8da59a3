"""``nft -j list ruleset``: the facts doctor needs (does this host NAT? which chains?).

Only walks the JSON; nothing is evaluated. ``nat_statements`` counts masquerade,
snat and dnat statements per table, which is how "this host does NAT" is told
apart from a plain filter ruleset.

The text can be anything: a document that is not JSON, nests deeper than the JSON
parser recurses, or has no ``nftables`` list sets ``unreadable`` (with the reason in
``problems``); an entry of the wrong shape is skipped and named in ``problems``. The
rule walk is iterative, so deep expressions cannot exhaust the stack either.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .tokens import MAX_PROBLEMS, printable

__all__ = ["NftRuleset", "parse_nft_json"]

_NAT = ("masquerade", "snat", "dnat", "redirect")
_MAX_NODES = 100_000  # per rule: a real rule has a few dozen; more is junk, not a reason to spin


@dataclass
class NftRuleset:
    tables: list[str] = field(default_factory=list)  # "ip nat", "inet kubelvs"
    chains: list[str] = field(default_factory=list)  # "ip nat POSTROUTING"
    rules: int = 0
    nat_statements: Counter[str] = field(default_factory=Counter)  # "masquerade" -> n
    nat_rules: list[str] = field(default_factory=list)  # "ip nat POSTROUTING: masquerade"
    problems: list[str] = field(default_factory=list)  # the first MAX_PROBLEMS
    bad_entries: int = 0
    unreadable: bool = False  # not an nft -j document at all: nothing in it was used
    entries: list[dict[str, Any]] = field(default_factory=list)  # the well-formed entries, for other readers

    def problem(self, text: str) -> None:
        self.bad_entries += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(text)


def _nat_statements(expr: Any, found: Counter[str]) -> bool:
    """Count the NAT statements anywhere in a rule's expressions; False when the rule is
    too large to be one nft printed."""
    stack = [expr]
    seen = 0
    while stack:
        node = stack.pop()
        seen += 1
        if seen > _MAX_NODES:
            return False
        if isinstance(node, dict):
            for key, value in node.items():
                if key in _NAT:
                    found[key] += 1
                stack.append(value)
        elif isinstance(node, list):
            stack.extend(node)
    return True


def _name(body: dict[str, Any], *keys: str) -> str:
    return " ".join(printable(str(body.get(k)), 60) for k in keys)


def parse_nft_json(text: str, *, source: str = "nft -j list ruleset") -> NftRuleset:
    out = NftRuleset()
    try:
        data = json.loads(text)
    except ValueError as exc:
        why = f"not JSON: {exc}"
    except RecursionError:
        why = "not nft JSON: nested too deeply"
    else:
        entries = data.get("nftables") if isinstance(data, dict) else None
        why = "" if isinstance(entries, list) else 'not nft JSON: no "nftables" list at the top'
    if why:
        out.problems.append(f"{source}: {why}")
        out.unreadable = True
        return out
    assert isinstance(entries, list)
    for n, entry in enumerate(entries):
        if not isinstance(entry, dict) or len(entry) != 1:
            out.problem(f"{source}: nftables[{n}]: not an object of one key")
            continue
        ((kind, body),) = entry.items()
        if kind in ("table", "chain", "rule") and not isinstance(body, dict):
            out.problem(f"{source}: nftables[{n}]: {kind} is a {type(body).__name__}, not an object")
            continue
        out.entries.append(entry)
        if kind == "table":
            out.tables.append(_name(body, "family", "name"))
        elif kind == "chain":
            out.chains.append(_name(body, "family", "table", "name"))
        elif kind == "rule":
            out.rules += 1
            found: Counter[str] = Counter()
            if not _nat_statements(body.get("expr", []), found):
                out.problem(f"{source}: nftables[{n}]: rule expression larger than nft prints")
                continue
            if found:
                out.nat_statements.update(found)
                out.nat_rules.append(f"{_name(body, 'family', 'table', 'chain')}: {', '.join(sorted(found))}")
    return out
