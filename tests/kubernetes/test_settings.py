from __future__ import annotations

import pytest

from kubelvs.errors import ConfigError
from kubelvs.sources.config import parse_config

from .helpers import settings


def test_issue_shape_is_accepted() -> None:
    s = settings()
    assert [str(c) for c in s.external_ip_cidrs] == ["10.240.0.192/26"]
    assert s.pools[0].name == "default" and s.pools[0].size() == 14
    assert s.coalesce_seconds == 0.1  # default 100 ms


def test_config_file_section_goes_through_core_config() -> None:
    cfg = parse_config(
        {
            "owned_cidrs": ["10.240.0.0/24"],
            "kubernetes": {
                "external_ip_cidrs": ["10.240.0.192/26"],
                "lb_pools": [{"name": "default", "cidrs": ["10.240.0.224/28"]}],
            },
        }
    )
    assert cfg.kubernetes is not None and cfg.kubernetes["lb_pools"][0]["name"] == "default"


def errors_of(section: dict) -> list[str]:  # type: ignore[type-arg]
    with pytest.raises(ConfigError) as exc:
        settings(section)
    return [str(e) for e in exc.value.errors]


def test_bad_network_names_its_path() -> None:
    errs = errors_of({"lb_pools": [{"name": "default", "cidrs": ["10.240.0.224/28", "10.240.0.1/33"]}]})
    assert len(errs) == 1 and errs[0].startswith(
        "kubernetes.lb_pools[0].cidrs[1]: '10.240.0.1/33' is not a network"
    )


def test_pool_outside_owned_cidrs() -> None:
    errs = errors_of({"lb_pools": [{"name": "p", "cidrs": ["192.168.1.0/28"]}]})
    assert errs == [
        "kubernetes.lb_pools[0].cidrs[0]: 192.168.1.0/28 is not inside owned_cidrs (10.240.0.0/24); "
        "kubelvs only programs VIPs it owns"
    ]


def test_external_ip_range_outside_owned_and_overlaps() -> None:
    errs = errors_of(
        {
            "external_ip_cidrs": ["10.0.0.0/8"],
            "lb_pools": [
                {"name": "a", "cidrs": ["10.240.0.224/28"]},
                {"name": "a", "cidrs": ["10.240.0.224/29"]},
            ],
        }
    )
    joined = "\n".join(errs)
    assert "kubernetes.external_ip_cidrs[0]: 10.0.0.0/8 is not inside owned_cidrs" in joined
    assert "kubernetes.lb_pools[1].name: duplicate pool name 'a'" in joined
    assert (
        "kubernetes.lb_pools[1].cidrs[0]: 10.240.0.224/29 overlaps 10.240.0.224/28 of "
        "kubernetes.lb_pools[0].cidrs[0]" in joined
    )


def test_unknown_key_and_bad_type() -> None:
    errs = errors_of({"lb_pool": [], "coalesce_ms": "soon"})
    assert any(e.startswith("kubernetes.lb_pool: unknown key (known: ") for e in errs)
    assert any(e.startswith("kubernetes.coalesce_ms:") for e in errs)
