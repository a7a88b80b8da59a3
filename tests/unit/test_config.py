from __future__ import annotations

import contextlib
import tracemalloc
from pathlib import Path

import pytest
import yaml_rs

from kubelvs.errors import ConfigError, ParseError
from kubelvs.model import (
    MAX_ERRORS,
    Forward,
    MoreErrors,
    Protocol,
    ServiceKey,
    Timeouts,
    parse_address,
)
from kubelvs.sources.config import (
    config_document,
    load_config,
    parse_config,
    to_desired,
)

ISSUE_EXAMPLE = """
owned_cidrs: [10.240.0.0/24]
timeouts: {tcp: 900, tcpfin: 30, udp: 300}
services:
  - name: whoami
    vip: 10.240.0.201
    port: 80
    protocol: tcp        # tcp | udp | sctp
    scheduler: mh        # any IPVS scheduler name
    forward: dr          # nat | dr | tun; a real server may override it
    realservers:
      - {address: 10.240.0.101, weight: 1}
      - {address: 10.240.0.102, port: 80}
"""


def test_issue_example_is_accepted(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(ISSUE_EXAMPLE)
    desired = to_desired(load_config(f))
    key = ServiceKey(4, Protocol.TCP, parse_address("10.240.0.201"), 80)
    svc = desired.services[key]
    assert svc.name == "whoami" and svc.scheduler == "mh"
    assert [(str(r.address), r.port, r.weight, r.forward) for r in svc.realservers] == [
        ("10.240.0.101", 80, 1, Forward.DR),
        ("10.240.0.102", 80, 1, Forward.DR),
    ]
    assert desired.timeouts == Timeouts(900, 30, 300)
    assert desired.ownership.owns(key)


def test_every_example_config_is_valid() -> None:
    examples = sorted(Path(__file__).parents[2].joinpath("examples").glob("*.yaml"))
    assert examples, "examples/ has no configs"
    for path in examples:
        to_desired(load_config(path))


def test_unknown_key_is_named() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(
            {"services": [{"vip": "10.240.0.1", "port": 80, "realservers": [{"adress": "10.0.0.1"}]}]}
        )
    paths = [e.field for e in info.value.errors]
    assert "services[0].realservers[0].adress" in paths
    assert "services[0].realservers[0].address" in paths  # and the missing one


def test_bad_address_and_cidr_named() -> None:
    with pytest.raises(ConfigError) as info:
        to_desired(
            parse_config({"owned_cidrs": ["10.0.0.0/24"], "services": [{"vip": "10.0.0.300", "port": 80}]})
        )
    assert [e.field for e in info.value.errors] == ["services[0].vip"]
    with pytest.raises(ConfigError) as info:
        parse_config({"owned_cidrs": ["10.0.0.0/33"]})
    assert info.value.errors[0].field == "owned_cidrs[0]"  # the item, not just the list


def test_realserver_inherits_port_and_forward_and_may_override() -> None:
    desired = to_desired(
        parse_config(
            {
                "owned_cidrs": ["10.240.0.0/24"],
                "services": [
                    {
                        "vip": "10.240.0.5",
                        "port": 80,
                        "forward": "nat",
                        "scheduler": "rr",
                        "realservers": [{"address": "10.1.0.1"}, {"address": "10.1.0.2", "port": 8080}],
                    }
                ],
            }
        )
    )
    (svc,) = desired.services.values()
    assert [(r.port, r.forward) for r in svc.realservers] == [(80, Forward.NAT), (8080, Forward.NAT)]


def test_yaml_syntax_error_has_line(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("services:\n  - vip: [1,\n")
    with pytest.raises(ParseError) as info:
        load_config(f)
    assert info.value.line is not None and str(f) in str(info.value)


def test_fwmark_service_and_owned_fwmarks() -> None:
    desired = to_desired(
        parse_config(
            {
                "owned_fwmarks": ["100-199"],
                "services": [
                    {"fwmark": 150, "scheduler": "rr", "realservers": [{"address": "10.1.0.1", "port": 0}]}
                ],
            }
        )
    )
    assert ServiceKey.for_fwmark(150) in desired.services
    with pytest.raises(ConfigError) as info:
        to_desired(parse_config({"owned_fwmarks": ["5-x"]}))
    assert info.value.errors[0].field == "owned_fwmarks[0]"


# ---------------------------------------------------------------- a wrong file of any size or shape


def _services(n: int, realserver: dict[str, object]) -> dict[str, object]:
    return {
        "owned_cidrs": ["10.200.0.0/14"],
        "services": [
            {
                "name": f"svc-{i}",
                "vip": f"10.{200 + i // 65536}.{(i // 256) % 256}.{i % 256}",
                "port": 80,
                "scheduler": "rr",
                "realservers": [{"address": f"192.168.{i % 200}.{j + 1}", **realserver} for j in range(10)],
            }
            for i in range(n)
        ],
    }


@pytest.mark.parametrize(
    ("realserver", "stage", "first"),
    [
        # A rule of validation broken by every real server (DR cannot map ports).
        (
            {"port": 8080},
            "validate",
            (
                "services[0] (svc-0).realservers[0].port: dr cannot map ports: real server port "
                "8080 differs from the service port 80 (use forward: nat to map ports)"
            ),
        ),
        # A shape problem in every real server (a string where a number belongs).
        ({"weight": "1"}, "shape", "services[0].realservers[0].weight: must be an integer, got '1'"),
    ],
)
def test_errors_are_capped_at_50_and_the_rest_counted(
    realserver: dict[str, object], stage: str, first: str
) -> None:
    # The user's 50 MB file printed 804,545 error lines; here 2,000 services x 10.
    with pytest.raises(ConfigError) as info:
        to_desired(parse_config(_services(2000, realserver)))
    lines = str(info.value).splitlines()
    assert len(lines) == MAX_ERRORS + 1 == 51
    assert lines[0] == first
    assert lines[-1] == "... and 19,950 more errors"
    assert (
        lines[49].startswith("services[4]") and ".realservers[9]." in lines[49]
    )  # the first 50, in file order
    *kept, more = info.value.errors
    assert len(kept) == 50 and isinstance(more, MoreErrors) and more.count == 19_950


def test_problems_past_the_cap_cost_no_memory() -> None:
    # 3,000 problems past the cap are counted, not built: the invalid file's peak is the
    # valid one's plus the 50 problems kept (before the cap it was 2.8 MB more).
    def peak(doc: dict[str, object]) -> int:
        tracemalloc.start()
        try:
            with contextlib.suppress(ConfigError):
                to_desired(parse_config(doc))
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    valid, invalid = _services(300, {"port": 80}), _services(300, {"port": 8080})
    peak(valid)  # warm the address caches, as both would be in one process
    assert peak(invalid) - peak(valid) < 100_000


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ({"owned_cidrs": "10.0.0.0/8"}, "owned_cidrs: must be a list, got '10.0.0.0/8'"),
        ({"owned_cidrs": [float("nan")]}, "owned_cidrs[0]: must be a string, got nan"),
        (
            {"timeouts": {"tcp": 900.0, "tcpfin": 30, "udp": 300}},
            "timeouts.tcp: must be an integer, got 900.0",
        ),
        ({"timeouts": [900, 30, 300]}, "timeouts: must be a mapping of keys, got list"),
        (
            {"sysctls": {"net.ipv4.vs.conntrack": 10**100}},
            "sysctls.net.ipv4.vs.conntrack: must fit in 64 bits, got a number of more than 60 digits",
        ),
        ({"sysctls": {5: 1}}, "sysctls.5: keys must be strings"),
        ({"recommended_sysctls": "yes"}, "recommended_sysctls: must be true or false, got 'yes'"),
        ({"services": {"vip": "10.0.0.1"}}, "services: must be a list, got dict"),
        ({"services": [None]}, "services[0]: must be a mapping of keys, got null"),
        ({"services": [[{"vip": "10.0.0.1"}]]}, "services[0]: must be a mapping of keys, got list"),
        (
            {"services": [{"vip": "10.0.0.1", "port": float("inf")}]},
            "services[0].port: must be an integer, got inf",
        ),
        (
            {"services": [{"vip": "10.0.0.1", "port": 80, "family": 4.0}]},
            "services[0].family: must be one of 4, 6, got 4.0",
        ),
        (
            {"services": [{"vip": "10.0.0.1", "port": 80, "protocol": ["tcp"]}]},
            "services[0].protocol: must be one of tcp, udp, sctp, got list",
        ),
        (
            {"services": [{"vip": "10.0.0.1", "port": 80, "flags": "mh-port"}]},
            "services[0].flags: must be a list, got 'mh-port'",
        ),
        (
            {
                "services": [
                    {"vip": "10.0.0.1", "port": 80, "realservers": [{"address": "10.0.0.2", "weight": True}]}
                ]
            },
            "services[0].realservers[0].weight: must be an integer, got true",
        ),
        (
            {"services": [{"vip": "10.0.0.1", "port": 80, "realservers": "10.0.0.2"}]},
            "services[0].realservers: must be a list, got '10.0.0.2'",
        ),
        (
            {"services": [{"vip": "10.0.0.1", "port": 80, ("a", "b"): 1}]},
            (
                "services[0].tuple: unknown key (known: drain_timeout, family, flags, forward, fwmark, "
                "health, name, netmask, persistence, port, protocol, realservers, scheduler, vip)"
            ),
        ),
        ({"kubernetes": [1]}, "kubernetes: must be a mapping, got list"),
    ],
)
def test_wrong_types_at_every_level_are_named(doc: dict[object, object], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        to_desired(parse_config(doc))
    assert [str(e) for e in info.value.errors] == [expected]


@pytest.mark.parametrize(
    ("service", "expected"),
    [
        (
            {"port": 10**4000},
            "services[0].port: must be between 1 and 65535, got a number of more than 60 digits",
        ),
        (
            {"port": 80, "persistence": -1},
            "services[0].persistence: must be between 0 and 2147483 seconds, got -1",
        ),
        (
            {"port": 80, "vip": "x" * 10_000},
            f"services[0].vip: {'x' * 60!r}... (10,000 characters) is not an IPv4 or IPv6 address",
        ),
        (
            {"port": 80, "vip": "10.0.0.1\0"},
            "services[0].vip: '10.0.0.1\\x00' is not an IPv4 or IPv6 address",
        ),
        (
            {"port": 80, "scheduler": "rr\x1b[2J"},
            (
                "services[0].scheduler: unknown IPVS scheduler 'rr\\x1b[2J' (known: dh, "
                "fo, lblc, lblcr, lc, mh, nq, ovf, rr, sed, sh, twos, wlc, wrr)"
            ),
        ),
        (
            {"port": 80, "scheduler": "x", "name": "n\x1b]0;t\x07" + "y" * 100},
            "services[0] ('n\\x1b]0;t\\x07" + "y" * 53 + "'... (107 characters)).scheduler: "
            "unknown IPVS scheduler 'x' (known: dh, fo, lblc, lblcr, lc, mh, nq, ovf, rr, sed, sh, "
            "twos, wlc, wrr)",
        ),
    ],
)
def test_values_are_quoted_short_and_escaped(service: dict[str, object], expected: str) -> None:
    doc = {"owned_cidrs": ["10.0.0.0/8"], "services": [{"vip": "10.0.0.1", "scheduler": "rr", **service}]}
    with pytest.raises(ConfigError) as info:
        to_desired(parse_config(doc))
    assert [str(e) for e in info.value.errors] == [expected]


def test_owned_fwmarks_never_raise() -> None:
    with pytest.raises(ConfigError) as info:
        to_desired(parse_config({"owned_fwmarks": [10**4000, "1-" + "9" * 5000, "0x10-0x5", "\0"]}))
    assert [e.field for e in info.value.errors] == [f"owned_fwmarks[{i}]" for i in range(4)]


def test_a_valid_config_round_trips_through_its_document(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(
        ISSUE_EXAMPLE.replace(
            "owned_cidrs: [10.240.0.0/24]", "owned_cidrs: [10.240.0.0/24]\nowned_fwmarks: ['100-199', 7]"
        )
    )
    desired = to_desired(load_config(f))
    again = tmp_path / "again.yaml"
    again.write_text(yaml_rs.dumps(config_document(desired)))
    back = to_desired(load_config(again))
    assert back == desired
    assert [s.name for s in back.services.values()] == [s.name for s in desired.services.values()]


def test_fwmark_zero_is_an_error_not_a_traceback() -> None:
    # Found by the fuzz tests: fwmark 0 made a key that is neither fwmark nor VIP:port.
    with pytest.raises(ConfigError, match=r"services\[0\]\.fwmark: must be between 1 and 4294967295, got 0"):
        to_desired(parse_config({"owned_fwmarks": ["1-5"], "services": [{"fwmark": 0, "scheduler": "rr"}]}))
