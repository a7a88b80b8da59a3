"""What a report examined, said before its findings (doctor layer).

"No findings" from a host without IPVS cannot be told from a healthy director unless the
report says what it looked at: the role it assumed and why, the data plane it found, how
many virtual services, real servers, connection entries and interfaces it checked, and
which inputs were missing. From the same account (``inputs.NEEDS``: the inputs that
decide each finding) it names what to capture next, most useful first: the commands
whose output would decide the most findings not checked for want of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .analyse import REPORTS
from .bundle import Bundle
from .checks_dr import expected_vips
from .findings import FINDING_IDS, Finding
from .inputs import INPUTS, NEEDS

__all__ = ["CAPTURE", "Capture", "Examined", "examine"]

#: input -> the command that captures it (the first of its files, as a user types it).
CAPTURE = {
    "lb-table": "ipvsadm -Ln",
    "ipvs-table": "ipvsadm -Ln",
    "ipvs-listing": "ipvsadm -Ln",
    "ipvs-flags": "ipvsadm -Ln",
    "conns": "ipvsadm -Lnc",
    "timeouts": "ipvsadm -L --timeout",
    "sysctls": "sysctl -a",
    "sysctl-conf": "cat /etc/sysctl.conf /etc/sysctl.d/*.conf",
    "counters": "cat /proc/net/netstat",
    "kernel": "uname -r",
    "interfaces": "ip -d addr",
    "proxy-neighbours": "ip -6 neigh show proxy",
    "kube": "kubectl get svc,endpoints,endpointslices,nodes -A -o yaml",
}
assert set(CAPTURE) == set(INPUTS)


@dataclass(frozen=True, slots=True)
class Capture:
    command: str
    decides: tuple[str, ...]  # finding ids that need it (and were not checked), in report order


@dataclass(frozen=True)
class Examined:
    origin: str  # "live host", "live namespace NAME", "bundle DIR", "paste"
    role: str
    role_reason: str
    data_plane: str  # "IPVS", "the kubelvs nftables table" or "none found"
    counts: dict[str, int]  # what was checked, by kind (only what the input held)
    missing: tuple[str, ...]  # inputs absent from the input (not unreadable: input-unparsed says those)
    capture_next: tuple[Capture, ...]  # empty for a live host: what it lacks, it does not have

    def to_json(self) -> dict[str, object]:
        return {
            "origin": self.origin,
            "role": self.role,
            "role_reason": self.role_reason,
            "data_plane": self.data_plane,
            "checked": dict(self.counts),
            "missing": list(self.missing),
            "capture_next": [
                {"command": c.command, "needed_for": list(c.decides)} for c in self.capture_next
            ],
        }

    def lines(self) -> list[str]:
        checked = ", ".join(f"{n} {what}" for what, n in self.counts.items()) or "nothing"
        out = [
            f"examined: {self.origin}",
            f"  role: {self.role} ({self.role_reason})",
            f"  data plane: {self.data_plane}",
            f"  checked: {checked}",
        ]
        if self.missing:
            out.append(f"  missing: {', '.join(self.missing)}")
        if self.capture_next:
            out.append("  capture next, most useful first:")
            width = max(len(c.command) for c in self.capture_next)
            out.extend(
                f"    {c.command.ljust(width)}   # needed for {', '.join(c.decides)}"
                for c in self.capture_next
            )
        return out


def examine(bundle: Bundle, *, origin: str, live: bool = False, found: Sequence[Finding] = ()) -> Examined:
    """What ``bundle`` held for the checks (call after ``analyse``: the views are parsed).
    ``found``: the findings of the report; the ones confirmed need nothing more captured."""
    services = bundle.services
    counts: dict[str, int] = {}
    if services is not None:
        counts["virtual service(s)"] = len(services)
        counts["real server(s)"] = sum(len(s.realservers) for s in services)
    if bundle.conns is not None:
        counts["connection entries"] = len(bundle.conns.rows)
    if bundle.interfaces is not None:
        counts["interface(s)"] = len(bundle.interfaces)
    if bundle.sysctls is not None:
        counts["sysctls"] = len(bundle.sysctls.values)
    if bundle.kube is not None:
        counts["Kubernetes service(s)"] = len({(port.namespace, port.name) for port in bundle.kube.ports})
    absent = [
        key
        for key, source in INPUTS.items()
        if not source.available(bundle)
        and not any(bundle.has(name) for name in source.files)
        and (key != "proxy-neighbours" or _has_ipv6_vips(bundle))
    ]
    # A grep of sysctl -a is an excerpt: the checks that read other settings did not run.
    excerpt = bundle.sysctls is not None and len(bundle.sysctls.values) < FULL_SYSCTLS
    missing = [INPUTS[key].what for key in absent]
    if excerpt and bundle.sysctls is not None:
        missing.append(f"the running sysctls beyond the {len(bundle.sysctls.values)} in the input")
    role, reason = bundle.role_reason
    source = bundle.services_source
    plane = {"ipvs": "IPVS", "nftables": "the kubelvs nftables table"}.get(source, "none found")
    if source:
        plane += f" (from {bundle.ipvs_source or 'nft.json'})"
    return Examined(
        origin=origin,
        role=role,
        role_reason=reason,
        data_plane=plane,
        counts=counts,
        missing=tuple(dict.fromkeys(missing)),
        capture_next=()
        if live
        else _capture_next(
            _relevant([*absent, *(["sysctls"] if excerpt else [])], bundle),
            director=role == "director",
            confirmed={f.id for f in found if f.confidence == "confirmed"},
        ),
    )


def _has_ipv6_vips(bundle: Bundle) -> bool:
    """Whether the host may be a real server of an IPv6 VIP (its Services name one, or lo
    holds one): only then do its proxy neighbour entries matter (dr-ipv6-vip-proxy-ndp),
    so only then is their absence worth saying."""
    if any(":" in vip for vip, _ in expected_vips(bundle)):
        return True
    return any(
        a.ip.version == 6 and not a.ip.is_loopback
        for i in bundle.interfaces or []
        if i.link_type == "loopback"
        for a in i.addresses
    )


#: ``sysctl -a`` prints over a thousand settings; fewer than this is an excerpt (a grep).
FULL_SYSCTLS = 100

#: Inputs only an IPVS host has.
_IPVS_INPUTS = frozenset({"ipvs-table", "ipvs-listing", "ipvs-flags", "conns", "timeouts"})


def _relevant(absent: list[str], bundle: Bundle) -> list[str]:
    """The absent inputs worth capturing: not IPVS's on a host whose data plane is the
    kubelvs nftables table, or that its role.txt says is a node."""
    # A grep of sysctl -a is an excerpt: the checks that read other settings did not run.
    excerpt = bundle.sysctls is not None and len(bundle.sysctls.values) < FULL_SYSCTLS
    missing = [INPUTS[key].what for key in absent]
    if excerpt and bundle.sysctls is not None:
        missing.append(f"the running sysctls beyond the {len(bundle.sysctls.values)} in the input")
    role, reason = bundle.role_reason
    if bundle.services_source == "nftables" or (role == "node" and "role.txt" in reason):
        return [key for key in absent if key not in _IPVS_INPUTS]
    return absent


#: Findings about a DR/TUN real server itself (what check_dr_realserver reports): not what
#: a director's missing input decides.
_REAL_SERVER_ONLY = frozenset(REPORTS["check_dr_realserver"])


def _capture_next(absent: list[str], *, director: bool, confirmed: set[str]) -> tuple[Capture, ...]:
    """The commands for the absent inputs, the one needed for the most findings first
    (not counting findings already confirmed)."""
    decides: dict[str, set[str]] = {}
    for key in absent:
        ids = {fid for fid, needs in NEEDS.items() if key in needs} - confirmed
        if director:
            ids -= _REAL_SERVER_ONLY
        decides.setdefault(CAPTURE[key], set()).update(ids)
    order = list(dict.fromkeys(CAPTURE.values()))
    ranked = sorted(decides.items(), key=lambda item: (-len(item[1]), order.index(item[0])))
    return tuple(Capture(cmd, tuple(sorted(ids, key=FINDING_IDS.index))) for cmd, ids in ranked if ids)
