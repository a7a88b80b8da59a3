"""The doctor's model of Linux's IPv6 source address selection (director-ipv6-vip-source)
against the kernel itself: ``ip -6 route get`` in a namespace holding the same addresses."""

from __future__ import annotations

import ipaddress
import subprocess
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kubelvs.doctor.checks_source import source_for
from kubelvs.formats.iproute import parse_ip_addr

#: In fd00:2::/64 (the interface's own prefix): a host part of 16 bits each, so that the
#: common prefixes vary across all of the last 16 bits.
_HOST = st.integers(1, 0xFFFF)


@pytest.fixture
def ns(make_netns: Callable[[str], str]) -> str:
    return make_netns("src")


@pytest.mark.netns
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    own=_HOST,
    vips=st.lists(st.tuples(_HOST, st.sampled_from([128, 120, 64]), st.booleans()), min_size=1, max_size=3),
    destinations=st.lists(_HOST, min_size=1, max_size=4),
)
def test_the_source_the_doctor_predicts_is_the_kernels(
    ns: str,
    own: int,
    vips: list[tuple[int, int, bool]],
    destinations: list[int],
) -> None:
    def run(*argv: str) -> str:
        return subprocess.run(["ip", "-n", ns, *argv], capture_output=True, text=True, check=True).stdout

    subprocess.run(
        ["ip", "-n", ns, "link", "del", "eth0"], capture_output=True, check=False
    )  # the last example's
    run("link", "add", "eth0", "type", "veth", "peer", "name", "p0")
    run("link", "set", "eth0", "up")
    run("link", "set", "p0", "up")
    used = {own}
    run("-6", "addr", "add", f"fd00:2::{own:x}/64", "dev", "eth0", "nodad")
    for host, length, deprecated in vips:
        if host in used:
            continue
        used.add(host)
        lifetime = ["preferred_lft", "0"] if deprecated else []
        run(
            "-6",
            "addr",
            "add",
            f"fd00:2::{host:x}/{length}",
            "dev",
            "eth0",
            "nodad",
            "noprefixroute",
            *lifetime,
        )
    (eth0,) = [i for i in parse_ip_addr(run("addr"))[0] if i.name == "eth0"]
    for host in destinations:
        destination = ipaddress.IPv6Address(f"fd00:2::{host:x}")
        if host in used:
            continue  # a local destination: the route is local, rule 1 picks itself
        kernel = run("-6", "route", "get", str(destination)).split(" src ")[1].split()[0]
        predicted = source_for(eth0, destination)
        assert predicted is not None and str(predicted.ip) == kernel, (
            run("addr", "show", "eth0"),
            destination,
        )
