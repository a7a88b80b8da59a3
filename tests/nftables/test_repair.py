"""Damage to kubelvs' own tables is repaired by the next full sync (read + plan + apply),
and ``changed_elsewhere`` says when someone else committed.

Each case programs NAT and DR services with timeouts into a fresh namespace, damages
the tables with ``nft`` as a person or another program would, and checks that the read
notices and the next full sync puts back exactly what was there: the whole listing of
both tables (chains with their rules, maps with their elements, ct timeout objects,
the ingress hook's device), compared without handles. Traffic through repaired tables
is checked in tests/scenarios/test_nftables_repair.py.
"""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
from typing import Any

import pytest

from kubelvs.backends.nftables import NftablesBackend
from kubelvs.backends.nftables.elements import mark_of
from kubelvs.errors import BackendError
from kubelvs.model import Forward, Timeouts
from kubelvs.planner import plan
from kubelvs.roles.director import Director

from .strategies import make_desired, make_service

pytestmark = pytest.mark.netns

# NAT and WEIGHTED (rr, wrr): slots of their own (nat_slots, nat_rs); MAGLEV and NAT6 (mh,
# one port): shared tables (nat_tab_1 and its chain in ip and in ip6, nat_weights, nat_rport).
NAT = make_service(
    "10.0.0.1", 80, "rr", [("10.0.2.2", 8080, 1, Forward.NAT), ("10.0.2.3", 8080, 1, Forward.NAT)]
)
MAGLEV = make_service(
    "10.0.0.1", 8000, "mh", [("10.0.2.2", 9000, 1, Forward.NAT), ("10.0.2.3", 9000, 2, Forward.NAT)]
)
WEIGHTED = make_service(
    "10.0.0.1", 443, "wrr", [("10.0.2.2", 8443, 3, Forward.NAT), ("10.0.2.3", 8443, 0, Forward.NAT)]
)
DR = make_service("10.0.0.2", 80, "mh", [("10.0.1.2", 80, 1, Forward.DR), ("10.0.1.3", 80, 2, Forward.DR)])
NAT6 = make_service(
    "fd00::1", 80, "mh", [("fd00:2::2", 8080, 1, Forward.NAT), ("fd00:2::3", 8080, 2, Forward.NAT)]
)
DR6 = make_service("fd00::2", 80, "mh", [("fd00:1::2", 80, 1, Forward.DR), ("fd00:1::3", 80, 2, Forward.DR)])
DESIRED = make_desired(NAT, WEIGHTED, MAGLEV, DR, NAT6, DR6, timeouts=Timeouts(900, 30, 300))
RS_MARK = 167772418  # 10.0.1.2 as the DR mark (u32)
RS6_MARK = mark_of(ipaddress.ip_address("fd00:1::2"))  # its id


def _nft(ns: str, script: str) -> None:
    subprocess.run(
        ["ip", "netns", "exec", ns, "nft", "-f", "-"],
        input=script,
        text=True,
        check=True,
        capture_output=True,
    )


def _strip(value: Any) -> Any:
    """JSON without handles (a re-created object gets a new one)."""
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k != "handle"}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def snapshot(ns: str) -> dict[str, Any]:
    """The kubelvs tables as nft lists them, in a form that does not depend on the order
    objects were made in: the table comment, every set and map with its declaration and
    sorted elements, every chain with its hook and its rules in order, every ct timeout
    object, and each ingress hook's device (nft 1.0.6's JSON leaves it out)."""
    out: dict[str, Any] = {}
    for family in ("ip", "ip6", "netdev"):
        proc = subprocess.run(
            ["ip", "netns", "exec", ns, "nft", "-j", "list", "table", family, "kubelvs"],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            out[family] = None
            continue
        items = json.loads(proc.stdout)["nftables"]
        table: dict[str, Any] = {"sets": {}, "chains": {}, "rules": {}, "objects": {}}
        for item in items:
            ((kind, body),) = item.items()
            body = _strip(body)
            if kind in ("set", "map"):
                elements = sorted(json.dumps(e, sort_keys=True) for e in body.pop("elem", []))
                table["sets"][body["name"]] = (kind, body, elements)
            elif kind == "chain":
                table["chains"][body["name"]] = body
            elif kind == "rule":
                table["rules"].setdefault(body["chain"], []).append(body["expr"])
            elif kind == "ct timeout":
                table["objects"][body["name"]] = body
            elif kind == "table":
                table["table"] = body
        text = subprocess.run(
            ["ip", "netns", "exec", ns, "nft", "list", "table", family, "kubelvs"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        table["hooks"] = sorted(
            re.findall(r'chain (\S+) \{\s*type filter hook ingress device "([^"]+)"', text)
        )
        table["comment"] = re.findall(r'comment "([^"]*)"', text.split("chain", 1)[0])
        out[family] = table
    return out


def _v0_index(ns: str) -> int:
    out = subprocess.run(
        ["ip", "-n", ns, "-j", "link", "show", "v0"], capture_output=True, text=True, check=True
    ).stdout
    return int(json.loads(out)[0]["ifindex"])


#: (what, nft script that does it); ``{v0}`` is the ingress hook's ifindex.
DAMAGE = [
    ("netdev table deleted", "delete table netdev kubelvs"),
    ("ip table deleted", "delete table ip kubelvs"),
    ("base chain deleted", "delete chain ip kubelvs nat_pre"),
    ("forward hook chain deleted", "delete chain ip kubelvs count"),
    (
        "unused scheduler chain deleted",
        "delete chain ip kubelvs nat_wrr_7\ndelete chain netdev kubelvs dr_sh_pf",
    ),
    ("ingress hook deleted", "delete chain netdev kubelvs dr_in_{v0}"),
    ("ingress hook's rule deleted", "flush chain netdev kubelvs dr_in_{v0}"),
    ("marker chain deleted", "delete chain ip kubelvs kubelvs_v1"),
    ("a chain's rules deleted", "flush chain netdev kubelvs dr_out"),
    ("a rule added to a chain of ours", "add rule ip kubelvs nat_pre counter"),
    ("a map deleted", "flush chain netdev kubelvs dr_out\ndelete map netdev kubelvs dr_mac"),
    ("a counter set deleted", "flush chain ip kubelvs count\ndelete set ip kubelvs nat_out"),
    ("a slot deleted", "delete element ip kubelvs nat_slots { 10.0.0.1 . tcp . 80 . 0 }"),
    ("a service entry deleted", "delete element ip kubelvs nat_svc { 10.0.0.1 . tcp . 443 }"),
    (
        "a DR slot changed",
        "delete element netdev kubelvs dr_slots { 1 . 5 }\n"
        "add element netdev kubelvs dr_slots { 1 . 5 : 167772420 }",
    ),
    (
        "a DR service names another table",
        "delete element netdev kubelvs dr_tab { 10.0.0.2 . tcp . 80 }\n"
        "add element netdev kubelvs dr_tab { 10.0.0.2 . tcp . 80 : 7 }",
    ),
    ("a DR service's table entry deleted", "delete element netdev kubelvs dr_tab { 10.0.0.2 . tcp . 80 }"),
    ("a table no service names", "add element netdev kubelvs dr_slots { 9 . 0 : 167772420 }"),
    ("a DR table's weight deleted", "delete element netdev kubelvs dr_weights { 1 . 167772419 }"),
    (
        "a DR table's weight changed",
        "delete element netdev kubelvs dr_weights { 1 . 167772419 }\n"
        "add element netdev kubelvs dr_weights { 1 . 167772419 : 5 }",
    ),
    ("weights of a table without slots", "add element netdev kubelvs dr_weights { 9 . 167772419 : 0 }"),
    ("the DR weights map deleted", "delete map netdev kubelvs dr_weights"),
    (
        "a weight where an earlier version wrote it",  # per service in dr_rs, not in the table
        "delete element netdev kubelvs dr_weights { 1 . 167772419 }\n"
        "add element netdev kubelvs dr_rs { 10.0.0.2 . tcp . 80 . 167772419 : 80 . 2 }",
    ),
    (
        "a service entry changed",
        "delete element ip kubelvs nat_svc { 10.0.0.1 . tcp . 80 }\n"
        "add element ip kubelvs nat_svc { 10.0.0.1 . tcp . 80 : goto nat_rr_7 }",
    ),
    (
        "a weight changed",
        "delete element ip kubelvs nat_rs { 10.0.0.1 . tcp . 443 . 10.0.2.2 . 8443 }\n"
        "add element ip kubelvs nat_rs { 10.0.0.1 . tcp . 443 . 10.0.2.2 . 8443 : 5 }",
    ),
    (
        "a NAT table's slot changed",
        "delete element ip kubelvs nat_tab_1 { 0 }\nadd element ip kubelvs nat_tab_1 { 0 : 10.0.2.9 }",
    ),
    (
        "a NAT table's weight changed",
        "delete element ip kubelvs nat_weights { 1 . 10.0.2.3 }\n"
        "add element ip kubelvs nat_weights { 1 . 10.0.2.3 : 5 }",
    ),
    ("a NAT table's weight deleted", "delete element ip kubelvs nat_weights { 1 . 10.0.2.3 }"),
    ("a NAT table's chain lost its rules", "flush chain ip kubelvs nat_mh_t1"),
    ("a NAT table's map deleted", "flush chain ip kubelvs nat_mh_t1\ndelete map ip kubelvs nat_tab_1"),
    ("a NAT service's port deleted", "delete element ip kubelvs nat_rport { 10.0.0.1 . tcp . 8000 }"),
    (
        "a NAT service's port changed",
        "delete element ip kubelvs nat_rport { 10.0.0.1 . tcp . 8000 }\n"
        "add element ip kubelvs nat_rport { 10.0.0.1 . tcp . 8000 : 9999 }",
    ),
    (
        "a NAT service's entry names another table",
        "delete element ip kubelvs nat_svc { 10.0.0.1 . tcp . 8000 }\n"
        "add element ip kubelvs nat_svc { 10.0.0.1 . tcp . 8000 : goto nat_rr_2 }",
    ),
    (
        "a NAT table no service names",
        "add map ip kubelvs nat_tab_7 { typeof numgen inc mod 2 : ip daddr; }\n"
        "add chain ip kubelvs nat_mh_t7",
    ),
    (
        "a NAT table's map without its chain",
        "add map ip kubelvs nat_tab_8 { typeof numgen inc mod 2 : ip daddr; }",
    ),
    ("a neighbour's MAC deleted", f"delete element netdev kubelvs dr_mac {{ {RS_MARK} }}"),
    (
        "a neighbour's MAC changed",
        f"delete element netdev kubelvs dr_mac {{ {RS_MARK} }}\n"
        f"add element netdev kubelvs dr_mac {{ {RS_MARK} : 02:00:00:00:ee:ee }}",
    ),
    (
        "a neighbour's device changed",
        f"delete element netdev kubelvs dr_dev {{ {RS_MARK} }}\n"
        f'add element netdev kubelvs dr_dev {{ {RS_MARK} : "lo" }}',
    ),
    (
        "the ct timeout objects deleted",
        "flush chain ip kubelvs nat_timeouts\n"
        "delete ct timeout ip kubelvs kl_tcp\ndelete ct timeout ip kubelvs kl_udp",
    ),
    (
        "one ct timeout object deleted",
        "flush chain ip kubelvs nat_timeouts\ndelete ct timeout ip kubelvs kl_udp",
    ),
    ("the timeout rules deleted", "flush chain ip kubelvs nat_timeouts"),
    ("ip6 table deleted", "delete table ip6 kubelvs"),
    ("ip6 prerouting hook deleted", "delete chain ip6 kubelvs nat_pre"),
    # A NAT scheduler chain that lost its rules: its table is made again whole (needs_rebuild).
    ("ip6 scheduler chain's rules deleted", "flush chain ip6 kubelvs nat_mh"),
    (
        "both NAT tables' scheduler rules deleted",
        "flush chain ip kubelvs nat_rr_2\nflush chain ip6 kubelvs nat_mh",
    ),
    ("an ip6 slot deleted", "delete element ip6 kubelvs nat_tab_1 { 0 }"),
    (
        "an ip6 weight changed",
        "delete element ip6 kubelvs nat_weights { 1 . fd00:2::3 }\n"
        "add element ip6 kubelvs nat_weights { 1 . fd00:2::3 : 7 }",
    ),
    ("an ip6 NAT table's chain lost its rules", "flush chain ip6 kubelvs nat_mh_t1"),
    (
        "the ip6 ct timeout objects deleted",
        "flush chain ip6 kubelvs nat_timeouts\n"
        "delete ct timeout ip6 kubelvs kl_tcp\ndelete ct timeout ip6 kubelvs kl_udp",
    ),
    ("the ip6 marker chain deleted", "delete chain ip6 kubelvs kubelvs_v1"),
    ("a dr6 scheduler chain's rules deleted", "flush chain netdev kubelvs dr6_mh"),
    ("a dr6 table entry deleted", "delete element netdev kubelvs dr6_tab { fd00::2 . tcp . 80 }"),
    ("dr6_out's rule deleted", "flush chain netdev kubelvs dr6_out"),
    (
        "an IPv6 neighbour's address changed",
        f"delete element netdev kubelvs dr6_addr {{ {RS6_MARK} }}\n"
        f"add element netdev kubelvs dr6_addr {{ {RS6_MARK} : fd00:1::9 }}",
    ),
    ("an IPv6 neighbour's MAC deleted", f"delete element netdev kubelvs dr6_mac {{ {RS6_MARK} }}"),
]


@pytest.mark.parametrize(("what", "damage"), DAMAGE, ids=[d[0] for d in DAMAGE])
def test_the_next_full_sync_repairs_exactly(nsb: tuple[str, NftablesBackend], what: str, damage: str) -> None:
    ns, backend = nsb
    director = Director(backend)
    director.sync(DESIRED)
    whole = snapshot(ns)
    assert not backend.changed_elsewhere()

    _nft(ns, damage.replace("{v0}", str(_v0_index(ns))) + "\n")
    assert snapshot(ns) != whole, what
    assert backend.changed_elsewhere()

    result = director.sync(DESIRED)  # a full sync: refresh, read, plan, apply
    assert result.ok and not result.new_failures
    assert snapshot(ns) == whole, what
    fresh = NftablesBackend(netns=ns).read()
    assert fresh.services == DESIRED.services and fresh.timeouts == DESIRED.timeouts
    assert plan(DESIRED, fresh).ops == ()
    assert not backend.changed_elsewhere()
    # Repaired once: the next full sync has nothing to do, and commits nothing.
    director.sync(DESIRED)
    assert not backend.changed_elsewhere()


def test_damage_is_repaired_by_an_apply_with_an_empty_plan(nsb: tuple[str, NftablesBackend]) -> None:
    """The repair does not wait for a change: a read that found damage is followed by
    an apply of nothing, which makes the tables whole."""
    ns, backend = nsb
    Director(backend).sync(DESIRED)
    whole = snapshot(ns)
    _nft(ns, "delete table netdev kubelvs\n")
    observed = backend.read()
    assert DR.key not in observed.services
    # The director would plan the DR service back; the tables themselves need no plan.
    backend.apply([])
    after = snapshot(ns)
    assert after["netdev"] is not None and after["ip"] == whole["ip"]
    assert set(after["netdev"]["chains"]) >= {"dr_out", "dr_mh", "kubelvs_v2"}


def test_a_foreign_table_of_our_name_is_refused_not_repaired(nsb: tuple[str, NftablesBackend]) -> None:
    ns, backend = nsb
    _nft(ns, "table ip kubelvs {\n chain mine { }\n}\n")
    with pytest.raises(BackendError, match=r"table ip kubelvs was not made by this version of kubelvs"):
        backend.read()
    assert (
        "chain mine"
        in subprocess.run(
            ["ip", "netns", "exec", ns, "nft", "list", "ruleset"], capture_output=True, text=True, check=True
        ).stdout
    )


# ---------------------------------------------------------------- changed_elsewhere


def test_changed_elsewhere_follows_other_programs_commits(nsb: tuple[str, NftablesBackend]) -> None:
    ns, backend = nsb
    with NftablesBackend(netns=ns) as fresh:
        assert not fresh.changed_elsewhere()  # nothing read yet: nothing of its own to change
    director = Director(backend)
    director.sync(DESIRED)
    assert not backend.changed_elsewhere()  # after its own apply
    _nft(ns, "add element ip kubelvs nat_svc { 10.0.0.9 . tcp . 80 : goto nat_rr_0 }\n")
    assert backend.changed_elsewhere()
    assert backend.changed_elsewhere()  # until the next full read
    observed = backend.read()
    assert not backend.changed_elsewhere()
    director.sync(DESIRED)  # deletes the foreign element: our own commit
    assert not backend.changed_elsewhere()
    _nft(ns, "delete table netdev kubelvs\n")
    assert backend.changed_elsewhere()
    backend.read()
    assert not backend.changed_elsewhere()
    _nft(ns, "add table inet unrelated\n")  # anyone's commit, in any table, moves the generation
    assert backend.changed_elsewhere()
    assert len(observed.services) == len(DESIRED.services) + 1  # and the foreign element's


def test_a_commit_by_someone_else_during_ours_is_noticed(nsb: tuple[str, NftablesBackend]) -> None:
    """Someone commits between our read and our apply: our own commit then moves the
    generation by more than one, and the backend says so (its picture may be wrong)."""
    ns, backend = nsb
    director = Director(backend)
    director.sync(make_desired(NAT))
    _nft(ns, "add table inet unrelated\n")
    ops = plan(make_desired(NAT, WEIGHTED), backend.read()).ops
    assert not backend.changed_elsewhere()
    _nft(ns, "add table inet other\n")
    backend.apply(ops)
    assert backend.changed_elsewhere()
    backend.read()
    assert not backend.changed_elsewhere()


def _holds_netlink(backend: NftablesBackend) -> bool:
    """Read through a call: mypy would carry the narrowing of ``backend._nl`` across the
    close that changes it."""
    return backend._nl is not None


def test_with_closes_the_backend(netns: str) -> None:
    with NftablesBackend(netns=netns) as backend:
        backend.apply(plan(make_desired(NAT), backend.read()).ops)
        assert _holds_netlink(backend)
    assert not _holds_netlink(backend)
    assert not backend.changed_elsewhere() and not _holds_netlink(backend)  # a closed backend opens nothing


def test_nothing_is_made_in_a_namespace_without_our_tables_for_an_empty_plan(netns: str) -> None:
    with NftablesBackend(netns=netns) as backend:
        assert backend.read().services == {}
        backend.apply([])
    listing = subprocess.run(
        ["ip", "netns", "exec", netns, "nft", "list", "ruleset"], capture_output=True, text=True, check=True
    ).stdout
    assert listing.strip() == ""
