"""The lab's state as the runner compares it before and after a fault: the director's
table read back through the backend, the kubelvs nftables tables, every worker's VIP
and ARP settings."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from ...backends import Backend, BackendName, open_backend
from ...backends.nftables.schema import COUNTER_SETS, TABLE
from ...errors import KubelvsError, LabError
from ...kernel import sysctl
from ...kernel.netns import entered
from ...model import (
    ObservedState,
    ServiceKey,
    Timeouts,
    VirtualService,
    kernel_version,
    recommended_sysctls,
)
from ..topology import RunningLab


@dataclass(frozen=True, slots=True)
class NodeImage:
    """What the node agent keeps on a worker."""

    vip: bool  # the VIP is on one of its devices
    arp_ignore: int  # effective: max(all, interface)
    arp_announce: int

    def describe(self) -> str:
        vip = "held" if self.vip else "missing"
        return f"VIP {vip}, arp_ignore {self.arp_ignore}, arp_announce {self.arp_announce}"


@dataclass(frozen=True, slots=True)
class Image:
    """The lab's state as far as kubelvs keeps it: the director's table and the workers."""

    services: Mapping[ServiceKey, VirtualService]  # owned ones
    timeouts: Timeouts | None
    sysctls: Mapping[str, int]
    ruleset: str  # the nftables tables, normalised ("" with IPVS)
    nodes: Mapping[str, NodeImage]
    error: str = ""  # the read failed

    def differences(self, now: Image, *, only: Iterable[ServiceKey] | None = None) -> list[str]:
        """How ``now`` differs from this image, one phrase each (empty: the same).
        ``only``: compare these services and the nodes, nothing else."""
        if now.error:
            return [now.error]
        out: list[str] = []
        keys = set(self.services) | set(now.services) if only is None else set(only)
        for key in sorted(keys, key=ServiceKey.sort_key):
            want, have = self.services.get(key), now.services.get(key)
            if want != have:
                out.append(f"{key}: {service_text(have)} (want {service_text(want)})")
        if only is None:
            if now.timeouts != self.timeouts:
                out.append(f"timeouts {now.timeouts} (want {self.timeouts})")
            for name, value in sorted(self.sysctls.items()):
                if now.sysctls.get(name) != value:
                    out.append(f"{name}={now.sysctls.get(name)} (want {value})")
            if now.ruleset != self.ruleset:
                out.append("nftables tables differ from the repaired state")
        for node, want_node in sorted(self.nodes.items()):
            have_node = now.nodes.get(node)
            if have_node != want_node:
                seen = have_node.describe() if have_node else "unreadable"
                out.append(f"{node}: {seen} (want {want_node.describe()})")
        return out


def service_text(vs: VirtualService | None) -> str:
    if vs is None:
        return "absent"
    rss = ", ".join(f"{rs.key} w={rs.weight}" for rs in vs.realservers)
    return f"{vs.scheduler} [{rss}]"


def nft_tables(netns: str) -> str:
    """The ``kubelvs`` tables of ``netns`` as ``nft -j`` lists them, normalised: no
    handles, no counter values, no elements of the sets the packet path fills, set
    elements sorted; rules kept in their chain's order."""
    proc = subprocess.run(
        ["ip", "netns", "exec", netns, "nft", "-j", "list", "ruleset"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if proc.returncode != 0:
        raise LabError(f"nft -j list ruleset (in {netns}): {proc.stderr.strip()}")
    things: list[str] = []
    rules: dict[str, list[str]] = {}
    for item in json.loads(proc.stdout)["nftables"]:
        ((kind, body),) = item.items()
        if kind == "metainfo" or (body.get("table") if kind != "table" else body.get("name")) != TABLE:
            continue
        body = _without_counts({k: v for k, v in body.items() if k != "handle"})
        if kind in ("set", "map") and body["name"] in COUNTER_SETS:
            body.pop("elem", None)  # the packet path adds them
        elif kind in ("set", "map") and "elem" in body:
            body["elem"] = sorted(json.dumps(e, sort_keys=True) for e in body["elem"])
        if kind == "rule":
            rules.setdefault(f"{body['family']} {body['chain']}", []).append(
                json.dumps(body["expr"], sort_keys=True)
            )
        else:
            things.append(json.dumps({kind: body}, sort_keys=True))
    return json.dumps({"objects": sorted(things), "rules": rules}, sort_keys=True)


def _without_counts(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: ({} if k == "counter" else _without_counts(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_counts(v) for v in value]
    return value


def node_image(netns: str, vip: str, interface: str = "eth0") -> NodeImage:
    """Whether the worker holds ``vip`` (binding to it succeeds only for a local address;
    cheaper than an address dump, which matters in the VM) and its effective ARP settings."""
    with entered(netns):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((vip, 0))
                held = True
            except OSError as exc:
                if exc.errno != errno.EADDRNOTAVAIL:
                    raise
                held = False

        def effective(key: str) -> int:
            return max(sysctl.read(f"net.ipv4.conf.{name}.{key}") or 0 for name in ("all", interface))

        return NodeImage(vip=held, arp_ignore=effective("arp_ignore"), arp_announce=effective("arp_announce"))


class Observer:
    """Reads the lab's state: the director's table through the backend (in the
    director's namespace), the nftables tables, the workers."""

    def __init__(self, running: RunningLab, owns: Callable[[ServiceKey], bool]) -> None:
        self.running = running
        self.netns = running.info.directors["dir1"]
        self.backend: Backend = open_backend(cast(BackendName, running.info.backend), netns=self.netns)
        self.owns = owns
        self.sysctl_names = sorted(
            recommended_sysctls(self.backend.name, kernel_version(os.uname().release), ())
        )
        self.reads = 0
        self.read_seconds = 0.0

    def image(self) -> Image:
        started = time.monotonic()
        nodes: dict[str, NodeImage] = {}
        try:
            state = self.backend.read(sysctls=self.sysctl_names)
            ruleset = nft_tables(self.netns) if self.backend.name == "nftables" else ""
            for node in self.running.info.nodes:
                nodes[node.name] = node_image(node.netns, self.running.info.spec.vip)
        except (KubelvsError, OSError, subprocess.SubprocessError) as exc:
            return Image({}, None, {}, "", nodes, error=f"read failed: {exc}")
        finally:
            self.reads += 1
            self.read_seconds += time.monotonic() - started
        services = {k: v for k, v in state.services.items() if self.owns(k)}
        return Image(services, state.timeouts, dict(state.sysctls), ruleset, nodes)

    def close(self) -> None:
        self.backend.close()


def as_observed(image: Image) -> ObservedState:
    """The image as the planner's observed state (to plan against what the lab holds)."""
    return ObservedState(services=dict(image.services), timeouts=image.timeouts, sysctls=dict(image.sysctls))
