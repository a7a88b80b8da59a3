from __future__ import annotations

import ipaddress

import pytest

from kubelvs.errors import ConfigError, FieldError
from kubelvs.model import (
    MAX_ERRORS,
    ErrorList,
    Forward,
    MoreErrors,
    Ownership,
    Protocol,
    RealServer,
    ServiceKey,
    Timeouts,
    VirtualService,
    parse_address,
    shown,
    validate,
    validated_state,
)

OWN = Ownership(cidrs=(ipaddress.ip_network("10.240.0.0/24"),))
VIP = parse_address("10.240.0.201")


def svc(port: int = 80, scheduler: str = "rr", *rs: RealServer, **kw: object) -> VirtualService:
    return VirtualService(ServiceKey(4, Protocol.TCP, VIP, port), scheduler=scheduler, realservers=rs, **kw)  # type: ignore[arg-type]


def rs(
    port: int = 80, forward: Forward = Forward.DR, weight: int = 1, addr: str = "10.240.0.101"
) -> RealServer:
    return RealServer(parse_address(addr), port, weight, forward)


def fields(errors: list) -> list[str]:  # type: ignore[type-arg]
    return [e.field for e in errors]


def test_valid_service_has_no_errors() -> None:
    assert validate([svc(80, "mh", rs(80), rs(80, addr="10.240.0.102"))], ownership=OWN) == []


@pytest.mark.parametrize("forward", [Forward.DR, Forward.TUN])
def test_dr_and_tun_cannot_map_ports(forward: Forward) -> None:
    errors = validate([svc(80, "rr", rs(8080, forward))], ownership=OWN)
    assert fields(errors) == ["services[0].realservers[0].port"]
    assert f"{forward} cannot map ports" in errors[0].reason
    assert "8080" in errors[0].reason and "80" in errors[0].reason


def test_nat_may_map_ports() -> None:
    assert validate([svc(80, "rr", rs(8080, Forward.NAT))], ownership=OWN) == []


def test_unknown_scheduler_named_with_field() -> None:
    errors = validate([svc(80, "roundrobin", name="web")], ownership=OWN)
    assert fields(errors) == ["services[0] (web).scheduler"]
    assert "unknown IPVS scheduler 'roundrobin'" in errors[0].reason


@pytest.mark.parametrize("weight", [-1, 65536])
def test_weight_out_of_range(weight: int) -> None:
    errors = validate([svc(80, "rr", rs(weight=weight))], ownership=OWN)
    assert fields(errors) == ["services[0].realservers[0].weight"]


def test_duplicate_service_and_realserver() -> None:
    errors = validate([svc(80, "rr", rs(), rs()), svc(80, "rr")], ownership=OWN)
    assert "services[0].realservers[1]" in fields(errors)
    assert "services[1]" in fields(errors)
    assert any("duplicate virtual service TCP 10.240.0.201:80" in e.reason for e in errors)


def test_vip_outside_owned_ranges_is_rejected() -> None:
    foreign = VirtualService(ServiceKey(4, Protocol.TCP, parse_address("192.0.2.1"), 80), scheduler="rr")
    errors = validate([foreign], ownership=OWN)
    assert fields(errors) == ["services[0].vip"]
    assert "not inside owned_cidrs (10.240.0.0/24)" in errors[0].reason


def test_mixed_family_only_for_tun() -> None:
    errors = validate([svc(80, "rr", rs(addr="2001:db8::1"))], ownership=OWN)
    assert fields(errors) == ["services[0].realservers[0].address"]
    assert validate([svc(80, "rr", rs(80, Forward.TUN, addr="2001:db8::1"))], ownership=OWN) == []


def test_scheduler_flags_must_fit_scheduler() -> None:
    errors = validate([svc(80, "rr", flags=frozenset({"mh-port"}))], ownership=OWN)
    assert fields(errors) == ["services[0].flags"]
    assert validate([svc(80, "mh", flags=frozenset({"mh-port", "mh-fallback"}))], ownership=OWN) == []


def test_timeouts_and_sysctls_checked() -> None:
    errors = validate([], ownership=OWN, timeouts=Timeouts(0, 30, 300), sysctls={"kernel.panic": 1})
    assert fields(errors) == ["timeouts.tcp", "sysctls.kernel.panic"]


def test_validated_state_raises_with_every_error() -> None:
    with pytest.raises(ConfigError) as info:
        validated_state([svc(80, "nope", rs(weight=-3))], ownership=OWN)
    assert len(info.value.errors) == 2


def test_fwmark_needs_owned_fwmark_and_port_zero_for_dr() -> None:
    key = ServiceKey.for_fwmark(5)
    bad = VirtualService(key, scheduler="rr", realservers=(RealServer(parse_address("10.240.0.101"), 80),))
    errors = validate([bad], ownership=OWN)
    assert fields(errors) == ["services[0].fwmark", "services[0].realservers[0].port"]


# ---------------------------------------------------------------- capped, quoted short


def test_error_list_keeps_fifty_and_counts_the_rest_without_building_them() -> None:
    errors = ErrorList()
    for i in range(MAX_ERRORS):
        errors.add(lambda i=i: FieldError(f"f{i}", "bad"))  # type: ignore[misc]
    assert errors.full and errors.more == 0
    errors.add(lambda: FieldError("x", str(1 / 0)))  # past the cap: counted, never built
    errors.append(FieldError("y", "z"))
    assert (len(errors), errors.more, errors.total) == (50, 2, 52)
    listing = errors.listing()
    assert [str(e) for e in listing[-2:]] == ["f49: bad", "... and 2 more errors"]
    merged = ErrorList([FieldError("a", "b")])
    merged += listing  # a capped listing merged into another list keeps its count
    assert (len(merged), merged.more) == (50, 3)
    assert str(MoreErrors(1)) == "... and 1 more error"
    with pytest.raises(TypeError):
        errors.insert(0, FieldError("q", "r"))


def test_validate_caps_its_problems() -> None:
    many = [
        VirtualService(ServiceKey(4, Protocol.TCP, parse_address(f"10.240.0.{i}"), 80), scheduler="nope")
        for i in range(1, 121)
    ]
    errors = validate(many, ownership=OWN)
    assert len(errors) == 51
    assert str(errors[0]).startswith("services[0].scheduler: unknown IPVS scheduler 'nope'")
    assert str(errors[-1]) == "... and 70 more errors"
    with pytest.raises(ConfigError) as info:
        validated_state(many, ownership=OWN)
    assert str(info.value).splitlines()[-1] == "... and 70 more errors"


def test_sysctl_values_must_fit_in_64_bits() -> None:
    errors = validate(
        [], ownership=OWN, sysctls={"net.ipv4.vs.conntrack": 2**63, "net.ipv4.ip_forward": -(2**63)}
    )
    assert [str(e) for e in errors] == [
        "sysctls.net.ipv4.vs.conntrack: must fit in 64 bits, got 9223372036854775808"
    ]


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (80, "80"),
        ("rr", "'rr'"),
        ("a\x1bb", "'a\\x1bb'"),
        ("x" * 61, f"{'x' * 60!r}... (61 characters)"),
        (10**59, str(10**59)),
        (-(10**60), "a number of more than 60 digits"),
        (1.5, "1.5"),
    ],
)
def test_shown_quotes_values_short(value: object, text: str) -> None:
    assert shown(value) == text


def test_huge_numbers_in_a_service_are_named_not_printed() -> None:
    big = 10**4000
    errors = validate([svc(80, "rr", rs(weight=big))], ownership=OWN)
    assert [str(e) for e in errors] == [
        "services[0].realservers[0].weight: must be between 0 and 65535, got a number of more than 60 digits"
    ]
