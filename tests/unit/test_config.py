from __future__ import annotations

from pathlib import Path

import pytest

from kubelvs.errors import ConfigError, ParseError
from kubelvs.model import Forward, Protocol, ServiceKey, Timeouts, parse_address
from kubelvs.sources.config import load_config, parse_config, to_desired

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
        parse_config({"services": [{"vip": "10.240.0.1", "port": 80, "realservers": [{"adress": "10.0.0.1"}]}]})
    paths = [e.field for e in info.value.errors]
    assert "services[0].realservers[0].adress" in paths
    assert "services[0].realservers[0].address" in paths  # and the missing one


def test_bad_address_and_cidr_named() -> None:
    with pytest.raises(ConfigError) as info:
        to_desired(parse_config({"owned_cidrs": ["10.0.0.0/24"], "services": [{"vip": "10.0.0.300", "port": 80}]}))
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
                "services": [{"fwmark": 150, "scheduler": "rr", "realservers": [{"address": "10.1.0.1", "port": 0}]}],
            }
        )
    )
    assert ServiceKey.for_fwmark(150) in desired.services
    with pytest.raises(ConfigError) as info:
        to_desired(parse_config({"owned_fwmarks": ["5-x"]}))
    assert info.value.errors[0].field == "owned_fwmarks[0]"
