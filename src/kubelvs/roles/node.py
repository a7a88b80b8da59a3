"""The node agent: the real-server side of LVS-DR/TUN (docs/incidents.md, the DR ARP settings).

For every VIP this node serves in DR or TUN mode it:

- puts ``VIP/32`` (IPv6: ``VIP/128``) on ``lo`` (or on a ``dummy`` device ``kubelvs0``
  where the kernel has that link type), so the kernel accepts packets addressed to the VIP;
- IPv4: sets ``arp_ignore=1`` / ``arp_announce=2`` on the L2 interface, so the node neither
  answers ARP for the VIP (it would steal the director's traffic) nor announces the VIP
  as the sender of its own ARP requests (which re-points clients' ARP caches at it).
  IPv6 needs neither: Linux answers a neighbour solicitation only for an address of the
  interface it arrived on (``ndisc_recv_ns``), and takes the source of its own
  solicitations from the outgoing interface, so a VIP on ``lo`` is never advertised
  (docs/ipv6.md; tests/node/test_ipv6_neighbours.py proves both with real NDP);
- IPv4: makes the *effective* rp_filter (the kernel uses max(conf/all, conf/IFACE)) loose
  where DR traffic enters, and 0 on ``tunl0`` for TUN (a device without an address
  fails even loose validation): strict mode drops IPIP-decapsulated or asymmetric
  traffic, the rp_filter incident (SYN_RECV at the director). IPv6 has no rp_filter;
- the IPv4 settings are made while the node holds an IPv4 VIP;
- TUN: brings up the fallback device that decapsulates what the director sends: ``tunl0``
  (ipip module, IPv4 in IPv4) while it holds an IPv4 VIP, ``ip6tnl0`` (ip6_tunnel module,
  IPv6 in IPv6) while it holds an IPv6 one. A real server of the other family than its
  VIP (IPVS tunnels across families) needs a tunnel the agent does not make (docs/ipv6.md).

Everything it changes is recorded with the value found before (a small JSON file under
``/run/kubelvs/node/``, one per network namespace, tied to the namespace's inode so a
re-created namespace of the same name does not inherit a stale record). When the last
VIP goes away it reverts exactly what it set - and leaves alone a value somebody else
changed after it (reported, not overwritten). Running it twice changes nothing. A VIP
the node already has on any device (put there by hand, or on eth0) is recorded as not
ours: it is neither added to lo nor ever removed.

One agent per namespace: a long-running agent holds an exclusive lock
(``NodeAgent.hold``, ``flock`` on ``<state dir>/<netns or root>.lock``); a second
agent, or a ``--revert``, gets a NodeError naming the PID holding it instead of undoing
the running agent's work behind its back.

Kernel access goes through the kernel-interface layer (``kernel.iproute``,
``kernel.sysctl``); its KernelErrors surface here as NodeErrors.

One cohesive thing (over 500 lines): the record, the apply and the revert must stay
side by side, since each undoes exactly what the other wrote.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..errors import KernelError, NodeError
from ..kernel import iproute, sysctl
from ..kernel.netns import path_of as netns_path
from ..model import Forward
from ..sources.config import Config
from .agent_lock import AgentLock

__all__ = [
    "DUMMY_DEVICE",
    "STATE_DIR",
    "Change",
    "Mode",
    "NodeAgent",
    "NodeError",
    "default_interface",
    "node_addresses",
    "sorted_addresses",
    "vips_for_node",
]

STATE_DIR = Path("/run/kubelvs/node")
DUMMY_DEVICE = "kubelvs0"
TUN_DEVICE = "tunl0"  # the ipip module's fallback device: receives IPIP for any local address
#: VIP family -> (fallback device that decapsulates it, its module, what it carries).
TUNNELS = {
    4: (TUN_DEVICE, "ipip", "IPIP"),
    6: ("ip6tnl0", "ip6_tunnel", "IPv6-in-IPv6"),
}

Mode = Literal["dr", "tun"]
VipDevice = Literal["auto", "lo", "dummy"]


@dataclass(frozen=True, slots=True)
class Change:
    """One thing the agent did (or found it must not do), for the report."""

    action: str  # "add", "delete", "set", "restore", "up", "down", "create", "remove", "keep"
    target: str  # "10.240.0.201/32 dev lo", "net.ipv4.conf.eth0.arp_ignore", "link tunl0"
    detail: str = ""  # "0 -> 1", "changed by someone else to 3: left alone"

    def __str__(self) -> str:
        return f"{self.action} {self.target}" + (f" ({self.detail})" if self.detail else "")

    def as_dict(self) -> dict[str, str]:
        return {"action": self.action, "target": self.target, "detail": self.detail}


# ---------------------------------------------------------------------- pure helpers


def vips_for_node(config: Config, addresses: Iterable[str]) -> tuple[list[str], Mode]:
    """The VIPs a node holding ``addresses`` must put on lo: those of services with a DR
    or TUN real server at one of its addresses; the mode is ``tun`` if any of them is TUN."""
    own = {ipaddress.ip_address(a) for a in addresses}
    vips: set[str] = set()
    tun = False
    for svc in config.services:
        if svc.vip is None:
            continue
        for rs in svc.realservers:
            forward = rs.forward or svc.forward
            if forward not in (Forward.DR, Forward.TUN):
                continue
            try:
                address = ipaddress.ip_address(rs.address)
            except ValueError:
                continue
            if address in own:
                vips.add(str(ipaddress.ip_address(svc.vip)))
                tun = tun or forward is Forward.TUN
    return sorted_addresses(vips), ("tun" if tun else "dr")


def sorted_addresses(texts: Iterable[str]) -> list[str]:
    """Addresses in numeric order, IPv4 before IPv6 (each parsed once)."""
    parsed = sorted((ipaddress.ip_address(t) for t in texts), key=lambda a: (a.version, int(a)))
    return [str(a) for a in parsed]


def _host_cidr(vip: str) -> str:
    """``VIP/32``, or ``VIP/128`` for IPv6."""
    return f"{vip}/128" if ":" in vip else f"{vip}/32"


def _ipv4(vips: Iterable[str]) -> list[str]:
    return [v for v in vips if ":" not in v]


def _conf(iface: str, key: str) -> str:
    # Path form: interface names may contain dots (eth0.100).
    return f"net/ipv4/conf/{iface}/{key}"


def _conf_name(path: str) -> str:
    return path.replace("/", ".") if "." not in path.split("/")[3] else path


# ---------------------------------------------------------------------- kernel reads


@contextlib.contextmanager
def _node_errors() -> Iterator[None]:
    """The kernel layer's errors, as the node agent's (the message says what and why)."""
    try:
        yield
    except NodeError:
        raise
    except KernelError as exc:
        raise NodeError(str(exc)) from exc


def node_addresses(netns: str | None) -> list[str]:
    """Every global IPv4/IPv6 address of the namespace (without prefix length)."""
    with _node_errors():
        return [a.address for a in iproute.addresses(netns) if a.scope == "global"]


def default_interface(netns: str | None) -> str | None:
    """The device of the default route (the L2 interface on a typical node)."""
    with _node_errors():
        return iproute.default_route_device(netns)


def _netns_inode(netns: str | None) -> int:
    path = netns_path(netns) if netns else "/proc/self/ns/net"
    try:
        return os.stat(path).st_ino
    except FileNotFoundError as exc:
        raise NodeError(f"network namespace {netns!r} does not exist") from exc


# ---------------------------------------------------------------------- the agent


class NodeAgent:
    """Configures the real-server side in one network namespace. Not thread-safe.

    ``sync(vips)`` makes the node hold exactly ``vips``; ``revert()`` undoes everything
    the agent set. Both read the node back first, so they are idempotent.

    One agent per namespace (and state directory): a long-running agent runs its whole
    loop inside ``with agent.hold():``, an exclusive ``flock`` on ``lock_path`` with its
    PID in it, released on exit (the file is removed then). While another process holds
    it, ``hold()``, ``sync()`` and ``revert()`` raise NodeError("a node agent (pid N) is
    running for this namespace ...; stop it first") and change nothing. Outside
    ``hold()``, ``sync()`` and ``revert()`` take the lock just for their own duration
    (a one-shot ``--once`` or ``--revert``); ``holder()`` tells who has it.
    """

    def __init__(
        self,
        *,
        interface: str,
        mode: Mode = "dr",
        netns: str | None = None,  # None: the namespace we run in
        vip_device: VipDevice = "auto",
        state_dir: Path = STATE_DIR,
    ) -> None:
        if mode not in ("dr", "tun"):
            raise NodeError(f"mode: {mode!r} is not dr or tun")
        self.interface = interface
        self.mode: Mode = mode
        self.netns = netns
        self.vip_device_choice: VipDevice = vip_device
        self.state_path = state_dir / f"{netns or 'root'}.json"
        self._lock = AgentLock(state_dir / f"{netns or 'root'}.lock", netns or "the agent's own namespace")
        self._inode = _netns_inode(netns)
        with _node_errors():
            if iproute.link(netns, interface) is None:
                raise NodeError(f"interface: {interface!r} does not exist" + self._where())

    def _where(self) -> str:
        return f" in network namespace {self.netns}" if self.netns else ""

    # -------------------------------------------------------------- one agent per namespace

    @property
    def lock_path(self) -> Path:
        return self._lock.path

    def hold(self) -> contextlib.AbstractContextManager[None]:
        """Hold this namespace's agent lock for the block (the long-running loop).
        Raises NodeError naming the PID of the agent that holds it already; nested
        use by the same agent is allowed."""
        return self._lock.hold()

    @property
    def holding(self) -> bool:
        """True inside ``hold()``."""
        return self._lock.holding

    def holder(self) -> int | None:
        """PID of the process holding this namespace's agent lock (None: nobody)."""
        return self._lock.holder()

    # -------------------------------------------------------------- record

    def _load(self) -> dict[str, Any]:
        empty: dict[str, Any] = {
            "inode": self._inode,
            "device": None,
            "dummy_created": False,
            "vips": {},
            "sysctls": {},
            "links": {},
        }
        try:
            data = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return empty
        except (OSError, ValueError) as exc:
            raise NodeError(
                f"state file {self.state_path} is unreadable: {exc}; remove it to start over"
            ) from exc
        if data.get("inode") != self._inode:
            return empty  # a namespace of the same name was re-created: nothing in it is ours
        return {**empty, **data}

    def _save(self, record: dict[str, Any]) -> None:
        if not (record["vips"] or record["sysctls"] or record["links"] or record["dummy_created"]):
            self.state_path.unlink(missing_ok=True)
            return
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=1, sort_keys=True))
        os.replace(tmp, self.state_path)

    def recorded(self) -> dict[str, Any]:
        """What the agent has set and will revert (the state file's content)."""
        return self._load()

    # -------------------------------------------------------------- sysctls

    def _read(self, path: str) -> int | None:
        with _node_errors():
            return sysctl.read_in(self.netns, path)

    def _set(self, record: dict[str, Any], path: str, value: int, changes: list[Change]) -> None:
        current = self._read(path)
        if current is None:
            raise NodeError(f"sysctl {_conf_name(path)} does not exist" + self._where())
        if current == value:
            return
        try:
            sysctl.write_in(self.netns, path, value)
        except KernelError as exc:
            raise NodeError(f"cannot set {_conf_name(path)}={value}: {exc}") from exc
        entry = record["sysctls"].get(path)
        before = entry["before"] if entry else current  # the value before *we* first touched it
        record["sysctls"][path] = {"before": before, "set": value}
        changes.append(Change("set", _conf_name(path), f"{current} -> {value}"))

    def _ensure_sysctls(self, record: dict[str, Any], changes: list[Change]) -> None:
        iface = self.interface
        # arp_ignore / arp_announce: the kernel uses max(all, iface).
        for key, need in (("arp_ignore", 1), ("arp_announce", 2)):
            eff = max(self._read(_conf("all", key)) or 0, self._read(_conf(iface, key)) or 0)
            if eff < need:
                self._set(record, _conf(iface, key), need, changes)
        # rp_filter on the L2 interface: effective max(all, iface); 1 (strict) is the bad value.
        if self._read(_conf(iface, "rp_filter")) == 1:
            self._set(record, _conf(iface, "rp_filter"), 2, changes)
        all_rpf = self._read(_conf("all", "rp_filter")) or 0
        if self.mode != "tun":
            if all_rpf == 1:
                self._set(record, _conf("all", "rp_filter"), 2, changes)
            return
        # TUN: decapsulated packets enter on tunl0, which has no IPv4 address. For such a
        # device the kernel fails source validation whenever the reverse route is not
        # through it - in loose mode too (fib_validate_source: no_addr -> last_resort ->
        # reject if rpf != 0). So tunl0's effective value must be 0, hence conf/all 0.
        # Every other interface keeps its effective value: it gets the old ``all`` as
        # its own (default too, for interfaces made later), the L2 interface loose.
        if all_rpf:
            # ``default`` first: writing it also changes every interface whose own value
            # was never written, so the others are read after it.
            if (self._read(_conf("default", "rp_filter")) or 0) < all_rpf:
                self._set(record, _conf("default", "rp_filter"), all_rpf, changes)
            with _node_errors():
                devices = sysctl.conf_devices(self.netns)
            for dev in devices:
                if dev in ("all", "default", TUN_DEVICE):
                    continue
                own = self._read(_conf(dev, "rp_filter")) or 0
                if dev == iface:
                    if own == 1 or own < all_rpf:  # 1: it may have come from default just now
                        self._set(record, _conf(dev, "rp_filter"), 2, changes)
                elif own < all_rpf:
                    self._set(record, _conf(dev, "rp_filter"), all_rpf, changes)
            self._set(record, _conf("all", "rp_filter"), 0, changes)
        # Last: the writes above may have changed tunl0 through ``default``.
        if self._read(_conf(TUN_DEVICE, "rp_filter")):
            self._set(record, _conf(TUN_DEVICE, "rp_filter"), 0, changes)

    def _restore_sysctls(self, record: dict[str, Any], changes: list[Change]) -> None:
        for path, entry in sorted(record["sysctls"].items()):
            current = self._read(path)
            name = _conf_name(path)
            if current is None:
                changes.append(Change("keep", name, "gone (its interface was removed)"))
            elif current != entry["set"]:
                changes.append(Change("keep", name, f"changed by someone else to {current}: left alone"))
            elif current != entry["before"]:
                with _node_errors():
                    sysctl.write_in(self.netns, path, entry["before"])
                changes.append(Change("restore", name, f"{current} -> {entry['before']}"))
        record["sysctls"] = {}

    # -------------------------------------------------------------- devices

    def _vip_device(self, record: dict[str, Any], changes: list[Change]) -> str:
        if record.get("device"):
            return str(record["device"])
        choice = self.vip_device_choice
        device = "lo"
        if choice in ("auto", "dummy"):
            if iproute.link(self.netns, DUMMY_DEVICE) is not None:
                device = DUMMY_DEVICE
            else:
                try:
                    iproute.add_dummy(self.netns, DUMMY_DEVICE)
                except KernelError as exc:
                    if choice == "dummy":
                        raise NodeError(
                            f"vip_device: this kernel cannot make a dummy device ({exc}); use lo"
                        ) from exc
                else:
                    record["dummy_created"] = True  # before bringing it up: a failure still removes it
                    changes.append(Change("create", f"link {DUMMY_DEVICE}", "type dummy"))
                    iproute.set_link_up(self.netns, DUMMY_DEVICE)
                    device = DUMMY_DEVICE
        if device == DUMMY_DEVICE:
            # A dummy device answers no ARP itself, but arp_ignore on the L2 interface
            # is still what stops the node answering for it there.
            self._set(record, _conf(DUMMY_DEVICE, "arp_ignore"), 1, changes)
        record["device"] = device
        return device

    def _ensure_tunnels(self, record: dict[str, Any], wanted: list[str], changes: list[Change]) -> None:
        """The fallback tunnel device of each family among ``wanted``, up; all checked
        before any is brought up, so a missing one changes nothing."""
        links = []
        for family in sorted({ipaddress.ip_address(v).version for v in wanted}):
            device, module, carries = TUNNELS[family]
            link = iproute.link(self.netns, device)
            if link is None:
                subprocess.run(["modprobe", "-q", module], check=False, capture_output=True)
                link = iproute.link(self.netns, device)
            if link is None:
                raise NodeError(
                    f"mode: tun needs {carries} tunnels for IPv{family} VIPs, and this kernel has no "
                    f"{module} support (no {device} device)"
                )
            links.append((device, carries, link.up))
        for device, carries, up in links:
            if not up:
                iproute.set_link_up(self.netns, device)
                record["links"][device] = {"was_up": False}
                changes.append(Change("up", f"link {device}", f"{carries} fallback device"))

    def _ensure_vips(
        self, record: dict[str, Any], device: str, wanted: list[str], changes: list[Change]
    ) -> None:
        """Each wanted VIP on ``device``, unless the node has it already on any device
        (lo by hand, eth0, any prefix length): then it is recorded as not ours, and
        neither added nor, later, removed."""
        present = iproute.addresses(self.netns)
        for vip in wanted:
            cidr = _host_cidr(vip)
            entry = record["vips"].get(vip)
            ours = entry is not None and entry["added"]
            if ours and any(a.cidr == cidr and a.device == entry["device"] for a in present):
                continue
            holder = next((a for a in present if a.address == vip), None)
            if holder is not None:
                if not ours and entry is not None and entry["device"] == holder.device:
                    continue  # known, not ours
                record["vips"][vip] = {"device": holder.device, "added": False, "prefixlen": holder.prefixlen}
                target = f"{holder.cidr} dev {holder.device}"
                changes.append(Change("keep", target, "already on the node: not ours, left alone"))
                continue
            iproute.add_address(self.netns, device, cidr)  # new, or ours and removed behind our back
            record["vips"][vip] = {"device": device, "added": True}
            changes.append(Change("add", f"{cidr} dev {device}"))

    # -------------------------------------------------------------- public

    def sync(self, vips: Iterable[str]) -> list[Change]:
        """Make this node hold exactly ``vips`` (VIPs the agent added; others are left alone).
        Returns what changed; an empty list when the node already matched. NodeError when
        another agent holds this namespace (see ``hold``)."""
        wanted: list[str] = []
        for v in vips:
            try:
                address = ipaddress.ip_address(v)
            except ValueError:
                raise NodeError(f"vip: {v!r} is not an IPv4 or IPv6 address (nothing was changed)") from None
            if str(address) not in wanted:
                wanted.append(str(address))
        with self._lock.exclusive():
            return self._sync(wanted)

    def drifted(self, vips: Iterable[str]) -> bool:
        """True when the node no longer holds what ``sync(vips)`` made it hold: a VIP gone,
        an ARP or reverse-path setting changed by someone else. Read-only and cheap (one
        address dump, a few /proc reads): the agent's loop asks every second, so that
        damage is repaired in about a second instead of at the next resync."""
        wanted = list(vips)
        if not wanted:
            return False
        with _node_errors():
            held = {a.address for a in iproute.addresses(self.netns)}
            if any(v not in held for v in wanted):
                return True
            if self.mode == "tun" and len(wanted) > len(_ipv4(wanted)):
                link = iproute.link(self.netns, TUNNELS[6][0])
                if link is None or not link.up:
                    return True
            if not _ipv4(wanted):
                return False  # IPv6 VIPs need no sysctl
            iface = self.interface
            for key, need in (("arp_ignore", 1), ("arp_announce", 2)):
                if max(self._read(_conf("all", key)) or 0, self._read(_conf(iface, key)) or 0) < need:
                    return True
            if self._read(_conf(iface, "rp_filter")) == 1 or (
                self.mode != "tun" and self._read(_conf("all", "rp_filter")) == 1
            ):
                return True
            if self.mode == "tun":
                tunl = max(
                    self._read(_conf("all", "rp_filter")) or 0,
                    self._read(_conf(TUN_DEVICE, "rp_filter")) or 0,
                )
                link = iproute.link(self.netns, TUN_DEVICE)
                return tunl != 0 or link is None or not link.up
        return False

    def _sync(self, wanted: list[str]) -> list[Change]:
        record = self._load()
        changes: list[Change] = []
        try:
            with _node_errors():
                if wanted:
                    if self.mode == "tun":  # first: without the tunnels nothing else should change
                        self._ensure_tunnels(record, wanted, changes)
                    device = self._vip_device(record, changes)
                    if _ipv4(wanted):
                        self._ensure_sysctls(record, changes)
                    else:  # the last IPv4 VIP went: its settings go with it
                        self._restore_sysctls(record, changes)
                    self._ensure_vips(record, device, wanted, changes)
                for vip in sorted(set(record["vips"]) - set(wanted)):
                    entry = record["vips"].pop(vip)
                    cidr = _host_cidr(vip) if entry["added"] else f"{vip}/{entry.get('prefixlen', 32)}"
                    target = f"{cidr} dev {entry['device']}"
                    if not entry["added"]:
                        changes.append(Change("keep", target, "was there before the agent: left alone"))
                        continue
                    try:
                        iproute.delete_address(self.netns, entry["device"], cidr)
                        changes.append(Change("delete", target))
                    except KernelError:
                        changes.append(Change("delete", target, "already gone"))
                if not wanted:
                    self._release_node(record, changes)
        finally:
            self._save(record)
        return changes

    def _release_node(self, record: dict[str, Any], changes: list[Change]) -> None:
        """No VIP left: undo the node-wide settings."""
        self._restore_sysctls(record, changes)
        for name, entry in sorted(record["links"].items()):
            if not entry.get("was_up", True) and iproute.link(self.netns, name) is not None:
                with contextlib.suppress(KernelError):
                    iproute.set_link_down(self.netns, name)
                changes.append(Change("down", f"link {name}", "was down before the agent"))
        record["links"] = {}
        if record.get("dummy_created"):
            if iproute.link(self.netns, DUMMY_DEVICE) is not None:
                with contextlib.suppress(KernelError):
                    iproute.delete_link(self.netns, DUMMY_DEVICE)
                changes.append(Change("remove", f"link {DUMMY_DEVICE}"))
            record["dummy_created"] = False
        record["device"] = None

    def revert(self) -> list[Change]:
        """Remove every VIP the agent added and restore every value it set. NodeError when
        another agent holds this namespace (a running agent would put it all back)."""
        return self.sync(())
