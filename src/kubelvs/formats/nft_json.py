"""``nft -j list ruleset``: the facts doctor needs (does this host NAT? which chains?).

Only walks the JSON; nothing is evaluated. ``nat_statements`` counts masquerade,
snat and dnat statements per table, which is how "this host does NAT" is told
apart from a plain filter ruleset.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

__all__ = ["NftRuleset", "parse_nft_json"]


@dataclass
class NftRuleset:
    tables: list[str] = field(default_factory=list)  # "ip nat", "inet kubelvs"
    chains: list[str] = field(default_factory=list)  # "ip nat POSTROUTING"
    rules: int = 0
    nat_statements: Counter[str] = field(default_factory=Counter)  # "masquerade" -> n
    nat_rules: list[str] = field(default_factory=list)  # "ip nat POSTROUTING: masquerade"
    problems: list[str] = field(default_factory=list)


def _walk(node: Any, found: Counter[str]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("masquerade", "snat", "dnat", "redirect"):
                found[key] += 1
            _walk(value, found)
    elif isinstance(node, list):
        for value in node:
            _walk(value, found)


def parse_nft_json(text: str, *, source: str = "nft -j list ruleset") -> NftRuleset:
    out = NftRuleset()
    try:
        data = json.loads(text)
        entries = data["nftables"]
    except (ValueError, KeyError, TypeError) as exc:
        out.problems.append(f"{source}: not nft JSON: {exc}")
        return out
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        if "table" in entry:
            t = entry["table"]
            out.tables.append(f"{t.get('family')} {t.get('name')}")
        elif "chain" in entry:
            c = entry["chain"]
            out.chains.append(f"{c.get('family')} {c.get('table')} {c.get('name')}")
        elif "rule" in entry:
            r = entry["rule"]
            out.rules += 1
            found: Counter[str] = Counter()
            _walk(r.get("expr", []), found)
            if found:
                out.nat_statements.update(found)
                out.nat_rules.append(f"{r.get('family')} {r.get('table')} {r.get('chain')}: {', '.join(sorted(found))}")
    return out
