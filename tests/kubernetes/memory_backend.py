"""An in-memory data plane with the Backend interface, for tests of the control loop
that need no kernel (the kernel-backed end-to-end test is test_e2e_ipvs.py).
It applies plans with ``apply_ops_in_place``, the reference semantics every backend follows."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence

from kubelvs.errors import ApplyError, FieldError
from kubelvs.model import DesiredState, ObservedState
from kubelvs.planner import Operation, apply_ops_in_place, describe


class MemoryBackend:
    name = "memory"

    def __init__(self) -> None:
        self.state = ObservedState()
        self.applies: list[list[Operation]] = []
        self.reads = 0
        self.fail_next_apply = False
        self.lock = threading.Lock()

    def read(self, *, sysctls: Iterable[str] = ()) -> ObservedState:
        with self.lock:
            self.reads += 1
            # A fresh value, as a kernel dump is: the director updates its picture in place.
            st = self.state
            return ObservedState(services=dict(st.services), timeouts=st.timeouts, sysctls=dict(st.sysctls), stats=dict(st.stats))

    def apply(self, ops: Sequence[Operation]) -> None:
        with self.lock:
            if self.fail_next_apply and ops:
                self.fail_next_apply = False
                raise ApplyError(0, describe(ops[0]), "injected failure")
            self.applies.append(list(ops))
            # In place, as a kernel applies a plan: O(len(ops)), where a copy of the
            # whole table per apply cost more than the rest of a one-Service reconcile
            # at 10,000 Services. ``read`` hands out copies, so no one else holds these dicts.
            self.state = apply_ops_in_place(self.state, ops)

    def problems(self, desired: DesiredState) -> list[FieldError]:
        return []

    def refresh(self) -> list[str]:
        return []

    def close(self) -> None:
        pass

    def table(self) -> dict[str, list[tuple[str, int, int, str]]]:
        """``{"TCP 10.240.0.201:80": [(address, port, weight, forward)]}``"""
        with self.lock:
            return {
                str(k): [(str(r.address), r.port, r.weight, str(r.forward)) for r in vs.realservers]
                for k, vs in self.state.services.items()
            }
