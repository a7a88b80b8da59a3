"""Checks for LVS-DR/TUN real-server hosts (an external IP served by DR: the DR ARP
settings and the worker-local VIP loop of docs/incidents.md) and the SYN_RECV diagnosis
that draws on every other check."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Mapping, Sequence

from ..formats.iproute import Address, Interface, ProxyNeighbour
from ..model import Forward
from .bundle import Bundle
from .checks_ipvs import ipvsadm_rs, ipvsadm_service, syn_recv_groups
from .checks_kernel import sysctl_w
from .findings import Finding, Severity

__all__ = [
    "answering_proxies",
    "check_dr_realserver",
    "check_syn_recv",
    "expected_vips",
    "held_vips",
    "l2_interfaces",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _conf(iface: str, key: str) -> str:
    return f"net.ipv4.conf.{iface.replace('.', '/')}.{key}"


def held_vips(bundle: Bundle) -> list[tuple[Interface, Address]]:
    """IPv4 addresses held on lo or a dummy device (not kube-ipvs0): how a DR real server holds a VIP."""
    out = []
    for iface in bundle.interfaces or []:
        if iface.name == "kube-ipvs0":
            continue
        is_lo = iface.link_type == "loopback" or iface.name == "lo"
        is_dummy = iface.kind == "dummy" or iface.name.startswith("dummy")
        if not (is_lo or is_dummy):
            continue
        for a in iface.addresses:
            if a.ip.version == 4 and not a.ip.is_loopback:
                out.append((iface, a))
    return out


def l2_interfaces(bundle: Bundle, version: int = 4) -> list[Interface]:
    """Interfaces that answer ARP (``version`` 6: neighbour solicitations) for the host:
    Ethernet, up, with a global address of that family."""
    out = []
    for iface in bundle.interfaces or []:
        # Pod-side veths carry no global address on the host, so the address test below
        # leaves them out; a veth with one is the host's uplink (as in netns labs).
        if iface.link_type != "ether" or iface.kind == "dummy" or iface.name == "kube-ipvs0":
            continue
        if iface.name.startswith(("cali", "docker", "cni", "kube-bridge", "flannel", "cbr")):
            # Container bridges (cbr0: kubenet's): only the node's pods are on them, and they
            # reach the VIP through their gateway, never by ARP; the VIP's ARP is answered on
            # the uplink. (A host bridge holding the uplink, br0, stays: clients ARP there.)
            continue
        if "NOARP" in iface.flags or not iface.up:
            continue
        if any(a.ip.version == version and a.scope == "global" for a in iface.addresses):
            out.append(iface)
    return out


def answering_proxies(bundle: Bundle) -> list[tuple[ProxyNeighbour, list[str]]]:
    """The IPv6 proxy neighbour entries the kernel acts on, each with the interfaces it
    answers on: ``forwarding`` 1 there, and ``proxy_ndp`` 1 there or on ``all``
    (ndisc_recv_ns; docs/ipv6.md). An entry without a device is for every interface."""
    if not bundle.proxy_neighbours or bundle.sysctls is None:
        return []
    ethernet = [i.name for i in bundle.interfaces or [] if i.link_type == "ether"]
    out = []
    for entry in bundle.proxy_neighbours:
        answering = [
            name
            for name in ([entry.device] if entry.device else ethernet)
            if bundle.sysctl(_conf6(name, "forwarding")) == 1
            and 1 in (bundle.sysctl(_conf6("all", "proxy_ndp")), bundle.sysctl(_conf6(name, "proxy_ndp")))
        ]
        if answering:
            out.append((entry, answering))
    return out


def expected_vips(bundle: Bundle) -> list[tuple[str, str]]:
    """(VIP, why) a DR real server is expected to accept: Kubernetes external/LB IPs."""
    out = []
    if bundle.kube:
        for sp in bundle.kube.ports:
            for ip in sp.external_ips:
                out.append((ip, f"{sp.ref} externalIPs"))
            for ip in sp.lb_ips:
                out.append((ip, f"{sp.ref} loadBalancer ingress"))
    first: dict[str, str] = {}
    for ip, why in out:
        first.setdefault(ip, why)  # one entry per VIP, the first reason
    return list(first.items())


def _accepts(bundle: Bundle, vip: str) -> bool:
    """The host accepts packets for ``vip``: holds it, or has an IPVS service for it."""
    address = ipaddress.ip_address(vip)
    if address in bundle.local_addresses:
        return True
    return any(svc.key.address == address for svc in bundle.services or [])


def check_dr_realserver(bundle: Bundle, *, dr_vips: Sequence[str] = ()) -> Iterator[Finding]:
    """dr-arp-ignore, dr-arp-announce, dr-vip-not-on-realserver, local-vip-loop, dr-ipv6-vip-on-lan,
    dr-ipv6-vip-proxy-ndp.

    ``dr_vips``: VIPs a director sends to this host in DR/TUN mode (known when a whole
    site is analysed); otherwise Kubernetes external IPs stand in when the host is a node.
    """
    if bundle.interfaces is None:
        return
    held = held_vips(bundle)
    l2 = l2_interfaces(bundle)
    if held and bundle.sysctls is not None:
        vip_text = ", ".join(f"{a.ip} on {i.name}" for i, a in held[:4])
        vip_ev = [
            f"ip-addr.txt:{a.lineno}: {i.name}: {a.line}" if a.lineno else f"ip-addr.txt: {a.line}"
            for i, a in held[:3]
        ]
        for key, want, fid, expl in (
            (
                "arp_ignore",
                1,
                "dr-arp-ignore",
                "With arp_ignore {v} this host answers ARP requests for the VIP it holds on {lo} from its "
                "Ethernet interface. Routers and clients on the segment then send VIP traffic straight to "
                "this real server instead of the director (or flip between hosts): load balancing stops, and "
                "connections break whenever the ARP cache changes. arp_ignore=1 answers only for addresses "
                "on the interface asked.",
            ),
            (
                "arp_announce",
                2,
                "dr-arp-announce",
                "With arp_announce {v} this host may use the VIP (held on {lo}) as the source of its own ARP "
                "requests, teaching neighbours that the VIP lives at this host's MAC: traffic for the VIP "
                "bypasses the director. arp_announce=2 always uses the interface's own address.",
            ),
        ):
            bad = []
            for iface in l2:
                value = bundle.conf(iface.name, key)
                if value is not None and value != want:
                    bad.append((iface, value))
            if not bad:
                continue
            values = sorted({v for _, v in bad})
            all_value = bundle.sysctl(f"net.ipv4.conf.all.{key}")
            fix = (
                [sysctl_w(f"net.ipv4.conf.all.{key}", want)]
                if all_value is not None and all_value > want
                else []
            )
            fix += [sysctl_w(_conf(i.name, key), want) for i, _ in bad]
            fix.append(f"# persist: net.ipv4.conf.<if>.{key} = {want} in /etc/sysctl.d/90-lvs-dr.conf")
            yield Finding(
                id=fid,
                severity=Severity.ERROR if (key == "arp_ignore" and 0 in values) else Severity.WARNING,
                summary=f"real server holds VIP {vip_text} but effective {key} is "
                + ", ".join(f"{v} on {i.name}" for i, v in bad)
                + f" (needs {want})",
                explanation=expl.format(v="/".join(map(str, values)), lo=held[0][0].name),
                evidence=(
                    *vip_ev,
                    *bundle.sysctl_evidence(
                        f"net.ipv4.conf.all.{key}", *[_conf(i.name, key) for i, _ in bad]
                    ),
                ),
                fix=tuple(fix),
                subject=key,
            )
    # Which VIPs must this host accept?
    must: list[tuple[str, str]] = [(v, "a director sends it here in DR/TUN mode") for v in dr_vips]
    if not must and bundle.role in ("node", "both") and (held or _accept_local_on(bundle, l2)):
        must = expected_vips(bundle)
    missing = [(v, why) for v, why in must if not _accepts(bundle, v)]
    yield from _ipv6_vips_on_lan(bundle, must, l2_interfaces(bundle, 6), site=bool(dr_vips))
    yield from _ipv6_vips_proxied(bundle, must, site=bool(dr_vips))
    loop_ifaces = _accept_local_on(bundle, l2)
    missing4 = [(v, why) for v, why in missing if ":" not in v]  # accept_local is IPv4's
    if missing4 and loop_ifaces:
        vip, why = missing4[0]
        yield Finding(
            id="local-vip-loop",
            severity=Severity.ERROR,
            summary=f"DR real server without VIP {vip} has accept_local=1 on "
            + ", ".join(i.name for i in loop_ifaces)
            + ": connections from this host to the VIP loop until TTL 0",
            explanation=(
                f"This host sends to {vip} through the director, which picks a real server; when it picks "
                "this host, the packet comes back with this host's own source address. accept_local=1 lets "
                "it in, but the host does not own the VIP, so it routes the packet out to the director "
                "again: the SYN circles until its TTL runs out and the client gets 'No route to host' (the "
                "worker-local VIP loop). Put the VIP on lo (with arp_ignore/arp_announce) instead of "
                "accepting local sources."
            ),
            evidence=(
                _wanted_because(bundle, vip, why, site=bool(dr_vips)),
                *bundle.sysctl_evidence(
                    "net.ipv4.conf.all.accept_local",
                    *[_conf(i.name, "accept_local") for i in loop_ifaces],
                    *[_conf(i.name, "rp_filter") for i in loop_ifaces],
                ),
            ),
            fix=(
                *(sysctl_w(_conf(i.name, "accept_local"), 0) for i in loop_ifaces),
                *(
                    (sysctl_w("net.ipv4.conf.all.accept_local", 0),)
                    if bundle.sysctl("net.ipv4.conf.all.accept_local")
                    else ()
                ),
                f"ip addr add {vip}/32 dev lo",
                *(sysctl_w(_conf(i.name, "arp_ignore"), 1) for i in l2[:2]),
                *(sysctl_w(_conf(i.name, "arp_announce"), 2) for i in l2[:2]),
            ),
            subject=vip,
        )
    for vip, why in missing:
        if not held and not dr_vips:
            continue  # a node not set up as a DR real server at all: kube-proxy may accept it by rules
        yield Finding(
            id="dr-vip-not-on-realserver",
            severity=Severity.ERROR if dr_vips else Severity.WARNING,
            summary=f"real server does not hold VIP {vip} ({why})",
            explanation=(
                f"In DR/TUN mode the director delivers packets still addressed to {vip}. A host that neither "
                "holds the VIP nor has a rule for it drops them (or routes them back out): the share of "
                "connections the director schedules here hangs in SYN_RECV."
            ),
            evidence=(
                _wanted_because(bundle, vip, why, site=bool(dr_vips)),
                "ip-addr.txt: no interface holds " + vip,
                *[f"ip-addr.txt: {i.name}: {a.line}" for i, a in held[:2]],
            ),
            fix=_hold_vip_fix(vip, l2),
            subject=vip,
        )


def _ipv6_vips_on_lan(
    bundle: Bundle, must: Sequence[tuple[str, str]], l2: Sequence[Interface], *, site: bool
) -> Iterator[Finding]:
    """dr-ipv6-vip-on-lan: an IPv6 VIP this real server must accept is on its LAN interface.

    Linux answers a neighbour solicitation for any address of the interface it arrived on
    (no sysctl changes that, unlike arp_ignore for IPv4), so the segment learns that the VIP
    lives here. On lo it is never advertised (docs/ipv6.md)."""
    for vip, why in must:
        if ":" not in vip:
            continue  # IPv4: the ARP findings and the site's vip-arp-conflict cover it
        address = ipaddress.ip_address(vip)
        for iface in l2:
            held = next((a for a in iface.addresses if a.ip == address), None)
            if held is None:
                continue
            yield Finding(
                id="dr-ipv6-vip-on-lan",
                severity=Severity.ERROR if site else Severity.WARNING,
                summary=f"real server holds IPv6 VIP {vip} on its LAN interface {iface.name} ({why})",
                explanation=(
                    f"Linux answers neighbour solicitations for every address of the interface they "
                    f"arrive on, and no sysctl stops that for IPv6. Routers and clients on the segment "
                    f"of {iface.name} learn that {vip} is at this host's MAC and send it the VIP's "
                    "traffic directly instead of to the director: load balancing stops. A VIP on lo "
                    "is accepted the same way and never advertised."
                ),
                evidence=(
                    f"ip-addr.txt:{held.lineno}: {iface.name}: {held.line}"
                    if held.lineno
                    else f"ip-addr.txt: {iface.name}: {held.line}",
                    _wanted_because(bundle, vip, why, site=site),
                ),
                fix=(
                    f"ip -6 addr del {held.interface.with_prefixlen} dev {iface.name}",
                    f"ip -6 addr add {vip}/128 dev lo",
                ),
                subject=vip,
            )


def _hold_vip_fix(vip: str, l2: Sequence[Interface]) -> tuple[str, ...]:
    """How a real server holds ``vip``: on lo, and for IPv4 with the ARP settings (an IPv6
    VIP on lo is neither advertised nor used to solicit: docs/ipv6.md)."""
    if ":" in vip:
        return (f"ip -6 addr add {vip}/128 dev lo",)
    return (
        f"ip addr add {vip}/32 dev lo",
        *(sysctl_w(_conf(i.name, "arp_ignore"), 1) for i in l2[:2]),
        *(sysctl_w(_conf(i.name, "arp_announce"), 2) for i in l2[:2]),
    )


def _forwarding_off(earlier: Sequence[Finding], dest: str) -> Finding | None:
    """The ip-forward-off finding of ``dest``'s family (IPv6 destinations are ``[addr]:port``)."""
    subject = "forward6" if dest.startswith("[") else "forward"
    return next((f for f in earlier if f.id == "ip-forward-off" and f.subject == subject), None)


def _ipv6_vips_proxied(bundle: Bundle, must: Sequence[tuple[str, str]], *, site: bool) -> Iterator[Finding]:
    """dr-ipv6-vip-proxy-ndp: this real server answers neighbour solicitations for an IPv6
    VIP it must accept through a proxy neighbour entry the kernel acts on (an inert entry
    is not reported)."""
    proxies = answering_proxies(bundle)
    for vip, why in must:
        if ":" not in vip:
            continue  # proxy ARP is IPv4's
        address = ipaddress.ip_address(vip)
        for entry, answering in proxies:
            if entry.address != address:
                continue
            yield Finding(
                id="dr-ipv6-vip-proxy-ndp",
                severity=Severity.ERROR if site else Severity.WARNING,
                summary=f"real server answers neighbour solicitations for IPv6 VIP {vip} on "
                + ", ".join(answering)
                + f" through a proxy entry ({why})",
                explanation=(
                    f"A proxy neighbour entry for {vip} makes Linux advertise it as this host's own on "
                    "an interface with proxy_ndp and forwarding on, wherever the VIP itself is held. "
                    "Routers and clients on the segment then send the VIP's traffic straight to this "
                    "real server instead of the director: load balancing stops. Proxy entries are "
                    "usually made by ndppd, systemd-networkd (IPv6ProxyNDPAddress=) or a container "
                    "runtime; remove it there too, or it comes back."
                ),
                evidence=(
                    f"ip-neigh-proxy.txt:{entry.lineno}: {entry.line}",
                    *bundle.sysctl_evidence(
                        _conf6("all", "proxy_ndp"),
                        *[_conf6(n, key) for n in answering for key in ("proxy_ndp", "forwarding")],
                    ),
                    _wanted_because(bundle, vip, why, site=site),
                ),
                fix=(
                    f"ip -6 neigh del proxy {vip}" + (f" dev {entry.device}" if entry.device else ""),
                    "# and where it is configured (ndppd.conf, IPv6ProxyNDPAddress= of systemd-networkd)",
                ),
                subject=vip,
            )


def _conf6(iface: str, key: str) -> str:
    return f"net.ipv6.conf.{iface.replace('.', '/')}.{key}"


def _wanted_because(bundle: Bundle, vip: str, why: str, *, site: bool) -> str:
    """The evidence line saying why this host must accept ``vip``: the director's table
    (a whole site analysed) or the Kubernetes data."""
    return f"{'director' if site else _kube_file(bundle)}: {vip} ({why})"


def _kube_file(bundle: Bundle) -> str:
    """The file the Kubernetes data came from (kubectl.yaml when kubectl.json could not be read)."""
    return bundle.kube.source if bundle.kube else "kubectl.json"


def _accept_local_on(bundle: Bundle, l2: list[Interface]) -> list[Interface]:
    return [i for i in l2 if bundle.conf(i.name, "accept_local", combine="or") == 1]


def check_syn_recv(
    bundle: Bundle, earlier: list[Finding], *, remote: Mapping[str, Sequence[Finding]] | None = None
) -> Iterator[Finding]:
    """syn-recv-stuck, with the likely causes ranked from the other findings and the bundle
    (and from the real server's own findings when a whole site was analysed)."""
    groups = syn_recv_groups(bundle)
    if not groups:
        return
    ids = {f.id: f for f in earlier}
    for dest, n, total, ev in groups:
        causes: list[tuple[int, str]] = []
        rs_forward = _forward_of(bundle, dest)
        for f in (remote or {}).get(dest.rsplit(":", 1)[0].strip("[]"), []):
            if f.id in (
                "rp-filter-strict",
                "dr-vip-not-on-realserver",
                "local-vip-loop",
                "dr-arp-ignore",
                "conntrack-near-full",
            ):
                causes.append(
                    (99, f"on the real server {dest.rsplit(':', 1)[0]} itself: {f.id}: {f.summary}")
                )
        if "rp-filter-strict" in ids:
            causes.append(
                (
                    90,
                    "strict rp_filter drops the tunnelled/asymmetric packets: "
                    + ids["rp-filter-strict"].summary,
                )
            )
        for f in earlier:
            if (
                f.id == "stale-realserver"
                and dest.split(":")[0] in f.summary
                and dest in f.summary.replace(" ", "")
            ):
                causes.append((95, "the real server is stale (no such endpoint): " + f.summary))
            elif f.id == "stale-realserver" and dest in f.subject.replace(" ", ""):
                causes.append((95, "the real server is stale: " + f.summary))
        for f in earlier:
            if f.id == "vip-as-client-source" and any(e.endswith(f" {dest}") for e in f.evidence):
                causes.append((97, "the connections come from the VIP itself: " + f.summary))
            if f.id == "director-ipv6-vip-source" and any(
                e.endswith(f" real server {dest}") for e in f.evidence
            ):
                causes.append((96, "the director's packets to it come from the VIP: " + f.summary))
        forwarding = _forwarding_off(earlier, dest)
        if forwarding is not None and rs_forward in (Forward.NAT, None):
            switch = "IPv6 forwarding" if forwarding.subject == "forward6" else "ip_forward"
            causes.append((85, f"{switch} is off: NAT replies are not forwarded back to the client"))
        if rs_forward in (Forward.DR, Forward.TUN):
            causes.append(
                (
                    70,
                    f"{dest} is a {'Route' if rs_forward is Forward.DR else 'Tunnel'} real server: it must "
                    "hold the VIP (on lo) and not filter it (arp_ignore/arp_announce, rp_filter on its "
                    "tunnel device); run doctor on that host",
                )
            )
        if "conntrack-near-full" in ids:
            causes.append((60, "the conntrack table is (nearly) full: " + ids["conntrack-near-full"].summary))
        if rs_forward is Forward.NAT:
            causes.append(
                (
                    50,
                    f"the replies of {dest} do not come back through the director (its default route "
                    "must point at the director, or the director must SNAT)",
                )
            )
        causes.append(
            (
                30,
                f"{dest} does not answer: pod/host down or a firewall drops the SYN "
                f"(try: curl -m 3 http://{dest}/ or nc -zv from the director)",
            )
        )
        causes.sort(key=lambda c: -c[0])
        ranked = [f"{i}. {text}" for i, (_, text) in enumerate(causes, 1)]
        svc_lines = []
        for svc in bundle.services or []:
            for rs in svc.realservers:
                if ipvsadm_rs(rs) == dest:
                    svc_lines = [
                        f"ipvsadm -d {ipvsadm_service(svc.key)} -r {dest}   "
                        "# take it out of rotation meanwhile"
                    ]
        for f in (remote or {}).get(dest.rsplit(":", 1)[0].strip("[]"), []):
            if f.id in ("rp-filter-strict", "dr-vip-not-on-realserver", "local-vip-loop") and f.fix:
                svc_lines.append(f"# on the real server {dest.rsplit(':', 1)[0]}:")
                svc_lines.extend(line for line in f.fix if not line.startswith("#"))
        yield Finding(
            id="syn-recv-stuck",
            severity=Severity.ERROR,
            summary=f"{n} of {total} IPVS connections to real server {dest} are stuck in SYN_RECV",
            explanation=(
                "The director received the clients' SYNs and passed them to this real server, but the "
                "handshake never completed: clients of this VIP whose connections land on it time out "
                "(ping and traceroute to the VIP still work). Likely causes, most likely first:\n"
                + "\n".join(ranked)
            ),
            evidence=tuple(ev),
            fix=tuple(
                svc_lines
                + [line for f in earlier if f.id == "rp-filter-strict" for line in f.fix]
                + list(forwarding.fix if forwarding is not None else ())
                or ["# see the causes above"]
            ),
            subject=dest,
        )


def _forward_of(bundle: Bundle, dest: str) -> Forward | None:
    for svc in bundle.services or []:
        for rs in svc.realservers:
            if ipvsadm_rs(rs) == dest:
                return rs.forward
    return None
