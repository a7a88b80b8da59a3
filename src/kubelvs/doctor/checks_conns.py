"""Checks on where the IPVS connection entries go: connections whose client is the VIP
itself, drained real servers that still get new connections, and persistence templates
that pin clients to a drained real server."""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Iterator

from ..formats.ipvs_conn import ConnTable, Row
from ..model import RealServer, VirtualService
from .bundle import Bundle
from .checks_ipvs import conn_line, ipvsadm_rs, ipvsadm_service
from .checks_kernel import setting_or_default, sysctl_w
from .findings import Finding, Severity

__all__ = ["check_drained_still_used", "check_persistence_templates", "check_vip_source"]

#: How ipvsadm -Lnc shows a persistence template (NONE; ASSURED once it has been used).
#: An invalidated template shows port 65535 instead of the service's and is not matched.
_TEMPLATE_STATES = frozenset({"NONE", "ASSURED"})
#: Entry states of a connection that is opening or open: traffic, not a leftover.
_LIVE = frozenset({"SYN_RECV", "SYN_SENT", "ESTABLISHED"})


def _host(endpoint: str) -> str:
    """``10.0.0.1:80`` -> ``10.0.0.1``; ``[fd00::1]:80`` -> ``fd00::1``."""
    return endpoint.rsplit(":", 1)[0].strip("[]")


def _states(rows: list[tuple[Row, int]]) -> str:
    return ", ".join(f"{state} {n}" for state, n in Counter(r[2] for r, _ in rows).most_common())


# ---------------------------------------------------------------------- the VIP as client


def check_vip_source(bundle: Bundle) -> Iterator[Finding]:
    """vip-as-client-source: entries whose client address is a VIP of this host."""
    table = bundle.conns
    if table is None or not table.rows:
        return
    vips = {str(s.key.address) for s in bundle.ipvs_services or [] if s.key.address is not None}
    holder: dict[str, str] = {}  # VIP -> the device that holds it here
    for iface in bundle.interfaces or []:
        for a in iface.addresses:
            if iface.name == "kube-ipvs0" or str(a.ip) in vips:
                holder.setdefault(str(a.ip), iface.name)
    vips |= set(holder)
    hits: dict[str, list[tuple[Row, int]]] = {}
    for row, lineno in zip(table.rows, table.linenos, strict=False):
        source = _host(row[3])
        if source in vips:
            hits.setdefault(source, []).append((row, lineno))
    for vip, rows in sorted(hits.items()):
        stuck = sum(1 for r, _ in rows if r[2] == "SYN_RECV")
        node = _node_address(bundle, [_host(r[5]) for r, _ in rows])
        device = holder.get(vip, "kube-ipvs0")
        yield Finding(
            id="vip-as-client-source",
            severity=Severity.ERROR if stuck else Severity.WARNING,
            summary=f"{len(rows)} IPVS connection(s) have the VIP {vip} itself as their client "
            f"({_states(rows)})",
            explanation=(
                "Connections this host opens to a VIP leave with the VIP as their source address: the "
                f"VIP is local here (on {device}) and its local route says 'src {vip}'. The real server "
                "answers the VIP, and every node holds it (kube-proxy's kube-ipvs0, a DR real server's "
                "lo): the reply is delivered on the real server's own node and never comes back. "
                "Connections from this host to the VIP (health checks, hostNetwork pods, the kubelet) "
                "hang in SYN_RECV and time out, while clients elsewhere are served."
            ),
            evidence=tuple(conn_line(table, r, n) for r, n in rows[:3]),
            fix=(
                f"ip route replace local {vip} dev {device} table local proto kernel scope host src {node}",
                "# this host's connections to the VIP then leave from its address, and the replies come back",
            ),
            subject=vip,
        )


def _node_address(bundle: Bundle, peers: list[str]) -> str:
    """This host's address on the network of the real servers (the source that comes back)."""
    for iface in bundle.interfaces or []:
        for a in iface.addresses:
            for peer in peers:
                try:
                    if ipaddress.ip_address(peer) in a.interface.network and a.ip != ipaddress.ip_address(
                        peer
                    ):
                        return str(a.ip)
                except ValueError:
                    continue
    return "NODE_IP"


# ---------------------------------------------------------------------- drained, still used


def check_drained_still_used(bundle: Bundle) -> Iterator[Finding]:
    """weight-zero-still-used: a weight-0 real server with open or opening connections
    that should have none: its endpoint is gone, or conn_reuse_mode=0 sends reused client
    ports to it. A drain in progress (open connections to a terminating pod) is not one."""
    listing, table = bundle.listing, bundle.conns
    if not listing or not listing.services or table is None:
        return
    reuse = bundle.sysctl("net.ipv4.vs.conn_reuse_mode")
    endpoints = _endpoints(bundle)
    for svc in listing.services:
        for rs in svc.realservers:
            if rs.weight != 0:
                continue
            rows = _rows_to(table, svc, rs)
            live = [(r, n) for r, n in rows if r[2] in _LIVE]
            if not live:
                continue
            gone = endpoints is not None and (str(rs.address), rs.port) not in endpoints.get(
                (str(svc.key.address), svc.key.port), {(str(rs.address), rs.port)}
            )
            if not gone and reuse != 0:
                continue  # a drain in progress: its connections end by themselves
            why = []
            if gone:
                why.append("its endpoint is gone from Kubernetes")
            if reuse == 0:
                why.append(
                    "conn_reuse_mode = 0: a new connection from a client port that still has an entry here "
                    "follows that entry to this real server instead of being scheduled"
                )
            yield Finding(
                id="weight-zero-still-used",
                severity=Severity.WARNING,
                summary=f"{svc.key}: real server {ipvsadm_rs(rs)} has weight 0 but {len(live)} open or "
                f"opening connection(s) ({_states(live)})",
                explanation=(
                    "A drained real server should only see its last connections end. This one still has live "
                    f"entries, and {'; and '.join(why)}. Its graceful termination never ends (kube-proxy and "
                    "kubelvs delete it once ActiveConn + InActConn reach 0), and clients reusing their ports "
                    "keep landing on a terminating or deleted pod during rolling updates. Kernels with "
                    "'ipvs: Fix reuse connection if RS weight is 0' (2021) schedule such a connection anew "
                    "when expire_nodest_conn = 1, whatever conn_reuse_mode says (the Debian 6.1 kernel of "
                    "the tests does); on kernels >= 5.9 conn_reuse_mode = 1, the default, does too."
                ),
                evidence=(
                    *bundle.rs_evidence(svc.key, rs)[-1:],
                    *(conn_line(table, r, n) for r, n in live[:3]),
                    *bundle.sysctl_evidence("net.ipv4.vs.conn_reuse_mode", "net.ipv4.vs.expire_nodest_conn"),
                ),
                fix=(
                    *(
                        (f"ipvsadm -d {ipvsadm_service(svc.key)} -r {ipvsadm_rs(rs)}   # its pod is gone",)
                        if gone
                        else ()
                    ),
                    *(
                        (
                            sysctl_w("net.ipv4.vs.expire_nodest_conn", 1)
                            + "   # recent kernels: reused ports to a weight-0 server are scheduled anew",
                            "# kernel >= 5.9: " + sysctl_w("net.ipv4.vs.conn_reuse_mode", 1),
                        )
                        if reuse == 0
                        else ()
                    ),
                ),
                subject=str(svc.key),
            )


def _rows_to(table: ConnTable, svc: VirtualService, rs: RealServer) -> list[tuple[Row, int]]:
    virtual, dest = ipvsadm_service(svc.key).split()[-1], ipvsadm_rs(rs)
    return [
        (r, n) for r, n in zip(table.rows, table.linenos, strict=False) if r[5] == dest and r[4] == virtual
    ]


def _endpoints(bundle: Bundle) -> dict[tuple[str, int], set[tuple[str, int]]] | None:
    """(VIP, port) -> every endpoint (ready or not) of the Service it belongs to; None
    without Kubernetes data."""
    if bundle.kube is None:
        return None
    out: dict[tuple[str, int], set[tuple[str, int]]] = {}
    for sp in bundle.kube.ports:
        every = sp.endpoints | sp.not_ready
        for ip in (*sp.cluster_ips, *sp.external_ips, *sp.lb_ips):
            out.setdefault((ip, sp.port), set()).update(every)
    return out


# ---------------------------------------------------------------------- persistence


def check_persistence_templates(bundle: Bundle) -> Iterator[Finding]:
    """persistence-template-stale: templates (client port 0) that pin clients
    to a weight-0 real server while expire_quiescent_template is 0. A template of a
    deleted real server is no problem: the kernel drops it at its next use (the
    destination is no longer available)."""
    listing, table = bundle.listing, bundle.conns
    if not listing or not listing.services or table is None:
        return
    assumed: list[str] = []
    to_confirm: list[str] = []
    if setting_or_default(bundle, "net.ipv4.vs.expire_quiescent_template", assumed, to_confirm) != 0:
        return
    by_virtual = {ipvsadm_service(s.key).split()[-1]: s for s in listing.services if s.persistence}
    for virtual, svc in sorted(by_virtual.items()):
        zero = {ipvsadm_rs(rs): rs for rs in svc.realservers if rs.weight == 0}
        pinned = [
            (r, n)
            for r, n in zip(table.rows, table.linenos, strict=False)
            if r[2] in _TEMPLATE_STATES and r[3].endswith(":0") and r[4] == virtual and r[5] in zero
        ]
        if not pinned:
            continue
        clients = sorted({_host(r[3]) for r, _ in pinned})
        yield Finding(
            id="persistence-template-stale",
            severity=Severity.WARNING,
            summary=f"{svc.key}: {len(pinned)} persistence template(s) pin {len(clients)} client(s) to "
            f"weight-0 real server(s) {', '.join(sorted({r[5] for r, _ in pinned}))}",
            explanation=(
                f"The service is persistent ({svc.persistence} s): each client's template sends all its new "
                "connections to the real server it first got. With expire_quiescent_template = 0 a template "
                "outlives the drain of its real server: the client keeps being sent to the weight-0 server "
                "(a terminating pod) until the template expires, and each new connection renews it. With "
                "1 (what kube-proxy and kube-router set) the template is dropped at its next use and the "
                "client is scheduled anew."
            ),
            evidence=(
                *(conn_line(table, r, n) for r, n in pinned[:3]),
                *(
                    bundle.rs_evidence(svc.key, rs)[-1]
                    for rs in zero.values()
                    if bundle.rs_evidence(svc.key, rs)
                ),
                *bundle.sysctl_evidence("net.ipv4.vs.expire_quiescent_template"),
            ),
            fix=(sysctl_w("net.ipv4.vs.expire_quiescent_template", 1),),
            subject=str(svc.key),
        ).assume(assumed, to_confirm)
