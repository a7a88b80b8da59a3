"""``kubelvs explain``'s answer for one flow, from what a backend read (pure): the entry
of the connection state that decides the flow, if any, and the scheduler's choice for a
new flow; with several directors, whether they agree."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..model import FlowEntry, Prediction, ServiceKey

__all__ = ["explanation", "render_explanation", "render_site", "site"]


def explanation(
    backend: str, client: str, key: ServiceKey, entry: FlowEntry | None, guess: Prediction
) -> dict[str, Any]:
    """The JSON document of one director's answer. ``realserver``: where the flow goes
    (an entry wins over the scheduler); ``agree``: whether the entry and the scheduler's
    choice name the same real server (None: one of them is missing or unpredictable)."""
    agree = None
    if entry is not None and guess.realserver is not None:
        agree = entry.realserver == guess.realserver
    return {
        "backend": backend,
        "client": client,
        "service": str(key),
        "entry": None
        if entry is None
        else {"realserver": entry.realserver, "kind": entry.kind, "state": entry.state},
        "prediction": {
            "realserver": guess.realserver,
            "predictable": guess.predictable,
            "why": guess.why,
            "slot": guess.slot,
            "slots": guess.slots,
        },
        "realserver": entry.realserver if entry is not None else guess.realserver,
        "agree": agree,
    }


def render_explanation(doc: Mapping[str, Any]) -> str:
    lines = [f"{doc['client']} -> {doc['service']} ({doc['backend']}): {doc['realserver'] or 'unknown'}"]
    entry, guess = doc["entry"], doc["prediction"]
    if entry is not None:
        lines.append(f"  {entry['kind']} entry ({entry['state']}) sends it to {entry['realserver']}")
        if doc["agree"] is False:
            lines.append(
                f"  the scheduler would send a new flow to {guess['realserver']}: the entry wins "
                "until it expires (the table changed since the flow began)"
            )
    lines.append(f"  {'a new flow: ' if entry is not None else ''}{guess['why']}")
    return "\n".join(lines)


def site(docs: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Every director's answer (a lab, or an ECMP set), and whether they send the flow to
    one real server: with ECMP any of them may receive its next packet."""
    where = {str(d["realserver"]) for d in docs.values() if d["realserver"] is not None}
    known = all(d["realserver"] is not None for d in docs.values())
    return {"directors": dict(docs), "agree": (len(where) == 1) if known else None}


def render_site(doc: Mapping[str, Any]) -> str:
    out = [f"[{name}] {render_explanation(d)}" for name, d in doc["directors"].items()]
    if len(doc["directors"]) > 1:
        verdict = {
            True: "agree",
            False: "DISAGREE: a packet of this flow may reach another real server",
            None: "unknown (a director's answer is not predictable)",
        }
        out.append(f"directors: {verdict[doc['agree']]}")
    return "\n".join(out)
