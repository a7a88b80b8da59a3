"""The backend protocol's contract, run against all three backends: the in-memory one
(its runnable specification), nftables on this machine's kernel (tier 1) and IPVS in the
VM (tier 2). Same cases, same assertions:

- a plan applied and read back is ``planner.apply_ops(before, plan)``;
- a refused operation affects only its service: every operation not listed in the
  ``PartialApplyError`` was applied, every listed one was not (the kernel holds
  ``apply_ops(before, plan minus the listed ones)``);
- a backend is a context manager that closes itself;
- ``changed_elsewhere`` is False after the backend's own read and apply.
"""

from __future__ import annotations

import ipaddress
import subprocess
from collections.abc import Callable, Iterator

import pytest

from kubelvs.backends import Backend
from kubelvs.backends.base import open_backend
from kubelvs.backends.memory import MemoryBackend
from kubelvs.errors import PartialApplyError
from kubelvs.model import (
    DesiredState,
    Forward,
    ObservedState,
    Ownership,
    RealServer,
    ServiceKey,
    VirtualService,
)
from kubelvs.planner import AddRealServer, Operation, apply_ops, plan

OWNED = Ownership(cidrs=(ipaddress.ip_network("10.240.0.0/24"),))

BACKENDS = [
    pytest.param("memory", id="memory"),
    pytest.param("nftables", marks=pytest.mark.netns, id="nftables"),
    pytest.param("ipvs", marks=pytest.mark.kernel_ipvs, id="ipvs"),
]


def service(i: int, rss: tuple[int, ...] = (11, 12), scheduler: str = "rr") -> VirtualService:
    key = ServiceKey(4, "tcp", ipaddress.ip_address(f"10.240.0.{200 + i}"), 80)  # type: ignore[arg-type]
    # NAT real servers: no neighbour to resolve (nftables DR) and routable in the namespace (IPVS).
    members = [RealServer(ipaddress.ip_address(f"10.1.0.{n}"), 8080, 1, Forward.NAT) for n in rss]
    return VirtualService(key=key, scheduler=scheduler).with_realservers(members)


def desired(*services: VirtualService) -> DesiredState:
    return DesiredState(services={s.key: s for s in services}, ownership=OWNED)


def table(state: ObservedState) -> dict[ServiceKey, VirtualService]:
    return {k: v for k, v in state.services.items() if OWNED.owns(k)}


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, make_netns: Callable[[str], str]) -> Iterator[Backend]:
    name = request.param
    if name == "memory":
        with MemoryBackend() as memory:
            yield memory
        return
    ns = make_netns("be")
    # The real servers' subnet is on a link of the namespace (IPVS refuses NAT real
    # servers that are not routable there: "address not unicast").
    for args in (
        ["link", "add", "v0", "type", "veth", "peer", "name", "v1"],
        ["link", "set", "v0", "up"],
        ["link", "set", "v1", "up"],
        ["addr", "add", "10.1.0.1/24", "dev", "v0"],
        ["addr", "add", "10.240.0.1/24", "dev", "v1"],
    ):
        subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True)
    with open_backend(name, netns=ns) as kernel:
        yield kernel


def test_a_plan_read_back_is_apply_ops_of_it(backend: Backend) -> None:
    before = backend.read()
    the_plan = plan(desired(service(1), service(2, (11, 12, 13), "wrr")), before)
    backend.apply(the_plan.ops)
    assert table(backend.read()) == table(apply_ops(before, the_plan.ops))
    edited = plan(desired(service(1, (12, 14)), service(3)), backend.read())
    middle = backend.read()
    backend.apply(edited.ops)
    assert (
        table(backend.read())
        == table(apply_ops(middle, edited.ops))
        == desired(service(1, (12, 14)), service(3)).services
    )
    assert not backend.changed_elsewhere()


def test_a_refused_operation_affects_only_its_service(backend: Backend) -> None:
    before = backend.read()
    missing = service(9)  # never created: adding a real server to it is refused
    ops: list[Operation] = [
        *plan(desired(service(1)), before).ops,
        AddRealServer(missing.key, missing.realservers[0]),
        *plan(desired(service(2)), before).ops,
    ]
    with pytest.raises(PartialApplyError) as info:
        backend.apply(ops)
    failed = info.value.failed_indexes
    assert failed == {len(plan(desired(service(1)), before).ops)}  # that operation alone
    assert info.value.total == len(ops)
    applied = [op for i, op in enumerate(ops) if i not in failed]
    assert (
        table(backend.read()) == table(apply_ops(before, applied)) == desired(service(1), service(2)).services
    )


def test_a_backend_closes_itself_as_a_context_manager(backend: Backend) -> None:
    with backend as same:
        assert same is backend
        same.read()
