"""The edge's shape checks: every problem named by its path, nothing half-built."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import pytest

from kubelvs.errors import ConfigError
from kubelvs.model import Forward, Ownership
from kubelvs.sources import shape
from kubelvs.sources.config import parse_config
from kubelvs.sources.kubernetes.settings import parse_kubernetes


@dataclass(frozen=True, slots=True)
class Inner:
    n: int
    tag: str = ""


@dataclass(frozen=True, slots=True)
class Outer:
    items: tuple[Inner, ...] = ()
    mode: Forward = Forward.DR
    limits: dict[str, int] | None = None
    ratio: float = 1.0


RECORD = shape.Record(
    Outer,
    {
        "items": shape.list_of(shape.Record(Inner, {"n": shape.integer, "tag": shape.string})),
        "mode": shape.choice(Forward),
        "limits": shape.optional(shape.mapping_of(shape.bounded(shape.integer, minimum=0, maximum=9))),
        "ratio": shape.bounded(shape.number, above=0),
    },
)


def problems(value: object) -> list[str]:
    result, errors = RECORD.parse(value)
    assert (result is None) == bool(errors)
    return [str(e) for e in errors]


def test_a_good_document_becomes_the_dataclasses_with_defaults() -> None:
    result, errors = RECORD.parse(
        {"items": [{"n": 1}, {"n": 2, "tag": "b"}], "mode": "nat", "limits": {"a": 3}, "ratio": 2}
    )
    assert errors == []
    assert result == Outer((Inner(1), Inner(2, "b")), Forward.NAT, {"a": 3}, 2.0)
    assert RECORD.parse({})[0] == Outer()


def test_every_problem_is_named_by_its_path() -> None:
    assert sorted(
        problems(
            {
                "items": [{"n": 1}, {"n": "2"}, {"tag": "x"}, 7],
                "mode": "route",
                "limits": {"a": 10},
                "ratio": 0,
                "extra": 1,
            }
        )
    ) == sorted(
        [
            "items[1].n: must be an integer, got '2'",
            "items[2].n: required",
            "items[3]: must be a mapping of keys, got 7",
            "mode: must be one of nat, dr, tun, local, got 'route'",
            "limits.a: must be at most 9, got 10",
            "ratio: must be greater than 0, got 0",
            "extra: unknown key (known: items, limits, mode, ratio)",
        ]
    )


def test_yaml_values_are_not_coerced() -> None:
    # YAML already typed them: a quoted number or a boolean where a number belongs is a mistake.
    assert problems({"items": [{"n": True}], "ratio": "1"}) == [
        "items[0].n: must be an integer, got true",
        "ratio: must be a number, got '1'",
    ]
    assert problems({"items": [{"n": 1, "tag": None}]}) == ["items[0].tag: must be a string, got null"]


def test_unhashable_and_wrong_containers_are_reported_not_raised() -> None:
    assert problems({"mode": ["dr"], "items": {"n": 1}, "limits": [1]}) == [  # in the document's order
        "mode: must be one of nat, dr, tun, local, got list",
        "items: must be a list, got dict",
        "limits: must be a mapping, got list",
    ]
    assert problems(["not", "a", "mapping"]) == ["(top level): must be a mapping of keys, got list"]


def test_config_file_paths_match_the_yaml() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(
            {
                "owned_cidrs": ["10.0.0.0/24", "10.0.0.0/33"],
                "timeouts": {"tcp": 900, "tcpfin": 30},
                "services": [
                    {
                        "vip": "10.0.0.1",
                        "port": 80,
                        "protocol": "tcpp",
                        "realservers": [{"adress": "10.0.1.1"}],
                    }
                ],
            }
        )
    fields = sorted(e.field for e in info.value.errors)
    assert fields == [
        "owned_cidrs[1]",
        "services[0].protocol",
        "services[0].realservers[0].address",
        "services[0].realservers[0].adress",
        "timeouts.udp",
    ]


def test_kubernetes_section_paths_start_at_the_section() -> None:
    own = Ownership(cidrs=(ipaddress.ip_network("10.240.0.0/24"),))
    with pytest.raises(ConfigError) as info:
        parse_kubernetes(
            {
                "leader": {"lease_seconds": 1},
                "coalesce_ms": -1,
                "default_forward": "route",
                "lb_pools": [{"cidrs": []}],
            },
            own,
        )
    assert sorted(str(e) for e in info.value.errors) == sorted(
        [
            "kubernetes.leader.lease_seconds: must be at least 2, got 1",
            "kubernetes.coalesce_ms: must be at least 0, got -1",
            "kubernetes.default_forward: must be one of dr, tun, nat, got 'route'",
            "kubernetes.lb_pools[0].name: required",
        ]
    )
    settings = parse_kubernetes({"leader": {"enabled": False}, "coalesce_ms": 250}, own)
    assert (settings.leader_enabled, settings.lease_seconds, settings.coalesce_seconds) == (False, 15, 0.25)


# ---------------------------------------------------------------- strict, bounded, never raising


BUILT: list[int] = []  # every Built made appends its n


@dataclass(frozen=True, slots=True)
class Built:
    n: int

    def __post_init__(self) -> None:
        BUILT.append(self.n)


def test_numbers_must_be_finite() -> None:
    check = shape.bounded(shape.number, above=0)
    for bad, shown in ((float("nan"), "nan"), (float("inf"), "inf"), (float("-inf"), "-inf")):
        with pytest.raises(shape.Invalid) as info:
            check(bad)
        assert str(info.value) == f"must be a finite number, got {shown}"
    with pytest.raises(shape.Invalid) as info:
        shape.number(10**400)  # beyond any float
    assert str(info.value) == "must be a finite number, got a number of more than 60 digits"
    assert check(2) == 2.0


def test_a_choice_is_not_met_by_an_equal_value_of_another_type() -> None:
    family = shape.choice(4, 6)
    assert family(4) == 4
    for bad in (4.0, True, "4"):
        with pytest.raises(shape.Invalid):
            family(bad)
    assert shape.choice(Forward)("dr") is Forward.DR


def test_unknown_keys_in_file_order_and_odd_keys_by_their_kind() -> None:
    assert problems({"zeta": 1, 5: 2, None: 3, ("a",): 4, "x" * 100: 5}) == [
        "zeta: unknown key (known: items, limits, mode, ratio)",
        "5: unknown key (known: items, limits, mode, ratio)",
        "null: unknown key (known: items, limits, mode, ratio)",
        "tuple: unknown key (known: items, limits, mode, ratio)",
        f"{'x' * 60!r}... (100 characters): unknown key (known: items, limits, mode, ratio)",
    ]
    assert problems({"limits": {1.5: 1, "ok": 2}}) == ["limits.1.5: keys must be strings"]


def test_problems_are_capped_and_nothing_is_built_after_the_first() -> None:
    BUILT.clear()
    record = shape.Record(Outer, {"items": shape.list_of(shape.Record(Built, {"n": shape.integer}))})
    items = [{"n": i} for i in range(3)] + [{"n": "bad"}] * 120 + [{"n": 9}]
    result, errors = record.parse({"items": items})
    assert result is None
    assert [str(e) for e in errors[:2]] == [
        "items[3].n: must be an integer, got 'bad'",
        "items[4].n: must be an integer, got 'bad'",
    ]
    assert len(errors) == 51 and str(errors[-1]) == "... and 70 more errors"
    assert BUILT == [0, 1, 2]  # the three before the first problem; the good one after it was not built
