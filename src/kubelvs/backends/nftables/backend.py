"""The nftables data plane: read the ``kubelvs`` tables back into the model, apply a
plan as ONE nft transaction (all of it or nothing).

The backend keeps a picture of the elements it wrote (rebuilt by every ``read``), so
a plan is turned into an element diff of only the services it touches: a one real
server change with 10,000 services present is a transaction of a few elements.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

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
from . import neigh, ruleset
from .nft import Nft, NftError
from .ruleset import Element, Neighbour

__all__ = ["NftablesBackend", "tun_supported"]

_PER_SERVICE_SETS = frozenset({"nat_svc", "dr_svc", "nat_slots", "dr_slots", "nat_rs", "dr_rs"})
_NEIGHBOUR_SETS = frozenset({"dr_mac", "dr_smac", "dr_dev"})


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
    own: dict[ServiceKey, frozenset[Element]] = field(default_factory=dict)
    counters: set[Element] = field(default_factory=set)  # nat_in/nat_out elements seen by the last read
    dr_of: dict[ServiceKey, frozenset[str]] = field(default_factory=dict)
    dr_refs: Counter[str] = field(default_factory=Counter)  # DR real server -> services using it
    neighbours: dict[str, Neighbour] = field(default_factory=dict)
    device_chains: dict[int, str] = field(default_factory=dict)
    dirty: set[ServiceKey] = field(default_factory=set)  # kernel elements differ from the model


class NftablesBackend:
    """nftables in one network namespace. Not thread-safe."""

    name = "nftables"

    def __init__(self, *, netns: str | None = None) -> None:
        self._netns = netns
        self._nft = Nft(netns=netns)
        self._pic: _Picture | None = None
        # problems() runs before every sync; a desired state mostly holds the same
        # VirtualService objects as the last one, so their findings are kept by identity.
        self._checked: dict[int, tuple[VirtualService, list[FieldError]]] = {}
        self._tun: bool | None = None

    def close(self) -> None:
        self._pic = None

    # ------------------------------------------------------------------ read

    def read(self, *, sysctls: Iterable[str] = ()) -> ObservedState:
        self._pic = self._load()
        observed = self._pic.state
        values: dict[str, int] = {}
        with entered(self._netns):
            for name in sysctls:
                value = sysctl.read(name)
                if value is not None:
                    values[name] = value
        return ObservedState(services=observed.services, timeouts=observed.timeouts, sysctls=values, stats=observed.stats)

    def _load(self) -> _Picture:
        docs = [d for d in (self._nft.list_table(f, ruleset.TABLE) for f in ("ip", "netdev")) if d is not None]
        parsed = ruleset.parse_tables(docs)
        for family, comment in parsed.tables.items():
            if comment != ruleset.SKELETON_VERSION:
                raise BackendError(
                    f"table {family} {ruleset.TABLE} was not made by this version of kubelvs "
                    f"(no {ruleset.SKELETON_VERSION} marker chain); remove it with: nft delete table {family} {ruleset.TABLE}"
                )
        state = ObservedState(services=parsed.services, timeouts=parsed.timeouts, stats=parsed.stats)
        pic = _Picture(state=state, skeleton=set(parsed.tables) == {"ip", "netdev"})
        pic.device_chains = dict(parsed.device_chains)
        actual: dict[ServiceKey, set[Element]] = {}
        marks: dict[int, dict[str, str | int]] = {}
        for e in parsed.elements:
            if e.set in _PER_SERVICE_SETS:
                actual.setdefault(_key_of(e), set()).add(e)
            elif e.set in _NEIGHBOUR_SETS:
                assert isinstance(e.value, (str, int))
                marks.setdefault(int(e.key[0]), {})[e.set] = e.value
            elif e.set in ("nat_in", "nat_out", "dr_in"):
                pic.counters.add(e)
        for key, elements in actual.items():
            pic.own[key] = frozenset(elements)
        for key, svc in parsed.services.items():
            try:
                built = ruleset.service_elements(svc)
            except ValueError:
                pic.dirty.add(key)
                continue
            if built.own != pic.own.get(key):
                pic.dirty.add(key)  # e.g. slots edited by hand: rewritten at the next apply
            pic.dr_of[key] = built.dr_addresses
            pic.dr_refs.update(built.dr_addresses)
        pic.dirty |= set(actual) - set(parsed.services)  # elements of no service
        for mark, values in marks.items():
            if set(values) == _NEIGHBOUR_SETS:
                device = str(values["dr_dev"])
                ifindex = next((i for i, d in pic.device_chains.items() if d == device), 0)
                pic.neighbours[str(ipaddress.IPv4Address(mark))] = Neighbour(
                    mac=str(values["dr_mac"]), own_mac=str(values["dr_smac"]), device=device, ifindex=ifindex
                )
        return pic

    # ------------------------------------------------------------------ apply

    def apply(self, ops: Sequence[Operation]) -> None:
        if not ops:
            return
        for index, op in enumerate(ops):
            if isinstance(op, SetSysctl):
                self._set_sysctl(index, op)
        model_ops = [(i, op) for i, op in enumerate(ops) if not isinstance(op, SetSysctl)]
        if not model_ops:
            return
        if self._pic is None:
            self._pic = self._load()
        pic = self._pic
        first_index, first_op = model_ops[0]
        try:
            new_state = _next_state(pic.state, [op for _, op in model_ops])
        except KeyError as exc:
            raise ApplyError(first_index, describe(first_op), f"the service does not exist in the kernel: {exc}") from exc

        touched: dict[ServiceKey, int] = {}
        for index, op in model_ops:
            key = _op_key(op)
            if key is not None:
                touched.setdefault(key, index)
        for key in pic.dirty:
            touched.setdefault(key, first_index)

        adds: set[Element] = set()
        deletes: set[Element] = set()
        new_own: dict[ServiceKey, frozenset[Element]] = {}
        new_dr_of: dict[ServiceKey, frozenset[str]] = {}
        for key, index in touched.items():
            svc = new_state.services.get(key)
            if svc is None:
                built = ruleset.ServiceElements(frozenset(), frozenset())
            else:
                try:
                    built = ruleset.service_elements(svc)
                except ValueError as exc:
                    raise ApplyError(index, describe(ops[index]), str(exc)) from exc
            old = pic.own.get(key)
            if old:
                deletes.update(old - built.own)
                adds.update(built.own - old)
            else:
                adds.update(built.own)  # a new service: no diff to compute (the cold-sync path)
            new_own[key] = built.own
            new_dr_of[key] = built.dr_addresses

        # Counters the packet path created for real servers that no longer exist (known
        # from the last read; nobody else deletes them, so they are still there).
        garbage = _stale_counters(pic.counters, new_state) if pic.counters else set()
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

        script: list[str] = []
        if not pic.skeleton:
            script.append(ruleset.skeleton_text())
        for ifindex, device in sorted(devices.items()):
            if ifindex not in pic.device_chains:
                script.append(ruleset.device_chain_text(device, ifindex))
        # Deletions first: an element whose value changed is deleted and re-added.
        script += ruleset.elements_text("delete", deletes)
        script += ruleset.elements_text("add", adds)
        timeouts = next((op.timeouts for _, op in model_ops if isinstance(op, SetTimeouts)), None)
        if timeouts is not None:
            script.append(ruleset.timeouts_text(timeouts, replace=pic.state.timeouts is not None))
        for ifindex in sorted(set(pic.device_chains) - set(devices)):
            script.append(ruleset.delete_device_chain_text(ifindex))
        if script:
            try:
                self._nft.run_script("".join(script))
            except NftError as exc:
                self._pic = None  # unknown now: the next apply or read starts from the kernel
                more = f" (and {len(model_ops) - 1} more operations in the same transaction, none applied)"
                raise ApplyError(first_index, describe(first_op) + (more if len(model_ops) > 1 else ""), str(exc)) from exc

        pic.state = ObservedState(services=new_state.services, timeouts=new_state.timeouts, stats=new_state.stats)
        pic.skeleton = True
        for key in touched:
            if new_own[key]:
                pic.own[key] = new_own[key]
            else:
                pic.own.pop(key, None)
            pic.dr_of[key] = new_dr_of[key]
        pic.counters -= garbage
        pic.dr_refs = +dr_refs
        pic.neighbours = neighbours
        pic.device_chains = devices
        pic.dirty = set()

    def _set_sysctl(self, index: int, op: SetSysctl) -> None:
        try:
            with entered(self._netns):
                sysctl.write(op.name, op.value)
        except OSError as exc:
            raise ApplyError(index, describe(op), exc.strerror or str(exc), errno=exc.errno) from exc

    # ------------------------------------------------------------------ neighbours

    def refresh(self) -> list[str]:
        """Re-resolve every DR real server's MAC and update the ones that changed
        (a replaced NIC, a VM moved). Returns the addresses whose entry changed."""
        if self._pic is None:
            self._pic = self._load()
        pic = self._pic
        changed: dict[str, Neighbour] = {}
        for rip, old in pic.neighbours.items():
            try:
                nb = neigh.resolve(self._netns, rip)
            except neigh.NeighbourError:
                continue  # keep the last known MAC: better than dropping the real server here
            if nb != old:
                changed[rip] = nb
        if not changed:
            return []
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
            self._nft.run_script("".join(script))
        except NftError:
            self._pic = None
            raise
        pic.neighbours.update(changed)
        pic.device_chains = devices
        return sorted(changed)

    # ------------------------------------------------------------------ capabilities

    def problems(self, desired: DesiredState) -> list[FieldError]:
        problems: list[FieldError] = []
        for name in desired.sysctls:
            with entered(self._netns):
                present = sysctl.exists(name)
            if not present:
                problems.append(FieldError(f"sysctls.{name}", "does not exist on this kernel"))
        checked: dict[int, tuple[VirtualService, list[FieldError]]] = {}
        for key, svc in desired.services.items():
            hit = self._checked.get(id(svc))
            if hit is not None and hit[0] is svc:
                found = hit[1]
            else:
                found = _service_problems(f"services[{svc.name or key}]", svc, self._tun_supported)
            checked[id(svc)] = (svc, found)
            problems += found
        self._checked = checked
        return problems

    def _tun_supported(self) -> bool:
        if self._tun is None:
            self._tun = tun_supported()
        return self._tun


def _service_problems(where: str, svc: VirtualService, tun_supported: Callable[[], bool]) -> list[FieldError]:
    out: list[FieldError] = []
    if any(rs.forward is Forward.TUN for rs in svc.realservers):
        reason = (
            "forward tun (IPIP) is not implemented by the nftables backend yet; use dr or nat"
            if tun_supported()
            else "forward tun needs IPIP tunnels, and this kernel has no ipip support "
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
    if len(methods - {Forward.TUN}) > 1:
        out.append(
            FieldError(f"{where}.realservers", "the nftables backend needs one forwarding method per service (dr or nat)")
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
        if rs.forward is Forward.DR:
            if rs.address in seen:
                out.append(FieldError(f"{at}.address", f"{rs.address} appears twice in one DR service"))
            seen.add(rs.address)
    return out


def _stale_counters(counters: set[Element], state: ObservedState) -> set[Element]:
    """Counter elements (made by the packet path) of real servers that no longer exist:
    NAT ``VIP . proto . RIP . RPORT``, DR ``VIP . proto . port . RIP``."""
    live: set[tuple[str | int, ...]] = set()
    vips = {(c.key[0], c.key[1]) for c in counters}
    for key, svc in state.services.items():
        vip, proto = str(key.address), str(key.protocol)
        if (vip, proto) in vips:
            for rs in svc.realservers:
                if rs.forward is Forward.NAT:
                    live.add((vip, proto, str(rs.address), rs.port))
                else:
                    live.add((vip, proto, key.port, int(rs.address)))
    return {c for c in counters if c.key not in live}


def _key_of(e: Element) -> ServiceKey:
    vip, proto, port = e.key[:3]
    return ruleset.service_key((vip, proto, port))


def _op_key(op: Operation) -> ServiceKey | None:
    match op:
        case AddService(service=s) | EditService(service=s):
            return s.key
        case DeleteService(key=k):
            return k
        case AddRealServer(service=k) | EditRealServer(service=k) | DeleteRealServer(service=k):
            return k
    return None


def _next_state(state: ObservedState, ops: Sequence[Operation]) -> ObservedState:
    """``planner.apply_ops`` without counters, O(ops): each touched service's real servers
    are collected in a dict and sorted once (apply_ops re-sorts per operation, which is
    quadratic for a cold sync of services with many real servers). Raises KeyError for
    an operation on a service that does not exist, as apply_ops does."""
    services = dict(state.services)
    # (address, port) tuples, not RealServerKey: building 100,000 frozen keys is slow.
    pending: dict[ServiceKey, dict[tuple[object, int], RealServer]] = {}
    timeouts = state.timeouts

    def realservers_of(k: ServiceKey) -> dict[tuple[object, int], RealServer]:
        if k not in pending:
            pending[k] = {(r.address, r.port): r for r in services[k].realservers}
        return pending[k]

    for op in ops:
        match op:
            case AddService(service=s) | EditService(service=s):
                if s.key not in pending:
                    old = services.get(s.key)
                    pending[s.key] = {(r.address, r.port): r for r in old.realservers} if old else {}
                services[s.key] = s
            case DeleteService(key=k):
                del services[k]
                pending.pop(k, None)
            case AddRealServer(service=k, realserver=r) | EditRealServer(service=k, realserver=r):
                realservers_of(k)[(r.address, r.port)] = r
            case DeleteRealServer(service=k, realserver=rk):
                del realservers_of(k)[(rk.address, rk.port)]
            case SetTimeouts(timeouts=t):
                timeouts = t
    for key, realservers in pending.items():
        svc = services[key]
        rss = tuple(realservers.values())
        if rss != svc.realservers:  # equal for a new service: AddService carried the full list
            rss = tuple(sorted(rss, key=lambda r: (r.address.version, int(r.address), r.port)))
            services[key] = dataclasses.replace(svc, realservers=rss)
    return ObservedState(services=services, timeouts=timeouts)
