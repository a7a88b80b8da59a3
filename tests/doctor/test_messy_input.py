"""Partial and messy input: truncated files, CRLF, other ipvsadm versions, garbage.
Never a traceback; what could not be read is reported as input-unparsed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kubelvs.cli.main import main
from kubelvs.doctor import FILES, Bundle, Severity, analyse, exit_code, render_json, render_text

from .conftest import BUNDLES, confirmed, ids, load


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(FILES)), st.text(max_size=300), max_size=8))
def test_arbitrary_text_in_any_file_never_crashes_a_check(texts: dict[str, str]) -> None:
    findings = analyse(Bundle(texts))
    assert "check-failed" not in [f.id for f in findings]


def _truncate_every_line(text: str) -> str:
    return "".join(line[: max(1, len(line) * 2 // 3)] + "\r\n" for line in text.splitlines())


def test_every_real_file_truncated_and_crlf() -> None:
    for name in ("vm-stale", "vm-timewait", "m-dr-node-arp", "vm-tun-rp-filter/realserver"):
        b = load(name)
        b.texts = {k: _truncate_every_line(v) for k, v in b.texts.items()}
        findings = analyse(b)
        assert "check-failed" not in ids(findings), name
        assert "input-unparsed" in ids(findings), name


def test_crlf_alone_changes_nothing() -> None:
    for name in ("vm-stale", "vm-tun-rp-filter/realserver", "m-dr-node-arp", "vm-weight-zero"):
        b = load(name)
        b.texts = {k: v.replace("\n", "\r\n") for k, v in b.texts.items()}
        assert ids(analyse(b)) == ids(analyse(load(name))), name


def test_ipvsadm_without_n_and_old_versions() -> None:
    # ipvsadm -L (names), as 1.26 prints it: no "Flags" header, service names for ports
    b = Bundle(
        {
            "ipvsadm-Ln.txt": (
                "IP Virtual Server version 1.2.1 (size=4096)\n"
                "Prot LocalAddress:Port Scheduler\n"
                "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n"
                "TCP  10.96.0.20:redis rr\n"
                "  -> 10.0.2.2:http                Masq    1      0          0\n"
                "  -> 10.0.2.2:redis               Masq    1      0          5\n"
                "TCP  kubernetes.default.svc.cluster.local:https rr\n"
                "  -> master-1:6443                Masq    1      2          0\n"
            )
        }
    )
    findings = confirmed(analyse(b))
    assert ids(findings) == ["stale-realserver", "input-unparsed"]
    unparsed = findings[-1]
    assert "host name" in " ".join(unparsed.evidence)
    # The service printed with a host name could not be checked: what needs the table is
    # unknown beyond the lines that were read, so the skipped lines are a warning.
    assert unparsed.severity is Severity.WARNING and "stale-realserver" in unparsed.unknown


def test_unknown_role_and_bad_uname() -> None:
    b = load("m-dr-node-arp")
    b.texts["role.txt"] = "loadbalancer\n"
    b.texts["uname.txt"] = "garbage\n"
    findings = analyse(b)
    assert ids(findings, at_least="warning") == ["dr-arp-ignore", "dr-arp-announce"]
    assert any("role.txt" in f.summary for f in findings if f.id == "input-unparsed")


def test_empty_bundle() -> None:
    assert analyse(Bundle({})) == []


def test_kubectl_garbage_and_single_object() -> None:
    b = load("vm-stale")
    b.texts["kubectl.json"] = (
        '{"kind": "List", "items": [{"kind": "Service", "metadata": {"name": "x"}, '
        '"spec": {"ports": [{"port": "abc"}]}}]'
    )
    findings = analyse(b)
    assert ids(findings)[0] == "stale-realserver"  # falls back to the table's own signs
    assert "input-unparsed" in ids(findings)


# ------------------------------------------------ files that cannot be read: never "healthy"


def test_kubectl_json_of_wrong_types_is_named_field_by_field() -> None:
    """Wrong types in kubectl.json used to raise AttributeError in a check (check-failed)."""
    b = load("vm-stale")
    kube = json.loads(b.texts["kubectl.json"])
    svc = kube["items"][0]
    svc["spec"]["ports"][0]["protocol"] = ["TCP"]  # a list where a string belongs
    svc["spec"]["externalIPs"] = {"ip": "10.240.0.201"}  # an object where a list belongs
    kube["items"].append({"kind": "Endpoints", "metadata": ["not", "an", "object"], "subsets": 7})
    b.texts["kubectl.json"] = json.dumps(kube)
    findings = analyse(b)
    assert "check-failed" not in ids(findings)
    (unparsed,) = [f for f in findings if f.id == "input-unparsed"]
    evidence = "\n".join(unparsed.evidence)
    assert "spec.ports[0].protocol: \"['TCP']\" is not a string" in evidence
    assert (
        "spec.externalIPs: an object, not a list" in evidence
        and "metadata: a list, not an object" in evidence
    )
    assert "subsets: an int, not a list" in evidence
    # the one port was dropped: nothing usable was left of kubectl.json, so the findings
    # that need it are unknown, while the IPVS table's own signs still show the stale one
    assert unparsed.severity is Severity.WARNING and "missing-realserver" in unparsed.unknown
    assert ids(findings)[0] == "stale-realserver"


@pytest.mark.parametrize("name", ["nft.json", "kubectl.json"])
def test_json_nested_past_the_recursion_limit(name: str) -> None:
    """Deep nesting used to raise RecursionError (check-failed)."""
    b = load("m-lab-stale-nft")
    b.texts[name] = '{"nftables": ' * 100_000 + "[]" + "}" * 100_000
    findings = analyse(b)
    assert "check-failed" not in ids(findings)
    (unparsed,) = [f for f in findings if f.id == "input-unparsed"]
    assert (
        unparsed.summary.startswith(f"{name} could not be read: ") and "nested too deeply" in unparsed.summary
    )


@pytest.mark.parametrize("broken", ["truncated", "random"])
def test_broken_nft_json_is_reported_and_its_checks_are_unknown(broken: str) -> None:
    """A truncated or random nft.json made a broken bundle say "no findings"."""
    b = load("m-lab-stale-nft")  # its load-balancer table is the kubelvs table in nft.json
    text = b.texts["nft.json"]
    b.texts["nft.json"] = text[: len(text) // 2] if broken == "truncated" else "\x00\x17\x83garbage\ufffd"
    findings = analyse(b)
    assert ids(findings) == ["input-unparsed"]
    (f,) = findings
    assert f.severity is Severity.WARNING and f.summary.startswith("nft.json could not be read: ")
    assert "stale-realserver" in f.unknown and "dr-port-mapping" in f.unknown
    assert exit_code(findings) == 1
    text_report = render_text(findings)
    assert text_report.startswith(f"1 warning; {len(f.unknown)} not checked (unknown)\n")
    assert "stale-realserver" in text_report.split("not checked (unknown: neither found nor ruled out):\n")[1]
    data = json.loads(render_json(findings))
    assert data["findings"][0]["unknown"] == list(f.unknown)
    assert {u["id"] for u in data["unknown"]} == set(f.unknown)


def test_second_choice_file_stands_in_and_the_first_is_info() -> None:
    b = load("vm-stale")
    b.texts["ipvsadm-Ln.txt"] = "garbage\n"
    b.texts["ipvsadm-Sn.txt"] = "-A -t 10.96.0.20:6379 -s rr --frobnicate\n"
    findings = analyse(b)
    assert ids(findings) == ["stale-realserver", "input-unparsed", "input-unparsed"]  # from /proc/net/ip_vs
    assert all(f.severity is Severity.INFO and not f.unknown for f in findings[1:])
    assert "ipvsadm-Sn.txt:1: unknown option '--frobnicate'" in findings[2].summary


def test_cli_exit_and_report_for_an_unreadable_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    bundle = tmp_path / "b"
    shutil.copytree(BUNDLES / "m-node-healthy", bundle)
    (bundle / "sysctl.txt").write_bytes(b"\x7fELF\x02\x01\x01\x00\x00\x00")
    assert main(["doctor", "--bundle", str(bundle)]) == 1
    out = capsys.readouterr().out
    assert (
        "\n\n1 warning; 11 not checked (unknown)\n\n[warning] input-unparsed: sysctl.txt could not be read"
        in out
    )
    assert "  rp-filter-strict, local-vip-loop, dr-arp-ignore" in out and "because of sysctl.txt" in out
    assert main(["doctor", "--bundle", str(bundle), "-o", "json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert [u["id"] for u in data["unknown"]][:2] == ["rp-filter-strict", "local-vip-loop"]
