"""Which operations of a plan are left out when part of it cannot be applied, and why
(nftables backend).

The contract (backends/base.py): everything that does not depend on a failure is
applied in the one transaction, and ``PartialApplyError`` lists every operation that
was not. An operation fails on its own when a DR real server it adds does not answer
ARP, when a TUN real server's tunnel cannot be made, when it does not apply to the
table as the backend knows it, or when nft refuses its service's elements; the later
operations of a service that has a failed operation are skipped, as the memory
backend (the protocol's runnable specification) does.

Which service nft refused is read from nft's error, which names the line and columns
of the element the kernel refused (``locate``); when it names nothing usable, the
backend bisects over the services with transactions that are checked, not committed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from ...errors import ApplyError, PartialApplyError
from ...model import Forward, RealServerKey, ServiceKey, VirtualService
from ...planner import (
    AddRealServer,
    AddService,
    DeleteRealServer,
    DeleteService,
    EditRealServer,
    EditService,
    Operation,
    describe,
)
from .elements import mark_address, service_key
from .nft import NftError
from .schema import COUNTER_SETS, NEIGHBOUR_SETS, PER_SERVICE_SETS, TABLE
from .transaction import Piece, key_of

__all__ = ["Culprits", "Failures", "introducing", "locate", "unappliable"]


class Failures:
    """The operations of one plan that are not applied, each with its reason."""

    def __init__(self, ops: Sequence[Operation]) -> None:
        self.ops = ops
        self.reasons: dict[int, str] = {}

    def fail(self, index: int, reason: str) -> None:
        self.reasons.setdefault(index, reason)

    def keep(self, indices: Iterable[int]) -> list[int]:
        """``indices`` without the failed operations and the later operations of their
        services (those are recorded as skipped)."""
        failed: dict[ServiceKey, str] = {}
        out: list[int] = []
        for i in indices:
            key = key_of(self.ops[i])
            if i in self.reasons:
                if key is not None and key not in failed:
                    failed[key] = self.reasons[i]
                continue
            if key is not None and key in failed:
                self.reasons[i] = f"skipped: an earlier operation of {key} failed ({failed[key]})"
                continue
            out.append(i)
        return out

    def error(self) -> PartialApplyError | None:
        if not self.reasons:
            return None
        failures = [
            ApplyError(i, describe(self.ops[i]), reason) for i, reason in sorted(self.reasons.items())
        ]
        return PartialApplyError(failures, len(self.ops))


def unappliable(
    services: Mapping[ServiceKey, VirtualService], ops: Sequence[Operation], keep: Iterable[int]
) -> dict[int, str]:
    """The first operation of each service that ``planner.apply_ops`` cannot apply to
    ``services`` (it raises KeyError for it): a real server operation or a deletion of a
    service that is not there, a deletion of a real server that is not there."""
    members: dict[ServiceKey, set[RealServerKey] | None] = {}
    out: dict[int, str] = {}
    broken: set[ServiceKey] = set()
    for i in keep:
        op = ops[i]
        key = key_of(op)
        if key is None or key in broken:
            continue
        if key not in members:
            svc = services.get(key)
            members[key] = None if svc is None else set(svc.realserver_map())
        present = members[key]
        reason = None
        if type(op) is AddService or type(op) is EditService:
            if present is None:
                members[key] = set()
        elif present is None:
            reason = "the service does not exist in the kernel"
        elif type(op) is DeleteService:
            members[key] = None
        elif type(op) is AddRealServer or type(op) is EditRealServer:
            present.add(op.realserver.key)
        elif type(op) is DeleteRealServer:
            if op.realserver not in present:
                reason = "the real server does not exist in the kernel"
            else:
                present.discard(op.realserver)
        if reason is not None:
            out[i] = reason
            broken.add(key)
    return out


def introducing(ops: Sequence[Operation], keep: Iterable[int], rip: str, forward: Forward) -> list[int]:
    """The operations among ``keep`` that add (or change) a real server ``rip`` of
    method ``forward``: what needs its neighbour or tunnel."""
    out = []
    for i in keep:
        op = ops[i]
        if type(op) is AddRealServer or type(op) is EditRealServer:
            rs = op.realserver
            if rs.forward is forward and str(rs.address) == rip:
                out.append(i)
    return out


@dataclass
class Culprits:
    """What nft refused, as far as its error tells: services, DR real servers (by their
    neighbour elements), the timeouts, the counters of gone real servers; ``core`` when
    it refused something every other part depends on (the skeleton, an ingress hook)."""

    services: dict[ServiceKey, str] = field(default_factory=dict)
    rips: dict[str, str] = field(default_factory=dict)
    timeouts: str | None = None
    garbage: bool = False
    core: bool = False

    def __bool__(self) -> bool:
        return bool(self.services or self.rips or self.timeouts or self.garbage or self.core)


_ELEMENT_LINE = re.compile(rf"^(add|delete) element (\w+) {TABLE} (\w+) \{{ ")


def locate(exc: NftError, pieces: Sequence[Piece]) -> Culprits:
    """The part of the transaction ``pieces`` that nft's error ``exc`` points at first.

    Only the first: once the kernel has refused one message of a batch, it goes on
    checking the others against a state the refused one did not make, and may refuse
    them too (deleting a missing element of one service made the kernel refuse the
    next element of another in the same command). The backend leaves out what is
    located, tries again, and locates again if it must."""
    out = Culprits()
    if not exc.locations:
        return out
    lines: list[tuple[str, str]] = []  # (kind, text) per line of the script
    for kind, text in pieces:
        lines += [(kind, line) for line in text.splitlines()]
    line, first, last = exc.locations[0]
    if not 0 < line <= len(lines):
        return out  # not a line of ours: bisect
    kind, text = lines[line - 1]
    if kind == "timeouts":
        out.timeouts = exc.reason
        return out
    m = _ELEMENT_LINE.match(text)
    if kind != "elements" or m is None:
        out.core = True
        return out
    verb, set_name = m.group(1), m.group(3)
    element = text[first - 1 : last]
    what = f"nft refused to {verb} {set_name} element {element.strip()}: {exc.reason}"
    parts = [p.strip() for p in element.split(" . ")]
    try:
        if set_name in PER_SERVICE_SETS and len(parts) >= 3:
            out.services[service_key((parts[0], parts[1], int(parts[2])))] = what
        elif set_name in COUNTER_SETS:
            out.garbage = True
        elif set_name in NEIGHBOUR_SETS[4] or set_name == "tun_dev":
            out.rips[mark_address(int(parts[0]))] = what
        # An IPv6 neighbour element names its real server's id, not its address: bisect.
    except ValueError:  # the columns do not hold an element: bisect
        return Culprits()
    return out
