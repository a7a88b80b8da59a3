"""An in-memory data plane: the runnable specification of the ``Backend`` protocol.

It holds a table in memory and applies plans with ``planner.apply_ops_in_place``, the
reference semantics every kernel backend is tested against, and it implements the
protocol's failure contract exactly: it refuses what IPVS refuses (adding what exists,
touching what does not), ``refuse`` (a function of the operation, returning a reason or
None) makes it refuse more, and then it applies every other operation, skips the later
operations of a refused service, and raises ``PartialApplyError`` naming each operation
not applied.

Like httpx's ``MockTransport``, it is shipped so that the project's own tests and its
users' can run a director, its loop and its sources without a kernel; the contract
tests in ``tests/backends`` run the same cases against it, IPVS and nftables.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import Self

from ..errors import ApplyError, BackendError, FieldError, PartialApplyError
from ..model import (
    NO_TRAFFIC,
    ConnectionSync,
    DesiredState,
    FlowEntry,
    ObservedState,
    Prediction,
    RealServerKey,
    RealServerStats,
    ServiceKey,
)
from ..planner import (
    AddRealServer,
    AddService,
    DeleteRealServer,
    DeleteService,
    EditRealServer,
    EditService,
    Operation,
    apply_ops_in_place,
    describe,
    service_of,
)

__all__ = ["MemoryBackend"]


#: Decides whether the "kernel" refuses an operation: the reason, or None to accept it.
Refusal = Callable[[Operation], str | None]


class MemoryBackend:
    """A load-balancing table in memory. Thread-safe (the director's loop applies from
    a worker thread while tests read the table)."""

    name = "memory"
    tracks_connections = True  # as IPVS, which it stands in for: tests give real servers connections

    def __init__(self, *, refuse: Refusal | None = None) -> None:
        self.state = ObservedState()
        self.refuse = refuse
        self.applies: list[list[Operation]] = []  # every plan applied, for tests and examples
        self.reads = 0
        self.lock = threading.Lock()
        self._tampered = False
        self.connection_sync: ConnectionSync | None = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def read(self, *, sysctls: Iterable[str] = ()) -> ObservedState:
        with self.lock:
            self.reads += 1
            self._tampered = False
            # A fresh value, as a kernel dump is: the director updates its picture in place.
            st = self.state
            wanted = set(sysctls)
            return ObservedState(
                services=dict(st.services),
                timeouts=st.timeouts,
                sysctls={k: v for k, v in st.sysctls.items() if k in wanted},
                stats=dict(st.stats),
            )

    def read_stats(
        self, keys: Iterable[ServiceKey]
    ) -> dict[tuple[ServiceKey, RealServerKey], RealServerStats]:
        with self.lock:
            out = {}
            services, stats = self.state.services, self.state.stats
            for key in keys:
                vs = services.get(key)
                for rs in vs.realservers if vs is not None else ():
                    pair = (key, rs.key)
                    out[pair] = stats.get(pair, NO_TRAFFIC)
            return out

    def set_stats(self, key: ServiceKey, realserver: RealServerKey, stats: RealServerStats) -> None:
        """Set a real server's counters, as traffic would (the kernel's connection counts)."""
        with self.lock:
            assert isinstance(self.state.stats, dict)
            self.state.stats[(key, realserver)] = stats

    def apply(self, ops: Sequence[Operation]) -> None:
        with self.lock:
            failures: list[ApplyError] = []
            refused: dict[ServiceKey, str] = {}
            accepted: list[Operation] = []
            shadow = _Shadow(self.state)
            for index, op in enumerate(ops):
                key = service_of(op)
                if key is not None and key in refused:
                    skipped = f"skipped: an earlier operation of {key} failed ({refused[key]})"
                    failures.append(ApplyError(index, describe(op), skipped))
                    continue
                refusal = shadow.refusal(op) or (self.refuse(op) if self.refuse is not None else None)
                if refusal is not None:
                    failures.append(ApplyError(index, describe(op), refusal))
                    if key is not None:
                        refused[key] = refusal
                    continue
                shadow.apply(op)
                accepted.append(op)
            self.applies.append(accepted)
            # In place, as a kernel applies a plan: O(len(ops)); ``read`` hands out copies.
            self.state = apply_ops_in_place(self.state, accepted)
            if failures:
                raise PartialApplyError(failures, len(ops))

    def changed_elsewhere(self) -> bool:
        with self.lock:
            return self._tampered

    def tamper(self, ops: Sequence[Operation], *, signal: bool = True) -> None:
        """Change the table behind the director's back, as another program would.
        ``signal=False``: without ``changed_elsewhere`` saying so (as with IPVS, which has
        no generation counter)."""
        with self.lock:
            self.state = apply_ops_in_place(self.state, ops)
            self._tampered = self._tampered or signal

    def problems(self, desired: DesiredState) -> list[FieldError]:
        return []

    def predict(self, key: ServiceKey, client: str, client_port: int | None) -> Prediction:
        return Prediction(None, False, "the in-memory backend has no data path")

    def connection_of(self, key: ServiceKey, client: str, client_port: int | None) -> FlowEntry | None:
        return None

    def sync_connections(self, wanted: ConnectionSync) -> list[str]:
        """Recorded as IPVS would run it (both daemons), for the director's tests."""
        if self.connection_sync == wanted:
            return []
        if self.connection_sync is not None:
            raise BackendError(f"a sync daemon already runs as {self.connection_sync}; not kubelvs's")
        self.connection_sync = wanted
        return [f"sync daemons on {wanted.interface}, syncid {wanted.syncid}"]

    def refresh(self) -> list[str]:
        return []

    def close(self) -> None:
        pass

    def table(self) -> dict[str, list[tuple[str, int, int, str]]]:
        """``{"TCP 10.240.0.201:80": [(address, port, weight, forward)]}``: for tests and examples."""
        with self.lock:
            return {
                str(k): [(str(r.address), r.port, r.weight, str(r.forward)) for r in vs.realservers]
                for k, vs in self.state.services.items()
            }


class _Shadow:
    """Which services and real servers exist while a plan is being applied, to refuse
    what the kernel refuses (IPVS's errors): adding what exists (EEXIST), touching a
    service that does not (ESRCH) or a real server that does not (ENOENT)."""

    def __init__(self, state: ObservedState) -> None:
        self.state = state
        self.services: dict[ServiceKey, bool] = {}  # key -> exists, for the keys this plan touched
        self.members: dict[ServiceKey, set[RealServerKey]] = {}

    def _exists(self, key: ServiceKey) -> bool:
        known = self.services.get(key)
        return key in self.state.services if known is None else known

    def _members(self, key: ServiceKey) -> set[RealServerKey]:
        found = self.members.get(key)
        if found is None:
            vs = self.state.services.get(key)
            found = self.members[key] = {rs.key for rs in vs.realservers} if vs is not None else set()
        return found

    def refusal(self, op: Operation) -> str | None:
        match op:
            case AddService(service=s):
                return "EEXIST: the virtual service already exists" if self._exists(s.key) else None
            case EditService(service=s):
                return None if self._exists(s.key) else "ESRCH: the virtual service does not exist"
            case DeleteService(key=k):
                return None if self._exists(k) else "ESRCH: the virtual service does not exist"
            case AddRealServer(service=k, realserver=r):
                if not self._exists(k):
                    return "ESRCH: the virtual service does not exist"
                return "EEXIST: the real server already exists" if r.key in self._members(k) else None
            case EditRealServer(service=k, realserver=r):
                if not self._exists(k):
                    return "ESRCH: the virtual service does not exist"
                return None if r.key in self._members(k) else "ENOENT: the real server does not exist"
            case DeleteRealServer(service=k, realserver=rk):
                if not self._exists(k):
                    return "ESRCH: the virtual service does not exist"
                return None if rk in self._members(k) else "ENOENT: the real server does not exist"
        return None

    def apply(self, op: Operation) -> None:
        match op:
            case AddService(service=s):
                self.services[s.key] = True
                self.members[s.key] = set()
            case DeleteService(key=k):
                self.services[k] = False
                self.members[k] = set()
            case AddRealServer(service=k, realserver=r):
                self._members(k).add(r.key)
            case DeleteRealServer(service=k, realserver=rk):
                self._members(k).discard(rk)
