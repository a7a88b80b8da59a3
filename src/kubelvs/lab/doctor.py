"""``kubelvs doctor`` on a running lab.

Every director and worker namespace is read live (``live_texts``: /proc, netlink,
``nft -j``) and the hosts are analysed together as a site, so a director's DR/TUN real
servers are matched to the workers that must accept its VIP. The Kubernetes data is the
Service the lab stands for (``kubectl.json`` in the lab's state directory, see
``lab/kube.py``), unless the caller hands its own (a scenario that simulates an edit).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..doctor import Bundle, Finding, Severity, analyse_site, live_texts
from .topology import KUBECTL_FILE, LabInfo

__all__ = ["diagnose", "digest", "first_line", "lab_bundles"]


def _hosts(info: LabInfo) -> list[tuple[str, str, str]]:
    """(host, namespace, role) of every director and worker."""
    return [(name, ns, "director") for name, ns in info.directors.items()] + [
        (n.name, n.netns, "node") for n in info.nodes
    ]


def lab_bundles(
    info: LabInfo, *, hosts: Sequence[str] | None = None, kubectl: str | None = None
) -> dict[str, Bundle]:
    """Live bundles of the lab's directors and workers (``hosts``: only these, e.g. ``["dir1"]``)."""
    if kubectl is None:
        path = Path(info.state_dir) / KUBECTL_FILE
        kubectl = path.read_text() if path.exists() else ""
    bundles = {}
    for name, netns, role in _hosts(info):
        if hosts is not None and name not in hosts:
            continue
        texts = live_texts(netns, kubectl=False)
        if kubectl:
            texts["kubectl.json"] = kubectl
        texts["role.txt"] = role + "\n"
        bundles[name] = Bundle(texts, origin=f"live:{netns}")
    return bundles


def diagnose(
    info: LabInfo, *, hosts: Sequence[str] | None = None, kubectl: str | None = None
) -> dict[str, list[Finding]]:
    """The doctor's findings per host, each list ordered as the doctor reports them (worst first)."""
    return analyse_site(lab_bundles(info, hosts=hosts, kubectl=kubectl))


def digest(site: Mapping[str, Sequence[Finding]]) -> dict[str, list[dict[str, Any]]]:
    """Per host, the findings' id, severity and summary in report order (for a scenario's JSON)."""
    return {
        host: [{"id": f.id, "severity": str(f.severity), "summary": f.summary} for f in fs]
        for host, fs in site.items()
    }


def first_line(findings: Sequence[Mapping[str, Any]]) -> str:
    """How a scenario's text output shows one host's result: its first finding, or that it is clean."""
    serious = [f for f in findings if Severity[str(f["severity"]).upper()] >= Severity.WARNING]
    if not serious:
        info = len(findings)
        return "nothing of severity warning or worse" + (f" ({info} info)" if info else "")
    f = findings[0]
    more = f" (+{len(serious) - 1} more)" if len(serious) > 1 else ""
    return f"[{f['severity']}] {f['id']}: {f['summary']}{more}"
