"""What the nftables backend can and cannot do, named per field (nftables backend).

``problems`` is asked before every sync with the whole desired state. A desired state
mostly holds the same ``VirtualService`` objects as the last one, so each object is
checked once (kept by identity) and a quick test passes what is plainly possible:
``problems`` of a 10,000-service state then costs a few microseconds per new service,
not a field path per service per sync.
"""

from __future__ import annotations

import functools
import ipaddress
import os
from collections.abc import Callable, Sequence

from ...bulk import no_gc
from ...errors import FieldError
from ...kernel import sysctl
from ...kernel.netns import entered
from ...model import DesiredState, Forward, RealServer, VirtualService, last_by_identity
from .schema import SUPPORTED_SCHEDULERS

__all__ = ["Capabilities", "tun_supported"]


#: The module of the tunnels TUN needs, and the fallback device it makes, per IP version.
_TUNNEL_MODULES = {
    4: ("ipip", "/proc/sys/net/ipv4/conf/tunl0"),
    6: ("ip6_tunnel", "/proc/sys/net/ipv6/conf/ip6tnl0"),
}


def tun_supported(version: int = 4) -> bool:
    """True when the kernel can make the tunnels TUN needs for real servers of IP
    ``version``: IPIP (4), ip6ip6 (6); built in, or the module loads."""
    module, fallback = _TUNNEL_MODULES[version]
    if os.path.exists(f"/sys/module/{module}") or os.path.exists(fallback):
        return True
    import subprocess

    subprocess.run(["modprobe", "-q", module], check=False, capture_output=True)
    return os.path.exists(f"/sys/module/{module}")


class Capabilities:
    """The checks of one backend (one namespace), remembering what it has checked."""

    def __init__(self, netns: str | None) -> None:
        self._netns = netns
        self._checked: dict[int, tuple[VirtualService, Sequence[FieldError]]] = {}
        self._troubled: dict[int, Sequence[FieldError]] = {}  # the checked services with problems
        self._tun: dict[int, bool] = {}

    def problems(self, desired: DesiredState) -> list[FieldError]:
        with no_gc():
            return self._problems(desired)

    def _problems(self, desired: DesiredState) -> list[FieldError]:
        problems: list[FieldError] = []
        for name in desired.sysctls:
            with entered(self._netns):
                present = sysctl.exists(name)
            if not present:
                problems.append(FieldError(f"sysctls.{name}", "does not exist on this kernel"))
        # Only services not seen by the last call are checked. The set operations on the
        # objects' ids run in C: an incremental sync with 10,000 services spent 10 ms
        # here looping over all of them in Python. ``_checked`` holds each service it
        # names, so an id cannot be reused by another object while it is in there.
        current = dict(zip(map(id, desired.services.values()), desired.services.values(), strict=True))
        checked = self._checked
        for sid in checked.keys() - current.keys():
            del checked[sid]
            self._troubled.pop(sid, None)
        for sid in current.keys() - checked.keys():
            svc = current[sid]
            found: Sequence[FieldError] = ()
            if not _plainly_possible(svc):
                # The field path (str of a key costs ~1 us) only for a service with problems.
                found = _service_problems(f"services[{svc.name or svc.key}]", svc, self.tun_supported)
            checked[sid] = (svc, found)
            if found:
                self._troubled[sid] = found
        if self._troubled:
            for sid in current:  # in the desired state's order
                problems += self._troubled.get(sid, ())
        return problems

    def tun_supported(self, version: int = 4) -> bool:
        if version not in self._tun:
            self._tun[version] = tun_supported(version)
        return self._tun[version]


_PLAIN_FLAGS = frozenset({"sh-port", "sh-fallback", "mh-port", "mh-fallback"})


def _plainly_possible(svc: VirtualService) -> bool:
    """A quick test that passes for what the nftables backend can do without question
    (rr/wrr/sh/mh, one method of NAT or DR, no thresholds, ...): ``problems`` of a
    10,000-service state then costs a few microseconds per service. Anything else gets
    the full check below, which names each problem."""
    key = svc.key
    if key.fwmark or svc.persistence or svc.scheduler not in SUPPORTED_SCHEDULERS:
        return False
    if svc.flags and not svc.flags <= _PLAIN_FLAGS:
        return False
    return _plain_realservers(svc.realservers)


@last_by_identity
@functools.lru_cache(maxsize=1024)
def _plain_realservers(rss: tuple[RealServer, ...]) -> bool:
    """``_plainly_possible`` of the real servers (kept: the Services of a cluster share
    their real servers, and a node change gives every Service the same new tuple)."""
    if not rss:
        return True
    forward = rss[0].forward
    if forward is Forward.NAT:
        return all(rs.forward is forward and not rs.u_thresh and not rs.l_thresh and rs.port for rs in rss)
    if forward is Forward.DR:
        for rs in rss:
            if rs.forward is not forward or rs.u_thresh or rs.l_thresh:
                return False
        return len({rs.address for rs in rss}) == len(rss)
    return False


_NO_TUNNELS = {
    4: "forward tun needs IPIP tunnels, and this kernel has no ipip support "
    "(CONFIG_NET_IPIP unset, no ipip module); use dr or nat",
    6: "forward tun over IPv6 needs ip6ip6 tunnels, and this kernel has no ip6_tunnel support "
    "(CONFIG_IPV6_TUNNEL unset, no ip6_tunnel module); use dr or nat",
}


def _service_problems(
    where: str, svc: VirtualService, tun_supported: Callable[[int], bool]
) -> list[FieldError]:
    out: list[FieldError] = []
    key = svc.key
    if any(rs.forward is Forward.TUN for rs in svc.realservers) and not tun_supported(key.family):
        out.append(FieldError(f"{where}.realservers", _NO_TUNNELS[key.family]))
    if key.fwmark:
        out.append(FieldError(f"{where}.fwmark", "fwmark services are not supported by the nftables backend"))
        return out
    if svc.scheduler not in SUPPORTED_SCHEDULERS:
        out.append(
            FieldError(
                f"{where}.scheduler",
                f"{svc.scheduler!r} needs per-connection counts nftables does not keep; "
                "the nftables backend supports rr, wrr, sh and mh",
            )
        )
    if svc.persistence:
        out.append(
            FieldError(
                f"{where}.persistence", "not supported by the nftables backend; sh or mh give client affinity"
            )
        )
    if "ops" in svc.flags:
        out.append(
            FieldError(
                f"{where}.flags", "one-packet scheduling (ops) is not supported by the nftables backend"
            )
        )
    raw = sorted(f for f in svc.flags if f.startswith("flag-"))
    if raw:
        out.append(
            FieldError(
                f"{where}.flags",
                f"raw scheduler flags {', '.join(raw)} are not supported by the nftables backend",
            )
        )
    methods = {rs.forward for rs in svc.realservers}
    if len(methods) > 1:
        out.append(
            FieldError(
                f"{where}.realservers",
                "the nftables backend needs one forwarding method per service (dr, tun or nat)",
            )
        )
    seen: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
    for i, rs in enumerate(svc.realservers):
        at = f"{where}.realservers[{i}]"
        if rs.forward is Forward.LOCAL:
            out.append(FieldError(f"{at}.forward", "forward local is not supported by the nftables backend"))
        if rs.u_thresh or rs.l_thresh:
            out.append(
                FieldError(
                    f"{at}",
                    "connection thresholds (u_thresh/l_thresh) are not supported by the nftables backend",
                )
            )
        if rs.forward is Forward.NAT and rs.port == 0:
            out.append(
                FieldError(f"{at}.port", "a NAT real server needs a port (0 is not a port to DNAT to)")
            )
        if rs.address.version != key.family:  # only TUN may mix families (validated before)
            reason = (
                f"{rs.address} is IPv6: the nftables backend tunnels IPv4 in IPv4 only (IPIP)"
                if key.family == 4
                else f"{rs.address} is IPv4: the nftables backend tunnels IPv6 in IPv6 only (ip6ip6)"
            )
            out.append(FieldError(f"{at}.address", reason))
        if rs.forward is Forward.DR or rs.forward is Forward.TUN:
            if rs.address in seen:
                out.append(
                    FieldError(
                        f"{at}.address",
                        f"{rs.address} appears twice in one {rs.forward.value.upper()} service",
                    )
                )
            seen.add(rs.address)
    return out
