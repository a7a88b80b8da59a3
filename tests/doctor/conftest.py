from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kubelvs.doctor import Bundle, Finding, analyse

from .seed_data import write_seed_timewait_table

BUNDLES = Path(__file__).resolve().parent.parent / "fixtures" / "bundles"


def load(name: str) -> Bundle:
    return Bundle.load(str(BUNDLES / name))


def ids(findings: list[Finding], *, at_least: str = "info") -> list[str]:
    from kubelvs.doctor import Severity

    floor = Severity[at_least.upper()]
    return [f.id for f in findings if f.severity >= floor]


@pytest.fixture
def seed_timewait(tmp_path: Path) -> Path:
    """The seed's second incident: its timeout and netstat lines plus a table with its counts."""
    target = tmp_path / "seed-timewait"
    shutil.copytree(BUNDLES / "seed-timewait", target)
    write_seed_timewait_table(target / "ipvsadm-Lnc.txt")
    return target


__all__ = ["BUNDLES", "analyse", "ids", "load"]
