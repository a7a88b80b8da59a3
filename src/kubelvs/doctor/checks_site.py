"""Checks across the hosts of a site (several bundles analysed together): directors of one
VIP that would send the same flow to different real servers, a VIP that more than one host
answers ARP for, and DR real servers whose replies are routed back through their director.

Each returns findings by host; ``analyse_site`` adds them to the hosts' reports.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import NamedTuple

from ..model import Forward, ServiceKey, VirtualService
from .bundle import Bundle
from .checks_dr import answering_proxies, l2_interfaces
from .checks_ipvs import ipvsadm_add, ipvsadm_rs, ipvsadm_service
from .findings import Finding, Severity

__all__ = ["check_directors_agree", "check_dr_gateway", "check_vip_arp"]

# ---------------------------------------------------------------------- directors of one VIP


def _order(bundle: Bundle, svc: VirtualService) -> list[str]:
    """The real servers in the kernel's list order (from /proc/net/ip_vs), as ipvsadm
    names them; empty when the bundle does not show it."""
    if bundle.services_source != "ipvs":
        return []
    members = svc.realserver_map()
    return [ipvsadm_rs(members[k]) for k in bundle.kernel_order(svc.key) if k in members]


def _differences(a: VirtualService, b: VirtualService, order_a: list[str], order_b: list[str]) -> list[str]:
    """What makes the two tables of one VIP schedule a flow differently."""
    out = []
    if a.scheduler != b.scheduler:
        out.append(f"scheduler {a.scheduler} vs {b.scheduler}")
    if a.flags != b.flags:
        out.append(f"flags {','.join(sorted(a.flags)) or '-'} vs {','.join(sorted(b.flags)) or '-'}")
    if (a.persistence, a.effective_netmask) != (b.persistence, b.effective_netmask):
        out.append(
            f"persistence {a.persistence} s/{a.effective_netmask} vs {b.persistence} s/{b.effective_netmask}"
        )
    ra = {ipvsadm_rs(rs): rs for rs in a.realservers}
    rb = {ipvsadm_rs(rs): rs for rs in b.realservers}
    if set(ra) != set(rb):
        only_a, only_b = ", ".join(sorted(set(ra) - set(rb))), ", ".join(sorted(set(rb) - set(ra)))
        out.append(f"real servers only on the first: {only_a or '-'}; only on the second: {only_b or '-'}")
    out.extend(
        f"{k} weight {ra[k].weight} vs {rb[k].weight}"
        for k in sorted(set(ra) & set(rb))
        if ra[k].weight != rb[k].weight
    )
    if not out and a.scheduler == "mh" and order_a and order_b and order_a != order_b:
        out.append(f"destination order {' '.join(order_a)} vs {' '.join(order_b)}")
    return out


def check_directors_agree(bundles: Mapping[str, Bundle]) -> dict[str, list[Finding]]:
    """directors-disagree: one VIP on several directors whose tables would not pick the
    same real server for the same flow (ECMP or a failover moves flows between them)."""
    directors = {h: b for h, b in bundles.items() if b.services and b.role in ("director", "both")}
    by_key: dict[ServiceKey, list[tuple[str, VirtualService]]] = {}
    for host, bundle in directors.items():
        for svc in bundle.services or []:
            by_key.setdefault(svc.key, []).append((host, svc))
    out: dict[str, list[Finding]] = {}
    for key, held in sorted(by_key.items(), key=lambda item: ServiceKey.sort_key(item[0])):
        (first, ours), *others = held
        for host, theirs in others:
            order_a, order_b = _order(directors[first], ours), _order(directors[host], theirs)
            diff = _differences(ours, theirs, order_a, order_b)
            if not diff:
                continue
            finding = Finding(
                id="directors-disagree",
                severity=Severity.WARNING,
                summary=f"{key}: directors {first} and {host} would send the same flow to different real "
                f"servers ({'; '.join(diff)})",
                explanation=(
                    "Several directors serve this VIP (ECMP, or an active/backup pair). A flow that the "
                    "router moves from one director to another (a director added or lost, a rehash) must "
                    "be sent to the same real server by both, or its connection breaks: a reset, or a hang "
                    "in DR mode. That needs the same scheduler, flags, real servers and weights everywhere, "
                    "and for IPVS's Maglev (mh) the same destination order too: the kernel fills its table "
                    "walking its list of real servers, newest first, so a director that restarted, or saw "
                    "the changes in another order, builds another table from the same set."
                ),
                evidence=(
                    *(f"{first}: {line}" for line in directors[first].rs_evidence(key)[:1]),
                    *(f"{host}: {line}" for line in directors[host].rs_evidence(key)[:1]),
                    *(
                        (
                            f"{first}: proc-net-ip_vs.txt: list order {' '.join(order_a)}",
                            f"{host}: proc-net-ip_vs.txt: list order {' '.join(order_b)}",
                        )
                        if order_a and order_b and order_a != order_b
                        else ()
                    ),
                ),
                fix=_same_table_fix(key, ours, theirs, host, order_a, order_b),
                subject=str(key),
            )
            for h in (first, host):
                out.setdefault(h, []).append(finding)
    return out


def _same_table_fix(
    key: ServiceKey,
    ours: VirtualService,
    theirs: VirtualService,
    host: str,
    order_a: list[str],
    order_b: list[str],
) -> tuple[str, ...]:
    """On ``host``: its real servers deleted, then ours added in reverse of our list order
    (IPVS puts each new destination at the head of its list)."""
    service = ipvsadm_service(key)
    ordered = {ipvsadm_rs(rs): rs for rs in ours.realservers}
    adds = reversed(order_a) if order_a else sorted(ordered)
    return (
        f"# on {host}: the same real servers, added in the same order as on the other director",
        *(f"ipvsadm -d {service} -r {ipvsadm_rs(rs)}" for rs in theirs.realservers),
        *(ipvsadm_add(key, ordered[name]) for name in adds),
    )


# ---------------------------------------------------------------------- ARP for a VIP


class _Answer(NamedTuple):
    """How one host answers ARP (or, IPv6, neighbour solicitations) for an address."""

    how: str  # "on eth1", "on lo, arp_ignore 0 on eth1", "a proxy entry on eth1"
    fix: tuple[str, ...]


def _answers_for(bundle: Bundle) -> dict[str, _Answer]:
    """Every address this host answers ARP or neighbour solicitations for on its segment:
    one on an Ethernet interface; IPv4: one on lo, a dummy device or kube-ipvs0 inside the
    network of an interface whose effective arp_ignore is 0 (the kernel then answers for
    any local address, and hosts on that segment do ask for it); IPv6: one with a proxy
    neighbour entry the kernel acts on (docs/ipv6.md: nothing else makes it answer for an
    address it holds elsewhere)."""
    out: dict[str, _Answer] = {}
    l2 = l2_interfaces(bundle)
    for iface in l2:
        for a in iface.addresses:
            if a.ip.version == 4 and a.scope == "global":
                fix = f"ip addr del {a.ip}/32 dev {iface.name}   # a DR real server holds it on lo instead"
                out.setdefault(str(a.ip), _Answer(f"on {iface.name}", (fix,)))
    for iface in l2_interfaces(bundle, 6):
        for a in iface.addresses:
            if a.ip.version == 6 and a.scope == "global":
                fix = (
                    f"ip -6 addr del {a.interface.with_prefixlen} dev {iface.name}"
                    "   # a DR real server holds it on lo instead"
                )
                out.setdefault(str(a.ip), _Answer(f"on {iface.name}", (fix,)))
    for entry, devices in answering_proxies(bundle):
        fix = f"ip -6 neigh del proxy {entry.address}" + (f" dev {entry.device}" if entry.device else "")
        out.setdefault(str(entry.address), _Answer(f"a proxy entry on {', '.join(devices)}", (fix,)))
    loose = [i for i in l2 if (bundle.conf(i.name, "arp_ignore") or 0) == 0]
    for iface in bundle.interfaces or []:
        if iface in l2 or not (iface.name in ("lo", "kube-ipvs0") or iface.kind == "dummy"):
            continue
        for a in iface.addresses:
            if a.ip.version != 4 or a.ip.is_loopback:
                continue
            segment = next(
                (
                    i
                    for i in loose
                    for own in i.addresses
                    if own.ip.version == 4 and a.ip in own.interface.network
                ),
                None,
            )
            if segment is not None:
                out.setdefault(
                    str(a.ip),
                    _Answer(
                        f"on {iface.name}, arp_ignore 0 on {segment.name}",
                        (
                            f"sysctl -w net.ipv4.conf.{segment.name}.arp_ignore=1",
                            f"sysctl -w net.ipv4.conf.{segment.name}.arp_announce=2",
                        ),
                    ),
                )
    return out


def check_vip_arp(bundles: Mapping[str, Bundle]) -> dict[str, list[Finding]]:
    """vip-arp-conflict: more than one host of the site answers ARP (IPv6: neighbour
    solicitations) for one address."""
    answering: dict[str, list[tuple[str, _Answer]]] = {}
    for host, b in bundles.items():
        for address, answer in _answers_for(b).items():
            answering.setdefault(address, []).append((host, answer))
    out: dict[str, list[Finding]] = {}
    for address, hosts in sorted(answering.items(), key=lambda item: _numeric(item[0])):
        if len(hosts) < 2:
            continue
        # The one director serving this address is where it belongs: the others are wrong.
        owners = [h for h, _ in hosts if _serves(bundles[h], address)]
        blamed = [entry for entry in hosts if len(owners) != 1 or entry[0] != owners[0]]
        how = [f"{h}: {answer.how}" for h, answer in hosts]
        keep = f"{owners[0]}, its director" if len(owners) == 1 else "one host only, the director of the VIP"
        fix: list[str] = [f"# keep it answered by {keep}; on the others:"]
        for h, answer in blamed:
            fix += [f"# on {h}:", *answer.fix]
        ipv6 = ":" in address
        asked = "neighbour solicitations" if ipv6 else "ARP"
        finding = Finding(
            id="vip-arp-conflict",
            severity=Severity.ERROR,
            summary=f"{len(hosts)} hosts answer {asked} for {address}: {'; '.join(how)}",
            explanation=(
                f"Only one host may answer {asked} for an address: for a VIP, the director (the VRRP "
                "master, or the host it is announced from). When two answer, routers and clients keep "
                "whichever reply came last: traffic for the VIP flips between hosts, bypasses the director, "
                f"and connections break whenever the {'neighbour' if ipv6 else 'ARP'} cache changes (two "
                "keepalived masters, MetalLB's layer 2 beside kubelvs, a DR real server with the VIP on its "
                "Ethernet interface"
                + (" or with a proxy neighbour entry for it)." if ipv6 else " or with arp_ignore 0).")
            ),
            evidence=tuple(
                f"{line} ({'ip-addr.txt, ip-neigh-proxy.txt' if ipv6 else 'ip-addr.txt'}, sysctl.txt of "
                f"{line.split(':')[0]})"
                for line in how
            ),
            fix=tuple(fix),
            subject=address,
        )
        for h, _ in blamed:
            out.setdefault(h, []).append(finding)
    return out


def _numeric(address: str) -> tuple[int, int]:
    """IPv4 before IPv6, each in numeric order."""
    ip = ipaddress.ip_address(address)
    return ip.version, int(ip)


def _serves(bundle: Bundle, address: str) -> bool:
    """``bundle`` is a director with a virtual service on ``address``."""
    return bundle.role in ("director", "both") and any(
        str(s.key.address) == address for s in bundle.services or []
    )


# ---------------------------------------------------------------------- replies through the director


def check_dr_gateway(bundles: Mapping[str, Bundle]) -> dict[str, list[Finding]]:
    """dr-director-is-gateway: a DR/TUN real server routes (some of) its replies via its own
    director. The replies leave from the VIP, which the director holds: it drops them as
    packets from one of its own addresses arriving from outside."""
    owner: dict[str, str] = {}
    for host, b in bundles.items():
        for address in b.local_addresses:
            if not address.is_loopback:
                owner.setdefault(str(address), host)
    out: dict[str, list[Finding]] = {}
    for director, d in bundles.items():
        if d.role not in ("director", "both"):
            continue
        mine = {str(a) for a in d.local_addresses}
        served: dict[str, list[str]] = {}  # real-server host -> the VIPs it gets in DR/TUN from here
        for svc in d.services or []:
            for rs in svc.realservers:
                target = owner.get(str(rs.address))
                dr = rs.forward in (Forward.DR, Forward.TUN)
                if dr and target is not None and target != director and svc.key.address is not None:
                    served.setdefault(target, []).append(str(svc.key.address))
        for host, vips in sorted(served.items()):
            back = [r for r in bundles[host].routes if r.via in mine and r.table == "main"]
            if not back:
                continue
            vip_list = ", ".join(sorted(set(vips)))
            routes = "; ".join(f"{r.dst} via {r.via}" for r in back[:3])
            finding = Finding(
                id="dr-director-is-gateway",
                severity=Severity.ERROR,
                summary=f"real server {host} routes replies via its director {director} ({routes}): "
                f"replies from {vip_list} are dropped there",
                explanation=(
                    "In DR and TUN mode the real server answers the client directly, from the VIP. When its "
                    "route to the client goes through the director, the replies arrive at the director with "
                    "the VIP, one of the director's own addresses, as their source: Linux drops such packets "
                    "(a local source arriving from outside; strict rp_filter drops them too). Clients on "
                    "those networks never get an answer, while clients on the segment itself are served. The "
                    "real servers' route back must use another gateway (the segment's router), or the "
                    "service must use NAT, whose replies the director expects."
                ),
                evidence=(
                    *(f"{host}: ip-route.txt:{r.lineno}: {r.line}" for r in back[:3]),
                    f"{director}: sends {vip_list} to {host} in DR/TUN mode",
                ),
                fix=(
                    f"# on {host}: route replies to clients via the segment's router, not {director}, e.g.",
                    *(f"ip route replace {r.dst} via {_router(d, r.dst)}" for r in back[:3]),
                ),
                subject=host,
            )
            out.setdefault(host, []).append(finding)
    return out


def _router(director: Bundle, dst: str) -> str:
    """The gateway the director itself uses towards ``dst`` (the segment's router), if any."""
    return next((r.via for r in director.routes if r.dst == dst and r.via and r.table == "main"), "ROUTER_IP")
