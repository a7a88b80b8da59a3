"""Fuzzing every parser doctor uses, and the whole analysis (Hypothesis).

Inputs: random text; binary junk decoded as ``Bundle.load`` decodes it (UTF-8 with
replacement) and as Latin-1 (every C1 control); lines of the formats' own words in any
order; real captures (tests/fixtures/bundles) truncated at a random point or with a
random chunk cut out; JSON of random shape; real JSON with one value swapped for one of
another type; JSON nested deeper than any parser recurses.

- No exception escapes a parser (``parse_save`` may raise ParseError: a rules file is
  all or nothing), and what a parser returns is well-formed: the checks rely on it.
- No analysis yields ``check-failed`` (a bug's finding), and the report says which
  files could not be read and which findings are unknown because of them.
- A file replaced by junk never makes a finding vanish silently: each finding of the
  real capture is found again or listed as unknown (every bundle, every file, tried
  exhaustively below, not by chance).
- Lines the tools print but doctor does not use, added to a real capture, change no
  finding.

The example counts are fixed (``_EXAMPLES``, from the Hypothesis profile) so that the
module runs in about 30 s on the loaded 2-core machine.
"""

from __future__ import annotations

import copy
import functools
import importlib
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from kubelvs.doctor import (
    FILES,
    FINDING_IDS,
    Bundle,
    Finding,
    Severity,
    analyse,
    analyse_site,
    render_json,
    render_text,
)
from kubelvs.doctor.analyse import REPORTS
from kubelvs.doctor.findings import SITE_IDS
from kubelvs.doctor.inputs import INPUTS, NEEDS
from kubelvs.errors import ParseError
from kubelvs.formats.iproute import (
    format_ip_addr_json,
    parse_ip_addr,
    parse_ip_neigh_proxy,
    parse_ip_route,
    parse_ip_rule,
)
from kubelvs.formats.ipvs_conn import ConnTable, parse_conn_list, parse_proc_conn
from kubelvs.formats.ipvsadm_list import Listing, parse_listing, parse_proc_ip_vs, parse_timeout
from kubelvs.formats.ipvsadm_save import parse_save
from kubelvs.formats.kube import KubeState, parse_kube
from kubelvs.formats.netstat import Counters, parse_netstat_s, parse_proc_netstat
from kubelvs.formats.nft_json import parse_nft_json
from kubelvs.formats.sysctl_text import parse_sysctl
from kubelvs.formats.tokens import MAX_PROBLEMS, ip_address
from kubelvs.model import Protocol

from .conftest import BUNDLES

# Per test: the profile's count, 100 in the reproducible ci profile (the module then takes
# about 15 s of CPU, 30 s on the loaded 2-core machine), 1000 with HYPOTHESIS_PROFILE=explore.
_EXAMPLES = settings().max_examples  # the loaded profile's
_FUZZ = settings(max_examples=_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))


def _bundle_dirs() -> list[Path]:
    return sorted(d for d in BUNDLES.rglob("*") if d.is_dir() and any(f.name in FILES for f in d.iterdir()))


BUNDLE_NAMES = [str(d.relative_to(BUNDLES)) for d in _bundle_dirs()]
#: bundle name -> its texts, read once
TEXTS = {name: Bundle.load(str(BUNDLES / name)).texts for name in BUNDLE_NAMES}
#: bundle name -> what doctor finds in it
FOUND = {name: analyse(Bundle(texts)) for name, texts in TEXTS.items()}
#: file name -> every real capture of it in the fixtures
CAPTURES: dict[str, list[str]] = {}
for _d in _bundle_dirs():
    for _f in sorted(_d.iterdir()):
        if _f.name in FILES and _f.read_text().strip():
            CAPTURES.setdefault(_f.name, []).append(_f.read_text())
# ip -j addr: the fixtures hold ip's text; the JSON form of the same interfaces.
CAPTURES["ip-addr.json"] = [format_ip_addr_json(parse_ip_addr(t)[0]) for t in CAPTURES["ip-addr.txt"][:6]]
CAPTURES["ip-route.json"] = [
    json.dumps(
        [
            {"dst": "default", "gateway": "10.240.0.1", "dev": "eth0", "protocol": "static", "flags": []},
            {
                "dst": "10.240.0.0/24",
                "dev": "eth0",
                "protocol": "kernel",
                "scope": "link",
                "prefsrc": "10.240.0.101",
                "flags": [],
            },
            {
                "type": "local",
                "dst": "10.240.0.201",
                "dev": "lo",
                "table": "local",
                "protocol": "kernel",
                "scope": "host",
            },
        ]
    )
]


# ------------------------------------------------------------------ well-formed results


def _check_listing(listing: Listing) -> None:
    for svc in listing.services:
        key = svc.key
        assert 0 <= key.port <= 65535 and isinstance(svc.scheduler, str)
        assert (key.address is None) == bool(key.fwmark) and 0 <= key.fwmark < 2**32
        for rs in svc.realservers:
            assert 0 <= rs.port <= 65535 and rs.weight >= 0
    for st_ in [*listing.stats.values(), *listing.service_stats.values()]:
        assert all(isinstance(v, int) and v >= 0 for v in (st_.active_conns, st_.inactive_conns, st_.conns))
    assert len(listing.problems) <= MAX_PROBLEMS and listing.bad_lines >= len(listing.problems)


def _check_conns(table: ConnTable) -> None:
    assert len(table.rows) == len(table.linenos)
    for row in table.rows:
        assert len(row) == 6 and isinstance(row[1], int) and row[1] >= 0
        assert all(isinstance(x, str) and x for x in (row[0], row[2], row[3], row[4], row[5]))
    assert len(table.problems) <= MAX_PROBLEMS


def _check_counters(counters: Counters) -> None:
    assert all(isinstance(v, int) for section in counters.sections.values() for v in section.values())


def _check_kube(state: KubeState) -> None:
    for sp in state.ports:
        assert sp.protocol in ("TCP", "UDP", "SCTP") and Protocol(sp.protocol.lower())
        assert isinstance(sp.port, int) and 1 <= sp.port <= 65535
        assert sp.node_port is None or 1 <= sp.node_port <= 65535
        assert all(isinstance(x, str) for x in (sp.namespace, sp.name, sp.port_name, sp.type))
        for ip in [
            *sp.cluster_ips,
            *sp.external_ips,
            *sp.lb_ips,
            *(a for a, _ in sp.endpoints | sp.not_ready),
        ]:
            assert str(ip_address(ip)) == ip
    assert all(str(ip_address(ip)) == ip for ips in state.node_ips.values() for ip in ips)


def _parse_save(text: str) -> None:
    try:
        parse_save(text, source="f")
    except ParseError as exc:
        assert exc.source == "f" and exc.line is not None and exc.reason


def _parse_sysctl(text: str) -> None:
    parsed = parse_sysctl(text, source="f")
    for name in parsed.values:
        assert parsed.int_value(name) is None or isinstance(parsed.int_value(name), int)
    assert len(parsed.problems) <= MAX_PROBLEMS


def _parse_ip_addr(text: str) -> None:
    interfaces, problems = parse_ip_addr(text, source="f")
    for i in interfaces:
        assert isinstance(i.name, str) and i.name and all(isinstance(f, str) for f in i.flags)
        assert all(ip_address(str(a.ip)) == a.ip for a in i.addresses)
    assert len(problems) <= MAX_PROBLEMS + 1


def _parse_ip_route(text: str) -> None:
    routes, problems = parse_ip_route(text, source="f")
    assert (
        all(isinstance(r.dst, str) and isinstance(r.dev, str) for r in routes)
        and len(problems) <= MAX_PROBLEMS + 1
    )


def _parse_ip_rule(text: str) -> None:
    rules, problems = parse_ip_rule(text, source="f")
    assert all(isinstance(p, int) and 0 <= p < 2**32 for p, _ in rules) and len(problems) <= MAX_PROBLEMS + 1


def _parse_ip_neigh_proxy(text: str) -> None:
    entries, problems = parse_ip_neigh_proxy(text, source="f")
    assert all(e.address.version in (4, 6) and " " not in e.device for e in entries)
    assert len(problems) <= MAX_PROBLEMS + 1


def _parse_nft(text: str) -> None:
    ruleset = parse_nft_json(text, source="f")
    assert all(isinstance(t, str) for t in [*ruleset.tables, *ruleset.chains, *ruleset.nat_rules])
    assert all(isinstance(e, dict) and len(e) == 1 for e in ruleset.entries)
    assert ruleset.unreadable == (not ruleset.entries and bool(ruleset.problems) and not ruleset.bad_entries)


def _timeout(text: str) -> None:
    timeouts = parse_timeout(text)
    assert timeouts is None or all(
        isinstance(v, int) and v >= 0 for v in (timeouts.tcp, timeouts.tcpfin, timeouts.udp)
    )


def _kernel(text: str) -> None:
    kernel = Bundle({"uname.txt": text}).kernel
    assert kernel is None or all(isinstance(v, int) for v in kernel)


def _role(text: str) -> None:
    assert Bundle({"role.txt": text}).role in ("director", "node", "both")


#: a parser per bundle file (and the JSON forms of ip's output)
PARSERS: dict[str, Callable[[str], None]] = {
    "ipvsadm-Ln.txt": lambda t: _check_listing(parse_listing(t, source="f")),
    "ipvsadm-Ln-stats.txt": lambda t: _check_listing(parse_listing(t, source="f")),
    "proc-net-ip_vs.txt": lambda t: _check_listing(parse_proc_ip_vs(t, source="f")),
    "ipvsadm-Lnc.txt": lambda t: _check_conns(parse_conn_list(t, source="f")),
    "proc-net-ip_vs_conn.txt": lambda t: _check_conns(parse_proc_conn(t, source="f")),
    "ipvsadm-timeout.txt": _timeout,
    "ipvsadm-Sn.txt": _parse_save,
    "sysctl.txt": _parse_sysctl,
    "sysctl-conf.txt": _parse_sysctl,
    "netstat-s.txt": lambda t: _check_counters(parse_netstat_s(t, source="f")),
    "proc-net-netstat.txt": lambda t: _check_counters(parse_proc_netstat(t, source="f")),
    "proc-net-snmp.txt": lambda t: _check_counters(parse_proc_netstat(t, source="f")),
    "ip-addr.txt": _parse_ip_addr,
    "ip-addr.json": _parse_ip_addr,
    "ip-route.txt": _parse_ip_route,
    "ip-route.json": _parse_ip_route,
    "ip-rule.txt": _parse_ip_rule,
    "ip-neigh-proxy.txt": _parse_ip_neigh_proxy,
    "uname.txt": _kernel,
    "kubectl.json": lambda t: _check_kube(parse_kube(t, source="f")),
    "kubectl.yaml": lambda t: _check_kube(parse_kube(t, source="f")),
    "nft.json": _parse_nft,
    "role.txt": _role,
}
JSON_FILES = ("kubectl.json", "nft.json", "ip-addr.json", "ip-route.json")


def test_every_bundle_file_has_a_parser_and_captures() -> None:
    assert set(FILES) <= set(PARSERS)
    assert set(PARSERS) - set(CAPTURES) == set()


# ------------------------------------------------------------------ strategies

_WORDS = [
    "TCP",
    "UDP",
    "SCTP",
    "FWM",
    "->",
    "Masq",
    "Route",
    "Tunnel",
    "Local",
    "rr",
    "wlc",
    "mh",
    "sh",
    "persistent",
    "mask",
    "ops",
    "pe",
    "IP Virtual Server version 1.2.1 (size=4096)",
    "Prot",
    "Conns",
    "CPS",
    "RemoteAddress:Port",
    "--",
    "IPv6",
    "10.0.0.1:80",
    "[2001:db8::1]:443",
    "0A000001:0050",
    "[2001:0db8:0000:0000:0000:0000:0000:0001]:0050",
    "1.2.3.4:http",
    "host:https",
    "0",
    "1",
    "-1",
    "65536",
    "99999999999999999999999",
    "9" * 5000,
    "12K",
    "3M",
    "0x10",
    "\u00b2",
    "\u0663",
    "1_000",
    "+5",
    "00:48",
    "1x:00",
    "99:99",
    "SYN_RECV",
    "TIME_WAIT",
    "ESTABLISHED",
    "Pro",
    "pro",
    "IPVS",
    "Timeout (tcp tcpfin udp):",
    "900",
    "net.ipv4.conf.all.rp_filter",
    "net.ipv4.ip_forward",
    "=",
    "kernel.osrelease",
    "sysctl:",
    "#",
    "TcpExt:",
    "IpExt:",
    "PAWSEstab",
    "IPReversePathFilter",
    "TcpExt: PAWSEstab",
    "TcpExt: 18000",
    "packets rejects in established connections because of timestamp",
    "1:",
    "lo:",
    "<UP,LOWER_UP>",
    "link/ether",
    "inet",
    "inet6",
    "10.0.0.1/24",
    "1.2.3/8",
    "fe80::1%eth0/64",
    "scope",
    "global",
    "dummy",
    "ipip",
    "default",
    "via",
    "dev",
    "table",
    "local",
    "32766:",
    "from",
    "all",
    "lookup",
    "main",
    "-A",
    "-a",
    "-t",
    "-u",
    "-f",
    "-s",
    "-r",
    "-g",
    "-m",
    "-i",
    "-w",
    "-p",
    "-M",
    "-b",
    "--tun-type",
    "255.255.255.0",
    "\x00",
    "\ufffd",
    "\t",
    "\r",
    "\x0c",
    "\u2028",
    "{",
    "}",
    "[",
    "]",
    '"',
    ":",
    ",",
    "'",
]
_LINES = st.lists(
    st.lists(st.one_of(st.sampled_from(_WORDS), st.text(max_size=6)), max_size=10).map(" ".join), max_size=25
).map("\n".join)
JUNK = st.one_of(
    st.text(max_size=400),
    st.binary(max_size=400).map(lambda b: b.decode("utf-8", errors="replace")),
    st.binary(max_size=400).map(lambda b: b.decode("latin-1")),
    _LINES,
)


@st.composite
def _cut(draw: st.DrawFn, texts: list[str]) -> str:
    """A real capture truncated at a random point, or with a random chunk cut out."""
    text = draw(st.sampled_from(texts))
    a = draw(st.integers(0, len(text)))
    if draw(st.booleans()):
        return text[:a]
    b = draw(st.integers(a, len(text)))
    return text[:a] + text[b:]


_KEYS = [
    "kind",
    "items",
    "metadata",
    "name",
    "namespace",
    "spec",
    "ports",
    "port",
    "protocol",
    "clusterIP",
    "clusterIPs",
    "externalIPs",
    "status",
    "loadBalancer",
    "ingress",
    "ip",
    "addresses",
    "endpoints",
    "conditions",
    "ready",
    "subsets",
    "labels",
    "nftables",
    "table",
    "chain",
    "rule",
    "family",
    "expr",
    "masquerade",
    "ifname",
    "ifindex",
    "addr_info",
    "local",
    "prefixlen",
    "flags",
    "dst",
    "dev",
    "gateway",
    "type",
    "targetPort",
    "nodePort",
]
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.text(max_size=20),
    st.sampled_from(["TCP", "10.0.0.1", "::1", "Service", "List", "ip", "kubelvs", "None", "abc"]),
)
JSON_VALUES = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(st.sampled_from(_KEYS) | st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=25,
)
_DEEP = "__kubelvs_fuzz_deep__"
_DEPTHS = st.sampled_from([50, 500, 990, 2000, 100_000])


def _nested(depth: int, kind: str) -> str:
    if kind == "list":
        return "[" * depth + "]" * depth
    return '{"items": ' * depth + "[]" + "}" * depth


def _paths(doc: Any) -> Iterator[tuple[Any, ...]]:
    """Every path into a JSON document (iteratively, the first 3000)."""
    stack: list[tuple[tuple[Any, ...], Any]] = [((), doc)]
    n = 0
    while stack and n < 3000:
        path, node = stack.pop()
        yield path
        n += 1
        children = (
            node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
        )
        stack.extend(((*path, k), v) for k, v in children)


def _set(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return doc


@functools.cache
def _document(text: str) -> tuple[Any, list[tuple[Any, ...]]]:
    """A JSON capture parsed, with its paths (once per capture: nft.json is 200 kB)."""
    doc = json.loads(text)
    return doc, list(_paths(doc))


@st.composite
def _swapped_json(draw: st.DrawFn, texts: list[str], *, dump: Callable[[Any], str] = json.dumps) -> str:
    """A real JSON capture with one value swapped for one of another type, or for a
    value nested deeper than a parser recurses."""
    doc, paths = _document(draw(st.sampled_from(texts)))
    path = draw(st.sampled_from(paths))
    deep = draw(st.integers(0, 4)) == 0
    value = _DEEP if deep else draw(JSON_VALUES)
    if not path:
        text = dump(value)
    else:  # swap in place, dump, swap back: no copy of a 200 kB document per example
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        old, parent[path[-1]] = parent[path[-1]], value
        try:
            text = dump(doc)
        finally:
            parent[path[-1]] = old
    if deep:
        text = text.replace(f'"{_DEEP}"', _nested(draw(_DEPTHS), draw(st.sampled_from(["list", "dict"]))), 1)
    return text


@functools.cache
def _yaml_texts() -> list[str]:
    return [json.dumps(list(yaml.safe_load_all(t)), default=str) for t in CAPTURES["kubectl.yaml"]]


def inputs_for(name: str) -> st.SearchStrategy[str]:
    """Everything a file of that name may hold in a broken bundle."""
    texts = CAPTURES[name]
    options = [JUNK, _cut(texts), st.just(""), st.builds(_nested, _DEPTHS, st.sampled_from(["list", "dict"]))]
    if name in JSON_FILES:
        options += [JSON_VALUES.map(json.dumps), _swapped_json(texts)]
    if name == "kubectl.yaml":
        options.append(
            _swapped_json(_yaml_texts(), dump=lambda d: yaml.safe_dump_all(d if isinstance(d, list) else [d]))
        )
    return st.one_of(options)


# ------------------------------------------------------------------ parsers


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_parser_takes_anything(name: str) -> None:
    @_FUZZ
    @given(inputs_for(name))
    def run(text: str) -> None:
        PARSERS[name](text)

    run()


@pytest.mark.parametrize("name", JSON_FILES)
@pytest.mark.parametrize("depth", [900, 990, 5000, 200_000])
def test_json_nested_past_the_recursion_limit(name: str, depth: int) -> None:
    for kind in ("list", "dict"):
        PARSERS[name](_nested(depth, kind))
    PARSERS["kubectl.yaml"]("[" * depth + "]" * depth)


def test_real_captures_parse_clean() -> None:
    """The fixtures themselves: no problem at all (the fuzzing starts from valid files)."""
    for name in BUNDLE_NAMES:
        bundle = Bundle(TEXTS[name])
        bundle.parse_all()
        assert bundle.problems == [] and bundle.unreadable == {} and bundle.bad_lines == {}, name


# ------------------------------------------------------------------ the analysis


def _assert_sound(bundle: Bundle, findings: list[Finding]) -> None:
    """No check-failed; every file that could not be read is reported, and the report
    says which findings are unknown because of it."""
    got = [f.id for f in findings]
    assert "check-failed" not in got, [f.summary for f in findings if f.id == "check-failed"]
    reported = {f.subject: f for f in findings if f.id == "input-unparsed"}
    for name in {*bundle.unreadable, *bundle.bad_lines}:
        assert name in reported, (name, got)
        finding = reported[name]
        assert (finding.severity is Severity.WARNING) == bool(finding.unknown)
        if name in bundle.unreadable:
            assert finding.summary.startswith(f"{name} could not be read: ")
    assert all(fid in FINDING_IDS for f in findings for fid in f.unknown)
    text = render_text(findings)
    assert all(c.isprintable() or c == "\n" for c in text)
    data = json.loads(render_json(findings))
    assert [f["id"] for f in data["findings"]] == got
    assert {u["id"] for u in data["unknown"]} == {fid for f in findings for fid in f.unknown}
    if data["unknown"]:
        assert "not checked (unknown" in text


@st.composite
def broken_bundles(draw: st.DrawFn) -> tuple[str, dict[str, str], list[str]]:
    """A real bundle with 1-4 of its files (or files it lacks) replaced by broken input:
    (its name, the texts, the files replaced)."""
    name = draw(st.sampled_from(BUNDLE_NAMES))
    texts = dict(TEXTS[name])
    replaced = draw(st.lists(st.sampled_from(sorted(FILES)), min_size=1, max_size=4, unique=True))
    for file in replaced:
        texts[file] = draw(inputs_for(file))
    return name, texts, replaced


@_FUZZ
@given(broken_bundles())
def test_analysis_of_broken_bundles(case: tuple[str, dict[str, str], list[str]]) -> None:
    """Sound, and no finding of the real capture vanishes without being listed unknown -
    unless a replaced file was read whole (a cut at a line end is a shorter capture, not a
    broken one) or is role.txt (inferred when unreadable, as when absent)."""
    name, texts, replaced = case
    bundle = Bundle(texts)
    findings = analyse(bundle)
    _assert_sound(bundle, findings)
    broken = [f for f in replaced if f in bundle.unreadable or f in bundle.bad_lines]
    event(f"replaced files that could not be read: {len(broken)} of {len(replaced)}")
    if len(broken) == len(replaced) and "role.txt" not in replaced:
        kept = {f.id for f in findings} | {fid for f in findings for fid in f.unknown}
        assert {f.id for f in FOUND[name]} <= kept


@_FUZZ
@given(st.dictionaries(st.sampled_from(sorted(FILES)), JUNK, max_size=10))
def test_analysis_of_junk(texts: dict[str, str]) -> None:
    bundle = Bundle(texts)
    _assert_sound(bundle, analyse(bundle))


@settings(_FUZZ, max_examples=_EXAMPLES // 3)
@given(st.sampled_from(["m-lab-healthy", "vm-tun-rp-filter", "incident-dr-site"]), st.data())
def test_analysis_of_broken_sites(site: str, data: st.DataObject) -> None:
    bundles = {
        d.name: Bundle(TEXTS[f"{site}/{d.name}"]) for d in sorted((BUNDLES / site).iterdir()) if d.is_dir()
    }
    for host in data.draw(st.lists(st.sampled_from(sorted(bundles)), min_size=1, unique=True)):
        texts = dict(bundles[host].texts)
        for name in data.draw(st.lists(st.sampled_from(sorted(FILES)), min_size=1, max_size=3, unique=True)):
            texts[name] = data.draw(inputs_for(name))
        bundles[host] = Bundle(texts)
    for host, findings in analyse_site(bundles).items():
        _assert_sound(bundles[host], findings)


# Junk that no parser reads as anything: one line, binary, no '=', no digits, not a route.
_UNREADABLE = "\x00\x01 not a capture \ufffd"


def test_no_finding_vanishes_when_its_file_is_junk() -> None:
    """Every file of every real bundle replaced, one at a time, by junk: each finding of
    the capture is still found, or listed as unknown by that file's input-unparsed. (Only
    role.txt is left out: an unreadable role is inferred from the tables, as a missing one
    is, and the report says so.)"""
    tried = 0
    for name in BUNDLE_NAMES:
        before = {f.id for f in FOUND[name]}
        for file in TEXTS[name]:
            if file == "role.txt":
                continue
            for junk in (_UNREADABLE, *(_half(CAPTURES[file][0]),) * (file in JSON_FILES)):
                bundle = Bundle({**TEXTS[name], file: junk})
                findings = analyse(bundle)
                _assert_sound(bundle, findings)
                # /proc/net/ip_vs_conn beside ipvsadm -Lnc is not read (the same table again)
                assert file in bundle.unreadable or (
                    file == "proc-net-ip_vs_conn.txt" and "ipvsadm-Lnc.txt" in bundle.texts
                )
                unknown = {fid for f in findings for fid in f.unknown}
                found = {f.id for f in findings}
                assert before <= found | unknown, (name, file, before - found - unknown)
                tried += 1
    assert tried > 200


def _half(text: str) -> str:
    return text[: len(text) // 2]


def test_a_check_that_raises_is_check_failed_with_its_findings_unknown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The bug net still works: a check that raises is reported, never a traceback, and
    what it would have found is unknown, as a warning. No input makes a check raise (the
    tests above), so a bug is simulated: the rp_filter check replaced by one that raises."""
    analyse_module = importlib.import_module("kubelvs.doctor.analyse")

    def check_rp_filter(bundle: Bundle) -> Iterator[Finding]:
        yield from ()  # a generator, as the checks are: it raises when iterated
        raise KeyError("made to fail")

    checks = tuple(check_rp_filter if c.__name__ == "check_rp_filter" else c for c in analyse_module.CHECKS)
    monkeypatch.setattr(analyse_module, "CHECKS", checks)
    findings = analyse(Bundle(TEXTS["m-rp-filter-tunnel"]))
    (failed,) = findings
    assert failed.id == "check-failed" and failed.severity is Severity.WARNING
    assert failed.unknown == ("rp-filter-strict",) and "made to fail" in failed.summary
    assert "rp-filter-strict: because of check_rp_filter" in render_text(findings)


def test_inputs_and_checks_cover_every_finding() -> None:
    meta = {"input-unparsed", "check-failed"}
    assert set(NEEDS) == set(FINDING_IDS) - meta - SITE_IDS  # a site's findings need two bundles
    assert {fid for ids in REPORTS.values() for fid in ids} == set(FINDING_IDS) - meta
    assert {i for needs in NEEDS.values() for i in needs} == set(INPUTS)
    assert {f for i in INPUTS.values() for f in i.files} <= set(FILES)


# ------------------------------------------------------------------ irrelevant lines


def _inserted(lines: st.SearchStrategy[str], *, first: int = 0) -> Callable[[str], st.SearchStrategy[str]]:
    """Insert up to 6 of ``lines`` at random positions (from line ``first`` on)."""

    def make(text: str) -> st.SearchStrategy[str]:
        rows = text.split("\n")

        def insert(extra: list[tuple[int, str]]) -> str:
            out = list(rows)
            for at, line in sorted(extra, key=lambda e: -e[0]):
                out.insert(at, line)
            return "\n".join(out)

        return st.lists(st.tuples(st.integers(min(first, len(rows)), len(rows)), lines), max_size=6).map(
            insert
        )

    return make


def _pairs(text: str) -> st.SearchStrategy[str]:
    """/proc/net/netstat and snmp: header/value line pairs of sections doctor never reads."""
    rows = text.rstrip("\n").split("\n")
    pair = st.lists(
        st.from_regex(r"[A-Z][A-Za-z0-9]{0,8}", fullmatch=True), min_size=1, max_size=4, unique=True
    ).map(lambda names: f"KubelvsFuzz: {' '.join(names)}\nKubelvsFuzz: {' '.join('7' for _ in names)}")

    def insert(extra: list[tuple[int, str]]) -> str:
        out = list(rows)
        for at, block in sorted(extra, key=lambda e: -e[0]):
            out.insert(2 * at, block)
        return "\n".join(out) + "\n"

    return st.lists(st.tuples(st.integers(0, len(rows) // 2), pair), max_size=3).map(insert)


_WORD = st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True)
_NOISE = st.sampled_from(["", "   ", "\t"])
_SYSCTL_ANY = st.builds(
    "fs.kubelvs_fuzz.{} = {}".format, _WORD, st.text(alphabet="abc 0123456789\t", max_size=12)
)
_KUBE_EXTRA_KINDS = ["ConfigMap", "Pod", "Secret", "ServiceAccount", "Event"]


def _kube_json(text: str) -> st.SearchStrategy[str]:
    doc = _document(text)[0]

    @st.composite
    def changed(draw: st.DrawFn) -> str:
        new = copy.deepcopy(doc)
        items = new.get("items") if isinstance(new, dict) else None
        for obj in [new, *(items or [])]:
            if isinstance(obj, dict) and draw(st.booleans()):
                obj[f"x-kubelvs-fuzz-{draw(_WORD)}"] = draw(JSON_VALUES)
        if isinstance(items, list):
            for _ in range(draw(st.integers(0, 3))):
                extra = {
                    "kind": draw(st.sampled_from(_KUBE_EXTRA_KINDS)),
                    "metadata": {"name": draw(_WORD)},
                    "data": draw(JSON_VALUES),
                }
                items.insert(draw(st.integers(0, len(items))), extra)
        return json.dumps(new, indent=draw(st.sampled_from([None, 2, 4])))

    return changed()


def _nft_json(text: str) -> st.SearchStrategy[str]:
    doc = _document(text)[0]
    entry = st.one_of(
        st.builds(lambda n: {"table": {"family": "inet", "name": f"fuzz_{n}", "handle": 900}}, _WORD),
        st.builds(
            lambda n: {"chain": {"family": "inet", "table": f"fuzz_{n}", "name": "input", "handle": 901}},
            _WORD,
        ),
        st.builds(
            lambda n, e: {
                "rule": {"family": "inet", "table": f"fuzz_{n}", "chain": "input", "handle": 902, "expr": e}
            },
            _WORD,
            st.sampled_from([[{"accept": None}], [{"counter": {"packets": 0, "bytes": 0}}, {"drop": None}]]),
        ),
        st.just({"metainfo": {"version": "1.0.6", "json_schema_version": 1}}),
    )

    @st.composite
    def changed(draw: st.DrawFn) -> str:
        new = copy.deepcopy(doc)
        for _ in range(draw(st.integers(0, 4))):
            new["nftables"].insert(draw(st.integers(0, len(new["nftables"]))), draw(entry))
        return json.dumps(new)

    return changed()


#: file -> (its text -> the text with lines added that doctor must not care about)
IRRELEVANT: dict[str, Callable[[str], st.SearchStrategy[str]]] = {
    **{
        name: _inserted(
            _NOISE
            | st.sampled_from(
                [
                    "--",
                    "IP Virtual Server version 1.2.1 (size=4096)",
                    "Prot LocalAddress:Port Scheduler Flags",
                ]
            )
        )
        for name in ("ipvsadm-Ln.txt", "ipvsadm-Ln-stats.txt", "proc-net-ip_vs.txt")
    },
    "ipvsadm-Lnc.txt": _inserted(
        _NOISE
        | st.sampled_from(
            ["--", "IPVS connection entries", "pro expire state       source             virtual"]
        )
    ),
    "proc-net-ip_vs_conn.txt": _inserted(
        _NOISE | st.just("Pro FromIP   FPrt ToIP     TPrt DestIP   DPrt State   Expires")
    ),
    "ipvsadm-timeout.txt": _inserted(
        st.text(max_size=30).filter(lambda s: not s.strip().startswith("Timeout"))
    ),
    "ipvsadm-Sn.txt": _inserted(
        _NOISE
        | st.builds("# {}".format, st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=20))
    ),
    "sysctl.txt": _inserted(
        _NOISE | _SYSCTL_ANY | st.builds("sysctl: permission denied on key '{}'".format, _WORD)
    ),
    "sysctl-conf.txt": _inserted(
        _NOISE | _SYSCTL_ANY | st.builds("# {}".format, _WORD) | st.builds("; {}".format, _WORD)
    ),
    "netstat-s.txt": _inserted(
        st.builds("    {} kubelvs fuzz {}".format, st.integers(0, 10**9), _WORD)
        | st.builds("    KubelvsFuzz{}: {}".format, _WORD, st.integers(0, 10**9))
    ),
    "proc-net-netstat.txt": _pairs,
    "proc-net-snmp.txt": _pairs,
    "ip-addr.txt": _inserted(
        _NOISE
        | st.sampled_from(
            [
                "    altname enp0s3",
                "       valid_lft forever preferred_lft forever",
                "    RX:  bytes packets errors dropped",
            ]
        ),
        first=1,
    ),
    "ip-route.txt": _inserted(
        _NOISE
        | st.sampled_from(
            [
                "blackhole 192.0.2.0/24 proto static",
                "unreachable 198.51.100.0/24",
                "local 203.0.113.9 dev lo table local proto kernel scope host",
            ]
        )
    ),
    "ip-rule.txt": _inserted(
        _NOISE | st.builds("{}:\tfrom all lookup {}".format, st.integers(1, 32000), _WORD)
    ),
    # proxy entries for addresses that are no VIP of the host's
    "ip-neigh-proxy.txt": _inserted(
        _NOISE | st.builds("2001:db8::{:x} dev {} proxy".format, st.integers(1, 65535), _WORD)
    ),
    "uname.txt": _inserted(st.text(max_size=20), first=1),
    "role.txt": _inserted(st.text(max_size=20), first=1),
    "kubectl.json": _kube_json,
    "kubectl.yaml": lambda t: st.builds(
        lambda k, n: t + f"\n---\nkind: {k}\nmetadata:\n  name: {n}\n",
        st.sampled_from(_KUBE_EXTRA_KINDS),
        _WORD,
    ),
    "nft.json": _nft_json,
}


def _comparable(findings: list[Finding]) -> list[tuple[object, ...]]:
    """A finding without its evidence's line numbers (added lines move them)."""
    return [
        (
            f.id,
            f.severity,
            f.summary,
            f.explanation,
            tuple(re.sub(r"^([^\s:]+):\d+: ", r"\1: ", e) for e in f.evidence),
            f.fix,
            f.unknown,
        )
        for f in findings
    ]


def test_every_file_has_irrelevant_lines() -> None:
    assert set(IRRELEVANT) == set(FILES)


@settings(_FUZZ, max_examples=_EXAMPLES // 3)
@given(st.sampled_from(BUNDLE_NAMES), st.data())
def test_irrelevant_lines_change_no_finding(name: str, data: st.DataObject) -> None:
    texts = {file: data.draw(IRRELEVANT[file](text), label=file) for file, text in TEXTS[name].items()}
    assert _comparable(analyse(Bundle(texts))) == _comparable(FOUND[name])
