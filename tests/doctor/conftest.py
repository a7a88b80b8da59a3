from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kubelvs.doctor import Bundle, Finding, analyse

from .incident_data import write_incident_timewait_table

BUNDLES = Path(__file__).resolve().parent.parent / "fixtures" / "bundles"


def load(name: str) -> Bundle:
    return Bundle.load(str(BUNDLES / name))


def ids(findings: list[Finding], *, at_least: str = "info") -> list[str]:
    from kubelvs.doctor import Severity

    floor = Severity[at_least.upper()]
    return [f.id for f in findings if f.severity >= floor]


def confirmed(findings: list[Finding]) -> list[Finding]:
    """The findings the evidence alone proves (not the likely ones resting on kernel defaults)."""
    return [f for f in findings if f.confidence == "confirmed"]


@pytest.fixture
def incident_timewait(tmp_path: Path) -> Path:
    """The TIME_WAIT incident: its timeout and netstat lines plus a table with its counts."""
    target = tmp_path / "incident-timewait"
    shutil.copytree(BUNDLES / "incident-timewait", target)
    write_incident_timewait_table(target / "ipvsadm-Lnc.txt")
    return target


__all__ = ["BUNDLES", "analyse", "confirmed", "ids", "load"]
