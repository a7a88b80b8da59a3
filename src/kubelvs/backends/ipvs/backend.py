"""Kernel IPVS over generic netlink: read the whole table, apply a plan pipelined."""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Self

from ...errors import ApplyError, BackendError, BackendUnavailable, FieldError, PartialApplyError
from ...formats.ipvs_conn import parse_proc_conn
from ...kernel import sysctl
from ...kernel.netns import entered
from ...model import (
    ConnectionSync,
    DesiredState,
    FlowEntry,
    ObservedState,
    Prediction,
    RealServer,
    RealServerKey,
    RealServerStats,
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
    service_of,
)
from ..base import ipvs_available
from . import flowhash, wire
from .decode import decode_dest, decode_service
from .genl import GenlSocket, Request
from .order import ORDERED_SCHEDULERS, to_move

__all__ = ["IpvsBackend"]


class IpvsBackend:
    """IPVS in one network namespace. Not thread-safe: one user of the socket at a time."""

    name = "ipvs"
    tracks_connections = True

    def __init__(self, *, netns: str | None = None) -> None:
        self._netns = netns
        self._sysctls_seen: dict[str, bool] = {}
        # Services whose scheduler hashes over the destination list (order.py), as last
        # read or programmed, with the head of their list (None: empty; missing from the
        # dict: unknown), so that a real server added above it needs no look; and those
        # a read found out of canonical order.
        self._top: dict[ServiceKey, RealServerKey | None] = {}
        self._headless: set[ServiceKey] = set()  # in order, head deleted (unknown)
        self._drifted: set[ServiceKey] = set()
        if not ipvs_available():
            raise BackendUnavailable(
                "this kernel has no IPVS (CONFIG_IP_VS unset or the ip_vs module missing)"
            )
        with entered(netns):  # the socket stays in this namespace for its whole life
            self._sock = GenlSocket("IPVS")

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ read

    def read(self, *, sysctls: Iterable[str] = ()) -> ObservedState:
        try:
            services: dict[ServiceKey, VirtualService] = {}
            stats: dict[tuple[ServiceKey, RealServerKey], RealServerStats] = {}
            top: dict[ServiceKey, RealServerKey | None] = {}
            drifted: set[ServiceKey] = set()
            service_messages = self._sock.dump(wire.Cmd.GET_SERVICE)
            for raw in service_messages:
                svc = decode_service(raw)
                realservers = []
                for draw in self._sock.dump(wire.Cmd.GET_DEST, wire.service_key_attrs(svc.key)):
                    rs, st = decode_dest(draw, svc.key.family)
                    realservers.append(rs)
                    stats[(svc.key, rs.key)] = st
                services[svc.key] = svc.with_realservers(realservers)
                if svc.scheduler in ORDERED_SCHEDULERS:
                    top[svc.key] = realservers[0].key if realservers else None
                    if to_move(realservers):
                        drifted.add(svc.key)
            (config,) = self._sock.request(wire.Cmd.GET_CONFIG)
            timeouts = wire.parse_config_reply(config)
        except OSError as exc:
            raise BackendError(f"reading the IPVS table: {exc.strerror or exc}") from exc
        self._top, self._drifted = top, drifted
        self._headless = set()
        values: dict[str, int] = {}
        with entered(self._netns):
            for name in sysctls:
                value = sysctl.read(name)
                if value is not None:
                    values[name] = value
        return ObservedState(services=services, timeouts=timeouts, sysctls=values, stats=stats)

    def read_stats(
        self, keys: Iterable[ServiceKey]
    ) -> dict[tuple[ServiceKey, RealServerKey], RealServerStats]:
        out: dict[tuple[ServiceKey, RealServerKey], RealServerStats] = {}
        for key in keys:
            try:
                raws = self._sock.dump(wire.Cmd.GET_DEST, wire.service_key_attrs(key))
            except OSError as exc:
                if exc.errno == errno.ESRCH:  # the service is gone
                    continue
                raise BackendError(f"reading the counters of {key}: {exc.strerror or exc}") from exc
            for raw in raws:
                rs, st = decode_dest(raw, key.family)
                out[(key, rs.key)] = st
        return out

    def destination_order(self, key: ServiceKey) -> list[RealServer]:
        """The service's real servers in the kernel's list order (the order sh and mh
        build their tables in; ``read`` sorts them). Empty when the service is gone."""
        try:
            raws = self._sock.dump(wire.Cmd.GET_DEST, wire.service_key_attrs(key))
        except OSError as exc:
            if exc.errno == errno.ESRCH:
                return []
            raise BackendError(f"reading the real servers of {key}: {exc.strerror or exc}") from exc
        return [decode_dest(raw, key.family)[0] for raw in raws]

    def predict(self, key: ServiceKey, client: str, client_port: int | None) -> Prediction:
        svc = self.read().services.get(key)  # a whole read: explain is a one-off command
        if svc is None:
            return Prediction(None, False, f"no virtual service {key}")
        return flowhash.predict(svc, self.destination_order(key), client, client_port)

    def connection_of(self, key: ServiceKey, client: str, client_port: int | None) -> FlowEntry | None:
        """From /proc/net/ip_vs_conn in the backend's namespace (what ipvsadm -Lnc shows):
        the flow's own entry, else the client's persistence template (client port 0; of
        the client's own address, i.e. a persistence netmask of /32)."""
        with entered(self._netns):
            try:
                with open("/proc/net/ip_vs_conn") as f:
                    text = f.read()
            except OSError:
                return None
        own = f"{client}:{client_port}" if client_port is not None else None
        virtual = {f"{key.address}:{key.port}", f"{key.address}:0"}  # a template of a port-0 service
        template = None
        for proto, _, state, who, vip, dest in parse_proc_conn(text).rows:
            if proto != key.protocol.name or vip not in virtual:
                continue
            if who == own and vip.endswith(f":{key.port}"):
                return FlowEntry(dest, "connection", state)
            if who == f"{client}:0" and template is None:
                template = FlowEntry(dest, "persistence template", state)
        return template

    # ------------------------------------------------------------------ apply

    def apply(self, ops: Sequence[Operation]) -> None:
        # Runs of netlink operations go out pipelined; a sysctl write sits between runs.
        # A refused operation affects only its service: the service's later operations
        # are not sent, every other one is (see Backend.apply).
        try:
            self._apply(ops)
        except PartialApplyError:
            # What was applied is put in order too; a failure of that is left to the next
            # full sync (its read notices the drift), not raised over the plan's own error.
            with contextlib.suppress(BackendError):
                self._put_in_order(ops)
            raise
        self._put_in_order(ops)

    def _put_in_order(self, ops: Sequence[Operation]) -> None:
        """After a plan: which services hash over their list now, and put in canonical
        order (order.py) those that got a real server below the head of their list (each
        new one lands at the head; above it is where it belongs, and needs no look)."""
        top, headless = self._top, self._headless
        grown: set[ServiceKey] = set()
        for op in ops:
            match op:
                case AddRealServer(service=key, realserver=rs) if (
                    key in top or key in grown or key in headless
                ):
                    if key in top:
                        head = top.pop(key)
                        if head is None or head.sort_key() < rs.key.sort_key():
                            top[key] = rs.key  # at the head, where it belongs
                            continue
                    # Below the head, or the head is unknown: looked at after the plan.
                    headless.discard(key)
                    grown.add(key)
                case AddService(service=svc) | EditService(service=svc):
                    if svc.scheduler not in ORDERED_SCHEDULERS:
                        top.pop(svc.key, None)
                    elif type(op) is AddService:
                        top[svc.key] = None  # empty: anything may come first
                    elif svc.key not in top:
                        grown.add(svc.key)  # now hashing over a list of unknown order
                case DeleteService(key=key):
                    top.pop(key, None)
                    grown.discard(key)
                    headless.discard(key)
                case DeleteRealServer(service=key, realserver=rk) if top.get(key) == rk:
                    del top[key]  # still in order; the next add to it looks at the list
                    headless.add(key)
        if grown:
            self.restore_order(grown)

    def restore_order(self, keys: Iterable[ServiceKey]) -> list[str]:
        """Put these services' destination lists in canonical order (order.py): the
        fewest destinations deleted and at once re-added, every service in one pipelined
        batch. Returns what it moved."""
        run: list[Request] = []
        moved: list[str] = []
        refused: list[str] = []
        try:
            for key in sorted(keys, key=ServiceKey.sort_key):
                attrs = wire.service_key_attrs(key)
                raws = self._sock.dump(wire.Cmd.GET_DEST, attrs)
                if not raws:
                    self._top[key] = None
                    self._headless.discard(key)
                    continue
                kernel_order = [decode_dest(raw, key.family)[0] for raw in raws]
                self._top[key] = max(kernel_order, key=lambda rs: rs.key.sort_key()).key
                self._headless.discard(key)
                for rs in to_move(kernel_order):
                    run.append((wire.Cmd.DEL_DEST, attrs + wire.dest_key_attrs(rs.key), len(moved)))
                    run.append((wire.Cmd.NEW_DEST, attrs + wire.dest_attrs(rs), len(moved)))
                    moved.append(f"{key}: {rs.key} re-added (Maglev order)")
            self._sock.pipeline(run, on_error=lambda index, code: refused.append(moved[index]))
        except OSError as exc:
            raise BackendError(f"putting IPVS destinations in order: {exc.strerror or exc}") from exc
        if refused:  # the next full sync re-adds a destination that stayed deleted
            raise BackendError(f"putting IPVS destinations in order, refused: {'; '.join(refused)}")
        return moved

    def _apply(self, ops: Sequence[Operation]) -> None:
        failures: list[ApplyError] = []
        failed_services: dict[ServiceKey, str] = {}

        def skip(index: int) -> bool:
            key = service_of(ops[index])
            if key is None or key not in failed_services:
                return False
            reason = f"skipped: an earlier operation of {key} failed ({failed_services[key]})"
            failures.append(ApplyError(index, describe(ops[index]), reason))
            return True

        def on_error(index: int, code: int) -> None:
            op = ops[index]
            reason = _explain(op, code)
            failures.append(ApplyError(index, describe(op), reason, errno=code))
            key = service_of(op)
            if key is not None:
                failed_services.setdefault(key, reason)

        run: list[Request] = []
        key_attrs: dict[ServiceKey, bytes] = {}  # a service's key is encoded once, not once per real server
        try:
            for index, op in enumerate(ops):
                if isinstance(op, SetSysctl):
                    self._sock.pipeline(run, skip=skip, on_error=on_error)
                    run = []
                    failure = self._set_sysctl(index, op)
                    if failure is not None:
                        failures.append(failure)
                else:
                    cmd, attrs = _request(op, key_attrs)
                    run.append((cmd, attrs, index))
            self._sock.pipeline(run, skip=skip, on_error=on_error)
        except OSError as exc:  # the socket itself failed: nothing is known of the rest
            raise BackendError(f"programming IPVS: {exc.strerror or exc}") from exc
        if failures:
            raise PartialApplyError(failures, len(ops))

    def _set_sysctl(self, index: int, op: SetSysctl) -> ApplyError | None:
        try:
            with entered(self._netns):
                sysctl.write(op.name, op.value)
        except OSError as exc:
            return ApplyError(index, describe(op), exc.strerror or str(exc), errno=exc.errno)
        return None

    def changed_elsewhere(self) -> bool:
        """IPVS keeps no generation counter and sends no change notifications, and a
        dump is O(table): nothing cheap tells. The director's periodic full resync
        repairs changes made behind its back."""
        return False

    def sync_connections(self, wanted: ConnectionSync) -> list[str]:
        """Both sync daemons (master: send this director's connections; backup: receive
        the peers'), so that connections survive a failover *and* the failback."""
        try:
            running = [
                d for raw in self._sock.dump(wire.Cmd.GET_DAEMON) if (d := wire.parse_daemon_reply(raw))
            ]
        except OSError as exc:
            raise BackendError(f"reading the IPVS sync daemons: {exc.strerror or exc}") from exc
        started = []
        for state, role in ((wire.DAEMON_MASTER, "master"), (wire.DAEMON_BACKUP, "backup")):
            found = next(((ifn, sid) for st, ifn, sid in running if st == state), None)
            if found == (wanted.interface, wanted.syncid):
                continue
            if found is not None:
                raise BackendError(
                    f"an IPVS {role} sync daemon already runs on {found[0]} with syncid {found[1]} "
                    f"(wanted {wanted.interface}, syncid {wanted.syncid}); not kubelvs's: left as it is"
                )
            try:
                self._sock.request(
                    wire.Cmd.NEW_DAEMON, wire.daemon_attrs(state, wanted.interface, wanted.syncid)
                )
            except OSError as exc:
                raise BackendError(
                    f"starting the IPVS {role} sync daemon on {wanted.interface}: {exc.strerror or exc}"
                ) from exc
            started.append(f"IPVS {role} sync daemon on {wanted.interface}, syncid {wanted.syncid}")
        return started

    def refresh(self) -> list[str]:
        """mh/sh services the last read found out of canonical order are put back in it
        (order.py); MACs need nothing: the kernel resolves them itself in IPVS-DR."""
        drifted, self._drifted = self._drifted, set()
        return self.restore_order(drifted) if drifted else []

    def problems(self, desired: DesiredState) -> list[FieldError]:
        missing = [name for name in desired.sysctls if not self._sysctl_exists(name)]
        return [FieldError(f"sysctls.{name}", "does not exist on this kernel") for name in missing]

    def _sysctl_exists(self, name: str) -> bool:
        # Cached: called on every sync, and which sysctls a kernel has does not change.
        known = self._sysctls_seen.get(name)
        if known is None:
            with entered(self._netns):
                known = self._sysctls_seen[name] = sysctl.exists(name)
        return known


def _request(op: Operation, key_attrs: dict[ServiceKey, bytes]) -> tuple[wire.Cmd, bytes]:
    match op:  # real-server operations first: they are nearly all of a large plan
        case AddRealServer(service=k, realserver=r):
            return wire.Cmd.NEW_DEST, _key_attrs(k, key_attrs) + wire.dest_attrs(r)
        case EditRealServer(service=k, realserver=r):
            return wire.Cmd.SET_DEST, _key_attrs(k, key_attrs) + wire.dest_attrs(r)
        case DeleteRealServer(service=k, realserver=r):
            return wire.Cmd.DEL_DEST, _key_attrs(k, key_attrs) + wire.dest_key_attrs(r)
        case AddService(service=s):
            return wire.Cmd.NEW_SERVICE, wire.service_attrs(s)
        case EditService(service=s):
            return wire.Cmd.SET_SERVICE, wire.service_attrs(s)
        case DeleteService(key=k):
            return wire.Cmd.DEL_SERVICE, _key_attrs(k, key_attrs)
        case SetTimeouts(timeouts=t):
            return wire.Cmd.SET_CONFIG, wire.config_attrs(t)
    raise TypeError(f"not a netlink operation: {op!r}")


def _key_attrs(k: ServiceKey, cache: dict[ServiceKey, bytes]) -> bytes:
    attrs = cache.get(k)
    if attrs is None:
        attrs = cache[k] = wire.service_key_attrs(k)
    return attrs


def _explain(op: Operation, code: int) -> str:
    """The kernel's errno in the terms of the operation that got it."""
    name = errno.errorcode.get(code, str(code))
    if code == errno.EEXIST:
        return f"{name}: it already exists in the kernel (changed by someone else since it was read?)"
    if code == errno.ESRCH:
        return f"{name}: the virtual service does not exist in the kernel"
    if code == errno.ENOENT:
        if isinstance(op, (AddService, EditService)):
            sched = op.service.scheduler
            return f"{name}: scheduler {sched!r} is not available in this kernel (module ip_vs_{sched})"
        return f"{name}: the real server does not exist in the kernel"
    if code == errno.EINVAL:
        return (
            f"{name}: the kernel rejected the values (for a real server: its address must be routable "
            "in this network namespace; for a service: scheduler flags or netmask)"
        )
    return name
