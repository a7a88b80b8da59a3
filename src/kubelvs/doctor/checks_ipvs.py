"""Checks on the IPVS table and connection table (against Kubernetes when it was captured)."""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Iterator

from ..formats.ipvs_conn import ConnTable
from ..formats.ipvsadm_list import Listing
from ..formats.kube import ServicePort
from ..model import SCHED_FLAGS, Forward, Protocol, RealServer, ServiceKey, Timeouts, VirtualService, hostport
from .bundle import Bundle
from .findings import Finding, Severity

__all__ = [
    "check_conn_table",
    "check_dr_port_mapping",
    "check_hash_fallback",
    "check_kube_sync",
    "check_weight_zero",
    "conn_line",
    "fmt_row",
    "ipvsadm_add",
    "ipvsadm_rs",
    "ipvsadm_service",
    "remove_rs_fix",
]

#: What ``ipvsadm -L --timeout`` prints on a kernel nobody changed (ipvs-sysctl.rst).
KERNEL_TIMEOUTS = Timeouts(900, 120, 300)

_SWITCH = {Protocol.TCP: "-t", Protocol.UDP: "-u", Protocol.SCTP: "--sctp-service"}
_FWD = {Forward.NAT: "-m", Forward.DR: "-g", Forward.TUN: "-i", Forward.LOCAL: "-g"}


def ipvsadm_service(key: ServiceKey) -> str:
    """``-t 10.0.0.1:80`` / ``-f 100``: how ipvsadm names the service."""
    if key.fwmark:
        return f"-f {key.fwmark}" + (" -6" if key.family == 6 else "")
    assert key.address is not None
    return f"{_SWITCH[key.protocol]} {hostport(key.address, key.port)}"


def ipvsadm_rs(rs: RealServer) -> str:
    return hostport(rs.address, rs.port)


def ipvsadm_add(key: ServiceKey, rs: RealServer) -> str:
    """The ipvsadm command that adds ``rs`` to the service ``key`` as it is."""
    return f"ipvsadm -a {ipvsadm_service(key)} -r {ipvsadm_rs(rs)} {_FWD[rs.forward]} -w {rs.weight}"


def remove_rs_fix(bundle: Bundle, key: ServiceKey, rs: RealServer, then: str) -> tuple[str, ...]:
    """The commands that take one real server out of the bundle's load-balancer table
    (``then``: the remark that follows for IPVS)."""
    if bundle.services_source == "nftables":
        # The kubelvs nftables table spreads a real server over several sets and maps: no
        # single nft command removes it; its owner re-converges it.
        return (
            "kubelvs apply -f CONFIG   # CONFIG: kubelvs director's config; "
            f"removes {ipvsadm_rs(rs)} from {key}",
            "# kubelvs director does the same at its next full sync (--resync) once its source is right",
        )
    return (f"ipvsadm -d {ipvsadm_service(key)} -r {ipvsadm_rs(rs)}", then)


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _kube_index(bundle: Bundle) -> dict[tuple[str, str, int], ServicePort]:
    """(protocol, VIP, port) -> the Kubernetes service port it serves (cluster, external, LB, node ports)."""
    kube = bundle.kube
    assert kube is not None
    index: dict[tuple[str, str, int], ServicePort] = {}
    node_ips = kube.all_node_ips() | {str(a) for a in bundle.local_addresses}
    for sp in kube.ports:
        for ip, port in sp.frontends():
            index[(sp.protocol.lower(), ip, port)] = sp
        if sp.node_port:
            for ip in node_ips:
                index.setdefault((sp.protocol.lower(), ip, sp.node_port), sp)
    return index


def check_kube_sync(bundle: Bundle) -> Iterator[Finding]:
    """stale-realserver, missing-realserver, missing-virtual-service."""
    services = bundle.services
    if not services:
        return
    if bundle.kube is None or not bundle.kube.ports:
        yield from _stale_without_kube(bundle, services)
        return
    index = _kube_index(bundle)
    node_ips = bundle.kube.all_node_ips()
    matched_kinds: set[str] = set()
    seen_frontends: set[tuple[str, str, int]] = set()
    unjudged: list[VirtualService] = []
    for svc in services:
        if svc.key.fwmark or svc.key.address is None:
            unjudged.append(svc)
            continue
        fkey = (str(svc.key.protocol), str(svc.key.address), svc.key.port)
        sp = index.get(fkey)
        if sp is None:
            unjudged.append(svc)
            continue
        seen_frontends.add(fkey)
        matched_kinds.add("cluster" if str(svc.key.address) in sp.cluster_ips else "external")
        expected = sp.endpoints | sp.not_ready
        if not sp.have_endpoints_object and not expected:
            unjudged.append(svc)  # no Endpoints/EndpointSlice captured: fall back to the table's own signs
            continue
        by_addr: dict[str, list[int]] = {}
        for a, p in expected:
            by_addr.setdefault(a, []).append(p)
        node_backed = all(
            str(rs.address) in node_ips and rs.forward in (Forward.DR, Forward.TUN) for rs in svc.realservers
        )
        for rs in svc.realservers:
            addr = str(rs.address)
            if (addr, rs.port) in expected or rs.weight == 0:
                continue  # weight 0: draining, gets no new connections (weight-zero-leftover's business)
            if addr in node_ips and rs.forward in (Forward.DR, Forward.TUN):
                continue  # an LVS-DR external IP in front of the nodes (the DR ARP settings incident's setup)
            ports = sorted(by_addr.get(addr, []))
            if ports:
                why = (
                    f"{sp.ref} has endpoint {addr}:{','.join(map(str, ports))} but {bundle.plane} also sends "
                    f"to port {rs.port}: left over from an earlier port/targetPort"
                )
            else:
                why = f"{addr} is not an endpoint of {sp.ref} any more"
            yield Finding(
                id="stale-realserver",
                severity=Severity.ERROR,
                summary=f"{svc.key}: real server {ipvsadm_rs(rs)} matches no endpoint of {sp.ref} ({why})",
                explanation=(
                    f"{_cap(bundle.plane)} keeps scheduling new connections for {svc.key} to "
                    f"{ipvsadm_rs(rs)} (weight {rs.weight}). Nothing Kubernetes knows of answers there, so "
                    "that share of the connections hangs or is refused: with rr over two real servers, every "
                    "second connection fails. This is what a Service port edit leaves behind in proxies that "
                    "key real servers by address only."
                ),
                evidence=(
                    *bundle.rs_evidence(svc.key, rs),
                    f"{_kube_name(bundle)}: {sp.ref} port {sp.port}/{sp.protocol} "
                    f"targetPort {sp.target_port}, endpoints {_fmt_eps(sp.endpoints)}",
                ),
                fix=remove_rs_fix(
                    bundle,
                    svc.key,
                    rs,
                    "# then restart or resync the proxy that programs this VIP, so it does not come back",
                ),
                subject=f"{svc.key} {rs.key}",
            )
        if node_backed and svc.realservers:
            continue
        present = {(str(rs.address), rs.port) for rs in svc.realservers}
        for addr, port in sorted(sp.endpoints - present):
            yield Finding(
                id="missing-realserver",
                severity=Severity.WARNING,
                summary=f"{svc.key}: endpoint {addr}:{port} of {sp.ref} is not a real server",
                explanation=(
                    f"The ready endpoint {addr}:{port} gets no traffic from this host: the remaining real "
                    "servers carry its share, and when none remain the VIP refuses every connection. The "
                    "proxy that programs IPVS is behind (stuck, crashed, or failing to apply)."
                ),
                evidence=(
                    *bundle.rs_evidence(svc.key),
                    f"{_kube_name(bundle)}: {sp.ref} endpoints {_fmt_eps(sp.endpoints)}",
                ),
                fix=(
                    (
                        f"ipvsadm -a {ipvsadm_service(svc.key)} -r {addr}:{port} -m -w 1"
                        if bundle.services_source != "nftables"
                        else "kubelvs apply -f CONFIG   # after adding it there"
                    ),
                    "# and find out why the proxy did not add it (its logs)",
                ),
                subject=f"{svc.key} {addr}:{port}",
            )
    yield from _stale_without_kube(bundle, unjudged)
    if not matched_kinds:
        return  # no IPVS service belongs to this cluster: not a Kubernetes IPVS host
    table_file = bundle.listing_source or (
        "nft.json" if bundle.services_source == "nftables" else "ipvsadm-Sn.txt"
    )
    for sp in bundle.kube.ports:
        if sp.type == "ExternalName":
            continue
        for ip, port in sp.frontends():
            kind = "cluster" if ip in sp.cluster_ips else "external"
            fkey = (sp.protocol.lower(), ip, port)
            if kind not in matched_kinds or fkey in seen_frontends:
                continue
            yield Finding(
                id="missing-virtual-service",
                severity=Severity.WARNING,
                summary=f"{sp.ref}: no {bundle.plane} virtual service for {sp.protocol} {ip}:{port}",
                explanation=(
                    f"Connections to {ip}:{port} are not load-balanced on this host: they time out or reach "
                    "whatever else holds the address. Other services are programmed, so the proxy skipped or "
                    "lost this one."
                ),
                evidence=(
                    f"{_kube_name(bundle)}: {sp.ref} {sp.type} {ip}:{port}/{sp.protocol}",
                    f"{table_file}: no '{sp.protocol} {ip}:{port}' service",
                ),
                fix=(
                    f"ipvsadm -A {_service_of(sp.protocol, ip, port)} -s rr",
                    "# then add its endpoints with ipvsadm -a, or resync the proxy",
                )
                if bundle.services_source != "nftables"
                else ("kubelvs apply -f CONFIG   # after adding the service there",),
                subject=f"{ip}:{port}",
            )


def _service_of(protocol: str, ip: str, port: int) -> str:
    address = ipaddress.ip_address(ip)
    return ipvsadm_service(ServiceKey(address.version, Protocol(protocol.lower()), address, port))


def _kube_name(bundle: Bundle) -> str:
    """The file the Kubernetes data came from (kubectl.yaml when kubectl.json could not be read)."""
    return bundle.kube.source if bundle.kube else "kubectl.json"


def _fmt_eps(eps: set[tuple[str, int]]) -> str:
    return ",".join(f"{a}:{p}" for a, p in sorted(eps)) or "(none)"


def _stale_without_kube(bundle: Bundle, services: list[VirtualService]) -> Iterator[Finding]:
    """Without Kubernetes data: one pod address under one virtual service on two ports is the
    signature of a port edit the proxy did not clean up (6379 beside 80 in the stale real
    server after a port edit)."""
    listing = bundle.listing
    for svc in services:
        by_addr: dict[str, list[RealServer]] = {}
        for rs in svc.realservers:
            if rs.weight:
                by_addr.setdefault(str(rs.address), []).append(rs)
        for addr, group in by_addr.items():
            if len(group) < 2 or svc.key.fwmark:
                continue
            if any(rs.port == svc.key.port for rs in group):
                stale = [rs for rs in group if rs.port != svc.key.port]
                reason = f"the service port is {svc.key.port}"
            else:
                counts = [_conns(listing, svc.key, rs) for rs in group]
                if max(counts) <= 0:
                    continue  # no way to tell which one is the leftover
                stale = [rs for rs, c in zip(group, counts) if c == 0]
                reason = "the other one has connections"
            for rs in stale:
                yield Finding(
                    id="stale-realserver",
                    severity=Severity.ERROR,
                    summary=(
                        f"{svc.key}: {addr} is a real server on ports "
                        f"{', '.join(str(r.port) for r in group)}; port {rs.port} looks left over ({reason})"
                    ),
                    explanation=(
                        f"{_cap(bundle.plane)} schedules connections for {svc.key} to {ipvsadm_rs(rs)} as "
                        "well. A pod serves a Service port on one target port, so one of the two is left "
                        "over from an earlier port/targetPort (a Service edit the proxy did not clean up). "
                        "Connections scheduled to it fail: with rr over two real servers, every second one. "
                        "No Kubernetes data was captured to confirm; add kubectl.json to the bundle."
                    ),
                    evidence=tuple(bundle.rs_evidence(svc.key)[:1])
                    + tuple(line for r in group for line in bundle.rs_evidence(svc.key, r)[-1:]),
                    fix=remove_rs_fix(
                        bundle,
                        svc.key,
                        rs,
                        "# or delete and re-create the Service so the proxy rebuilds its real servers",
                    ),
                    subject=f"{svc.key} {rs.key}",
                )


def check_weight_zero(bundle: Bundle) -> Iterator[Finding]:
    listing = bundle.listing
    if not listing or not listing.services:
        return
    conn_dests = bundle.conns.by_destination() if bundle.conns else None
    for svc in listing.services:
        zero = []
        for rs in svc.realservers:
            st = listing.stats.get((svc.key, rs.key))
            if rs.weight != 0 or st is None or st.active_conns + st.inactive_conns:
                continue
            if conn_dests is not None and conn_dests.get(ipvsadm_rs(rs), 0):
                continue
            zero.append(rs)
        if not zero:
            continue
        all_zero = all(rs.weight == 0 for rs in svc.realservers)
        yield Finding(
            id="weight-zero-leftover",
            severity=Severity.ERROR if all_zero else Severity.WARNING,
            summary=f"{svc.key}: {len(zero)} real server(s) at weight 0 with no connections: "
            + ", ".join(ipvsadm_rs(rs) for rs in zero),
            explanation=(
                (
                    "Every real server of this service has weight 0: new connections to it are refused. "
                    if all_zero
                    else ""
                )
                + "A weight-0 real server with no connections left is a graceful-termination leftover: its "
                "draining is over but nothing deleted it (kube-proxy after a restart, issues "
                "#92019/#108319). It receives nothing; if its pod comes back at the same address it stays "
                "unused."
            ),
            evidence=tuple(line for rs in zero for line in bundle.rs_evidence(svc.key, rs)[-1:]),
            fix=tuple(f"ipvsadm -d {ipvsadm_service(svc.key)} -r {ipvsadm_rs(rs)}" for rs in zero),
            subject=str(svc.key),
        )


def check_hash_fallback(bundle: Bundle) -> Iterator[Finding]:
    """sh/mh without the fallback flag while a real server has weight 0: IPVS still hashes
    new connections to it and refuses them. Only from ``ipvsadm -Ln`` (``/proc/net/ip_vs``
    does not show the flags)."""
    listing = bundle.listing
    if not listing or bundle.listing_source != "ipvsadm-Ln.txt":
        return
    for svc in listing.services:
        fallback = f"{svc.scheduler}-fallback"
        if svc.scheduler not in SCHED_FLAGS or fallback in svc.flags or "flag-1" in svc.flags:
            continue
        zero = [rs for rs in svc.realservers if rs.weight == 0]
        if not zero or len(zero) == len(svc.realservers):  # all at 0: weight-zero-leftover's
            continue
        sched_flags = ",".join(sorted({*svc.flags, fallback} - {"ops"}))
        edit = f"ipvsadm -E {ipvsadm_service(svc.key)} -s {svc.scheduler} -b {sched_flags}"
        if "ops" in svc.flags:
            edit += " -o"
        if svc.persistence:
            edit += f" -p {svc.persistence}" + (f" -M {svc.netmask}" if svc.netmask is not None else "")
        yield Finding(
            id="hash-without-fallback",
            severity=Severity.ERROR,
            summary=f"{svc.key}: {svc.scheduler} without {fallback} and {len(zero)} real server(s) at "
            f"weight 0 ({', '.join(ipvsadm_rs(rs) for rs in zero)}): the new connections hashed to them "
            "are refused",
            explanation=(
                f"The {svc.scheduler} scheduler hashes each new connection to a real server whatever its "
                "weight; weight 0 (draining, a terminating endpoint, a failed health check) only makes "
                f"that server unavailable, and without {fallback} IPVS then has no destination: the client "
                'gets a port unreachable ("connection refused"), about '
                f"{len(zero)} in {len(svc.realservers)} new connections until the server is deleted or back. "
                f"With {fallback} they go to the next server of the table; the others' clients stay put. "
                "kube-proxy's mh sets mh-port only (kubernetes/kubernetes#139497)."
            ),
            evidence=tuple(line for rs in zero for line in bundle.rs_evidence(svc.key, rs)[-1:]),
            fix=(
                edit,
                "# kube-proxy puts its own flags back at its next sync: with kube-proxy, use another "
                "scheduler (ipvs.scheduler) until it sets the fallback flag",
            ),
            subject=str(svc.key),
        )


def check_dr_port_mapping(bundle: Bundle) -> Iterator[Finding]:
    for svc in bundle.services or []:
        if svc.key.fwmark or not svc.key.port:
            continue
        for rs in svc.realservers:
            if rs.forward in (Forward.DR, Forward.TUN) and rs.port not in (svc.key.port, 0):
                yield Finding(
                    id="dr-port-mapping",
                    severity=Severity.ERROR,
                    summary=f"{svc.key}: {'Route' if rs.forward is Forward.DR else 'Tunnel'} real server "
                    f"{ipvsadm_rs(rs)} has port {rs.port}, the service {svc.key.port}",
                    explanation=(
                        "Direct routing and tunnelling do not rewrite ports: packets arrive at the real "
                        f"server on port {svc.key.port}, not {rs.port}. If nothing listens on {svc.key.port} "
                        "there, every connection scheduled to it is refused. Only Masq (NAT) maps ports."
                    ),
                    evidence=tuple(bundle.rs_evidence(svc.key, rs)),
                    fix=(
                        f"ipvsadm -d {ipvsadm_service(svc.key)} -r {ipvsadm_rs(rs)}",
                        f"ipvsadm -a {ipvsadm_service(svc.key)} -r {rs.address}:{svc.key.port} "
                        f"{_FWD[rs.forward]} -w {rs.weight}",
                        f"# or keep port {rs.port} and switch to NAT: -m instead of {_FWD[rs.forward]}",
                    ),
                    subject=f"{svc.key} {rs.key}",
                )


_FIN_STATES = ("TIME_WAIT", "FIN_WAIT", "CLOSE_WAIT", "LAST_ACK", "CLOSE", "CLOSING")


def check_conn_table(bundle: Bundle) -> Iterator[Finding]:
    """tcpfin-timeout-long, timewait-heavy."""
    table = bundle.conns
    if table is None or not table.rows:
        return
    states = table.states()
    tcp_total = sum(n for s, n in states.items() if s not in ("UDP", "NONE", "ICMP"))
    if tcp_total == 0:
        return
    tw = states.get("TIME_WAIT", 0)
    fin_like = sum(states.get(s, 0) for s in _FIN_STATES)
    src = table.source
    summary_line = f"{src}: {len(table.rows)} entries: " + ", ".join(
        f"{s} {n}" for s, n in states.most_common(6)
    )
    samples = _samples(table, "TIME_WAIT", 2) + _samples(table, "FIN_WAIT", 1)
    timeouts = bundle.timeouts
    assumed: list[str] = []
    if timeouts is None:  # the connection table alone: the kernel's defaults (ipvsadm --set 0 0 0)
        timeouts = KERNEL_TIMEOUTS
        assumed.append("the IPVS timeouts are the kernel defaults 900 120 300")
    if timeouts.tcpfin > 30 and fin_like >= 100 and fin_like / tcp_total >= 0.3:
        yield Finding(
            id="tcpfin-timeout-long",
            severity=Severity.WARNING,
            summary=f"IPVS tcpfin timeout is {timeouts.tcpfin} s while {fin_like} of {tcp_total} TCP entries "
            f"({100 * fin_like // tcp_total}%) are closing (TIME_WAIT {tw})",
            explanation=(
                "Most of the connection table is connections that already ended. Closing entries keep "
                "their (client, VIP) tuple and memory for minutes; with many short connections a client "
                "reusing a port hits the old entry and its SYN is mis-handled or delayed. tcpfin governs "
                "IPVS's FIN_WAIT entries: 30 s is plenty on a LAN. TIME_WAIT entries keep the kernel's fixed "
                "120 s whatever --set says, so their share only falls with fewer short connections."
            ),
            evidence=(
                *(
                    ()
                    if assumed
                    else (
                        f"ipvsadm-timeout.txt: Timeout (tcp tcpfin udp): {timeouts.tcp} {timeouts.tcpfin} "
                        f"{timeouts.udp}",
                    )
                ),
                summary_line,
                *samples,
            ),
            fix=(
                f"ipvsadm --set {timeouts.tcp} 30 {timeouts.udp}",
                "# kube-proxy sets it again at start: give it --ipvs-tcpfin-timeout=30s",
            ),
            subject="timeouts",
        ).assume(assumed, ["ipvsadm -L --timeout"] if assumed else [])
    if tw >= 1000 and tw / tcp_total >= 0.3:
        heavy = tw >= 10000 or tw / tcp_total >= 0.5
        yield Finding(
            id="timewait-heavy",
            severity=Severity.WARNING if heavy else Severity.INFO,
            summary=f"{tw} of {tcp_total} IPVS TCP entries ({100 * tw // tcp_total}%) are in TIME_WAIT",
            explanation=(
                "Clients open and close connections at a high rate (no keep-alive or pooling). Every closed "
                "connection stays in the IPVS table for two minutes; the table grows, new connections from "
                "a reused client port can be matched to the dead entry and sent to its old real server."
            ),
            evidence=(summary_line, *samples),
            fix=(
                *(
                    (f"ipvsadm --set {timeouts.tcp} 30 {timeouts.udp}",)
                    if timeouts.tcpfin > 30 and not assumed
                    else ()
                ),
                "# use keep-alive / connection pooling in the clients",
                "# on kernels >= 5.9 keep net.ipv4.vs.conn_reuse_mode=1 (the default): "
                "reused ports are rescheduled",
            ),
            subject="conns",
        )


def _conns(listing: Listing | None, key: ServiceKey, rs: RealServer) -> int:
    """Active + inactive connections of a real server; -1 when the listing has no counters for it."""
    st = listing.stats.get((key, rs.key)) if listing else None
    return st.active_conns + st.inactive_conns if st else -1


def _samples(table: ConnTable, state: str, n: int) -> list[str]:
    out = []
    for row, lineno in zip(table.rows, table.linenos):
        if row[2] == state:
            out.append(conn_line(table, row, lineno))
            if len(out) >= n:
                break
    return out


def fmt_row(row: tuple[str, int, str, str, str, str]) -> str:
    return f"{row[0]} {row[1] // 60:02d}:{row[1] % 60:02d} {row[2]} {row[3]} {row[4]} {row[5]}"


def conn_line(table: ConnTable, row: tuple[str, int, str, str, str, str], lineno: int) -> str:
    """A connection entry as evidence: ``file:line: TCP 01:30 TIME_WAIT client virtual dest``."""
    return f"{table.source}:{lineno}: {fmt_row(row)}"


def syn_recv_groups(bundle: Bundle) -> list[tuple[str, int, int, list[str]]]:
    """(destination, SYN_RECV entries, all entries, evidence) for destinations stuck in SYN_RECV."""
    table = bundle.conns
    if table is None:
        return []
    syn = table.by_destination("SYN_RECV")
    if not syn:
        return []
    total: Counter[str] = table.by_destination()
    out = []
    for dest, n in syn.most_common():
        if n >= 3 and n / total[dest] >= 0.5:
            ev = []
            for row, lineno in zip(table.rows, table.linenos):
                if row[5] == dest and row[2] == "SYN_RECV":
                    ev.append(conn_line(table, row, lineno))
                    if len(ev) >= 3:
                        break
            out.append((dest, n, total[dest], ev))
    return out
