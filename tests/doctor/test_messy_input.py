"""Partial and messy input: truncated files, CRLF, other ipvsadm versions, garbage.
Never a traceback; what could not be read is reported as input-unparsed."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kubelvs.doctor import FILES, Bundle, Severity, analyse

from .conftest import ids, load


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
    b = Bundle({"ipvsadm-Ln.txt": (
        "IP Virtual Server version 1.2.1 (size=4096)\n"
        "Prot LocalAddress:Port Scheduler\n"
        "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n"
        "TCP  10.96.0.20:redis rr\n"
        "  -> 10.0.2.2:http                Masq    1      0          0\n"
        "  -> 10.0.2.2:redis               Masq    1      0          5\n"
        "TCP  kubernetes.default.svc.cluster.local:https rr\n"
        "  -> master-1:6443                Masq    1      2          0\n")})
    findings = analyse(b)
    assert ids(findings) == ["stale-realserver", "input-unparsed"]
    unparsed = findings[-1]
    assert unparsed.severity is Severity.INFO and "host name" in " ".join(unparsed.evidence)


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
    b.texts["kubectl.json"] = '{"kind": "List", "items": [{"kind": "Service", "metadata": {"name": "x"}, "spec": {"ports": [{"port": "abc"}]}}]'
    findings = analyse(b)
    assert ids(findings)[0] == "stale-realserver"  # falls back to the table's own signs
    assert "input-unparsed" in ids(findings)
