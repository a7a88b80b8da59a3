"""``parse_save`` (``kubelvs import``) is as strict as ``ipvsadm -R``: every bad input is a
ParseError naming the source, the line and the option; real ``ipvsadm -Sn`` output and
every model still round-trip. Fuzzed: nothing but ParseError ever escapes (400 files in
the ci profile, four times its example count; a few seconds)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kubelvs.errors import ParseError
from kubelvs.formats.ipvsadm_save import MAX_LINE, format_save, parse_save
from kubelvs.model import Forward

from ..strategies import services

BUNDLES = Path(__file__).resolve().parent.parent / "fixtures" / "bundles"
REAL_FILES = sorted(p for p in BUNDLES.rglob("ipvsadm-Sn.txt") if p.read_text().strip())
SERVICE = "-A -t 10.0.0.1:80 -s rr\n"


def _error(text: str) -> ParseError:
    with pytest.raises(ParseError) as info:
        parse_save(text, source="rules.txt")
    assert info.value.source == "rules.txt"
    return info.value


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        # unknown options and options of the other verb or of other commands
        ("-A -t 10.0.0.1:80 -s rr --frobnicate\n", 1, "unknown option '--frobnicate'"),
        ("-A -t 10.0.0.1:80 -s rr -Q\n", 1, "unknown option '-Q'"),
        (
            SERVICE + "-a -t 10.0.0.1:80 -r 10.0.0.2:80 -g --frobnicate=3\n",
            2,
            "unknown option '--frobnicate'",
        ),
        (
            "-A -t 10.0.0.1:80 -s rr -r 10.0.0.2:80\n",
            1,
            "-r is an option of -a (add server), not of -A (add service)",
        ),
        (
            SERVICE + "-a -t 10.0.0.1:80 -r 10.0.0.2:80 -s rr\n",
            2,
            "-s is an option of -A (add service), not of -a",
        ),
        ("-A -t 10.0.0.1:80 -s rr -L\n", 1, "-L: an ipvsadm option, but not one of -A/-a lines"),
        ("-E -t 10.0.0.1:80 -s rr\n", 1, "expected -A or -a"),
        ("-A -t 10.0.0.1:80 -a\n", 1, "-a: a second command on one line"),
        ("-A -t 10.0.0.1:80 -s rr wlc\n", 1, "unexpected argument 'wlc'"),
        # missing values
        ("-A -t 10.0.0.1:80 -s\n", 1, "-s needs a value"),
        ("-A -t 10.0.0.1:80 -s -p 300\n", 1, "-s needs a value, got option '-p'"),
        ("-A -t\n", 1, "-t needs a value"),
        ("-A -s rr\n", 1, "no service given"),
        (SERVICE + "-a -t 10.0.0.1:80 -g -w 1\n", 2, "-a without -r"),
        (SERVICE + "-a -t 10.0.0.1:80 -r 10.0.0.2:80 -w\n", 2, "-w needs a value"),
        # bad addresses and ports
        ("-A -t lb.example:80 -s rr\n", 1, "'lb.example' is not an IP address (save with ipvsadm -Sn"),
        ("-A -t 10.0.0.1:http -s rr\n", 1, "'http' is not a port number 0-65535 (save with ipvsadm -Sn"),
        ("-A -t 10.0.0.1:65536 -s rr\n", 1, "'65536' is not a port number 0-65535"),
        ("-A -t 10.0.0.256:80 -s rr\n", 1, "'10.0.0.256' is not an IP address"),
        ("-A -t 2001:db8::1:80 -s rr\n", 1, "an IPv6 address goes in brackets: [ADDRESS]:PORT"),
        ("-A -t [2001:db8::1]x -s rr\n", 1, "-t '[2001:db8::1]x': not ADDRESS:PORT"),
        ("-A -t [fe80::1%eth0]:80 -s rr\n", 1, "is not an IP address"),
        (SERVICE + "-a -t 10.0.0.1:80 -r 10.0.0.2:-1 -m\n", 2, "'-1' is not a port number"),
        ("-A -f 0 -s rr\n", 1, "-f '0': not a firewall mark 1-4294967295"),
        ("-A -f web -s rr\n", 1, "-f 'web': not a firewall mark"),
        ("-A -t 10.0.0.1:80 -6 -s rr\n", 1, "-6: only for -f (fwmark) services"),
        # bad weights, thresholds, timeouts, netmasks
        (
            SERVICE + "-a -t 10.0.0.1:80 -r 10.0.0.2:80 -w heavy\n",
            2,
            "-w 'heavy': not a number (weight: 0-65535)",
        ),
        (
            SERVICE + "-a -t 10.0.0.1:80 -r 10.0.0.2:80 -w 65536\n",
            2,
            "-w '65536': out of range (weight: 0-65535)",
        ),
        (SERVICE + "-a -t 10.0.0.1:80 -r 10.0.0.2:80 -x 1e3\n", 2, "-x '1e3': not a number"),
        (SERVICE + "-a -t 10.0.0.1:80 -r 10.0.0.2:80 -y 2147483648\n", 2, "-y '2147483648': out of range"),
        ("-A -t 10.0.0.1:80 -s rr -p 0\n", 1, "-p '0': out of range (persistence timeout in seconds"),
        ("-A -t 10.0.0.1:80 -s rr -p soon\n", 1, "-p 'soon': not a number"),
        ("-A -t 10.0.0.1:80 -s rr -M 255.255.255.0\n", 1, "this one has no -p"),
        ("-A -t 10.0.0.1:80 -s rr -p 60 -M 255.0.255.0\n", 1, "-M '255.0.255.0': not a netmask"),
        ("-A -t [2001:db8::1]:80 -s rr -p 60 -M 129\n", 1, "-M '129': not a prefix length 0-128"),
        # bad schedulers and flags
        ("-A -t 10.0.0.1:80 -s roundrobin\n", 1, "-s 'roundrobin': unknown scheduler (known: dh, fo"),
        ("-A -t 10.0.0.1:80 -s rr -b mh-port\n", 1, "'mh-port' is not a flag of scheduler rr"),
        ("-A -t 10.0.0.1:80 -s rr -o\n", 1, "-o: one-packet scheduling is only for UDP"),
        ("-A -t 10.0.0.1:80 -s rr --pe sip\n", 1, "--pe (persistence engine): not supported"),
        # exclusive and repeated options
        ("-A -t 10.0.0.1:80 -u 10.0.0.1:80 -s rr\n", 1, "-u: conflicts with -t"),
        ("-A -t 10.0.0.1:80 -s rr -s wlc\n", 1, "-s: given twice"),
        (SERVICE + "-a -t 10.0.0.1:80 -r 10.0.0.2:80 -g -m\n", 2, "-m: conflicts with -g"),
        # tunnels the model does not hold
        (
            SERVICE + "-a -t 10.0.0.1:80 -r 10.0.0.2:80 -i --tun-type gue\n",
            2,
            "kubelvs supports ipip tunnels only",
        ),
        (SERVICE + "-a -t 10.0.0.1:80 -r 10.0.0.2:80 -g --tun-type ipip\n", 2, "only with -i"),
        (
            SERVICE + "-a -t 10.0.0.1:80 -r 10.0.0.2:80 -i --tun-port 6080\n",
            2,
            "--tun-port: for GUE/GRE tunnels",
        ),
        # services and real servers
        (
            SERVICE + "-a -t 10.0.0.9:80 -r 10.0.0.2:80 -g\n",
            2,
            "real server for TCP 10.0.0.9:80, which was not declared",
        ),
        ("-a -t 10.0.0.1:80 -r 10.0.0.2:80\n" + SERVICE, 1, "not declared with -A before"),
        (
            SERVICE + "-A -t 10.0.0.1:80 -s wlc\n",
            2,
            "service TCP 10.0.0.1:80 declared twice (first on line 1)",
        ),
        (
            SERVICE + "-a -t 10.0.0.1:80 -r 10.0.0.2:80 -m\n-a -t 10.0.0.1:80 -r 10.0.0.2:80 -g\n",
            3,
            "real server 10.0.0.2:80 of TCP 10.0.0.1:80 declared twice (first on line 2)",
        ),
        # not text
        ("-A -t 10.0.0.1:80 -s rr\x00\x01\n", 1, "column 24: a control character ('\\x00'): binary data"),
        ("# saved\n\ufffd\ufffdELF\n", 2, "column 1: bytes that are not UTF-8 text ('\\ufffd'): binary data"),
        ("-A -t 10.0.0.1:80 -s rr\udc80\n", 1, "bytes that are not UTF-8 text ('\\udc80')"),
        ("-A -t 10.0.0.1:80 -s rr\r-a\n", 1, "a control character ('\\r')"),
        ("-A -t 10.0.0.1:80 -s rr \u00e9\n", 1, "column 25: 'é' ('\\xe9') is not ASCII"),
        ("-A -t 10.0.0.1:80 -s 'rr\n", 1, "No closing quotation"),
        ("-A -t 10.0.0.1:80 -s rr " + "-o " * 400 + "\n", 1, "line is 1224 characters long (at most 1024"),
    ],
)
def test_errors_name_the_line_and_the_option(text: str, line: int, reason: str) -> None:
    err = _error(text)
    assert err.line == line and reason in err.reason, err
    assert str(err).startswith(f"rules.txt:{line}: ")


def test_error_lines_count_every_line_of_the_file() -> None:
    """Lines are counted as editors count them: a form feed in a comment does not shift them."""
    assert _error("# a\x0c b\n").line == 1  # the form feed is binary data, on line 1
    err = _error("# saved by hand\n\n" + SERVICE + "-a -t 10.0.0.1:80 -r 10.0.0.2:80 --frob\n")
    assert err.line == 4


def test_real_ipvsadm_output_still_round_trips() -> None:
    assert len(REAL_FILES) >= 6
    for path in REAL_FILES:
        text = path.read_text()
        assert format_save(parse_save(text, source=str(path))) == text, path


def test_what_popt_also_accepts() -> None:
    """Long options with '=', short ones with the value attached, -p without its timeout."""
    (svc,) = parse_save(
        "-A --tcp-service=10.0.0.1:80 --scheduler=rr -p\n"
        "-a -t 10.0.0.1:80 -r10.0.0.2:8080 -m -w3 --u-threshold=100\n"
    )
    assert (svc.scheduler, svc.persistence) == ("rr", 300)
    (rs,) = svc.realservers
    assert (rs.port, rs.weight, rs.forward, rs.u_thresh) == (8080, 3, Forward.NAT, 100)


def test_ports_left_out() -> None:
    """Without a port a DR real server takes the service's (ipvsadm does the same)."""
    (svc,) = parse_save("-A -t 10.0.0.1:80 -s rr\n-a -t 10.0.0.1:80 -r 10.0.0.2 -g\n")
    assert svc.realservers[0].port == 80


def test_over_long_line_limit_is_the_documented_one() -> None:
    assert parse_save(SERVICE + "#" * (MAX_LINE - 1) + "\n")
    assert _error(SERVICE + "#" * (MAX_LINE + 1) + "\n").line == 2


@settings(max_examples=settings().max_examples * 3 // 2)
@given(st.lists(services(), max_size=5, unique_by=lambda s: s.key))
def test_every_model_round_trips(svcs: list) -> None:  # type: ignore[type-arg]
    assert parse_save(format_save(svcs)) == svcs


_WORDS = [
    "-A",
    "-a",
    "-t",
    "-u",
    "--sctp-service",
    "-f",
    "-6",
    "-s",
    "-p",
    "-M",
    "-b",
    "-o",
    "--pe",
    "-r",
    "-g",
    "-m",
    "-i",
    "-w",
    "-x",
    "-y",
    "--tun-type",
    "--tun-port",
    "--tun-csum",
    "--weight=",
    "-w",
    "10.0.0.1:80",
    "10.0.0.2",
    "[2001:db8::1]:443",
    "[::1]",
    "255.255.255.0",
    "24",
    "rr",
    "mh",
    "sh",
    "mh-port,mh-fallback",
    "sh-port",
    "flag-1",
    "ipip",
    "gue",
    "0",
    "1",
    "300",
    "65536",
    "-1",
    "0x64",
    "'",
    '"',
    "\\",
    "#",
    "\x00",
    "\ufffd",
    "\udc80",
    "\t",
    "\x0c",
    "é",
]


@st.composite
def _rule_files(draw: st.DrawFn) -> str:
    """Files of rule-like lines: the options in any order, with any values; plus any text."""
    if draw(st.integers(0, 3)) == 0:
        return draw(
            st.text(max_size=300) | st.binary(max_size=300).map(lambda b: b.decode("utf-8", errors="replace"))
        )
    words = st.one_of(st.sampled_from(_WORDS), st.text(max_size=6))
    lines = st.lists(words, max_size=12).map(" ".join)
    real = format_save(draw(st.lists(services(), max_size=3, unique_by=lambda s: s.key))).split("\n")
    extra = draw(st.lists(st.tuples(st.integers(0, len(real)), lines), max_size=6))
    for at, line in sorted(extra, key=lambda e: -e[0]):
        real.insert(at, line)
    if draw(st.booleans()) and real:  # and maybe cut short
        joined = "\n".join(real)
        return joined[: draw(st.integers(0, len(joined)))]
    return "\n".join(real)


@settings(max_examples=settings().max_examples * 4, suppress_health_check=list(HealthCheck))
@given(_rule_files())
def test_fuzz_only_parse_errors_escape(text: str) -> None:
    try:
        services_ = parse_save(text, source="rules.txt")
    except ParseError as err:
        assert err.source == "rules.txt" and err.line is not None and 1 <= err.line <= text.count("\n") + 1
        assert err.reason and "\n" not in err.reason
        return
    # what it accepted, it can write back, and reads back the same
    assert parse_save(format_save(services_)) == services_
