"""Tier 2: the IPVS backend against the real ip_vs module (VM kernel), one fresh
network namespace per test (IPVS tables are per namespace)."""

from __future__ import annotations

import errno
import ipaddress
import itertools
import json
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml_rs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kubelvs.backends import open_backend
from kubelvs.backends.ipvs import IpvsBackend
from kubelvs.errors import ConfigError, PartialApplyError
from kubelvs.formats.ipvsadm_save import format_save, parse_save
from kubelvs.model import (
    DesiredState,
    ObservedState,
    Ownership,
    ServiceKey,
    VirtualService,
)
from kubelvs.planner import AddService, apply_ops, changed_services, plan
from kubelvs.roles.director import Director
from kubelvs.sources.config import load_config, parse_config, to_desired

from ..strategies import OWNED, desired_states
from ..unit.test_ipvsadm_save import REAL

pytestmark = pytest.mark.kernel_ipvs
ROOT = Path(__file__).parents[2]


def ipvsadm(ns: str, *args: str, stdin: str | None = None) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", ns, "ipvsadm", *args], input=stdin, capture_output=True, text=True, check=True
    ).stdout


def kubelvs(ns: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ROOT / ".venv/bin/kubelvs"), *args, "--backend", "ipvs", "--netns", ns],
        capture_output=True,
        text=True,
    )


@pytest.fixture
def backend(netns: str) -> Iterator[IpvsBackend]:
    b = open_backend("ipvs", netns=netns)
    assert isinstance(b, IpvsBackend)
    yield b
    b.close()


def owned(state: ObservedState, ownership: Ownership = OWNED) -> dict[ServiceKey, VirtualService]:
    return {k: v for k, v in state.services.items() if ownership.owns(k)}


def test_real_ipvsadm_save_output_matches_our_fixture_and_reader(netns: str, backend: IpvsBackend) -> None:
    ipvsadm(netns, "-R", stdin=REAL)
    assert ipvsadm(netns, "-Sn") == REAL  # the fixture is what ipvsadm really prints
    assert backend.read().services == {s.key: s for s in parse_save(REAL)}


def test_apply_reads_back_exactly_and_ipvsadm_agrees(netns: str, backend: IpvsBackend) -> None:
    for example in ("whoami-dr.yaml", "nat-portmap.yaml"):
        desired = to_desired(load_config(ROOT / "examples" / example))
        director = Director(backend)
        director.sync(desired)
        observed = backend.read(sysctls=desired.sysctls)
        assert owned(observed, desired.ownership) == dict(desired.services)
        assert observed.timeouts == desired.timeouts
        assert observed.sysctls == desired.sysctls
        ordered = [desired.services[k] for k in sorted(desired.services, key=ServiceKey.sort_key)]
        saved = ipvsadm(netns, "-Sn")
        assert sorted(parse_save(saved), key=lambda s: s.key.sort_key()) == ordered
        assert sorted(saved.splitlines()) == sorted(format_save(ordered).splitlines())
        assert not director.sync(desired).plan, "the second sync must change nothing"
        ipvsadm(netns, "-C")


def test_timeouts_show_in_ipvsadm(netns: str, backend: IpvsBackend) -> None:
    assert ipvsadm(netns, "-L", "--timeout").strip() == "Timeout (tcp tcpfin udp): 900 120 300"
    Director(backend).sync(to_desired(load_config(ROOT / "examples/whoami-dr.yaml")))
    assert ipvsadm(netns, "-L", "--timeout").strip() == "Timeout (tcp tcpfin udp): 900 30 300"


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sequence=st.lists(desired_states(), min_size=1, max_size=4))
def test_any_sequence_converges_on_the_real_kernel(
    netns: str, backend: IpvsBackend, sequence: list[DesiredState]
) -> None:
    foreign = "-A -t 192.0.2.10:443 -s rr\n-a -t 192.0.2.10:443 -r 192.0.2.20:443 -m -w 1\n"
    if "192.0.2.10" not in ipvsadm(netns, "-Sn"):
        ipvsadm(netns, "-R", stdin=foreign)
    for desired in sequence:
        before = backend.read()
        the_plan = plan(desired, before)
        backend.apply(the_plan.ops)
        after = backend.read()
        assert owned(after) == dict(desired.services)
        assert after.services == apply_ops(before, the_plan.ops).services  # the kernel follows the reference
        assert not plan(desired, after)
    assert ipvsadm(netns, "-Sn").count("192.0.2.10:443") == 2  # foreign service and its real server untouched


def _redis(port: int, target: int) -> DesiredState:
    return to_desired(
        parse_config(
            {
                "owned_cidrs": ["10.108.0.0/16"],
                "services": [
                    {
                        "name": "skuapi-rds-prod",
                        "vip": "10.108.152.210",
                        "port": port,
                        "scheduler": "rr",
                        "forward": "nat",
                        "realservers": [{"address": "172.26.6.185", "port": target}],
                    }
                ],
            }
        )
    )


@pytest.mark.parametrize("first", [(6379, 80), (80, 80)], ids=["targetPort-edit", "port-and-targetPort-edit"])
def test_stale_realserver_regression(netns: str, backend: IpvsBackend, first: tuple[int, int]) -> None:
    """The stale real server incident: after editing the Service to 6379, no :80 real server may survive."""
    director = Director(backend)
    director.sync(_redis(*first))
    director.sync(_redis(6379, 6379), changed=changed_services(_redis(*first), _redis(6379, 6379)))
    assert ipvsadm(netns, "-Sn") == (
        "-A -t 10.108.152.210:6379 -s rr\n-a -t 10.108.152.210:6379 -r 172.26.6.185:6379 -m -w 1\n"
    )


def test_a_refused_operation_affects_only_its_service_and_next_sync_converges(
    netns: str, backend: IpvsBackend
) -> None:
    desired = to_desired(
        parse_config(
            {
                "owned_cidrs": ["10.240.0.0/24"],
                "services": [
                    {
                        "vip": f"10.240.0.{200 + i}",
                        "port": 80,
                        "scheduler": "rr",
                        "realservers": [{"address": "10.240.0.101"}],
                    }
                    for i in range(3)
                ],
            }
        )
    )
    the_plan = plan(desired, backend.read())
    # Someone else creates the second service between our read and our apply.
    ipvsadm(netns, "-A", "-t", "10.240.0.201:80", "-s", "wlc")
    with pytest.raises(PartialApplyError) as info:
        backend.apply(the_plan.ops)
    (refused,) = [f for f in info.value.failures if f.errno is not None]
    failed = the_plan.ops[refused.index]
    assert isinstance(failed, AddService) and str(failed.service.key) == "TCP 10.240.0.201:80"
    assert refused.errno == errno.EEXIST and "already exists" in str(refused)
    saved = ipvsadm(netns, "-Sn")
    # The services before AND after the refused one were applied: one refusal holds up nothing else.
    assert (
        "-a -t 10.240.0.200:80 -r 10.240.0.101:80" in saved
        and "-a -t 10.240.0.202:80 -r 10.240.0.101:80" in saved
    )
    assert "applied" in str(info.value) and "TCP 10.240.0.201:80" in str(info.value)
    result = Director(backend).sync(desired)
    assert not result.new_failures
    assert owned(backend.read()) == dict(desired.services)


def test_a_refused_service_is_retried_with_backoff_by_the_director(netns: str, backend: IpvsBackend) -> None:
    """Debian 6.1 has no ``twos`` scheduler (added in 6.2): the kernel refuses that service
    (ENOENT), the healthy one in the same plan is programmed, and the director retries the
    refused one on a doubling schedule until it is fixed."""
    clock = [1000.0]
    director = Director(backend, clock=lambda: clock[0])

    def config(scheduler: str) -> DesiredState:
        services = [
            {
                "vip": "10.240.0.200",
                "port": 80,
                "scheduler": "rr",
                "realservers": [{"address": "10.240.0.101"}],
            },
            {
                "vip": "10.240.0.201",
                "port": 80,
                "scheduler": scheduler,
                "realservers": [{"address": "10.240.0.101"}],
            },
        ]
        return to_desired(parse_config({"owned_cidrs": ["10.240.0.0/24"], "services": services}))

    result = director.sync(config("twos"))
    assert any("scheduler 'twos' is not available" in line for line in result.new_failures), (
        result.new_failures
    )
    assert [str(k) for k in owned(backend.read())] == ["TCP 10.240.0.200:80"]
    (failure,) = director.failures.values()
    assert failure.attempts == 1 and failure.retry_at == 1000.5
    clock[0] = 1000.2  # before the retry time: the refused service is left out
    result = director.sync(config("twos"), changed=[])
    assert not result.new_failures and director.failures[failure.key].attempts == 1
    clock[0] = 1000.6  # due: retried (a full sync), refused again, the delay doubles
    result = director.sync(config("twos"), changed=[])
    assert result.full and director.failures[failure.key].attempts == 2
    assert director.failures[failure.key].retry_at == 1001.6
    clock[0] = 1002.0  # fixed meanwhile: the next retry programs it and forgets the failure
    result = director.sync(config("rr"), changed=[failure.key])
    assert not result.new_failures and not director.failures
    assert owned(backend.read()) == dict(config("rr").services)


def test_foreign_services_are_left_alone(netns: str, backend: IpvsBackend) -> None:
    foreign = "-A -t 192.0.2.10:443 -s rr\n-a -t 192.0.2.10:443 -r 192.0.2.20:443 -m -w 1\n-A -f 7 -s rr\n"
    ipvsadm(netns, "-R", stdin=foreign)
    director = Director(backend)
    director.sync(to_desired(load_config(ROOT / "examples/whoami-dr.yaml")))
    result = director.sync(to_desired(parse_config({"owned_cidrs": ["10.240.0.0/24"]})))
    assert len(result.plan.foreign) == 2
    assert ipvsadm(netns, "-Sn") == foreign


def test_incremental_sync_matches_the_kernel(netns: str, backend: IpvsBackend) -> None:
    first = to_desired(load_config(ROOT / "examples/whoami-dr.yaml"))
    director = Director(backend)
    director.sync(first)
    assert len(first.services) == 1
    config = yaml_rs.loads((ROOT / "examples/whoami-dr.yaml").read_text())
    assert isinstance(config, dict)  # a mapping at the top, not a list of documents
    config["services"][0]["realservers"] = [{"address": "10.240.0.103", "weight": 4}]
    second = to_desired(parse_config(config))
    result = director.sync(second, changed=changed_services(first, second))
    assert not result.full and len(result.plan) == 3  # two deletes, one add
    assert director.observed is not None
    assert owned(backend.read()) == owned(director.observed) == dict(second.services)


def test_cli_apply_status_diff(netns: str, tmp_path: Path) -> None:
    config = ROOT / "examples/whoami-dr.yaml"
    assert kubelvs(netns, "diff", "-f", str(config)).returncode == 1
    first = kubelvs(netns, "apply", "-f", str(config))
    assert first.returncode == 0, first.stderr
    assert "applied 6 change(s)" in first.stdout  # 2 sysctls, timeouts, service, 2 real servers
    second = kubelvs(netns, "apply", "-f", str(config))
    assert "applied 0 change(s)" in second.stdout
    diff = kubelvs(netns, "diff", "-f", str(config))
    assert (diff.returncode, diff.stdout) == (0, "")
    status = kubelvs(netns, "status", "-o", "json", "-f", str(config))
    doc = json.loads(status.stdout)
    assert doc["timeouts"] == {"tcp": 900, "tcpfin": 30, "udp": 300}
    (svc,) = doc["services"]
    assert (svc["name"], svc["vip"], svc["port"], svc["protocol"], svc["scheduler"]) == (
        "whoami",
        "10.240.0.201",
        80,
        "tcp",
        "mh",
    )
    assert [
        (r["address"], r["port"], r["weight"], r["forward"], r["active_conns"], r["inactive_conns"])
        for r in svc["realservers"]
    ] == [("10.240.0.101", 80, 1, "dr", 0, 0), ("10.240.0.102", 80, 1, "dr", 0, 0)]
    table = kubelvs(netns, "status", "-f", str(config)).stdout
    # mh always falls back (desired_flags): a drained real server refuses no client.
    assert re.search(r"TCP  10\.240\.0\.201:80 mh \((mh-fallback,mh-port|mh-port,mh-fallback)\)", table)
    assert "whoami" in table
    assert "-> 10.240.0.101:80" in table and "Route" in table
    exported = kubelvs(netns, "export", "--format", "ipvsadm").stdout
    assert exported == ipvsadm(netns, "-Sn")
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "owned_cidrs: [10.240.0.0/24]\nservices: [{vip: 10.240.0.201, port: 80, scheduler: bogus}]\n"
    )
    rejected = kubelvs(netns, "apply", "-f", str(bad))
    assert rejected.returncode == 2 and "services[0].scheduler" in rejected.stderr
    assert exported == ipvsadm(netns, "-Sn"), "a rejected config changes nothing"


def test_ipv6_and_fwmark_services(netns: str, backend: IpvsBackend) -> None:
    desired = to_desired(
        parse_config(
            {
                "owned_cidrs": ["2001:db8::/64"],
                "owned_fwmarks": [100],
                "services": [
                    {
                        "vip": "2001:db8::10",
                        "port": 443,
                        "scheduler": "sh",
                        "flags": ["sh-port"],
                        "persistence": 600,
                        "netmask": 64,
                        "realservers": [
                            {"address": "2001:db8::101"},
                            {"address": "2001:db8::102", "forward": "tun"},
                        ],
                    },
                    {"fwmark": 100, "scheduler": "mh", "realservers": [{"address": "10.1.0.1", "port": 0}]},
                ],
            }
        )
    )
    Director(backend).sync(desired)
    assert owned(backend.read(), desired.ownership) == dict(desired.services)
    saved = ipvsadm(netns, "-Sn")
    (line,) = [line for line in saved.splitlines() if line.startswith("-A -t [2001:db8::10]:443 ")]
    head, _, flags = line.partition(" -b ")
    assert head == "-A -t [2001:db8::10]:443 -s sh -p 600 -M 64"
    assert set(flags.split(",")) == {"sh-port", "sh-fallback"}  # sh always falls back (desired_flags)
    assert "-A -f 100 -s mh" in saved


def test_families_mix_only_through_a_tunnel(netns: str, backend: IpvsBackend) -> None:
    """IPVS tunnels across families (an IPv4 real server behind an IPv6 VIP, IPIP in IPv6's
    place); DR and NAT cannot mix and are refused before the kernel, naming the field."""
    service = {
        "vip": "2001:db8::10",
        "port": 80,
        "forward": "tun",
        "realservers": [{"address": "10.1.0.1"}, {"address": "2001:db8::101"}],
    }
    desired = to_desired(parse_config({"owned_cidrs": ["2001:db8::/64"], "services": [service]}))
    Director(backend).sync(desired)
    assert owned(backend.read(), desired.ownership) == dict(desired.services)
    saved = ipvsadm(netns, "-Sn")
    assert re.search(r"^-a -t \[2001:db8::10\]:80 -r 10\.1\.0\.1:80 -i ", saved, re.M), saved
    with pytest.raises(ConfigError, match=r"realservers\[0\]\.address: IPv4 real server in an IPv6 service"):
        to_desired(
            parse_config({"owned_cidrs": ["2001:db8::/64"], "services": [{**service, "forward": "dr"}]})
        )
    assert ipvsadm(netns, "-Sn") == saved, "the refused config changed nothing"


def test_owned_network_check_uses_ipaddress() -> None:
    assert OWNED.owns(ServiceKey(4, "tcp", ipaddress.ip_address("10.240.0.9"), 80))  # type: ignore[arg-type]


# ---------------------------------------------------------------------- Maglev order


def _kernel_order(ns: str) -> dict[str, list[str]]:
    """Each service's destinations in the kernel's list order: /proc/net/ip_vs (ipvsadm
    sorts them; the hashing schedulers walk this order)."""
    text = subprocess.run(
        ["ip", "netns", "exec", ns, "cat", "/proc/net/ip_vs"], capture_output=True, text=True, check=True
    ).stdout
    out: dict[str, list[str]] = {}
    current = ""
    for line in text.splitlines():
        parts = line.split()
        if parts and parts[0] in ("TCP", "UDP", "SCTP", "FWM"):
            current = " ".join(parts[:2])
            out[current] = []
        elif parts[:1] == ["->"] and current:
            out[current].append(f"{parts[1]} w{parts[3]}")
    return out


_POOL = [f"10.240.1.{n}" for n in (7, 3, 12, 5, 9, 1)]
_EXAMPLES = itertools.count()
_member_sets = st.lists(
    st.tuples(st.sampled_from(_POOL), st.integers(0, 3)), min_size=1, max_size=6, unique_by=lambda t: t[0]
)


def _mh(members: list[tuple[str, int]]) -> DesiredState:
    return to_desired(
        parse_config(
            {
                "owned_cidrs": ["10.240.0.0/24"],
                "services": [
                    {
                        "vip": "10.240.0.200",
                        "port": 80,
                        "scheduler": "mh",
                        "realservers": [{"address": a, "port": 80, "weight": w} for a, w in members],
                    },
                    {
                        "vip": "10.240.0.201",
                        "port": 80,
                        "scheduler": "sh",
                        "realservers": [
                            {"address": a, "port": 80, "weight": w} for a, w in reversed(members)
                        ],
                    },
                ],
            }
        )
    )


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    sequence=st.lists(_member_sets, min_size=1, max_size=5),
    seen=st.lists(st.booleans(), min_size=5, max_size=5),
    restarts=st.lists(st.booleans(), min_size=5, max_size=5),
)
def test_directors_build_the_same_maglev_table_whatever_they_saw(
    make_netns: Callable[[str], str],
    sequence: list[list[tuple[str, int]]],
    seen: list[bool],
    restarts: list[bool],
) -> None:
    """Two directors end at the same desired state: one saw every change, the other only
    some of them, in batches, and was rebooted (an empty table) at some of them. Their
    mh and sh services list the destinations in the same (canonical) order, so their
    tables, a function of that order and the weights, send every flow the same way."""
    n = next(_EXAMPLES)
    one, other = make_netns(f"one{n}"), make_netns(f"two{n}")
    with open_backend("ipvs", netns=one) as a, open_backend("ipvs", netns=other) as b:
        for desired in map(_mh, sequence):
            Director(a, graceful=False).sync(desired)
        for i, members in enumerate(sequence):
            last = i == len(sequence) - 1
            if restarts[i % 5]:
                ipvsadm(other, "-C")
            if seen[i % 5] or last:
                Director(b, graceful=False).sync(_mh(members))
        final = _kernel_order(one)
        assert final == _kernel_order(other)
        for dests in final.values():
            addresses = [d.split()[0] for d in dests]
            assert addresses == sorted(addresses, reverse=True)  # hex AAAAAAAA:PPPP: descending


def test_a_real_server_added_below_the_others_is_put_in_order(netns: str, backend: IpvsBackend) -> None:
    """Added above the others (the usual growth): at the head, nothing moves. Added below:
    the ones above it are deleted and re-added, and the list is canonical again."""
    Director(backend).sync(_mh([("10.240.1.5", 1), ("10.240.1.9", 1)]))
    assert _kernel_order(netns)["TCP 0AF000C8:0050"] == ["0AF00109:0050 w1", "0AF00105:0050 w1"]
    Director(backend).sync(_mh([("10.240.1.5", 1), ("10.240.1.9", 1), ("10.240.1.1", 1), ("10.240.1.12", 2)]))
    assert _kernel_order(netns)["TCP 0AF000C8:0050"] == [
        "0AF0010C:0050 w2",
        "0AF00109:0050 w1",
        "0AF00105:0050 w1",
        "0AF00101:0050 w1",
    ]
