"""The nftables data plane (nftables backend): read the ``kubelvs`` tables back into the
model, apply a plan as ONE nft transaction, keep the DR neighbours and TUN tunnels
current, and tell when someone else changed the ruleset.

The backend keeps a picture of what the tables hold (picture.py, rebuilt by every
full ``read``), so a plan becomes an element diff of only the services it touches
(transaction.py): a one-real-server change with 10,000 services present is a
transaction of a few elements. A read notices damage to the tables (a table, map,
chain or element missing or wrong) and the next apply repairs it, even with an empty
plan.

When part of a plan cannot be applied - a DR real server that does not answer ARP, a
TUN real server without a route, elements nft refuses - only that part is left out:
the rest goes into the one transaction, and ``PartialApplyError`` names what was not
applied (partial.py). The kernel then holds ``planner.apply_ops(before, the plan
without them)``.

Every committed nftables transaction in a namespace, anyone's, moves the ruleset's
generation id. The backend notes it after each read and around each of its own
commits: ``changed_elsewhere`` compares it with the kernel's (one netlink round trip),
and a read of an unchanged ruleset only reads the counters.

One cohesive thing (over 500 lines): the apply loop and the read-back share the picture
and the generation bookkeeping; the pure parts already live beside it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Self

from ...bulk import no_gc
from ...errors import BackendError, CapabilityError, FieldError
from ...kernel import sysctl
from ...kernel.netns import entered
from ...model import (
    NO_TRAFFIC,
    ConnectionSync,
    DesiredState,
    FlowEntry,
    Forward,
    ObservedState,
    Prediction,
    Protocol,
    RealServerKey,
    RealServerStats,
    ServiceKey,
)
from ...planner import Operation, SetSysctl, SetTimeouts
from . import flowhash, neigh, picture, transaction, tunnel
from .capabilities import Capabilities, tun_supported
from .elements import Neighbour, elements_text, neighbour_elements
from .netlink import NftNetlink
from .nft import Nft, NftError
from .partial import Culprits, Failures, introducing, locate, unappliable
from .picture import Picture
from .schema import DEVICE_CHAIN_RULES, Element, Found, device_chain_name, device_chain_text, repair_text
from .transaction import Resolver, ServicesFailed, Transaction, build, key_of, touched_by

__all__ = ["NftablesBackend", "tun_supported"]

_IPPROTO = {Protocol.TCP: 6, Protocol.UDP: 17, Protocol.SCTP: 132}
#: enum tcp_conntrack (nf_conntrack_tcp.h), as conntrack -L names them.
_TCP_STATES = (
    "NONE", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT", "LAST_ACK", "TIME_WAIT", "CLOSE",
    "SYN_SENT2",
)  # fmt: skip

_GEN_MASK = 0xFFFFFFFF


class NftablesBackend:
    """nftables in one network namespace. Not thread-safe. A context manager: ``with
    NftablesBackend(netns=...) as backend:`` closes it on exit."""

    name = "nftables"
    tracks_connections = False  # see read_stats

    def __init__(self, *, netns: str | None = None) -> None:
        self._netns = netns
        self._nft = Nft(netns=netns)
        self._pic: Picture | None = None
        self._nl: NftNetlink | None = None
        # refresh() had to load the picture: the read() right after it (the director's
        # full sync) takes that one instead of dumping the kernel a second time.
        self._just_loaded = False
        self._capabilities = Capabilities(netns)
        # The ruleset generation as of our last read or commit, and whether anyone else
        # committed since our last full read (then the picture may be wrong).
        self._gen: int | None = None
        self._foreign = False

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._pic = None
        self._gen = None
        self._nft.close()
        if self._nl is not None:
            self._nl.close()
            self._nl = None

    def _netlink(self) -> NftNetlink:
        """The backend's netlink socket, opened on first use and kept: closing a netlink
        socket waits for an RCU grace period (~10 ms measured), as much as the whole
        rest of a one-real-server change."""
        if self._nl is None:
            self._nl = NftNetlink(self._netns)
        return self._nl

    # ------------------------------------------------------------------ read

    def read(self, *, sysctls: Iterable[str] = ()) -> ObservedState:
        pic = self._pic
        if pic is None or not self._just_loaded:
            if pic is not None and pic.genid is not None and pic.genid == self._netlink().generation():
                # Nobody has committed anything since the picture was exact (a full resync
                # of an unchanged table): only the counters the packet path keeps moved.
                with no_gc():
                    if not picture.read_counters(self._netlink(), pic):
                        pic = self._load()
            else:
                pic = self._load()
        self._just_loaded = False
        observed = pic.state
        values: dict[str, int] = {}
        with entered(self._netns):
            for name in sysctls:
                value = sysctl.read(name)
                if value is not None:
                    values[name] = value
        # The services dict is the caller's to update in place (the director does), so a
        # copy: the picture's own is updated by the next apply.
        return ObservedState(
            services=dict(observed.services), timeouts=observed.timeouts, sysctls=values, stats=observed.stats
        )

    def read_stats(
        self, keys: Iterable[ServiceKey]
    ) -> dict[tuple[ServiceKey, RealServerKey], RealServerStats]:
        """The nftables backend keeps no connection table of its own (DR is stateless; NAT
        connections live in conntrack and go on after their real server is deleted), so
        a leaving real server has nothing to drain: its connection counts are 0."""
        pic = self._pic if self._pic is not None else self._load()
        out: dict[tuple[ServiceKey, RealServerKey], RealServerStats] = {}
        for key in keys:
            vs = pic.state.services.get(key)
            for rs in vs.realservers if vs is not None else ():
                out[(key, rs.key)] = NO_TRAFFIC
        return out

    def _load(self) -> Picture:
        with no_gc():
            pic = picture.load(self._netlink(), self._netns)
        self._pic = pic
        self._gen = pic.genid
        self._foreign = False
        self._just_loaded = False
        return pic

    def _current(self) -> Picture:
        """The picture, read again unless it is exact for the ruleset as it is now."""
        pic = self._pic
        if pic is None or pic.genid is None or pic.genid != self._netlink().generation():
            pic = self._load()
            self._just_loaded = True
        return pic

    def changed_elsewhere(self) -> bool:
        """True when the ruleset generation moved since this backend's last read or
        commit by a commit that was not its own (anyone's, in any table: the generation is
        one number per namespace), until the next full ``read``. False before the first
        read (there is nothing it could have changed yet) and after ``close``. One netlink
        request."""
        if self._gen is None:
            return False
        return self._foreign or self._netlink().generation() != self._gen

    def _commit(self, script: str) -> None:
        """Run ``script`` as one transaction, noting the generations around it: exactly one
        more after it than before, and before it what we last saw, means that no one else
        committed (our picture, updated by the caller, is then exact)."""
        nl = self._netlink()
        before = nl.generation()
        self._nft.run_script(script)
        after = nl.generation()
        if self._gen is None or before != self._gen or after != (before + 1) & _GEN_MASK:
            self._foreign = True
        self._gen = after
        if self._pic is not None:
            self._pic.genid = None if self._foreign else after

    # ------------------------------------------------------------------ apply

    def apply(self, ops: Sequence[Operation]) -> None:
        """Apply ``ops`` as one nft transaction (sysctl writes, which are not nftables,
        first), and repair what the last read found damaged. What cannot be applied is
        left out and named by ``PartialApplyError``; everything else is applied."""
        with no_gc():
            failures = Failures(ops)
            model: list[int] = []
            for index, op in enumerate(ops):
                if type(op) is SetSysctl:
                    self._set_sysctl(index, op, failures)
                else:
                    model.append(index)
            self._just_loaded = False
            pic = self._pic
            if pic is None and model:
                pic = self._load()
            if pic is not None:
                self._apply(pic, ops, model, failures)
        error = failures.error()
        if error is not None:
            raise error

    def _set_sysctl(self, index: int, op: SetSysctl, failures: Failures) -> None:
        try:
            with entered(self._netns):
                sysctl.write(op.name, op.value)
        except OSError as exc:
            failures.fail(index, exc.strerror or str(exc))

    def _apply(self, pic: Picture, ops: Sequence[Operation], model: list[int], failures: Failures) -> None:
        """Build, commit; when something cannot be applied, leave it out and build again.
        Every round leaves out at least one more operation or service, or ends."""
        resolve = Resolver(self._netns)
        exclude: set[ServiceKey] = set()
        garbage = True
        rejected = False
        for _ in range(len(model) + len(pic.actual) + 4):
            keep = failures.keep(model)
            try:
                tx = build(
                    pic, ops, keep, netns=self._netns, resolve=resolve, exclude=exclude, garbage=garbage
                )
            except KeyError:
                found = unappliable(pic.services, ops, keep)
                if not found:
                    raise
                for index, reason in found.items():
                    failures.fail(index, reason)
                continue
            except ServicesFailed as exc:
                self._leave_out(exc.failed, ops, keep, failures, exclude)
                continue
            except tunnel.TunnelError as exc:
                if self._blame_tunnel(exc, ops, keep, failures):
                    continue
                break
            if self._blame_neighbours(tx, ops, keep, failures):
                continue  # build again without them (their neighbours are remembered)
            if not tx.pieces:
                transaction.commit(pic, tx)
                break
            try:
                tx.tun.make_devices()  # removes what it made if it fails
            except tunnel.TunnelError as exc:
                if self._blame_tunnel(exc, ops, keep, failures):
                    continue
                break
            try:
                self._commit(tx.script)
            except NftError as exc:
                tx.tun.rollback()
                rejected = True
                culprits = locate(exc, tx.pieces) or self._bisect(pic, ops, keep, exclude, garbage, resolve)
                if not self._leave_out_culprits(culprits, ops, keep, failures, exclude, garbage):
                    for index in keep:  # what nft refused is what everything else needs
                        failures.fail(index, str(exc))
                    break
                garbage = garbage and not culprits.garbage
                continue
            transaction.commit(pic, tx)
            break
        else:  # cannot happen: every round leaves something out
            for index in failures.keep(model):
                failures.fail(index, "not applied: the transaction could not be narrowed down")
        if rejected:
            # nft refused what the picture said would apply: the kernel is not as pictured
            # for those services. The next read or apply reads it again.
            self._pic = None

    @classmethod
    def _leave_out_culprits(
        cls,
        culprits: Culprits,
        ops: Sequence[Operation],
        keep: Sequence[int],
        failures: Failures,
        exclude: set[ServiceKey],
        garbage: bool,
    ) -> bool:
        """Leave out what nft refused; False when that is nothing the plan or a repair
        brought (the skeleton, an ingress hook, the neighbour of a real server the plan
        does not add): then nothing can be applied."""
        if culprits.core:
            return False
        progress = bool(culprits.services.keys() - exclude) or (culprits.garbage and garbage)
        cls._leave_out(culprits.services, ops, keep, failures, exclude)
        for rip, reason in culprits.rips.items():
            for index in introducing(ops, keep, rip, Forward.DR) + introducing(ops, keep, rip, Forward.TUN):
                failures.fail(index, reason)
                progress = True
        if culprits.timeouts is not None:
            for index in keep:
                if type(ops[index]) is SetTimeouts:
                    failures.fail(index, culprits.timeouts)
                    progress = True
        return progress

    @staticmethod
    def _leave_out(
        services: dict[ServiceKey, str],
        ops: Sequence[Operation],
        keep: Sequence[int],
        failures: Failures,
        exclude: set[ServiceKey],
    ) -> None:
        """The services' operations fail (the first with ``reason``, the later ones are
        skipped), and their repairs are left out too."""
        first = touched_by(ops, keep)
        for key, reason in services.items():
            exclude.add(key)
            if key in first:
                failures.fail(first[key], reason)

    @staticmethod
    def _blame_tunnel(
        exc: tunnel.TunnelError, ops: Sequence[Operation], keep: Sequence[int], failures: Failures
    ) -> bool:
        """The operations that add the TUN real server whose tunnel cannot be made fail
        (True). When the plan adds no such real server (the tunnel of a service it leaves
        alone is gone and cannot be made again), nothing of the plan can be applied (False)."""
        blamed = introducing(ops, keep, exc.rip, Forward.TUN) if exc.rip is not None else []
        for index in blamed or keep:
            failures.fail(index, str(exc))
        return bool(blamed)

    @staticmethod
    def _blame_neighbours(
        tx: Transaction, ops: Sequence[Operation], keep: Sequence[int], failures: Failures
    ) -> bool:
        """The operations that add a DR real server without a neighbour fail; True when
        there were any. One that only services the plan leaves alone use keeps its
        missing neighbour (as before the apply) and is looked up again next time."""
        blamed = False
        for rip, reason in tx.unresolved.items():
            for index in introducing(ops, keep, rip, Forward.DR):
                failures.fail(index, reason)
                blamed = True
        return blamed

    def _bisect(
        self,
        pic: Picture,
        ops: Sequence[Operation],
        keep: Sequence[int],
        exclude: set[ServiceKey],
        garbage: bool,
        resolve: Resolver,
    ) -> Culprits:
        """What nft refuses when its error does not say: transactions over halves of the
        services, checked and never committed (the kernel validates and aborts them)."""
        units = sorted(set(touched_by(ops, keep)) | (set(pic.actual) - exclude), key=ServiceKey.sort_key)
        everything = set(units)
        timeouts = any(type(ops[i]) is SetTimeouts for i in keep)

        def refused(
            services: Sequence[ServiceKey], *, with_timeouts: bool = False, with_garbage: bool = False
        ) -> str | None:
            chosen = set(services)
            sub = [
                i for i in keep if (key_of(ops[i]) in chosen) or (key_of(ops[i]) is None and with_timeouts)
            ]
            try:
                tx = build(
                    pic,
                    ops,
                    sub,
                    netns=self._netns,
                    resolve=resolve,
                    exclude=exclude | (everything - chosen),
                    garbage=with_garbage,
                )
                tx.tun.make_devices()
            except (KeyError, ServicesFailed, tunnel.TunnelError) as exc:
                return str(exc)
            try:
                error = self._nft.check(tx.script) if tx.pieces else None
            finally:
                tx.tun.rollback()
            return None if error is None else error.reason

        out = Culprits()
        if refused([]) is not None:
            out.core = True
            return out
        if garbage and refused([], with_garbage=True) is not None:
            out.garbage = True
        if timeouts:
            out.timeouts = refused([], with_timeouts=True)

        def search(part: Sequence[ServiceKey]) -> None:
            reason = refused(part)
            if reason is None:
                return
            if len(part) == 1:
                out.services[part[0]] = f"nft refused the elements of {part[0]}: {reason}"
                return
            middle = len(part) // 2
            search(part[:middle])
            search(part[middle:])

        search(units)
        return out

    # ------------------------------------------------------------------ upkeep

    def predict(self, key: ServiceKey, client: str, client_port: int | None) -> Prediction:
        svc = self._current().state.services.get(key)
        if svc is None:
            return Prediction(None, False, f"no virtual service {key}")
        return flowhash.predict(svc, client, client_port)

    def connection_of(self, key: ServiceKey, client: str, client_port: int | None) -> FlowEntry | None:
        """NAT: the flow's conntrack entry, whose reply comes from its real server (its
        later packets follow it, whatever the table says now). DR keeps no state: every
        packet gets the prediction."""
        if client_port is None or key.address is None:
            return None
        from pyroute2 import Conntrack  # only here: explain's; netlink sockets bind where created
        from pyroute2.netlink.exceptions import NetlinkError
        from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

        wanted = NFCTAttrTuple(
            saddr=client,
            daddr=str(key.address),
            proto=_IPPROTO[key.protocol],
            sport=client_port,
            dport=key.port,
        )
        try:
            with entered(self._netns), Conntrack() as ct:
                for entry in ct.dump_entries(tuple_orig=wanted):
                    reply = entry.tuple_reply
                    state = getattr(entry.protoinfo, "state", None)  # TCP's, a number
                    shown = _TCP_STATES[state] if isinstance(state, int) and state < len(_TCP_STATES) else "-"
                    return FlowEntry(f"{reply.saddr}:{reply.sport}", "connection", shown)
        except (OSError, NetlinkError) as exc:  # e.g. no conntrack netlink in this kernel
            raise BackendError(f"reading the connection tracking table: {exc}") from exc
        return None

    def sync_connections(self, wanted: ConnectionSync) -> list[str]:
        raise CapabilityError(
            [
                FieldError(
                    "vrrp.sync_daemon",
                    "nftables needs none for DR and TUN (every director maps a flow by the same "
                    "stateless hash); NAT connections are not synced",
                )
            ]
        )

    def refresh(self) -> list[str]:
        """Re-resolve every DR real server's MAC and update the ones that changed
        (a replaced NIC, a VM moved), and every TUN real server's tunnel (_refresh_tunnels).
        Returns the addresses whose entry changed. Works on the tables as they are now
        (read again if anyone committed since); while they are damaged it leaves the
        work to the next apply, which repairs them and resolves what is missing."""
        pic = self._current()
        if pic.damaged():
            return []
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
            deletes |= neighbour_elements(rip, pic.neighbours[rip])
            adds |= neighbour_elements(rip, nb)
        devices = dict(pic.device_chains)
        script = list(elements_text("delete", deletes)) + list(elements_text("add", adds))
        for nb in changed.values():
            if nb.ifindex not in devices:
                script.insert(0, device_chain_text(nb.device, nb.ifindex))
                devices[nb.ifindex] = nb.device
        try:
            self._commit("".join(script))
        except NftError:
            self._pic = None
            raise
        pic.neighbours.update(changed)
        _hooks_made(pic, devices)
        return sorted(set(changed) | set(tunnels))

    def _refresh_tunnels(self, pic: Picture) -> list[str]:
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
        if not (tun.create or tun.remove or tun.adds or tun.deletes):
            return []
        devices = dict(pic.device_chains)
        script = [repair_text(pic.found, tun=True)] if tun.refs else []
        for ifindex, device in sorted(tun.underlays.items()):
            if ifindex not in devices:
                script.append(device_chain_text(device, ifindex))
                devices[ifindex] = device
        script += list(elements_text("delete", tun.deletes)) + list(elements_text("add", tun.adds))
        try:
            tun.make_devices()  # removes what it made if it fails
        except tunnel.TunnelError:
            return []  # keep what there is; the next refresh tries again
        try:
            if "".join(script):
                self._commit("".join(script))
        except NftError:
            tun.rollback()
            self._pic = None
            raise
        pic.tunnels = tun.commit()
        if tun.refs and not pic.found.has_tun():
            pic.found = _with_tun(pic.found)
        _hooks_made(pic, devices)
        return sorted({t.remote for t in tun.create} | {t.remote for t in tun.remove})

    # ------------------------------------------------------------------ capabilities

    def problems(self, desired: DesiredState) -> list[FieldError]:
        return self._capabilities.problems(desired)


def _with_tun(found: Found) -> Found:
    """``found`` (whole) after TUN's part was added to the netdev table."""
    whole = Found.whole(tun=True, timeouts=False)
    rules = {**found.rules, **{k: n for k, n in whole.rules.items() if k[0] == "netdev"}}
    return Found(found.tables, found.sets | whole.sets, rules, found.objects, whole_for=True)


def _hooks_made(pic: Picture, devices: dict[int, str]) -> None:
    """The picture after ingress hooks on ``devices`` were made (the others as they were)."""
    rules = dict(pic.found.rules)
    for ifindex in devices.keys() - pic.device_chains.keys():
        rules[("netdev", device_chain_name(ifindex))] = DEVICE_CHAIN_RULES
    pic.found = Found(
        pic.found.tables, pic.found.sets, rules, pic.found.objects, whole_for=pic.found.whole_for
    )
    pic.device_chains = devices
