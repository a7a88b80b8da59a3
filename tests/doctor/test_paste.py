"""Paste mode (``kubelvs doctor --paste``): command outputs pasted into one text, as people
paste them into an issue thread, give the same findings as the bundle they came from.

The texts are assembled from the project's own captures (tests/fixtures/bundles: the VM
tier's IPVS directors, the machine kernel's lab hosts, the incident excerpts), in a
shuffled order, reformatted the ways pastes come: prompts of several shells, no prompts
at all, CRLF line ends, code fences, a common indentation, trailing blanks, prose between
the outputs.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kubelvs.doctor import FILES, Bundle, Finding, Severity, analyse
from kubelvs.doctor.examined import examine
from kubelvs.doctor.paste import describe, read_paste, relocate
from kubelvs.doctor.paste_shapes import UNUSED
from kubelvs.doctor.report import render_markdown

from .conftest import BUNDLES

#: What a user types to get each bundle file (the bundle's FILES names describe, not type).
COMMANDS = {
    "ipvsadm-Ln.txt": "ipvsadm -Ln",
    "ipvsadm-Ln-stats.txt": "ipvsadm -Ln --stats",
    "ipvsadm-Lnc.txt": "ipvsadm -Lnc",
    "ipvsadm-timeout.txt": "ipvsadm -L --timeout",
    "ipvsadm-Sn.txt": "ipvsadm -Sn",
    "proc-net-ip_vs.txt": "cat /proc/net/ip_vs",
    "proc-net-ip_vs_conn.txt": "cat /proc/net/ip_vs_conn",
    "sysctl.txt": "sysctl -a",
    "sysctl-conf.txt": "cat /etc/sysctl.conf /etc/sysctl.d/*.conf",
    "netstat-s.txt": "netstat -s",
    "proc-net-netstat.txt": "cat /proc/net/netstat",
    "proc-net-snmp.txt": "cat /proc/net/snmp",
    "ip-addr.txt": "ip -d addr",
    "ip-route.txt": "ip route show table all",
    "ip-rule.txt": "ip rule",
    "ip-neigh-proxy.txt": "ip -6 neigh show proxy",
    "uname.txt": "uname -r",
    "kubectl.json": "kubectl get svc,endpoints,endpointslices,nodes -A -o json",
    "kubectl.yaml": "kubectl get svc,endpoints -A -o yaml",
    "nft.json": "nft -j list ruleset",
}
assert set(COMMANDS) == set(FILES) - {"role.txt"}  # role.txt is the doctor's, not a command's

PROMPTS = ("$ {}", "# {}", "root@node1:~# {}", "[root@lb1 ~]# {}", "admin@lb-2:/tmp$ sudo {}", "% {}")
PROSE = ("here is the output from the director:", "and then this.", "any idea what is wrong?", "thanks")


def _hosts() -> list[str]:
    """Every single-host bundle among the fixtures."""
    return sorted(
        d.name for d in BUNDLES.iterdir() if d.is_dir() and any((d / name).is_file() for name in FILES)
    )


def _reference(host: str, *, drop: tuple[str, ...] = ()) -> Bundle:
    bundle = Bundle.load(str(BUNDLES / host))
    return Bundle({n: t for n, t in bundle.texts.items() if n != "role.txt" and n not in drop})


def _key(findings: list[Finding]) -> list[tuple[str, str, str]]:
    return [(f.id, str(f.severity), f.summary) for f in findings]


#: The tables a text area's hard wrap cuts in paste tests (their rows are long).
TABLES = (
    "ipvsadm-Ln.txt",
    "ipvsadm-Ln-stats.txt",
    "ipvsadm-Lnc.txt",
    "proc-net-ip_vs.txt",
    "proc-net-ip_vs_conn.txt",
)


def _assemble(
    bundle: Bundle,
    rng: random.Random,
    *,
    prompts: bool,
    crlf: bool = False,
    indent: str = "",
    wrap: int = 0,
) -> tuple[str, dict[tuple[str, int], int]]:
    """The bundle's files as one paste, and where each file line went (file, line) -> paste
    line. ``wrap``: the tables' rows hard-wrapped at that width, at spaces, as a text area does."""
    names = sorted(bundle.texts)
    rng.shuffle(names)
    out: list[str] = []
    where: dict[tuple[str, int], int] = {}

    def add(line: str) -> None:
        out.append(indent + line if line else line)

    add(rng.choice(PROSE))
    for name in names:
        add("")
        fenced = rng.random() < 0.3
        if fenced:
            add("```")
        if prompts:
            add(rng.choice(PROMPTS).format(COMMANDS[name]))
        for number, line in enumerate(bundle.texts[name].rstrip("\n").split("\n"), 1):
            where[(name, number)] = len(out) + 1
            pieces = _wrapped(line, wrap) if wrap and name in TABLES else [line]
            for piece in pieces:
                add(piece + (" " * rng.randrange(3)))
        if fenced:
            add("```")
        if rng.random() < 0.5:
            add(rng.choice(PROSE))
    return ("\r\n" if crlf else "\n").join(out) + "\n", where


def _wrapped(line: str, width: int) -> list[str]:
    """``line`` cut at the last space before ``width`` (and again), the way a text area wraps."""
    pieces = []
    while len(line) > width and " " in line[1:width]:
        cut = line.rindex(" ", 1, width)
        pieces.append(line[:cut].rstrip())
        line = line[cut:].lstrip()
    return [*pieces, line]


@pytest.mark.parametrize("host", _hosts())
@pytest.mark.parametrize("style", ["prompts", "prompts-crlf-indented", "prompts-wrapped", "shapes-only"])
def test_a_paste_gives_the_findings_of_the_bundle_it_came_from(host: str, style: str) -> None:
    # Without prompts, /etc/sysctl.conf looks like sysctl -a: only a prompt tells them apart;
    # and an empty output (no proxy neighbour entries) is told by its prompt alone.
    empty = tuple(d.name for d in (BUNDLES / host).iterdir() if d.stat().st_size == 0)
    drop = ("sysctl-conf.txt", *empty) if style == "shapes-only" else ()
    bundle = _reference(host, drop=drop)
    rng = random.Random(f"{host}/{style}")
    text, where = _assemble(
        bundle,
        rng,
        prompts=style != "shapes-only",
        crlf="crlf" in style,
        indent="    " if "indented" in style else "",
        wrap=44 if "wrapped" in style else 0,
    )
    paste = read_paste(text)
    assert sorted(paste.texts) == sorted(bundle.texts)
    assert {n for n, _ in paste.unplaced} <= {
        n for n, line in enumerate(text.splitlines(), 1) if line.strip() in PROSE
    }
    expected = analyse(bundle)
    found = analyse(paste.bundle())
    assert _key(found) == _key(expected)
    # Evidence quotes the paste's own line numbers: the line a finding names is the line
    # of the bundle file it was read from.
    for before, after in zip(expected, relocate(paste, found), strict=True):
        for quoted, moved in zip(before.evidence, after.evidence, strict=True):
            match = re.match(r"^([\w.-]+\.txt):(\d+): ", quoted)
            if match is None:
                continue
            line = where[(match.group(1), int(match.group(2)))]
            assert moved.startswith(f"line {line} ("), (quoted, moved)


def test_sections_are_told_by_their_shape_and_by_their_prompt() -> None:
    text = "\n".join(
        [
            "[root@lb1 ~]# ipvsadm -Ln --stats",
            "IP Virtual Server version 1.2.1 (size=4096)",
            "Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes",
            "  -> RemoteAddress:Port",
            "TCP  10.96.0.10:80                      20       83       78     4476     4276",
            "  -> 10.0.2.2:8080                      10       41       39     2212     2138",
            "IP Virtual Server version 1.2.1 (size=4096)",  # --rate pasted after it, no prompt
            "Prot LocalAddress:Port                 CPS    InPPS   OutPPS    InBPS   OutBPS",
            "  -> RemoteAddress:Port",
            "TCP  10.96.0.10:80                       1        4        3      223      213",
            "$ cat /etc/sysctl.d/99-kubernetes.conf",
            "# for the load balancer",
            "net.ipv4.vs.conntrack = 1",
            "net.ipv4.ip_forward=1",
            "what else should I look at?",
        ]
    )
    paste = read_paste(text)
    assert [(s.name, s.first, s.last, s.by) for s in paste.sections] == [
        ("ipvsadm-Ln-stats.txt", 2, 6, "prompt"),
        (UNUSED, 7, 10, "shape"),
        ("sysctl-conf.txt", 12, 14, "prompt"),
    ]
    assert paste.unplaced == ((15, "what else should I look at?"),)
    assert (
        paste.texts["sysctl-conf.txt"]
        == "# for the load balancer\nnet.ipv4.vs.conntrack = 1\nnet.ipv4.ip_forward=1\n"
    )
    report = describe(paste)
    assert "lines 7-10: ipvsadm -Ln (not analysed)" in report
    assert "line 15: what else should I look at?" in report


def test_single_values_and_nstat_are_rewritten_into_what_the_checks_read() -> None:
    text = """$ uname -a
Linux node1 4.19.0-8-amd64 #1 SMP Debian 4.19.98-1 (2020-01-26) x86_64 GNU/Linux
$ nstat -az | grep -i paws
#kernel
TcpExtPAWSActive                0                  0.0
TcpExtPAWSEstab                 17855              0.0
$ grep . /proc/sys/net/ipv4/vs/conn_reuse_mode /proc/sys/net/ipv4/vs/expire_nodest_conn
/proc/sys/net/ipv4/vs/conn_reuse_mode:1
/proc/sys/net/ipv4/vs/expire_nodest_conn:0
$ sysctl -n net.ipv4.tcp_tw_recycle
1
$ conntrack -C
262000
$ cat /proc/sys/net/netfilter/nf_conntrack_max
262144
$ ss -s
Total: 1234
TCP:   5000 (estab 100, closed 4800, orphaned 0, timewait 4800)
$ ipvsadm -Ln
IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn
TCP  10.96.0.50:80 rr
  -> 10.0.2.2:8080                Masq    1      0          600
"""
    paste = read_paste(text)
    assert paste.texts["uname.txt"] == "4.19.0-8-amd64\n"
    assert paste.texts["sysctl.txt"].splitlines() == [
        "net.ipv4.vs.conn_reuse_mode = 1",
        "net.ipv4.vs.expire_nodest_conn = 0",
        "net.ipv4.tcp_tw_recycle = 1",
        "net.netfilter.nf_conntrack_count = 262000",
        "net.netfilter.nf_conntrack_max = 262144",
    ]
    assert paste.texts["proc-net-netstat.txt"] == "TcpExt: PAWSActive PAWSEstab\nTcpExt: 0 17855\n"
    assert [s.what for s in paste.sections if s.name == UNUSED] == ["ss -s"]
    assert not paste.unplaced
    found = relocate(paste, analyse(paste.bundle()))
    assert {f.id for f in found} == {
        "tw-recycle-enabled",
        "conntrack-near-full",
        "paws-rejects",
        "conn-reuse-mode",
        "expire-nodest-conn-off",
    }
    by_id = {f.id: f for f in found}
    assert by_id["expire-nodest-conn-off"].evidence == (
        "line 9 (grep . /proc/sys/net/ipv4/vs/conn_reuse_mode /proc/sys/net/ipv4/vs/expire_nodest): "
        "net.ipv4.vs.expire_nodest_conn = 0",
    )
    assert "line 2 (uname -a): 4.19.0-8-amd64" in by_id["conn-reuse-mode"].evidence


def test_a_sysctl_config_comment_that_names_a_command_is_not_a_prompt() -> None:
    text = "# cat /etc/sysctl.conf\n# sysctl settings for the load balancer\nnet.ipv4.ip_forward = 1\n"
    paste = read_paste(text)
    assert [(s.name, s.by) for s in paste.sections] == [("sysctl-conf.txt", "prompt")]
    assert (
        paste.texts["sysctl-conf.txt"] == "# sysctl settings for the load balancer\nnet.ipv4.ip_forward = 1\n"
    )
    assert not paste.unplaced


def test_json_documents_are_named_by_their_content() -> None:
    ip_json = '[ {\n  "ifindex": 1,\n  "ifname": "lo"\n} ]'
    nft = '{"nftables": [{"metainfo": {"version": "1.0.6"}}]}'
    deep = "[" * 100_000 + "]" * 100_000
    paste = read_paste("\n".join([ip_json, nft, deep, '{"truncated": ']))
    assert [(s.name, s.first, s.last) for s in paste.sections] == [(UNUSED, 1, 4), ("nft.json", 5, 5)]
    assert paste.texts == {"nft.json": nft + "\n"}
    assert [n for n, _ in paste.unplaced] == [6, 7]
    # After its prompt, a document is that command's output: ip -j addr is what the bundle reads.
    paste = read_paste("$ ip -j addr\n" + ip_json)
    assert paste.texts == {"ip-addr.txt": ip_json + "\n"}


def test_a_thin_paste_says_what_to_capture_next() -> None:
    """One timeout line: no table, so no role can be told; the commands that would let the
    most checks run come first, each with the findings that need it."""
    paste = read_paste("# ipvsadm -L --timeout\nTimeout (tcp tcpfin udp): 900 120 300\n")
    bundle = paste.bundle()
    analyse(bundle)
    examined = examine(bundle, origin="paste")
    assert (examined.role, examined.data_plane) == ("node", "none found")
    assert examined.counts == {}
    commands = [c.command for c in examined.capture_next]
    assert commands[:2] == ["ipvsadm -Ln", "sysctl -a"]
    assert set(commands) == {
        "ipvsadm -Ln",
        "sysctl -a",
        "ip -d addr",
        "kubectl get svc,endpoints,endpointslices,nodes -A -o yaml",
        "ipvsadm -Lnc",
        "uname -r",
        "cat /etc/sysctl.conf /etc/sysctl.d/*.conf",
        "cat /proc/net/netstat",
    }
    by_command = {c.command: c.decides for c in examined.capture_next}
    assert "ipvs-timeout-below-keepalive" in by_command["ipvsadm -Ln"]
    assert "ipvs-timeout-below-keepalive" in by_command["sysctl -a"]
    assert by_command["cat /proc/net/netstat"] == ("paws-rejects",)


# ---------------------------------------------------------------------- the command


SHORT_PASTE = """Here is what I see on the director:

[root@lb1 ~]# ipvsadm -Ln
IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn
TCP  10.96.0.50:80 rr
  -> 10.0.2.2:8080                Masq    1      0          600
  -> 10.0.2.3:8080                Masq    1      0          600
[root@lb1 ~]# ipvsadm -L --timeout
Timeout (tcp tcpfin udp): 900 120 300
[root@lb1 ~]# sysctl -a | grep keepalive
net.ipv4.tcp_keepalive_intvl = 75
net.ipv4.tcp_keepalive_probes = 9
net.ipv4.tcp_keepalive_time = 7200

any idea?
"""


def _doctor(*args: str, stdin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kubelvs", "doctor", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")},
    )


def test_doctor_paste_from_stdin_reports_the_sections_and_the_finding() -> None:
    result = _doctor("--paste", "-", stdin=SHORT_PASTE)
    assert result.returncode == 1, result.stderr  # a warning
    out = result.stdout
    assert out.startswith("paste: 3 section(s) recognised, 2 line(s) not placed\n")
    assert "  lines 4-9: ipvsadm -Ln (by prompt)\n" in out
    assert "    line 1: Here is what I see on the director:\n" in out
    assert "[warning] ipvs-timeout-below-keepalive: IPVS tcp timeout 900 s is shorter than" in out
    assert "    line 11 (ipvsadm -L --timeout): Timeout (tcp tcpfin udp): 900 120 300\n" in out
    assert "    line 15 (sysctl -a | grep keepalive): net.ipv4.tcp_keepalive_time = 7200\n" in out

    as_json = json.loads(_doctor("--paste", "-", "-o", "json", stdin=SHORT_PASTE).stdout)
    assert [s["file"] for s in as_json["paste"]["sections"]] == [
        "ipvsadm-Ln.txt",
        "ipvsadm-timeout.txt",
        "sysctl.txt",
    ]
    assert as_json["paste"]["unplaced"] == [
        {"line": 1, "text": "Here is what I see on the director:"},
        {"line": 17, "text": "any idea?"},
    ]
    assert [(f["id"], f["confidence"]) for f in as_json["findings"]] == [
        ("ipvs-timeout-below-keepalive", "confirmed"),
        ("expire-nodest-conn-off", "likely"),  # not in the paste: the kernel default
    ]


def test_doctor_paste_of_nothing_it_reads_is_an_error_not_a_clean_bill(tmp_path: Path) -> None:
    result = _doctor("--paste", "-", stdin="my cluster is broken, please help\n")
    assert result.returncode == 2
    assert "no output in it that the doctor reads" in result.stderr
    assert "line 1: my cluster is broken, please help" in result.stdout
    missing = _doctor("--paste", str(tmp_path / "nope.txt"), stdin="")
    assert missing.returncode == 2 and "nope.txt" in missing.stderr
    both = _doctor("--paste", "-", "--bundle", str(tmp_path), stdin="")
    assert both.returncode == 2 and "--paste: not with --bundle" in both.stderr


def test_the_readme_paste_example_is_what_the_doctor_prints() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = readme.split("$ cat thread.txt\n", 1)[1].split("```", 1)[0]
    pasted, printed = block.split("$ kubelvs doctor --paste thread.txt\n")
    assert pasted == SHORT_PASTE
    result = _doctor("--paste", "-", stdin=pasted)
    assert result.stdout == printed


def test_markdown_output_is_ready_for_an_issue_thread() -> None:
    out = _doctor("--paste", "-", "-o", "markdown", stdin=SHORT_PASTE).stdout
    assert out.startswith("## kubelvs doctor\n\n```\npaste: 3 section(s) recognised, 2 line(s) not placed\n")
    assert "**Examined:** paste; role director (inferred: IPVS table with 1 virtual service(s)); " in out
    assert "**Findings:** 1 warning, 1 info.\n\n### warning: `ipvs-timeout-below-keepalive`\n\n" in out
    assert "### info (likely): `expire-nodest-conn-off`" in out
    assert "To confirm:\n\n```sh\nsysctl net.ipv4.vs.expire_nodest_conn\n```" in out
    # Evidence and fixes verbatim in code blocks; prose escaped.
    assert (
        "Evidence:\n\n```\nline 11 (ipvsadm -L --timeout): Timeout (tcp tcpfin udp): 900 120 300\n"
        "line 15 (sysctl -a | grep keepalive): net.ipv4.tcp_keepalive_time = 7200\n```\n"
    ) in out
    assert "Fix:\n\n```sh\nipvsadm --set 7260 120 300\n" in out
    assert "shorter than tcp\\_keepalive\\_time 7200 s" in out
    assert "### What to capture next\n\nMost useful first:\n\n```sh\nipvsadm -Lnc " in out


def test_markdown_cannot_be_broken_out_of_by_what_was_pasted() -> None:
    """A pasted line holding a fence, a mention or HTML stays inside its code block or
    escaped: the report must not turn into someone else's Markdown."""
    text = SHORT_PASTE.replace("any idea?", "see ``` and @everyone <img src=x> **look**")
    out = _doctor("--paste", "-", "-o", "markdown", stdin=text).stdout
    preamble = out.split("\n\n", 2)[1]
    assert preamble.startswith("````\n") and preamble.endswith("\n````")  # longer than the ``` inside
    assert "    line 17: see ``` and @everyone <img src=x> **look**" in preamble


def test_markdown_escapes_prose_and_fences_evidence() -> None:
    finding = Finding(
        id="stale-realserver",
        severity=Severity.ERROR,
        summary="service `a` of @team <b>x</b>",
        explanation="one\ntwo",
        evidence=("```evil",),
        fix=("ipvsadm -C",),
    )
    out = render_markdown([finding])
    assert "\nservice \\`a\\` of \\@team \\<b\\>x\\</b\\>\n" in out
    assert "\none\ntwo\n" in out
    assert "Evidence:\n\n````\n```evil\n````\n" in out
    assert "**Findings:** 1 error." in out


# ---------------------------------------------------------------------- fuzzing

_FUZZ = settings(
    max_examples=max(10, settings().max_examples // 3), deadline=None, suppress_health_check=list(HealthCheck)
)
_CAPTURES = [(h, n) for h in _hosts() for n in sorted(_reference(h).texts) if not n.endswith(".json")]


@_FUZZ
@given(
    picks=st.lists(st.sampled_from(_CAPTURES), min_size=1, max_size=6),
    cuts=st.lists(st.floats(0, 1), min_size=6, max_size=6),
    junk=st.lists(st.binary(max_size=40), max_size=5),
    prompts=st.booleans(),
)
def test_no_paste_crashes_the_doctor(
    picks: list[tuple[str, str]], cuts: list[float], junk: list[bytes], prompts: bool
) -> None:
    """Random sections of real captures, truncated anywhere, with binary junk between them."""
    parts: list[str] = []
    for (host, name), cut, noise in zip(picks, cuts, junk + [b""] * 6, strict=False):
        text = _reference(host).texts[name]
        if prompts:
            parts.append(f"$ {COMMANDS[name]}")
        parts.append(text[: int(len(text) * cut)])
        parts.append(noise.decode("utf-8", errors="replace"))
    paste = read_paste("\n".join(parts))
    findings = relocate(paste, analyse(paste.bundle()))
    assert "check-failed" not in {f.id for f in findings}
    describe(paste)


@_FUZZ
@given(
    host=st.sampled_from(_hosts()),
    shuffle=st.integers(0, 2**32),
    prose=st.lists(
        st.text("abcdefghijklmnopqrstuvwxyz ,.?", min_size=1, max_size=30).filter(lambda s: s[0].isalpha()),
        min_size=1,
        max_size=8,
    ),
)
def test_prose_between_and_inside_the_outputs_changes_no_finding(
    host: str, shuffle: int, prose: list[str]
) -> None:
    bundle = _reference(host)
    text, where = _assemble(bundle, random.Random(shuffle), prompts=True)
    lines = text.split("\n")
    json_lines = {line for (name, _), line in where.items() if name.endswith(".json")}
    rng = random.Random(shuffle)
    # Anywhere but inside a JSON document (a sentence there breaks the document); from the
    # end, so that the positions drawn stay those of the assembled text.
    spots = sorted((rng.randrange(len(lines) + 1) for _ in prose), reverse=True)
    for spot, sentence in zip(spots, prose, strict=True):
        if not (spot in json_lines and spot + 1 in json_lines):  # between paste lines spot and spot+1
            lines.insert(spot, sentence)
    paste = read_paste("\n".join(lines))
    assert _key(analyse(paste.bundle())) == _key(analyse(bundle))
