"""The nftables data plane: read the ``kubelvs`` tables back into the model, apply a
plan as ONE nft transaction (all of it or nothing).

The backend keeps a picture of what the tables hold (rebuilt by every ``read``), so a
plan is turned into an element diff of only the services it touches: a one real
server change with 10,000 services present is a transaction of a few elements.

The picture stores the *model* of each service, not its elements: the elements are a
pure function of it (``ruleset.service_elements``) and are recomputed for the few
services a later plan touches. Only services whose kernel elements differ from their
model (edited by hand) keep their actual elements. So a cold sync renders new
services straight to nft text and stores nothing per element.

Reads go straight to the kernel over nfnetlink (netlink.py): ``nft -j list`` of
10,000 services cost ~6 s of nft and JSON decoding.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import os
import socket
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from ...bulk import no_gc
from ...errors import ApplyError, BackendError, FieldError
from ...kernel import sysctl
from ...kernel.netns import entered
from ...model import (
    DesiredState,
    Forward,
    ObservedState,
    RealServer,
    ServiceKey,
    VirtualService,
)
from ...planner import (
    AddRealServer,
    AddService,
    DeleteRealServer,
    DeleteService,
    EditRealServer,
    EditService,
    Operation,
    SetSysctl,
    SetTimeouts,
    describe,
)
from . import neigh, ruleset, tunnel
from .netlink import NftNetlink, RawElement
from .nft import Nft, NftError
from .ruleset import Element, Neighbour, ParsedTables

__all__ = ["NftablesBackend", "tun_supported"]

_PER_SERVICE_SETS = frozenset({"nat_svc", "dr_svc", "nat_slots", "dr_slots", "nat_rs", "dr_rs", "tun_svc"})
_NEIGHBOUR_SETS = frozenset({"dr_mac", "dr_smac", "dr_dev"})
_COUNTER_SETS = ("nat_in", "nat_out", "dr_in")
_NO_ELEMENTS = ruleset.ServiceElements(frozenset(), frozenset())
#: What a read takes from the kernel: chains per family, raw elements per set, ct timeout policies.
_Dumped: TypeAlias = tuple[
    dict[str, list[tuple[str, str | None]]], dict[tuple[str, str], list[RawElement]], dict[str, dict[int, int]]
]


def tun_supported() -> bool:
    """True when the kernel can make IPIP tunnels (built in, or the ipip module loads)."""
    if os.path.exists("/sys/module/ipip") or os.path.exists("/proc/sys/net/ipv4/conf/tunl0"):
        return True
    import subprocess

    subprocess.run(["modprobe", "-q", "ipip"], check=False, capture_output=True)
    return os.path.exists("/sys/module/ipip")


@dataclass
class _Picture:
    """What the kubelvs tables hold, as of the last read or successful apply."""

    state: ObservedState
    skeleton: bool
    # Services whose kernel elements are not service_elements(state.services[key]) -
    # edited by hand, unbuildable, or elements of no service: their actual elements,
    # rewritten by the next apply. Every other service's elements follow from its model.
    actual: dict[ServiceKey, frozenset[Element]] = field(default_factory=dict)
    # Counter elements (made by the packet path) per (VIP, proto) as of the last read,
    # and those whose real server was already gone then.
    counters: dict[tuple[str | int, str | int], set[Element]] = field(default_factory=dict)
    stale: set[Element] = field(default_factory=set)
    dr_of: dict[ServiceKey, frozenset[str]] = field(default_factory=dict)  # DR services only
    dr_refs: Counter[str] = field(default_factory=Counter)  # DR real server -> services using it
    neighbours: dict[str, Neighbour] = field(default_factory=dict)
    device_chains: dict[int, str] = field(default_factory=dict)
    tunnels: tunnel.TunnelState = field(default_factory=tunnel.TunnelState)  # TUN: IPIP devices, tun_dev
    # The ruleset generation this picture is exact for (None: unknown). Every committed
    # nftables transaction in the namespace, anyone's, increments it; as long as it has
    # not moved, the tables are as pictured and a read only needs the counters.
    genid: int | None = None


class NftablesBackend:
    """nftables in one network namespace. Not thread-safe."""

    name = "nftables"

    def __init__(self, *, netns: str | None = None) -> None:
        self._netns = netns
        self._nft = Nft(netns=netns)
        self._pic: _Picture | None = None
        self._nl: NftNetlink | None = None
        # refresh() had to load the picture: the read() right after it (the director's
        # full sync) takes that one instead of dumping the kernel a second time.
        self._just_loaded = False
        # problems() runs before every sync; a desired state mostly holds the same
        # VirtualService objects as the last one, so their findings are kept by identity.
        self._checked: dict[int, tuple[VirtualService, Sequence[FieldError]]] = {}
        self._troubled: dict[int, Sequence[FieldError]] = {}  # the checked services with problems
        self._tun: bool | None = None

    def close(self) -> None:
        self._pic = None
        self._nft.close()
        if self._nl is not None:
            self._nl.close()
            self._nl = None

    @contextlib.contextmanager
    def _netlink(self) -> Iterator[NftNetlink]:
        """The backend's netlink socket, opened on first use and kept: closing a netlink
        socket waits for an RCU grace period (~10 ms measured), as much as the whole
        rest of a one-real-server change."""
        if self._nl is None:
            self._nl = NftNetlink(self._netns)
        yield self._nl

    # ------------------------------------------------------------------ read

    def read(self, *, sysctls: Iterable[str] = ()) -> ObservedState:
        pic = self._pic
        if pic is not None and self._just_loaded:
            pass  # refresh() has just read the kernel for us
        else:
            with self._netlink() as nl:
                if pic is not None and pic.genid is not None and pic.genid == nl.generation():
                    # Nobody has committed anything since the picture was exact (a full resync
                    # of an unchanged table): only the counters the packet path keeps moved.
                    with no_gc():
                        self._read_counters(pic)
                else:
                    self._pic = self._load()
        self._just_loaded = False
        assert self._pic is not None
        observed = self._pic.state
        values: dict[str, int] = {}
        with entered(self._netns):
            for name in sysctls:
                value = sysctl.read(name)
                if value is not None:
                    values[name] = value
        return ObservedState(services=observed.services, timeouts=observed.timeouts, sysctls=values, stats=observed.stats)

    def _read_counters(self, pic: _Picture) -> None:
        with self._netlink() as nl:

            def dump() -> dict[tuple[str, str], list[RawElement]]:
                sets: dict[tuple[str, str], list[RawElement]] = {}
                for family, name in (("ip", "nat_in"), ("ip", "nat_out"), ("netdev", "dr_in")):
                    raws = nl.elements(family, ruleset.TABLE, name)
                    if raws is not None:
                        sets[(family, name)] = raws
                return sets

            sets, genid = nl.consistent(dump)
        if genid != pic.genid:  # changed just now: read it all
            self._pic = self._load()
            return
        elements, counters = ruleset.decode_counters(sets)
        pic.state = ObservedState(
            services=pic.state.services, timeouts=pic.state.timeouts, stats=ruleset.stats_of(pic.state.services, counters)
        )
        pic.counters = {}
        for e in elements:
            pic.counters.setdefault((e.key[0], e.key[1]), set()).add(e)
        pic.stale = _stale_counters(set(elements), pic.state.services, pic.state.services.keys()) if elements else set()

    def _read_kernel(self) -> tuple[ParsedTables, int]:
        """Both tables from the kernel, and the ruleset generation they are from."""
        with entered(self._netns):
            ifnames = dict(socket.if_nameindex())
        with self._netlink() as nl:

            def dump() -> _Dumped:
                chains: dict[str, list[tuple[str, str | None]]] = {}
                sets: dict[tuple[str, str], list[RawElement]] = {}
                policies: dict[str, dict[int, int]] = {}
                for family in ("ip", "netdev"):
                    if not nl.table_exists(family, ruleset.TABLE):
                        continue
                    chains[family] = nl.chains(family, ruleset.TABLE)
                    if not any(name == ruleset.SKELETON_VERSION for name, _ in chains[family]):
                        continue  # not ours: refused below, its elements are not even read
                    for name in ruleset.SETS[family]:
                        raws = nl.elements(family, ruleset.TABLE, name)
                        if raws is not None:
                            sets[(family, name)] = raws
                    if family == "ip":
                        for name in ("kl_tcp", "kl_udp"):
                            policy = nl.ct_timeout(family, ruleset.TABLE, name)
                            if policy is not None:
                                policies[name] = policy
                return chains, sets, policies

            (chains, sets, policies), genid = nl.consistent(dump)
        try:
            return ruleset.parse_raw(chains, sets, policies, ifnames), genid
        except ValueError as exc:
            raise BackendError(f"reading the {ruleset.TABLE} tables: {exc}") from exc

    def _load(self) -> _Picture:
        with no_gc():
            return self._load_picture()

    def _load_picture(self) -> _Picture:
        self._just_loaded = False
        parsed, genid = self._read_kernel()
        for family, comment in parsed.tables.items():
            if comment != ruleset.SKELETON_VERSION:
                raise BackendError(
                    f"table {family} {ruleset.TABLE} was not made by this version of kubelvs "
                    f"(no {ruleset.SKELETON_VERSION} marker chain); remove it with: nft delete table {family} {ruleset.TABLE}"
                )
        state = ObservedState(services=parsed.services, timeouts=parsed.timeouts, stats=parsed.stats)
        pic = _Picture(state=state, skeleton=set(parsed.tables) == {"ip", "netdev"}, genid=genid)
        pic.device_chains = dict(parsed.device_chains)
        # The kernel's per-service elements against what the services' models imply, as
        # two sets at once (grouping 110,000 elements per service first cost more than
        # all the rest); only the services on either side of a difference are looked at.
        expected: set[Element] = set()
        for key, svc in parsed.services.items():
            try:
                built = ruleset.service_elements(svc)
            except ValueError:
                pic.actual[key] = frozenset()  # filled below: rewritten (or removed) at the next apply
                continue
            expected.update(built.own)
            if built.dr_addresses:
                pic.dr_of[key] = built.dr_addresses
                pic.dr_refs.update(built.dr_addresses)
        present = {e for name in _PER_SERVICE_SETS for e in parsed.by_set.get(name, ())}
        differ = present.symmetric_difference(expected)
        if differ or pic.actual:
            # e.g. slots edited by hand, or elements of no service: rewritten at the next apply
            dirty = {ruleset.service_key(e.key[:3]) for e in differ} | set(pic.actual)
            actual: dict[ServiceKey, set[Element]] = {key: set() for key in dirty}
            for e in present:
                found = actual.get(ruleset.service_key(e.key[:3]))
                if found is not None:
                    found.add(e)
            pic.actual = {key: frozenset(elements) for key, elements in actual.items()}
        counters = {e for name in _COUNTER_SETS for e in parsed.by_set.get(name, ())}
        for e in counters:
            pic.counters.setdefault((e.key[0], e.key[1]), set()).add(e)
        pic.stale = _stale_counters(counters, state.services, state.services.keys()) if counters else set()
        marks: dict[int, dict[str, str | int]] = {}
        for name in _NEIGHBOUR_SETS:
            for e in parsed.by_set.get(name, ()):
                assert isinstance(e.value, (str, int))
                marks.setdefault(int(e.key[0]), {})[e.set] = e.value
        for mark, values in marks.items():
            if set(values) == _NEIGHBOUR_SETS:
                device = str(values["dr_dev"])
                ifindex = next((i for i, d in pic.device_chains.items() if d == device), 0)
                pic.neighbours[str(ipaddress.IPv4Address(mark))] = Neighbour(
                    mac=str(values["dr_mac"]), own_mac=str(values["dr_smac"]), device=device, ifindex=ifindex
                )
        pic.tunnels = tunnel.TunnelState.load(self._netns, parsed.by_set, parsed.services)
        return pic

    # ------------------------------------------------------------------ apply

    def apply(self, ops: Sequence[Operation]) -> None:
        if not ops:
            return
        with no_gc():
            self._apply(ops)

    def _apply(self, ops: Sequence[Operation]) -> None:
        # One pass over the plan (110,000 operations in a cold sync of 10,000 services):
        # sysctls are written at once (they are not nftables), the rest collected, and
        # the services the plan touches noted with the first operation on each.
        model_ops: list[Operation] = []
        indices: list[int] = []
        touched: dict[ServiceKey, int] = {}
        last: ServiceKey | None = None
        for index, op in enumerate(ops):
            kind = type(op)
            if kind is SetSysctl:
                self._set_sysctl(index, op)  # type: ignore[arg-type]
                continue
            model_ops.append(op)
            indices.append(index)
            key: ServiceKey
            if kind is AddRealServer or kind is EditRealServer or kind is DeleteRealServer:
                key = op.service  # type: ignore[union-attr,assignment]
            elif kind is AddService or kind is EditService:
                key = op.service.key  # type: ignore[union-attr]
            elif kind is DeleteService:
                key = op.key  # type: ignore[union-attr]
            else:
                continue
            if key is not last:  # a service's operations come together, with one key object
                touched.setdefault(key, index)
                last = key
        if not model_ops:
            return
        self._just_loaded = False
        if self._pic is None:
            self._pic = self._load()
        pic = self._pic
        first_index, first_op = indices[0], model_ops[0]
        try:
            new_state = _next_state(pic.state, model_ops)
        except KeyError as exc:
            raise ApplyError(first_index, describe(first_op), f"the service does not exist in the kernel: {exc}") from exc
        for key in pic.actual:
            touched.setdefault(key, first_index)

        adds: set[Element] = set()
        deletes: set[Element] = set()
        add_text: dict[tuple[str, str], list[str]] = {}  # new services, rendered directly
        new_dr_of: dict[ServiceKey, frozenset[str]] = {}
        old_services, new_services = pic.state.services, new_state.services
        for key, index in touched.items():
            svc = new_services.get(key)
            try:
                old = pic.actual.get(key)
                if old is None:
                    old_svc = old_services.get(key)
                    # Its elements are what its model implies (written so, or read and compared).
                    old = ruleset.service_elements(old_svc).own if old_svc is not None else frozenset()
                if not old:
                    # A new service: nothing to diff against (the cold-sync path).
                    new_dr_of[key] = ruleset.service_text(svc, add_text) if svc is not None else frozenset()
                    continue
                built = ruleset.service_elements(svc) if svc is not None else _NO_ELEMENTS
            except ValueError as exc:
                raise ApplyError(index, describe(ops[index]), str(exc)) from exc
            deletes |= old - built.own
            adds |= built.own - old
            new_dr_of[key] = built.dr_addresses

        # Counters the packet path created for real servers that no longer exist (known
        # from the last read; nobody else deletes them, so they are still there).
        garbage = set(pic.stale)
        if pic.counters:
            pairs = {(ruleset.ip_text(k.address), str(k.protocol)) for k in touched if k.address is not None}
            pairs &= pic.counters.keys()
            if pairs:
                # Every service on those VIPs decides which of their counters are live.
                keys = [
                    k for k in new_services if k.address is not None and (ruleset.ip_text(k.address), str(k.protocol)) in pairs
                ]
                garbage |= _stale_counters(set().union(*(pic.counters[p] for p in pairs)), new_services, keys)
        deletes |= garbage

        # DR real servers: their neighbours, and an ingress hook on every device they sit on.
        dr_refs = Counter(pic.dr_refs)  # O(distinct DR real servers), not O(services)
        for key in touched:
            dr_refs.subtract(pic.dr_of.get(key, ()))
            dr_refs.update(new_dr_of[key])
        needed = {rip for rip, n in dr_refs.items() if n > 0}
        neighbours = {rip: nb for rip, nb in pic.neighbours.items() if rip in needed}
        for rip in sorted(needed - set(neighbours)):
            try:
                neighbours[rip] = neigh.resolve(self._netns, rip)
            except neigh.NeighbourError as exc:
                index = next((touched[k] for k, v in new_dr_of.items() if rip in v), first_index)
                raise ApplyError(index, describe(ops[index]), f"DR real server {rip}: {exc}") from exc
        for rip, nb in pic.neighbours.items():
            if neighbours.get(rip) != nb:
                deletes |= ruleset.neighbour_elements(rip, nb)
        for rip, nb in neighbours.items():
            if pic.neighbours.get(rip) != nb:
                adds |= ruleset.neighbour_elements(rip, nb)
        devices = {nb.ifindex: nb.device for nb in neighbours.values()}
        # TUN real servers: their IPIP devices (made below, before the transaction).
        try:
            tun = pic.tunnels.change(self._netns, touched, new_services)
        except tunnel.TunnelError as exc:
            raise _tunnel_apply_error(exc, touched, new_services, first_index, ops) from exc
        devices.update(tun.underlays)
        deletes |= tun.deletes
        adds |= tun.adds

        script: list[str] = []
        if not pic.skeleton:
            script.append(ruleset.skeleton_text())
        if tun.extension:
            script.append(ruleset.tun_extension_text())
        for ifindex, device in sorted(devices.items()):
            if ifindex not in pic.device_chains:
                script.append(ruleset.device_chain_text(device, ifindex))
        # Deletions first: an element whose value changed is deleted and re-added.
        script += ruleset.render_groups("delete", ruleset.group_elements(deletes, with_value=False))
        script += ruleset.render_groups("add", ruleset.group_elements(adds, with_value=True, into=add_text))
        timeouts = next((op.timeouts for op in model_ops if isinstance(op, SetTimeouts)), None)
        if timeouts is not None:
            script.append(ruleset.timeouts_text(timeouts, replace=pic.state.timeouts is not None))
        for ifindex in sorted(set(pic.device_chains) - set(devices)):
            script.append(ruleset.delete_device_chain_text(ifindex))
        try:
            tun.make_devices()
        except tunnel.TunnelError as exc:
            raise _tunnel_apply_error(exc, touched, new_services, first_index, ops) from exc
        if script:
            try:
                pic.genid = self._run(pic, "".join(script))
            except NftError as exc:
                tun.rollback()
                self._pic = None  # unknown now: the next apply or read starts from the kernel
                more = f" (and {len(model_ops) - 1} more operations in the same transaction, none applied)"
                raise ApplyError(first_index, describe(first_op) + (more if len(model_ops) > 1 else ""), str(exc)) from exc

        pic.state = ObservedState(services=new_state.services, timeouts=new_state.timeouts, stats=new_state.stats)
        pic.skeleton = True
        for key in touched:
            if new_dr_of[key]:
                pic.dr_of[key] = new_dr_of[key]
            else:
                pic.dr_of.pop(key, None)
        pic.actual = {}
        if garbage:
            pic.stale -= garbage
            for e in garbage:
                members = pic.counters.get((e.key[0], e.key[1]))
                if members is not None:
                    members.discard(e)
                    if not members:
                        del pic.counters[(e.key[0], e.key[1])]
        pic.dr_refs = +dr_refs
        pic.neighbours = neighbours
        pic.device_chains = devices
        pic.tunnels = tun.commit()

    def _run(self, pic: _Picture, script: str) -> int | None:
        """Run ``script`` (one transaction); the generation the picture is exact for after
        it: the one our commit made, if no one else committed meanwhile (then it is
        exactly one more than before), else None (the next read reads everything)."""
        if pic.genid is None:
            self._nft.run_script(script)
            return None
        with self._netlink() as nl:
            before = nl.generation()
            self._nft.run_script(script)
            if before != pic.genid:  # someone committed since the picture was exact
                return None
            after = nl.generation()
        return after if after == (before + 1) & 0xFFFFFFFF else None

    def _set_sysctl(self, index: int, op: SetSysctl) -> None:
        try:
            with entered(self._netns):
                sysctl.write(op.name, op.value)
        except OSError as exc:
            raise ApplyError(index, describe(op), exc.strerror or str(exc), errno=exc.errno) from exc

    # ------------------------------------------------------------------ neighbours

    def refresh(self) -> list[str]:
        """Re-resolve every DR real server's MAC and update the ones that changed
        (a replaced NIC, a VM moved), and every TUN real server's tunnel (_refresh_tunnels).
        Returns the addresses whose entry changed."""
        if self._pic is None:
            self._pic = self._load()
            self._just_loaded = True
        pic = self._pic
        tunnels = self._refresh_tunnels(pic)
        changed: dict[str, Neighbour] = {}
        for rip, old in pic.neighbours.items():
            try:
                nb = neigh.resolve(self._netns, rip)
            except neigh.NeighbourError:
                continue  # keep the last known MAC: better than dropping the real server here
            if nb != old:
                changed[rip] = nb
        if not changed:
            return tunnels
        deletes: set[Element] = set()
        adds: set[Element] = set()
        for rip, nb in changed.items():
            deletes |= ruleset.neighbour_elements(rip, pic.neighbours[rip])
            adds |= ruleset.neighbour_elements(rip, nb)
        devices = dict(pic.device_chains)
        script = list(ruleset.elements_text("delete", deletes)) + list(ruleset.elements_text("add", adds))
        for nb in changed.values():
            if nb.ifindex not in devices:
                script.insert(0, ruleset.device_chain_text(nb.device, nb.ifindex))
                devices[nb.ifindex] = nb.device
        try:
            pic.genid = self._run(pic, "".join(script))
        except NftError:
            self._pic = None
            raise
        pic.neighbours.update(changed)
        pic.device_chains = devices
        return sorted(set(changed) | set(tunnels))

    def _refresh_tunnels(self, pic: _Picture) -> list[str]:
        """TUN: every needed IPIP device exists, goes where the route to its real server
        goes now, and ``tun_dev`` names it; fixes what does not (a device deleted by hand,
        a new source address). Returns the real servers whose tunnel was changed."""
        state = pic.tunnels
        if not (state.refs or state.devices or state.elements):
            return []
        try:
            tun = state.change(self._netns, (), pic.state.services, verify=True)
        except tunnel.TunnelError:
            return []  # no route now: keep what there is (as for a DR neighbour)
        if not (tun.create or tun.remove or tun.adds or tun.deletes or tun.extension):
            return []
        devices = dict(pic.device_chains)
        script = [ruleset.tun_extension_text()] if tun.extension else []
        for ifindex, device in sorted(tun.underlays.items()):
            if ifindex not in devices:
                script.append(ruleset.device_chain_text(device, ifindex))
                devices[ifindex] = device
        script += list(ruleset.elements_text("delete", tun.deletes)) + list(ruleset.elements_text("add", tun.adds))
        try:
            tun.make_devices()  # removes what it made if it fails
        except tunnel.TunnelError:
            return []  # keep what there is; the next refresh tries again
        try:
            if script:
                pic.genid = self._run(pic, "".join(script))
        except NftError:
            tun.rollback()
            self._pic = None
            raise
        pic.tunnels = tun.commit()
        pic.device_chains = devices
        return sorted({t.remote for t in tun.create} | {t.remote for t in tun.remove})

    # ------------------------------------------------------------------ capabilities

    def problems(self, desired: DesiredState) -> list[FieldError]:
        with no_gc():
            return self._problems(desired)

    def _problems(self, desired: DesiredState) -> list[FieldError]:
        problems: list[FieldError] = []
        for name in desired.sysctls:
            with entered(self._netns):
                present = sysctl.exists(name)
            if not present:
                problems.append(FieldError(f"sysctls.{name}", "does not exist on this kernel"))
        # Only services not seen by the last call are checked. The set operations on the
        # objects' ids run in C: an incremental sync with 10,000 services spent 10 ms
        # here looping over all of them in Python. ``_checked`` holds each service it
        # names, so an id cannot be reused by another object while it is in there.
        current = dict(zip(map(id, desired.services.values()), desired.services.values(), strict=True))
        checked = self._checked
        for sid in checked.keys() - current.keys():
            del checked[sid]
            self._troubled.pop(sid, None)
        for sid in current.keys() - checked.keys():
            svc = current[sid]
            found: Sequence[FieldError] = ()
            if not _plainly_possible(svc):
                # The field path (str of a key costs ~1 us) only for a service with problems.
                found = _service_problems(f"services[{svc.name or svc.key}]", svc, self._tun_supported)
            checked[sid] = (svc, found)
            if found:
                self._troubled[sid] = found
        if self._troubled:
            for sid in current:  # in the desired state's order
                problems += self._troubled.get(sid, ())
        return problems

    def _tun_supported(self) -> bool:
        if self._tun is None:
            self._tun = tun_supported()
        return self._tun


_PLAIN_FLAGS = frozenset({"sh-port", "sh-fallback", "mh-port", "mh-fallback"})


def _plainly_possible(svc: VirtualService) -> bool:
    """A quick test that passes for what the nftables backend can do without question
    (IPv4, rr/wrr/sh/mh, one method of NAT or DR, no thresholds, ...): ``problems`` of a
    10,000-service state then costs a few microseconds per service. Anything else gets
    the full check below, which names each problem."""
    key = svc.key
    if key.fwmark or key.family != 4 or svc.persistence or svc.scheduler not in ruleset.SUPPORTED_SCHEDULERS:
        return False
    if svc.flags and not svc.flags <= _PLAIN_FLAGS:
        return False
    rss = svc.realservers
    if not rss:
        return True
    forward = rss[0].forward
    if forward is Forward.NAT:
        for rs in rss:
            if rs.forward is not forward or rs.u_thresh or rs.l_thresh or not rs.port:
                return False
        return True
    if forward is Forward.DR:
        for rs in rss:
            if rs.forward is not forward or rs.u_thresh or rs.l_thresh:
                return False
        return len({rs.address for rs in rss}) == len(rss)
    return False


def _service_problems(where: str, svc: VirtualService, tun_supported: Callable[[], bool]) -> list[FieldError]:
    out: list[FieldError] = []
    if any(rs.forward is Forward.TUN for rs in svc.realservers) and not tun_supported():
        reason = (
            "forward tun needs IPIP tunnels, and this kernel has no ipip support "
            "(CONFIG_NET_IPIP unset, no ipip module); use dr or nat"
        )
        out.append(FieldError(f"{where}.realservers", reason))
    key = svc.key
    if key.fwmark:
        out.append(FieldError(f"{where}.fwmark", "fwmark services are not supported by the nftables backend"))
        return out
    if key.family != 4:
        out.append(FieldError(f"{where}.vip", "IPv6 services are not supported by the nftables backend yet"))
        return out
    if svc.scheduler not in ruleset.SUPPORTED_SCHEDULERS:
        out.append(
            FieldError(
                f"{where}.scheduler",
                f"{svc.scheduler!r} needs per-connection counts nftables does not keep; "
                "the nftables backend supports rr, wrr, sh and mh",
            )
        )
    if svc.persistence:
        out.append(FieldError(f"{where}.persistence", "not supported by the nftables backend; sh or mh give client affinity"))
    if "ops" in svc.flags:
        out.append(FieldError(f"{where}.flags", "one-packet scheduling (ops) is not supported by the nftables backend"))
    raw = sorted(f for f in svc.flags if f.startswith("flag-"))
    if raw:
        out.append(FieldError(f"{where}.flags", f"raw scheduler flags {', '.join(raw)} are not supported by the nftables backend"))
    methods = {rs.forward for rs in svc.realservers}
    if len(methods) > 1:
        out.append(
            FieldError(f"{where}.realservers", "the nftables backend needs one forwarding method per service (dr, tun or nat)")
        )
    seen: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
    for i, rs in enumerate(svc.realservers):
        at = f"{where}.realservers[{i}]"
        if rs.forward is Forward.LOCAL:
            out.append(FieldError(f"{at}.forward", "forward local is not supported by the nftables backend"))
        if rs.u_thresh or rs.l_thresh:
            out.append(FieldError(f"{at}", "connection thresholds (u_thresh/l_thresh) are not supported by the nftables backend"))
        if rs.forward is Forward.NAT and rs.port == 0:
            out.append(FieldError(f"{at}.port", "a NAT real server needs a port (0 is not a port to DNAT to)"))
        if rs.forward is Forward.DR or rs.forward is Forward.TUN:
            if rs.address in seen:
                out.append(FieldError(f"{at}.address", f"{rs.address} appears twice in one {rs.forward.value.upper()} service"))
            seen.add(rs.address)
    return out


def _tunnel_apply_error(
    exc: tunnel.TunnelError,
    touched: Mapping[ServiceKey, int],
    services: Mapping[ServiceKey, VirtualService],
    first_index: int,
    ops: Sequence[Operation],
) -> ApplyError:
    """The ApplyError for a tunnel that cannot be made, at the first operation on a
    service that has that real server (nothing of the plan is applied)."""
    index = next((i for k, i in touched.items() if exc.rip in tunnel.tun_addresses(services.get(k))), first_index)
    return ApplyError(index, describe(ops[index]), str(exc))


def _stale_counters(
    counters: set[Element], services: Mapping[ServiceKey, VirtualService], keys: Iterable[ServiceKey]
) -> set[Element]:
    """Counter elements (made by the packet path) of real servers that no longer exist:
    NAT ``VIP . proto . RIP . RPORT``, DR ``VIP . proto . port . RIP``. ``keys``: the
    services that can own them (at least all on the counters' VIPs)."""
    live: set[tuple[str | int, ...]] = set()
    vips = {(c.key[0], c.key[1]) for c in counters}
    for key in keys:
        if key.address is None:
            continue
        vip, proto = ruleset.ip_text(key.address), str(key.protocol)
        if (vip, proto) in vips:
            for rs in services[key].realservers:
                if rs.forward is Forward.NAT:
                    live.add((vip, proto, ruleset.ip_text(rs.address), rs.port))
                else:
                    live.add((vip, proto, key.port, int(rs.address)))
    return {c for c in counters if c.key not in live}


def _next_state(state: ObservedState, ops: Sequence[Operation]) -> ObservedState:
    """``planner.apply_ops`` without counters, O(ops): each touched service's real servers
    are collected in a dict and sorted once (apply_ops re-sorts per operation, which is
    quadratic for a cold sync of services with many real servers). Raises KeyError for
    an operation on a service that does not exist, as apply_ops does.

    A new service whose AddRealServers carry exactly its own real servers, in order (what
    the planner emits), is kept as the AddService's object: no per-real-server dict."""
    services = dict(state.services)
    # (address, port) tuples, not RealServerKey: building 100,000 frozen keys is slow.
    pending: dict[ServiceKey, dict[tuple[object, int], RealServer]] = {}
    # New services still on the fast path: key -> [service, real servers added so far].
    fresh: dict[ServiceKey, list[Any]] = {}
    last: tuple[ServiceKey | None, list[Any] | None] = (None, None)
    timeouts = state.timeouts

    def realservers_of(k: ServiceKey) -> dict[tuple[object, int], RealServer]:
        f = fresh.pop(k, None)
        if f is not None:  # leaves the fast path: what was added so far
            pending[k] = {(r.address, r.port): r for r in f[0].realservers[: f[1]]}
        elif k not in pending:
            pending[k] = {(r.address, r.port): r for r in services[k].realservers}
        return pending[k]

    for op in ops:
        match op:
            case AddRealServer(service=k, realserver=r):
                # The same key object for all of a service's AddRealServers: one dict lookup.
                f = last[1] if k is last[0] else fresh.get(k)
                last = (k, f)
                if f is not None and f[1] < len(f[0].realservers) and f[0].realservers[f[1]] is r:
                    f[1] += 1
                    continue
                last = (None, None)
                realservers_of(k)[(r.address, r.port)] = r
            case AddService(service=s) if s.key not in services and s.key not in pending:
                fresh[s.key] = [s, 0]
                services[s.key] = s
            case AddService(service=s) | EditService(service=s):
                if s.key in fresh:
                    realservers_of(s.key)
                if s.key not in pending:
                    old = services.get(s.key)
                    pending[s.key] = {(r.address, r.port): r for r in old.realservers} if old else {}
                services[s.key] = s
                last = (None, None)
            case DeleteService(key=k):
                del services[k]
                pending.pop(k, None)
                fresh.pop(k, None)
                last = (None, None)
            case EditRealServer(service=k, realserver=r):
                realservers_of(k)[(r.address, r.port)] = r
                last = (None, None)
            case DeleteRealServer(service=k, realserver=rk):
                del realservers_of(k)[(rk.address, rk.port)]
                last = (None, None)
            case SetTimeouts(timeouts=t):
                timeouts = t
    for key, (svc, added) in fresh.items():
        if added != len(svc.realservers):
            pending[key] = {(r.address, r.port): r for r in svc.realservers[:added]}
    for key, realservers in pending.items():
        svc = services[key]
        rss = tuple(realservers.values())
        if rss != svc.realservers:  # equal for a new service: AddService carried the full list
            rss = tuple(sorted(rss, key=lambda r: (r.address.version, int(r.address), r.port)))
            services[key] = dataclasses.replace(svc, realservers=rss)
    return ObservedState(services=services, timeouts=timeouts)
