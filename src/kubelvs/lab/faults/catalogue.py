"""The faults: how each one breaks the lab and what it must leave true."""

from __future__ import annotations

import time
from collections.abc import Callable

import yaml

from ...backends.nftables.netlink import NftNetlink
from ...backends.nftables.picture import read_tables
from ...errors import LabError
from ...kernel import iproute
from ...model import (
    DesiredState,
)
from ...planner import plan
from ...sources.config import parse_config, parse_yaml, to_desired
from .state import as_observed, service_text
from .suite import EXTRA_VIP, SETTLE, UNREACHABLE_RS, UNREACHABLE_VIP, Fault, Outcome, Suite

#: What the repairing process logs when it repairs (the director: a full sync on its
#: check's word; the agent: one line per change).
DIRECTOR_REPAIRS = ("director-dir1", "changed by someone else")
AGENT_REPAIRS = ("agent-node1", "node: ")


def _tampered(
    suite: Suite, act: Callable[[], None], *, repairer: tuple[str, str] = DIRECTOR_REPAIRS, what: str = ""
) -> Outcome:
    """Someone changes the kernel or a node behind kubelvs (``act``), then the repair is
    waited for. The damage must have been real: the first poll saw it, or the repairing
    process logged a repair after the injection (a poll in the VM can be slower than the
    agent's repair)."""
    log, marker = repairer
    offset = suite.log_size(log)
    t0 = time.monotonic()
    act()
    first = suite.differences()
    repaired, diff = suite.wait_repaired(t0)
    out = Outcome(t0, repaired, notes=[what] if what else [])
    out.checks["damage seen before the repair"] = bool(first) or suite.logged_since(log, offset, marker)
    out.notes += diff
    return suite.finish(out)


def _command(*argv: str) -> Callable[[Suite], Outcome]:
    """A command run in the director's namespace (``{vip}``, ``{port}``, ``{rs}``: the
    VIP, its port, the last worker's address)."""

    def run(suite: Suite) -> Outcome:
        spec = suite.info.spec
        args = [a.format(vip=spec.vip, port=spec.port, rs=suite.info.nodes[-1].ip) for a in argv]
        return _tampered(suite, lambda: suite.run_in("dir1", *args))

    return run


def _flush_ingress_chain(suite: Suite) -> Outcome:
    """``nft flush chain`` of the DR ingress hook (``dr_in_<ifindex>`` of eth0)."""
    link = iproute.link(suite.director_ns, "eth0")
    if link is None:
        raise LabError(f"no eth0 in {suite.director_ns}")
    chain = f"dr_in_{link.index}"
    return _tampered(suite, lambda: suite.run_in("dir1", "nft", "flush", "chain", "netdev", "kubelvs", chain))


def _delete_slot(suite: Suite) -> Outcome:
    """``nft delete element`` of the last real server's slot in the service's table in
    ``dr_slots`` (the table its ``dr_tab`` element names)."""
    spec = suite.info.spec
    with NftNetlink(suite.director_ns) as nl:
        parsed, _, _ = read_tables(nl, suite.director_ns)
    head = (spec.vip, "tcp", spec.port)
    tables = [e.value for e in parsed.by_set.get("dr_tab", ()) if e.key == head]
    if not tables:
        raise LabError(f"the director has no dr_tab element for {spec.vip}:{spec.port}")
    element = f"{{ {tables[0]} . {len(suite.info.nodes) - 1} }}"
    return _tampered(
        suite,
        lambda: suite.run_in("dir1", "nft", "delete", "element", "netdev", "kubelvs", "dr_slots", element),
    )


def _director_sysctl(suite: Suite) -> Outcome:
    return _tampered(
        suite, lambda: suite.running.lab.sysctl(suite.director_ns, "net.ipv4.vs.expire_nodest_conn", 0)
    )


def _node_vip_deleted(suite: Suite) -> Outcome:
    """The VIP deleted from the device the agent put it on (``lo``, or ``kubelvs0`` where
    the kernel has dummy devices)."""
    node = suite.info.nodes[0]
    vip = suite.info.spec.vip
    held = [a for a in iproute.addresses(node.netns) if a.address == vip]
    if not held:
        raise LabError(f"{node.name} does not hold {vip}")
    device = held[0].device
    return _tampered(
        suite,
        lambda: iproute.delete_address(node.netns, device, f"{vip}/32"),
        repairer=AGENT_REPAIRS,
        what=f"deleted {vip}/32 from {device} on {node.name}",
    )


def _node_arp_ignore(suite: Suite) -> Outcome:
    netns = suite.info.nodes[0].netns

    def act() -> None:
        for name in ("all", "eth0"):
            suite.running.lab.sysctl(netns, f"net.ipv4.conf.{name}.arp_ignore", 0)

    return _tampered(suite, act, repairer=AGENT_REPAIRS)


def _restart(suite: Suite, key: str, log: str, synced: str, start: Callable[[], object]) -> Outcome:
    """kill -9 of the lab process ``key``; started again ``down`` seconds later; repaired
    once the new process logged ``synced`` and the state is as before."""
    offset = suite.log_size(log)
    t0 = time.monotonic()
    suite.kill(key)
    time.sleep(suite.settings.down)
    start()
    repaired, diff = suite.wait_repaired(
        t0, ready=lambda: suite.logged_since(log, offset, synced), timeout=suite.settings.start_timeout
    )
    out = Outcome(t0, repaired, notes=diff)
    out.checks["restarted process synced"] = repaired is not None
    return suite.finish(out)


def _kill_director(suite: Suite) -> Outcome:
    return _restart(
        suite, "director dir1", "director-dir1", "full sync", lambda: suite.running.start_director("dir1")
    )


def _kill_agent(suite: Suite) -> Outcome:
    # The agent prints a line after its first sync ("node: in sync (1 VIP(s))" when nothing changed).
    return _restart(suite, "agent node1", "agent-node1", "node: ", lambda: suite.running.start_agent("node1"))


def _config_non_atomic(suite: Suite) -> Outcome:
    """The config rewritten in place: truncated, then written in two parts 0.3 s apart;
    the first part is a valid config with one real server fewer. The director must read
    neither the empty nor the half-written file (it reads a file once it stayed the same
    for its settle time), so nothing may change, and it must read the final file."""
    text = suite.config.read_text()
    cut = text.index("\n", text.index("- address:")) + 1
    half = _desired_of(text[:cut], "the half-written config")
    lost = _realservers(suite.desired) - _realservers(half)
    if lost < 1:
        raise LabError("the half-written config would remove no real server: the fault would prove nothing")
    offset = suite.log_size("director-dir1")
    t0 = time.monotonic()
    with suite.config.open("w"):
        pass  # truncated
    time.sleep(0.3)
    with suite.config.open("a") as f:
        f.write(text[:cut])
    time.sleep(0.3)
    with suite.config.open("a") as f:
        f.write(text[cut:])
    changed = suite.watch(SETTLE + 1.0)  # past the settle time after the last write
    read_back = f"{suite.config.name} changed"
    repaired, diff = suite.wait_repaired(
        t0, ready=lambda: suite.logged_since("director-dir1", offset, read_back)
    )
    out = Outcome(t0, repaired, unchanged=not changed)
    out.checks["director read the final file"] = repaired is not None
    out.notes += [f"the half-written file would remove {lost} real server(s)"]
    out.notes += [f"changed meanwhile: {d}" for d in changed] + diff
    return suite.finish(out)


def _desired_of(text: str, source: str) -> DesiredState:
    return to_desired(parse_config(parse_yaml(text, source=source), source=source))


def _realservers(state: DesiredState) -> int:
    return sum(len(vs.realservers) for vs in state.services.values())


def _config_unreachable(suite: Suite) -> Outcome:
    """Two services added in one edit (atomic rename): one whose only DR real server
    nobody answers ARP for, one served by the workers. The existing service must keep
    serving and the new one must be programmed."""
    spec = suite.info.spec
    doc = yaml.safe_load(suite.config.read_text())
    doc["owned_cidrs"] = [*doc.get("owned_cidrs", []), f"{UNREACHABLE_VIP}/32", f"{EXTRA_VIP}/32"]
    base = {"port": spec.port, "scheduler": spec.scheduler, "forward": "dr"}
    workers = [{"address": n.ip} for n in suite.info.nodes]
    doc["services"] += [
        {"name": "unreachable", "vip": UNREACHABLE_VIP, **base, "realservers": [{"address": UNREACHABLE_RS}]},
        {"name": "extra", "vip": EXTRA_VIP, **base, "realservers": workers},
    ]
    new_text = yaml.safe_dump(doc, sort_keys=False)
    desired = _desired_of(new_text, "the edited config")
    extra = next(k for k in desired.services if str(k.address) == EXTRA_VIP)
    unreachable = next(k for k in desired.services if str(k.address) == UNREACHABLE_VIP)
    existing = list(suite.desired.services)
    expected = suite.expected
    assert expected is not None

    def new_programmed() -> list[str]:
        image = suite.observer.image()
        out = expected.differences(image, only=existing)
        if plan(desired, as_observed(image), keys=[extra]).ops:
            have, want = image.services.get(extra), desired.services[extra]
            out.append(f"{extra}: {service_text(have)} (want {service_text(want)})")
        return out

    suite.observer.owns = desired.ownership.owns
    tmp = suite.config.with_suffix(".tmp")
    tmp.write_text(new_text)
    t0 = time.monotonic()
    tmp.replace(suite.config)
    repaired, diff = suite.wait_repaired(t0, differences=new_programmed)
    out = Outcome(t0, repaired, notes=diff)
    out.checks["new service programmed"] = repaired is not None
    suite.finish(out, new_programmed)
    image = suite.observer.image()
    out.notes.append(f"{unreachable} (nobody answers ARP): {service_text(image.services.get(unreachable))}")
    # The edit changed what the director must hold: later repairs come back to this.
    suite.desired = desired
    suite.expected = image
    return out


def _api_outage(suite: Suite) -> Outcome:
    """The API server away for ``outage`` seconds while a Service is created: nothing in
    the kernel or on the nodes may change meanwhile; after it returns the director
    catches up with the new Service."""
    api, expected = suite.api, suite.expected
    if api is None or expected is None:
        raise LabError("api-outage needs the stand-in API server and a Kubernetes director")
    t0 = time.monotonic()
    api.stop()
    api.publish({}, {"extra": EXTRA_VIP}, suite.info.spec.port)
    changed = suite.watch(suite.settings.outage)
    back = time.monotonic()
    api.start()

    def converged() -> list[str]:
        image = suite.observer.image()
        out = expected.differences(image, only=list(expected.services))
        if not any(str(k.address) == EXTRA_VIP for k in image.services):
            out.append(f"no service for {EXTRA_VIP} yet")
        return out

    repaired, diff = suite.wait_repaired(back, differences=converged)
    out = Outcome(t0, repaired, unchanged=not changed)
    out.checks["new Service programmed after the server returned"] = repaired is not None
    out.notes += [f"changed during the outage: {d}" for d in changed] + diff
    if repaired is not None:
        out.notes.append(f"the new Service was programmed {repaired - back:.2f} s after the server returned")
    return suite.finish(out, converged)


BOTH, NFT, IPVS = ("nftables", "ipvs"), ("nftables",), ("ipvs",)
FAULTS: tuple[Fault, ...] = (
    Fault(
        name="director-kill",
        title="kill -9 of the director, restarted 1 s later",
        kind="process",
        removes_realserver=False,
        tampering=False,
        backends=BOTH,
        run=_kill_director,
    ),
    Fault(
        name="agent-kill",
        title="kill -9 of node1's agent, restarted 1 s later",
        kind="process",
        removes_realserver=False,
        tampering=False,
        backends=BOTH,
        run=_kill_agent,
    ),
    Fault(
        name="nft-delete-netdev-table",
        title="nft delete table netdev kubelvs",
        kind="kernel",
        removes_realserver=True,
        tampering=True,
        backends=NFT,
        run=_command("nft", "delete", "table", "netdev", "kubelvs"),
    ),
    Fault(
        name="nft-delete-ip-table",
        title="nft delete table ip kubelvs",
        kind="kernel",
        removes_realserver=False,
        tampering=True,
        backends=NFT,
        run=_command("nft", "delete", "table", "ip", "kubelvs"),
    ),
    Fault(
        name="nft-flush-chain",
        title="nft flush chain netdev kubelvs dr_in_N (the DR ingress hook)",
        kind="kernel",
        removes_realserver=True,
        tampering=True,
        backends=NFT,
        run=_flush_ingress_chain,
    ),
    Fault(
        name="nft-delete-element",
        title="nft delete element: node2's slot in dr_slots",
        kind="kernel",
        removes_realserver=True,
        tampering=True,
        backends=NFT,
        run=_delete_slot,
    ),
    Fault(
        name="ipvs-delete-service",
        title="ipvsadm -D -t VIP:80",
        kind="kernel",
        removes_realserver=True,
        tampering=True,
        backends=IPVS,
        run=_command("ipvsadm", "-D", "-t", "{vip}:{port}"),
    ),
    Fault(
        name="ipvs-delete-realserver",
        title="ipvsadm -d -t VIP:80 -r node2:80",
        kind="kernel",
        removes_realserver=True,
        tampering=True,
        backends=IPVS,
        run=_command("ipvsadm", "-d", "-t", "{vip}:{port}", "-r", "{rs}:{port}"),
    ),
    Fault(
        name="ipvs-edit-weight",
        title="ipvsadm -e -t VIP:80 -r node2:80 -g -w 5",
        kind="kernel",
        removes_realserver=False,
        tampering=True,
        backends=IPVS,
        run=_command("ipvsadm", "-e", "-t", "{vip}:{port}", "-r", "{rs}:{port}", "-g", "-w", "5"),
    ),
    Fault(
        name="ipvs-timeouts",
        title="ipvsadm --set 900 120 300",
        kind="kernel",
        removes_realserver=False,
        tampering=True,
        backends=IPVS,
        run=_command("ipvsadm", "--set", "900", "120", "300"),
    ),
    Fault(
        name="director-sysctl",
        title="net.ipv4.vs.expire_nodest_conn=0 on the director",
        kind="kernel",
        removes_realserver=False,
        tampering=True,
        backends=IPVS,
        run=_director_sysctl,
    ),
    Fault(
        name="node-vip-deleted",
        title="the VIP deleted from node1",
        kind="node",
        removes_realserver=False,
        tampering=True,
        backends=BOTH,
        run=_node_vip_deleted,
    ),
    Fault(
        name="node-arp-ignore",
        title="arp_ignore=0 on node1 (all and eth0)",
        kind="node",
        removes_realserver=False,
        tampering=True,
        backends=BOTH,
        run=_node_arp_ignore,
    ),
    Fault(
        name="config-non-atomic",
        title="config truncated, then written in two parts 0.3 s apart",
        kind="config",
        removes_realserver=False,
        tampering=False,
        backends=BOTH,
        run=_config_non_atomic,
    ),
    Fault(
        name="config-unreachable",
        title=f"config: a DR real server nobody answers ARP for ({UNREACHABLE_RS}) beside a new service",
        kind="config",
        removes_realserver=False,
        tampering=False,
        backends=BOTH,
        run=_config_unreachable,
    ),
    Fault(
        name="api-outage",
        title="Kubernetes API server away for 5 s (a Service created meanwhile)",
        kind="kubernetes",
        removes_realserver=False,
        tampering=False,
        backends=BOTH,
        run=_api_outage,
    ),
)
