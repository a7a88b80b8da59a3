"""The node agent: the real-server side of LVS-DR/TUN, as the seed sets it up by hand.

For every VIP this node serves in DR or TUN mode it:

- puts ``VIP/32`` on ``lo`` (or on a ``dummy`` device ``kubelvs0`` where the kernel has
  that link type), so the kernel accepts packets addressed to the VIP;
- sets ``arp_ignore=1`` / ``arp_announce=2`` on the L2 interface, so the node neither
  answers ARP for the VIP (it would steal the director's traffic) nor announces the VIP
  as the sender of its own ARP requests (which re-points clients' ARP caches at it);
- makes the *effective* rp_filter (the kernel uses max(conf/all, conf/IFACE)) loose
  where DR traffic enters, and 0 on ``tunl0`` for TUN (a device without an address
  fails even loose validation): strict mode drops IPIP-decapsulated or asymmetric
  traffic, the seed's third incident (SYN_RECV at the director);
- TUN: brings up the IPIP fallback device ``tunl0`` (made by the ipip module).

Everything it changes is recorded with the value found before (a small JSON file under
``/run/kubelvs/node/``, one per network namespace, tied to the namespace's inode so a
re-created namespace of the same name does not inherit a stale record). When the last
VIP goes away it reverts exactly what it set - and leaves alone a value somebody else
changed after it (reported, not overwritten). Running it twice changes nothing.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..errors import KubelvsError
from ..kernel import sysctl
from ..kernel.netns import NETNS_DIR, entered
from ..model import Forward
from ..sources.config import Config

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

Mode = Literal["dr", "tun"]
VipDevice = Literal["auto", "lo", "dummy"]


class NodeError(KubelvsError):
    """The node agent could not configure (or read) this node."""


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


def _conf(iface: str, key: str) -> str:
    # Path form: interface names may contain dots (eth0.100).
    return f"net/ipv4/conf/{iface}/{key}"


def _conf_name(path: str) -> str:
    return path.replace("/", ".") if "." not in path.split("/")[3] else path


# ---------------------------------------------------------------------- ip(8) helpers


def _ip(netns: str | None, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = ["ip"] + (["-n", netns] if netns else []) + list(args)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise NodeError(f"{' '.join(cmd)}: {proc.stderr.strip() or 'failed'}")
    return proc


def _ip_json(netns: str | None, *args: str) -> list[dict[str, Any]]:
    out = _ip(netns, "-j", *args).stdout
    data = json.loads(out or "[]")
    return data if isinstance(data, list) else []


def node_addresses(netns: str | None) -> list[str]:
    """Every global IPv4/IPv6 address of the namespace (without prefix length)."""
    out = []
    for link in _ip_json(netns, "addr", "show"):
        for a in link.get("addr_info", []):
            if a.get("scope") == "global":
                out.append(str(a["local"]))
    return out


def default_interface(netns: str | None) -> str | None:
    """The device of the default route (the L2 interface on a typical node)."""
    for route in _ip_json(netns, "route", "show", "default"):
        if route.get("dev"):
            return str(route["dev"])
    return None


def _link(netns: str | None, name: str) -> dict[str, Any] | None:
    proc = _ip(netns, "-j", "link", "show", "dev", name, check=False)
    if proc.returncode != 0:
        return None
    links = json.loads(proc.stdout or "[]")
    return links[0] if links else None


def _addresses_on(netns: str | None, device: str) -> set[str]:
    out: set[str] = set()
    for link in _ip_json(netns, "addr", "show", "dev", device):
        for a in link.get("addr_info", []):
            out.add(f"{a['local']}/{a['prefixlen']}")
    return out


def _netns_inode(netns: str | None) -> int:
    path = os.path.join(NETNS_DIR, netns) if netns else "/proc/self/ns/net"
    try:
        return os.stat(path).st_ino
    except FileNotFoundError as exc:
        raise NodeError(f"network namespace {netns!r} does not exist") from exc


# ---------------------------------------------------------------------- the agent


class NodeAgent:
    """Configures the real-server side in one network namespace. Not thread-safe."""

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
        self._inode = _netns_inode(netns)
        if _link(netns, interface) is None:
            raise NodeError(f"interface: {interface!r} does not exist" + (f" in network namespace {netns}" if netns else ""))

    # -------------------------------------------------------------- record

    def _load(self) -> dict[str, Any]:
        empty: dict[str, Any] = {"inode": self._inode, "device": None, "dummy_created": False, "vips": {}, "sysctls": {}, "links": {}}
        try:
            data = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return empty
        except (OSError, ValueError) as exc:
            raise NodeError(f"state file {self.state_path} is unreadable: {exc}; remove it to start over") from exc
        if data.get("inode") != self._inode:
            return empty  # a namespace of the same name was re-created: nothing in it is ours
        return {**empty, **data}

    def _save(self, record: dict[str, Any]) -> None:
        if not record["vips"] and not record["sysctls"] and not record["links"] and not record["dummy_created"]:
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
        with entered(self.netns):
            return sysctl.read(path)

    def _set(self, record: dict[str, Any], path: str, value: int, changes: list[Change]) -> None:
        current = self._read(path)
        if current is None:
            raise NodeError(f"sysctl {_conf_name(path)} does not exist" + (f" in {self.netns}" if self.netns else ""))
        if current == value:
            return
        try:
            with entered(self.netns):
                sysctl.write(path, value)
        except OSError as exc:
            raise NodeError(f"cannot set {_conf_name(path)}={value}: {exc.strerror or exc}") from exc
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
            with entered(self.netns):
                devices = sorted(os.listdir("/proc/sys/net/ipv4/conf"))
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
                with entered(self.netns):
                    sysctl.write(path, entry["before"])
                changes.append(Change("restore", name, f"{current} -> {entry['before']}"))
        record["sysctls"] = {}

    # -------------------------------------------------------------- devices

    def _vip_device(self, record: dict[str, Any], changes: list[Change]) -> str:
        if record.get("device"):
            return str(record["device"])
        choice = self.vip_device_choice
        device = "lo"
        if choice in ("auto", "dummy"):
            if _link(self.netns, DUMMY_DEVICE) is not None:
                device = DUMMY_DEVICE
            else:
                made = _ip(self.netns, "link", "add", DUMMY_DEVICE, "type", "dummy", check=False)
                if made.returncode == 0:
                    _ip(self.netns, "link", "set", DUMMY_DEVICE, "up")
                    record["dummy_created"] = True
                    changes.append(Change("create", f"link {DUMMY_DEVICE}", "type dummy"))
                    device = DUMMY_DEVICE
                elif choice == "dummy":
                    raise NodeError(
                        f"vip_device: this kernel cannot make a dummy device ({made.stderr.strip()}); use lo"
                    )
        if device == DUMMY_DEVICE:
            # A dummy device answers no ARP itself, but arp_ignore on the L2 interface
            # is still what stops the node answering for it there.
            self._set(record, _conf(DUMMY_DEVICE, "arp_ignore"), 1, changes)
        record["device"] = device
        return device

    def _ensure_tunnel(self, record: dict[str, Any], changes: list[Change]) -> None:
        link = _link(self.netns, TUN_DEVICE)
        if link is None:
            subprocess.run(["modprobe", "-q", "ipip"], check=False, capture_output=True)
            link = _link(self.netns, TUN_DEVICE)
        if link is None:
            raise NodeError("mode: tun needs IPIP tunnels, and this kernel has no ipip support (no tunl0 device)")
        if "UP" not in link.get("flags", []):
            _ip(self.netns, "link", "set", TUN_DEVICE, "up")
            record["links"][TUN_DEVICE] = {"was_up": False}
            changes.append(Change("up", f"link {TUN_DEVICE}", "IPIP fallback device"))

    # -------------------------------------------------------------- public

    def sync(self, vips: Iterable[str]) -> list[Change]:
        """Make this node hold exactly ``vips`` (VIPs the agent added; others are left alone).
        Returns what changed; an empty list when the node already matched."""
        wanted: list[str] = []
        for v in vips:
            try:
                address = ipaddress.ip_address(v)
            except ValueError:
                raise NodeError(f"vip: {v!r} is not an IPv4 or IPv6 address (nothing was changed)") from None
            if address.version != 4:
                raise NodeError(f"vip: {v} is IPv6; the node agent handles IPv4 VIPs only (nothing was changed)")
            if str(address) not in wanted:
                wanted.append(str(address))
        record = self._load()
        changes: list[Change] = []
        try:
            if wanted:
                if self.mode == "tun":  # first: without ipip nothing else should change
                    self._ensure_tunnel(record, changes)
                device = self._vip_device(record, changes)
                self._ensure_sysctls(record, changes)
                present = _addresses_on(self.netns, device)
                elsewhere = set(node_addresses(self.netns))  # e.g. put on lo by hand before the agent
                for vip in wanted:
                    cidr = f"{vip}/32"
                    if cidr in present or (vip not in record["vips"] and vip in elsewhere):
                        if vip not in record["vips"]:
                            record["vips"][vip] = {"device": device, "added": False}
                        continue
                    _ip(self.netns, "addr", "add", cidr, "dev", device)
                    record["vips"][vip] = {"device": device, "added": True}
                    changes.append(Change("add", f"{cidr} dev {device}"))
            for vip in sorted(set(record["vips"]) - set(wanted)):
                entry = record["vips"].pop(vip)
                if entry["added"]:
                    gone = _ip(self.netns, "addr", "del", f"{vip}/32", "dev", entry["device"], check=False)
                    changes.append(Change("delete", f"{vip}/32 dev {entry['device']}", "" if gone.returncode == 0 else "already gone"))
                else:
                    changes.append(Change("keep", f"{vip}/32 dev {entry['device']}", "was there before the agent: left alone"))
            if not wanted:
                self._release(record, changes)
        finally:
            self._save(record)
        return changes

    def _release(self, record: dict[str, Any], changes: list[Change]) -> None:
        """No VIP left: undo the node-wide settings."""
        self._restore_sysctls(record, changes)
        for name, entry in sorted(record["links"].items()):
            if not entry.get("was_up", True) and _link(self.netns, name) is not None:
                _ip(self.netns, "link", "set", name, "down", check=False)
                changes.append(Change("down", f"link {name}", "was down before the agent"))
        record["links"] = {}
        if record.get("dummy_created"):
            if _link(self.netns, DUMMY_DEVICE) is not None:
                _ip(self.netns, "link", "del", DUMMY_DEVICE, check=False)
                changes.append(Change("remove", f"link {DUMMY_DEVICE}"))
            record["dummy_created"] = False
        record["device"] = None

    def revert(self) -> list[Change]:
        """Remove every VIP the agent added and restore every value it set."""
        return self.sync(())
