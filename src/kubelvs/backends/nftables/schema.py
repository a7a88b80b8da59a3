"""The fixed part of the kubelvs ruleset (nftables backend, pure): names, the maps and
chains of the two tables, and the nft text that makes whatever of them is missing.

Everything lives in tables named ``kubelvs`` (one per nftables family; nftables ties
a table to a family): ``ip kubelvs`` for IPv4 NAT and timeouts, ``ip6 kubelvs`` its
IPv6 twin (same maps, same chains, IPv6 types: nft has no ``inet`` NAT map whose keys
hold either family, and a second table keeps every IPv4 element as it was), and
``netdev kubelvs`` for DR and TUN (only the netdev family can rewrite MACs and
``fwd`` a frame). Other tables are never named in anything this package emits.

The *skeleton* (maps, scheduler chains, hooks) is fixed; a service is nothing but map
elements (elements.py), so any change is a small element transaction (a per-service
chain costs ~10x more at 10,000 services):

``nat_svc``/``dr_svc``  ``VIP . proto . port -> goto <scheduler chain>``; the chain's name
                        is the scheduler, flags and slot count (``nat_wrr_4``, ``dr_mh_p``,
                        ``dr6_rr_3``)
``nat_slots``           ``VIP . proto . port . slot -> RIP . RPORT`` (dnat target)
``dr_tab``              ``VIP . proto . port -> table``: the DR slot table the service uses
``dr_slots``            ``table . slot -> mark`` where mark = the RIP as u32: a *shared* slot
                        table (slottables.py): every DR service whose real servers have
                        the same addresses and weights uses the same one
``dr_weights``          ``table . mark -> weight``: the table's members its slots do not
                        describe (weight != 1, or no slot: weight 0); read back only
``nat_rs``              ``VIP . proto . port . RIP . RPORT -> weight``, only for real servers
                        the slots do not describe (weight != 1, or no slot: weight 0)
``nat_rport``           ``VIP . proto . port -> RPORT``: the port of an sh/mh NAT service whose
                        real servers all use one port (a Kubernetes Service's NodePort); its
                        slots are then a *shared* table (slottables.py): ``nat_tab_<table>``
                        (``slot -> RIP``, one map per table) and a chain per (scheduler, table)
                        (``nat_mh_t3``, ``nat_sh_p_t7``) that DNATs to the slot's owner at the
                        service's port, which its ``nat_svc`` element goes to
``nat_weights``         ``table . RIP -> weight``: a shared NAT table's members its slots do
                        not describe (as ``dr_weights``); read back only
``dr_rs``               ``VIP . proto . port . RIP -> RPORT . weight``: DR real servers on
                        another port than the VIP's, or of a service without slots
``dr_in``               ``VIP . proto . port . RIP`` with a counter, added by the packet path
``nat_in``/``nat_out``  ``VIP . proto . RIP . RPORT`` with counters, added by the packet path
                        (forward hook) when a real server first sees traffic
``dr_mac``/``dr_smac``/``dr_dev``  ``RIP -> real server MAC / own MAC / out device``
``tun_svc``/``tun_dev`` TUN: the DR services that tunnel; ``RIP -> IPIP device``
``dr6_*``               DR over IPv6: ``dr6_svc``, ``dr6_tab``, ``dr6_rs``, ``dr6_in`` and the
                        neighbour maps, keyed by the IPv6 VIP; the mark is the real server's
                        *id* (``elements.mark_of``: 32 bits of a hash of its address, the same
                        on every director), ``dr6_addr`` says which address an id stands for
                        (the data path needs none: DR leaves the IP header alone). The slot
                        tables (``dr_slots``, ``dr_weights``) are shared with IPv4: a table is
                        only marks.

A DR scheduler chain looks the service's table up first (``meta mark set ... map
@dr_tab``), then the slot in it (``meta mark set meta mark . <slot> map @dr_slots``): nft
cannot nest two lookups in one expression, so the mark carries the table number between
them (DR owns the mark: it is the RIP from there on, and the frame leaves by ``fwd``).
In a cluster almost every Service has the same real servers (the nodes), so 10,000
``mh`` services are 10,000 ``dr_tab`` elements and one 509-slot table, not 5 million slots.
NAT cannot carry the number in the mark: after DNAT the mark belongs to the host's
routing (kube-proxy's masquerade bit, policy routing). Its shared tables therefore each
have a chain of their own, which the services' ``nat_svc`` elements go to: the chain *is*
the table number, and its DNAT takes the address from the table's map and the port from
``nat_rport`` (two lookups, one for each half of the target, which nft takes where it
refuses one lookup inside another). rr/wrr NAT services and those whose real servers use
several ports keep per-service slots (``nat_slots``: elements.shares_nat_table says why).

A scheduler chain turns the packet into a slot: ``numgen inc mod N`` (NAT rr/wrr: per
new connection, conntrack keeps the rest), ``jhash`` of the flow ``mod N`` (DR rr/wrr:
stateless, so every packet of a flow must hash to the same slot), ``jhash`` of the
source ``mod 509`` (sh/mh, Maglev table from maglev.py).

The skeleton is described as data (``declarations``) so that ``repair_text`` can make
exactly what a read found missing - a table, a map, a chain, the rules of a chain that
lost some - and nothing twice: re-sending a whole table block that still exists adds
its rules a second time, or fails (a deleted ``netdev`` table was never repaired that
way: "conflicting protocols specified: ip vs. th" at every sync).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, TypeAlias

from ...model import Timeouts
from .maglev import MAGLEV_SIZE, MAX_WRR_SLOTS

__all__ = [
    "CHAIN_DEVICE_PREFIX",
    "COUNTER_SETS",
    "COUNTER_SET_SIZE",
    "CT_DEFAULTS",
    "DEVICE_CHAIN_RULES",
    "FAMILIES",
    "HASH_SEED",
    "MARKERS",
    "NAT_FAMILIES",
    "NAT_FAMILY",
    "NAT_TABLE_RULES",
    "NEIGHBOUR_SETS",
    "NETDEV_VERSION",
    "PER_SERVICE_SETS",
    "SETS",
    "SKELETON_VERSION",
    "SUPPORTED_SCHEDULERS",
    "TABLE",
    "TABLE_COMMENTS",
    "TIMEOUT_CHAIN",
    "TIMEOUT_OBJECTS",
    "TUN_SETS",
    "VERSIONS",
    "ChainDecl",
    "Element",
    "Found",
    "SetDecl",
    "Value",
    "address_size",
    "declarations",
    "delete_device_chain_text",
    "delete_nat_table_text",
    "device_chain_name",
    "device_chain_text",
    "nat_entry_table",
    "nat_table_chain",
    "nat_table_map",
    "nat_table_text",
    "needs_rebuild",
    "parse_device_chain",
    "parse_nat_table_chain",
    "parse_nat_table_map",
    "parse_scheduler_chain",
    "repair_text",
    "scheduler_chain",
    "skeleton_text",
    "timeouts_text",
]

TABLE = "kubelvs"
#: An empty chain of this name marks a table as made by this version (and the table
#: comment says so to people). A table of our name with neither was made by another
#: version (or by hand) and is refused rather than silently mixed with: so is a netdev
#: table of version 1 (per-service DR slots; docs/nftables.md says how to replace it).
SKELETON_VERSION = "kubelvs_v1"
#: The netdev table's marker since DR slot tables are shared (``dr_tab``).
NETDEV_VERSION = "kubelvs_v2"
VERSIONS = {"ip": SKELETON_VERSION, "ip6": SKELETON_VERSION, "netdev": NETDEV_VERSION}
#: Every version's marker: a table is of the version its marker names.
MARKERS = frozenset({SKELETON_VERSION, NETDEV_VERSION})
TABLE_COMMENTS = {
    family: f"managed by kubelvs (nftables backend v{version[-1]}), do not edit"
    for family, version in VERSIONS.items()
}
FAMILIES = ("ip", "ip6", "netdev")
#: The families whose table holds NAT services (and their ct timeouts), per IP version.
NAT_FAMILIES = ("ip", "ip6")
NAT_FAMILY = {4: "ip", 6: "ip6"}
SUPPORTED_SCHEDULERS = frozenset({"rr", "wrr", "sh", "mh"})
#: jhash seed of every hash chain: fixed, so every director computes the same slot.
HASH_SEED = 0x6B6C7673
#: nf_conntrack's defaults, which ``nft list`` leaves out of a ct timeout policy.
CT_DEFAULTS = {"established": 432000, "fin_wait": 120, "time_wait": 120, "replied": 120, "unreplied": 30}
#: Capacity of the dynamic counter sets (one element per real server with traffic).
COUNTER_SET_SIZE = 1048576
#: Every set and map of the skeleton, per family: what a read dumps.
SETS = {
    "ip": ("nat_svc", "nat_slots", "nat_rs", "nat_rport", "nat_weights", "nat_in", "nat_out"),
    "ip6": ("nat_svc", "nat_slots", "nat_rs", "nat_rport", "nat_weights", "nat_in", "nat_out"),
    "netdev": (
        "dr_svc",
        "dr_tab",
        "dr_slots",
        "dr_weights",
        "dr_rs",
        "dr_in",
        "dr_mac",
        "dr_smac",
        "dr_dev",
        "tun_svc",
        "tun_dev",
        "dr6_svc",
        "dr6_tab",
        "dr6_rs",
        "dr6_in",
        "dr6_mac",
        "dr6_smac",
        "dr6_dev",
        "dr6_addr",
        "tun6_svc",
        "tun6_dev",
        "tun6_addr",
    ),
}
#: The maps that hold services, keyed by ``VIP . proto . port`` (elements.py), the shared
#: DR slot tables (slottables.py), the DR neighbours, the packet path's counters.
PER_SERVICE_SETS = frozenset(
    {
        *("nat_svc", "dr_svc", "nat_slots", "dr_tab", "nat_rs", "nat_rport", "dr_rs", "tun_svc"),
        *("dr6_svc", "dr6_tab", "dr6_rs", "tun6_svc"),
    }
)
#: A DR real server's neighbour elements, per IP version (IPv6: and its id's address).
NEIGHBOUR_SETS = {
    4: frozenset({"dr_mac", "dr_smac", "dr_dev"}),
    6: frozenset({"dr6_mac", "dr6_smac", "dr6_dev", "dr6_addr"}),
}
COUNTER_SETS = ("nat_in", "nat_out", "dr_in", "dr6_in")
#: The rules of an ingress hook chain: one lookup per IP version.
DEVICE_CHAIN_RULES = 2
#: TUN's part of the netdev table: added the first time a TUN service appears, so that
#: tables made before TUN existed keep working (and a read of them runs no link dump).
TUN_SETS = ("tun_svc", "tun_dev", "tun6_svc", "tun6_dev", "tun6_addr")
TUN_CHAIN = "tun_out"
TUN6_CHAIN = "tun6_out"
#: ``SetTimeouts``: two ct timeout objects, attached to new NAT connections by the rules
#: of this chain (every NAT scheduler chain jumps to it).
TIMEOUT_OBJECTS = ("kl_tcp", "kl_udp")
TIMEOUT_CHAIN = "nat_timeouts"
#: DR/TUN ingress hooks, one per device: ``dr_in_<ifindex>``.
CHAIN_DEVICE_PREFIX = "dr_in_"

_KEY = "ip daddr . meta l4proto . th dport"


def _key(family: str) -> str:
    """``VIP . proto . port`` of a packet in ``family``'s table (netdev: IPv4)."""
    return _KEY if family != "ip6" else "ip6 daddr . meta l4proto . th dport"


Value: TypeAlias = tuple[str | int, ...] | str | int | None


class Element(NamedTuple):
    """One set/map element (a NamedTuple: hundreds of thousands are built per sync).
    ``value`` is None for a set, a verdict text (``goto x``, ``drop``) for a verdict
    map; ``comment`` is read back but kubelvs writes none."""

    family: str
    set: str
    key: tuple[str | int, ...]
    value: Value = None
    comment: str = ""


# ---------------------------------------------------------------------- chain names


def scheduler_chain(kind: str, scheduler: str, flags: frozenset[str], slots: int) -> str:
    """The chain a service's verdict-map element jumps to. Its name *is* the stored
    scheduler and flags (``read`` parses it back): no per-element comment needed,
    which halves the cost of the service map."""
    if scheduler in ("rr", "wrr"):
        return f"{kind}_{scheduler}_{slots}"
    suffix = ("p" if f"{scheduler}-port" in flags else "") + ("f" if f"{scheduler}-fallback" in flags else "")
    return f"{kind}_{scheduler}" + (f"_{suffix}" if suffix else "") + ("" if slots else "_0")


def nat_table_chain(chain: str, table: int) -> str:
    """The chain of shared NAT table ``table`` for services of scheduler chain ``chain``."""
    return f"{chain}_t{table}"


def nat_table_map(table: int) -> str:
    """The map of shared NAT table ``table``'s slots (``slot -> RIP``)."""
    return f"nat_tab_{table}"


def parse_nat_table_chain(chain: str) -> tuple[str, int] | None:
    """Inverse of ``nat_table_chain``: (scheduler chain, table), None for any other name."""
    base, sep, table = chain.rpartition("_t")
    if not sep or not table.isdigit() or not base.startswith("nat_") or parse_scheduler_chain(base) is None:
        return None
    return base, int(table)


def nat_entry_table(value: Value) -> tuple[str, int] | None:
    """The shared NAT table a ``nat_svc`` entry goes to (``goto nat_mh_t3``: its scheduler
    chain and table), None for an entry that goes to a scheduler chain itself."""
    return parse_nat_table_chain(value[len("goto ") :]) if isinstance(value, str) else None


def parse_nat_table_map(name: str) -> int | None:
    """Inverse of ``nat_table_map``: the table, None for any other name."""
    rest = name[len("nat_tab_") :]
    return int(rest) if name.startswith("nat_tab_") and rest.isdigit() else None


def parse_scheduler_chain(chain: str) -> tuple[str, frozenset[str]] | None:
    """Inverse of ``scheduler_chain``: (scheduler, flags), None for a foreign name. The
    chain of a shared NAT table (``nat_table_chain``) names its scheduler the same way."""
    nat_table = chain.rpartition("_t")
    if nat_table[1] and nat_table[2].isdigit():
        chain = nat_table[0]
    parts = chain.split("_")
    if len(parts) < 2 or parts[0] not in ("nat", "dr", "dr6") or parts[1] not in SUPPORTED_SCHEDULERS:
        return None
    scheduler = parts[1]
    flags: set[str] = set()
    if scheduler in ("sh", "mh") and len(parts) > 2 and parts[2] != "0":
        if "p" in parts[2]:
            flags.add(f"{scheduler}-port")
        if "f" in parts[2]:
            flags.add(f"{scheduler}-fallback")
    return scheduler, frozenset(flags)


def device_chain_name(ifindex: int) -> str:
    return f"{CHAIN_DEVICE_PREFIX}{ifindex}"


def parse_device_chain(name: str) -> int | None:
    """The ifindex of an ingress hook chain's name, None for any other chain."""
    rest = name[len(CHAIN_DEVICE_PREFIX) :]
    return int(rest) if name.startswith(CHAIN_DEVICE_PREFIX) and rest.isdigit() else None


# ---------------------------------------------------------------------- declarations


class SetDecl(NamedTuple):
    """A set or map of the skeleton: ``add <kind> <family> kubelvs <name> { <body> }``."""

    family: str
    kind: str  # "set" or "map"
    name: str
    body: str


class ChainDecl(NamedTuple):
    """A chain of the skeleton with its rules, one text per rule (None: the rules are not
    the skeleton's to check - ``nat_timeouts`` belongs to the timeouts)."""

    family: str
    name: str
    head: str  # "type ... hook ...; policy ...;" for a base chain, "" otherwise
    rules: tuple[str, ...] | None


def nat_table_text(family: str, chain: str, table: int, *, fix: tuple[bool, bool] | None = None) -> str:
    """Make shared NAT table ``table`` for scheduler chain ``chain`` (``nat_mh``,
    ``nat_sh_p``) in ``family``'s table: its map of slots and its chain, whose DNAT
    takes the address from the map (the slot: a hash of the source, and its port with
    a ``-port`` flag) and the port from ``nat_rport``. ``fix``: (its map is there, its
    chain is there) when part of it is: only the rest is made, and the chain's rules are
    written again."""
    l3 = family
    scheduler, flags = parse_scheduler_chain(chain) or ("mh", frozenset())
    source = f"{l3} saddr . th sport" if f"{scheduler}-port" in flags else f"{l3} saddr"
    name, tab = nat_table_chain(chain, table), nat_table_map(table)
    has_map, has_chain = fix or (False, False)
    out = "" if has_map else f"add map {family} {TABLE} {tab} {{ typeof numgen inc mod 2 : {l3} daddr; }}\n"
    out += f"flush chain {family} {TABLE} {name}\n" if has_chain else f"add chain {family} {TABLE} {name}\n"
    return out + (
        f"add rule {family} {TABLE} {name} jump {TIMEOUT_CHAIN}\n"
        f"add rule {family} {TABLE} {name} meta l4proto {{ tcp, udp, sctp }} dnat {l3} to"
        f" jhash {source} mod {MAGLEV_SIZE} seed {HASH_SEED:#x} map @{tab} : {_key(family)} map @nat_rport\n"
    )


#: The rules of a shared NAT table's chain (``nat_table_text``).
NAT_TABLE_RULES = 2


def delete_nat_table_text(family: str, chain: str | None, table: int, *, has_map: bool = True) -> str:
    """Delete shared NAT table ``table``: its chain (``chain``: its full name, None when
    it has none) and its map. After the elements that go to the chain are deleted."""
    out = ""
    if chain is not None:
        out += f"flush chain {family} {TABLE} {chain}\ndelete chain {family} {TABLE} {chain}\n"
    if has_map:
        out += f"delete map {family} {TABLE} {nat_table_map(table)}\n"
    return out


def _scheduler_chains(kind: str, family: str) -> list[ChainDecl]:
    """Every scheduler chain of ``kind`` ("nat", "dr" or "dr6") in ``family``'s table."""
    seed = f"seed {HASH_SEED:#x}"
    l3 = "ip6" if family == "ip6" or kind == "dr6" else "ip"
    key = _key(l3)
    if kind == "nat":
        # New connections only (nat chains see the first packet); conntrack keeps the rest.
        def pick(slot: str) -> tuple[str, ...]:
            return (f"jump {TIMEOUT_CHAIN}", f"dnat {l3} to {key} . {slot} map @nat_slots")

        rr_slot = "numgen inc mod {n}"
    else:
        # No connection state in netdev: every packet of a flow must hash to the same slot.
        def pick(slot: str) -> tuple[str, ...]:
            return (
                f"meta mark set {key} map @{kind}_tab"
                f" meta mark set meta mark . {slot} map @dr_slots goto {kind}_out",
            )

        rr_slot = f"jhash {l3} saddr . th sport mod {{n}} {seed}"
    chains: list[ChainDecl] = []
    for scheduler in ("rr", "wrr"):
        chains.append(ChainDecl(family, f"{kind}_{scheduler}_0", "", ("drop",)))
        for n in range(1, MAX_WRR_SLOTS + 1):
            chains.append(ChainDecl(family, f"{kind}_{scheduler}_{n}", "", pick(rr_slot.format(n=n))))
    for scheduler in ("sh", "mh"):
        for suffix in ("", "_p", "_f", "_pf"):
            source = f"{l3} saddr . th sport" if "p" in suffix else f"{l3} saddr"
            chains.append(
                ChainDecl(
                    family,
                    f"{kind}_{scheduler}{suffix}",
                    "",
                    pick(f"jhash {source} mod {MAGLEV_SIZE} {seed}"),
                )
            )
            chains.append(ChainDecl(family, f"{kind}_{scheduler}{suffix}_0", "", ("drop",)))
    return chains


@functools.lru_cache(maxsize=8)
def declarations(family: str, *, tun: bool = False) -> tuple[tuple[SetDecl, ...], tuple[ChainDecl, ...]]:
    """The sets and chains of one family's table, in an order nft can create them in
    (a chain before the rules that jump to it). ``tun``: with TUN's part (netdev).
    Cached: every apply compares what a read found with them."""
    counter_set = f"size {COUNTER_SET_SIZE}; flags dynamic; counter;"
    marker = ChainDecl(family, VERSIONS[family], "", ())
    if family in NAT_FAMILIES:
        key, l3 = _key(family), family
        sets = [
            SetDecl(family, "map", "nat_svc", f"typeof {key} : verdict;"),
            SetDecl(family, "map", "nat_slots", f"typeof {key} . numgen inc mod 2 : {l3} daddr . th dport;"),
            SetDecl(family, "map", "nat_rs", f"typeof {key} . {l3} daddr . th dport : meta mark;"),
            SetDecl(family, "map", "nat_rport", f"typeof {key} : th dport;"),
            SetDecl(family, "map", "nat_weights", f"typeof meta mark . {l3} daddr : meta mark;"),
            # Counters appear when traffic flows (``update`` from the packet path): a sync
            # writes none of them, which halves the elements of a cold sync.
            SetDecl(
                family,
                "set",
                "nat_in",
                f"typeof {l3} daddr . meta l4proto . {l3} daddr . th dport; {counter_set}",
            ),
            SetDecl(
                family,
                "set",
                "nat_out",
                f"typeof {l3} daddr . meta l4proto . {l3} daddr . th dport; {counter_set}",
            ),
        ]
        lookup = (f"{key} vmap @nat_svc",)
        chains = [
            marker,
            # ct timeout rules (SetTimeouts); run for new NAT connections, before confirmation.
            ChainDecl(family, TIMEOUT_CHAIN, "", None),
            *_scheduler_chains("nat", family),
            # New connections to a VIP, from outside (prerouting) and from the director itself.
            ChainDecl(family, "nat_pre", "type nat hook prerouting priority dstnat; policy accept;", lookup),
            ChainDecl(family, "nat_local", "type nat hook output priority -100; policy accept;", lookup),
            # Per real server counters: after DNAT the packet carries the RIP, conntrack the VIP.
            ChainDecl(
                family,
                "count",
                "type filter hook forward priority filter; policy accept;",
                (
                    "ct status dnat ct direction original update @nat_in"
                    f" {{ ct original {l3} daddr . meta l4proto . {l3} daddr . th dport }}",
                    "ct status dnat ct direction reply update @nat_out"
                    f" {{ ct original {l3} daddr . meta l4proto . {l3} saddr . th sport }}",
                ),
            ),
        ]
        return tuple(sets), tuple(chains)
    if family != "netdev":
        raise ValueError(f"no {TABLE} table in family {family!r}")
    sets4, chains4 = _dr_path(4, tun=tun, counter_set=counter_set)
    sets6, chains6 = _dr_path(6, tun=tun, counter_set=counter_set)
    return (*sets4, *sets6), (marker, *chains4, *chains6)


@functools.lru_cache(maxsize=64)
def address_size(family: str, name: str) -> int:
    """Bytes of an address in the elements of set ``name`` of ``family``'s table: 16 where
    its declaration holds IPv6 addresses (key or value), else 4."""
    for decl in declarations(family, tun=True)[0]:
        if decl.name == name:
            return 16 if "ip6 daddr" in decl.body else 4
    raise KeyError(f"no set {name!r} in the {family} {TABLE} table")


def _dr_path(version: int, *, tun: bool, counter_set: str) -> tuple[list[SetDecl], list[ChainDecl]]:
    """The netdev table's sets and chains for DR (and TUN) over one IP version: ``dr_*``,
    ``tun_*`` for IPv4; ``dr6_*``, ``tun6_*`` for IPv6, keyed by the IPv6 VIP, with their
    own neighbour maps. The slot tables (``dr_slots``) are shared; an IPv6 real server's
    mark is an id, not its address, so ``dr6_addr``/``tun6_addr`` map it back for reads."""
    family = "netdev"
    dr, tun_, ip = ("dr", "tun", "ip") if version == 4 else ("dr6", "tun6", "ip6")
    key = _key(ip)
    sets = [
        SetDecl(family, "map", f"{dr}_svc", f"typeof {key} : verdict;"),
        SetDecl(family, "map", f"{dr}_tab", f"typeof {key} : meta mark;"),
    ]
    if version == 4:
        sets += [
            SetDecl(family, "map", "dr_slots", "typeof meta mark . numgen inc mod 2 : meta mark;"),
            SetDecl(family, "map", "dr_weights", "typeof meta mark . meta mark : meta mark;"),
        ]
    sets += [
        SetDecl(family, "map", f"{dr}_rs", f"typeof {key} . meta mark : th dport . meta mark;"),
        SetDecl(family, "set", f"{dr}_in", f"typeof {key} . meta mark; {counter_set}"),
        SetDecl(family, "map", f"{dr}_mac", "typeof meta mark : ether daddr;"),
        SetDecl(family, "map", f"{dr}_smac", "typeof meta mark : ether saddr;"),
        SetDecl(family, "map", f"{dr}_dev", "typeof meta mark : meta oif;"),
    ]
    if version == 6:
        sets.append(SetDecl(family, "map", "dr6_addr", "typeof meta mark : ip6 daddr;"))
    # The real server gets the frame unchanged but for the MACs: dst = its MAC, src = ours
    # (else the bridge learns the client's MAC on our port and the real server's replies
    # come back to us instead of going to the client).
    dr_rule = (
        f"update @{dr}_in {{ {key} . meta mark }} ether saddr set meta mark map @{dr}_smac"
        f" ether daddr set meta mark map @{dr}_mac fwd to meta mark map @{dr}_dev"
    )
    chains = []
    if tun:
        sets += [
            SetDecl(family, "set", f"{tun_}_svc", f"typeof {key};"),
            SetDecl(family, "map", f"{tun_}_dev", "typeof meta mark : meta oif;"),
        ]
        if version == 6:
            sets.append(SetDecl(family, "map", "tun6_addr", "typeof meta mark : ip6 daddr;"))
        # A DR-scheduled packet of a service in ``tun_svc`` goes to ``tun_out``, which hands
        # it to the real server's tunnel device (``tun_dev``, tunnel.py: IPIP, or ip6tnl in
        # ip6ip6 mode). ``fwd ip to`` and not ``fwd to``: the latter pushes the Ethernet
        # header back and the tunnel would encapsulate it. No device for the mark (edited by
        # hand): not to our own stack.
        tun_chain = TUN_CHAIN if version == 4 else TUN6_CHAIN
        forward = f"fwd {ip} to {ip} daddr device meta mark map @{tun_}_dev"
        chains.append(
            ChainDecl(family, tun_chain, "", (f"update @{dr}_in {{ {key} . meta mark }} {forward}", "drop"))
        )
        chains.append(ChainDecl(family, f"{dr}_out", "", (f"{key} @{tun_}_svc goto {tun_chain}", dr_rule)))
    else:
        chains.append(ChainDecl(family, f"{dr}_out", "", (dr_rule,)))
    chains += _scheduler_chains(dr, family)
    return sets, chains


# ---------------------------------------------------------------------- what a read found


@dataclass(frozen=True, slots=True)
class Found:
    """What a read found of the fixed part of the tables (and of the ingress hooks)."""

    tables: frozenset[str] = frozenset()  # families that have a kubelvs table of ours
    sets: frozenset[tuple[str, str]] = frozenset()  # (family, name) of the sets and maps
    rules: Mapping[tuple[str, str], int] = field(default_factory=dict)  # (family, chain) -> its rules
    objects: frozenset[tuple[str, str]] = frozenset()  # (family, name) of the ct timeout objects
    # Made by ``whole``: known whole for this ``tun`` (what a commit leaves), so the next
    # apply need not compare (~0.15 ms, a tenth of a one-real-server change's CPU).
    whole_for: bool | None = field(default=None, compare=False)

    def has_tun(self) -> bool:
        """Any of TUN's part exists (then all of it is kept whole)."""
        return any(("netdev", name) in self.sets for name in TUN_SETS) or any(
            ("netdev", chain) in self.rules for chain in (TUN_CHAIN, TUN6_CHAIN)
        )

    def without(self, family: str) -> Found:
        """As if ``family``'s table did not exist."""
        return Found(
            tables=self.tables - {family},
            sets=frozenset(s for s in self.sets if s[0] != family),
            rules={k: n for k, n in self.rules.items() if k[0] != family},
            objects=frozenset(o for o in self.objects if o[0] != family),
        )

    def timeouts_whole(self) -> bool:
        """Both ct timeout objects, and the two rules that attach them, in both NAT tables."""
        return self.objects >= _TIMEOUT_PARTS and all(
            self.rules.get((family, TIMEOUT_CHAIN)) == 2 for family in NAT_FAMILIES
        )

    @staticmethod
    def whole(*, tun: bool, timeouts: bool, devices: Iterable[int] = ()) -> Found:
        """What a read finds right after a successful ``repair_text(..., tun=tun)`` (plus
        the timeouts and the ingress hooks on ``devices``, when those were written too)."""
        sets, rules = _whole(tun)
        rules = dict(rules)
        for family in NAT_FAMILIES:
            rules[(family, TIMEOUT_CHAIN)] = 2 if timeouts else 0
        for ifindex in devices:
            rules[("netdev", device_chain_name(ifindex))] = DEVICE_CHAIN_RULES
        objects = _TIMEOUT_PARTS if timeouts else frozenset()
        return Found(tables=frozenset(FAMILIES), sets=sets, rules=rules, objects=objects, whole_for=tun)


_TIMEOUT_PARTS = frozenset((family, name) for family in NAT_FAMILIES for name in TIMEOUT_OBJECTS)


@functools.lru_cache(maxsize=2)
def _whole(tun: bool) -> tuple[frozenset[tuple[str, str]], Mapping[tuple[str, str], int]]:
    sets: set[tuple[str, str]] = set()
    rules: dict[tuple[str, str], int] = {}
    for family in FAMILIES:
        family_sets, chains = declarations(family, tun=tun)
        sets.update((family, s.name) for s in family_sets)
        rules.update(((family, c.name), len(c.rules or ())) for c in chains)
    return frozenset(sets), rules


def repair_text(found: Found, *, tun: bool) -> str:
    """The commands that make both tables whole again: every missing table, set, map and
    chain, and the rules of every chain that has not the number of rules it should. Only
    what is missing is created (``add`` of an existing chain with rules would add its
    rules again), so the result is one skeleton whatever state ``found`` describes.
    Empty when nothing is missing. ``tun``: TUN's part must be there too."""
    if found.whole_for is tun:
        return ""
    tables: list[str] = []
    sets: list[str] = []
    chains: list[str] = []
    rules: list[str] = []
    for family in FAMILIES:
        if family not in found.tables:
            tables.append(f'add table {family} {TABLE} {{ comment "{TABLE_COMMENTS[family]}"; }}\n')
        family_sets, family_chains = declarations(family, tun=tun)
        for s in family_sets:
            if (family, s.name) not in found.sets:
                sets.append(f"add {s.kind} {family} {TABLE} {s.name} {{ {s.body} }}\n")
        for c in family_chains:
            count = found.rules.get((family, c.name))
            if count is None:
                chains.append(
                    f"add chain {family} {TABLE} {c.name}" + (f" {{ {c.head} }}\n" if c.head else "\n")
                )
                rules += _rules_text(family, c.name, c.rules or ())
            elif c.rules is not None and count != len(c.rules):
                rules.append(f"flush chain {family} {TABLE} {c.name}\n")
                rules += _rules_text(family, c.name, c.rules)
    return "".join(tables + sets + chains + rules)


def needs_rebuild(found: Found) -> frozenset[str]:
    """The NAT tables (``ip``, ``ip6``) that exist but have a scheduler chain that lacks
    its rules: each must be made again whole (``delete table`` and everything anew, in
    one transaction).

    nft 1.0.6 cannot add a rule that uses ``nat_slots`` once that map exists in the
    kernel: it reads the map's ``typeof ... : ip daddr . th dport`` back without the
    protocol context and fails with "conflicting protocols specified: ip vs. th" (a
    whole table block sent again fails the same way). In a transaction that makes the
    map too, the rules are added as in a cold sync."""
    return frozenset(
        family
        for family in NAT_FAMILIES
        if family in found.tables
        and any(
            c.rules
            and any("@nat_slots" in rule for rule in c.rules)
            and found.rules.get((family, c.name)) != len(c.rules)
            for c in declarations(family)[1]
        )
    )


def _rules_text(family: str, chain: str, rules: Sequence[str]) -> list[str]:
    return [f"add rule {family} {TABLE} {chain} {rule}\n" for rule in rules]


def skeleton_text(*, tun: bool = False) -> str:
    """Both tables with every map and chain, no elements: the fixed part of the ruleset."""
    return repair_text(Found(), tun=tun)


def device_chain_text(device: str, ifindex: int, *, exists: bool = False) -> str:
    """The ingress hook on one device: frames for a DR VIP go to the service's scheduler.
    ``exists``: the chain is there but lost a rule (only the rules are written again: a
    second ``add chain`` could hook another device into it)."""
    name = device_chain_name(ifindex)
    rule = (
        f"add rule netdev {TABLE} {name} meta pkttype host {_KEY} vmap @dr_svc\n"
        f"add rule netdev {TABLE} {name} meta pkttype host {_key('ip6')} vmap @dr6_svc\n"
    )
    if exists:
        return f"flush chain netdev {TABLE} {name}\n" + rule
    return (
        f"add chain netdev {TABLE} {name}"
        f' {{ type filter hook ingress device "{device}" priority filter; policy accept; }}\n' + rule
    )


def delete_device_chain_text(ifindex: int) -> str:
    name = device_chain_name(ifindex)
    return f"flush chain netdev {TABLE} {name}\ndelete chain netdev {TABLE} {name}\n"


def timeouts_text(timeouts: Timeouts, *, existing: Iterable[tuple[str, str]] = ()) -> str:
    """ct timeout objects for NAT connections to a VIP, and the rules attaching them.

    IPVS ``tcp`` is conntrack's established timeout, ``udp`` both UDP timeouts, and
    ``tcpfin`` the states of a closing connection (fin_wait and time_wait): after the
    usual ``ipvsadm --set 900 30 300`` a closed connection leaves the table after 30 s.
    The rules live in ``nat_timeouts``, which every NAT scheduler chain jumps to, so they
    apply to new connections to a VIP only; a ct timeout object belongs to one table, so
    both NAT tables get their own. ``existing``: (family, name) of the objects there now,
    replaced (an ``add`` of an existing ct timeout object leaves its old values).
    """
    t = timeouts
    there = set(existing)
    out: list[str] = []
    for family in NAT_FAMILIES:  # the same timeouts in both NAT tables
        out.append(f"flush chain {family} {TABLE} {TIMEOUT_CHAIN}")
        out += [
            f"delete ct timeout {family} {TABLE} {name}"
            for name in TIMEOUT_OBJECTS
            if (family, name) in there
        ]
        out += [
            f"add ct timeout {family} {TABLE} kl_tcp {{ protocol tcp; l3proto {family};"
            f" policy = {{ established: {t.tcp}, fin_wait: {t.tcpfin}, time_wait: {t.tcpfin} }}; }}",
            f"add ct timeout {family} {TABLE} kl_udp {{ protocol udp; l3proto {family};"
            f" policy = {{ unreplied: {t.udp}, replied: {t.udp} }}; }}",
        ]
        for proto in ("tcp", "udp"):
            out.append(
                f'add rule {family} {TABLE} {TIMEOUT_CHAIN} meta l4proto {proto} ct timeout set "kl_{proto}"'
            )
    return "\n".join(out) + "\n"
