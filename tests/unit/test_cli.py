"""The CLI without a kernel: validate, import, export of a file, exit codes and errors."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from kubelvs.formats.ipvsadm_save import parse_save
from kubelvs.model import desired_flags
from kubelvs.sources.config import parse_config, parse_yaml, to_desired

from .test_ipvsadm_save import REAL

ROOT = Path(__file__).parents[2]


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kubelvs", *args], capture_output=True, text=True, input=stdin
    )


def test_validate_reports_every_error_and_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "owned_cidrs: [10.240.0.0/24]\nservices:\n"
        "  - {name: redis, vip: 10.240.0.9, port: 6379, scheduler: rrr,\n"
        "     realservers: [{address: 10.240.0.101, port: 80, weight: 70000}]}\n"
    )
    result = run("validate", "-f", str(bad))
    assert result.returncode == 2
    assert "services[0] (redis).scheduler: unknown IPVS scheduler 'rrr'" in result.stderr
    assert (
        "services[0] (redis).realservers[0].weight: must be between 0 and 65535, got 70000" in result.stderr
    )
    assert "services[0] (redis).realservers[0].port: dr cannot map ports" in result.stderr
    assert "Traceback" not in result.stderr


def test_validate_accepts_examples() -> None:
    # --backend ipvs: this machine has no IPVS, so only the file itself is checked
    # (nat-portmap.yaml uses IPVS-only features: ops, net.ipv4.vs.conntrack).
    for example in sorted((ROOT / "examples").glob("*.yaml")):
        result = run("validate", "-f", str(example), "--backend", "ipvs")
        assert result.returncode == 0, result.stderr
        assert "valid" in result.stdout


def test_import_then_export_round_trips_ipvsadm_rules(tmp_path: Path) -> None:
    rules = tmp_path / "rules.txt"
    rules.write_text(REAL)
    imported = run("import", "--format", "ipvsadm", str(rules))
    assert imported.returncode == 0, imported.stderr
    config = tmp_path / "lb.yaml"
    config.write_text(imported.stdout)
    desired = to_desired(parse_config(parse_yaml(imported.stdout, source="import")))
    assert set(desired.services) == {s.key for s in parse_save(REAL)}
    exported = run("export", "--format", "ipvsadm", "-f", str(config))
    assert exported.returncode == 0, exported.stderr
    # The same rules, except that sh and mh services fall back (desired_flags).
    assert {s.key: s for s in parse_save(exported.stdout)} == {
        s.key: replace(s, flags=desired_flags(s.scheduler, s.flags)) for s in parse_save(REAL)
    }
    assert any(s.scheduler == "sh" for s in parse_save(REAL))


def test_import_of_unparseable_rules_names_the_line(tmp_path: Path) -> None:
    rules = tmp_path / "rules.txt"
    rules.write_text("-A -t 10.0.0.1:80 -s rr\n-A -t web.example:http -s rr\n")
    result = run("import", str(rules))
    assert result.returncode == 2
    assert f"{rules}:2:" in result.stderr and "ipvsadm -Sn" in result.stderr


def test_every_command_has_help() -> None:
    for command in ("validate", "diff", "apply", "status", "export", "import", "director"):
        result = run(command, "--help")
        assert result.returncode == 0 and "usage: kubelvs " + command in result.stdout


def test_apply_prints_a_service_added_whole_as_one_line_and_every_other_change() -> None:
    from kubelvs.cli.commands import applied_lines
    from kubelvs.model import ObservedState
    from kubelvs.planner import plan

    before = to_desired(
        parse_config(
            {
                "owned_cidrs": ["10.240.0.0/24"],
                "services": [{"vip": "10.240.0.1", "port": 80, "realservers": [{"address": "10.0.0.1"}]}],
            }
        )
    )
    after = to_desired(
        parse_config(
            {
                "owned_cidrs": ["10.240.0.0/24"],
                "services": [
                    {"vip": "10.240.0.1", "port": 80, "realservers": [{"address": "10.0.0.2"}]},
                    {
                        "vip": "10.240.0.2",
                        "port": 80,
                        "realservers": [{"address": a} for a in ("10.0.0.1", "10.0.0.2", "10.0.0.3")],
                    },
                ],
            }
        )
    )
    observed = ObservedState(services=dict(before.services))
    ops = plan(after, observed).ops
    assert len(ops) == 6  # the new service and its three real servers; one real server swapped
    assert applied_lines(ops) == [
        "- realserver TCP 10.240.0.1:80 -> 10.0.0.1:80",
        "+ realserver TCP 10.240.0.1:80 -> 10.0.0.2:80 dr w=1",
        "+ service TCP 10.240.0.2:80 scheduler=wlc with 3 real server(s)",
    ]
