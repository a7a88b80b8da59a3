"""Checks of the load-balancer table against a Service's traffic policy: with
``externalTrafficPolicy: Local`` only nodes with a ready endpoint of the Service may be
its real servers."""

from __future__ import annotations

from collections.abc import Iterator

from .bundle import Bundle
from .checks_ipvs import ipvsadm_rs, remove_rs_fix
from .findings import Finding, Severity

__all__ = ["check_local_policy"]


def check_local_policy(bundle: Bundle) -> Iterator[Finding]:
    """local-policy-node-without-endpoint: a real server that is a node's address, for the
    external or load-balancer IP of a Local Service, on a node without a ready endpoint."""
    kube, services = bundle.kube, bundle.services
    if kube is None or not services:
        return
    node_of = {ip: name for name, ips in kube.node_ips.items() for ip in ips}
    for sp in kube.ports:
        if sp.traffic_policy != "Local":
            continue
        vips = {*sp.external_ips, *sp.lb_ips}
        for svc in services:
            if str(svc.key.address) not in vips or (svc.key.port, svc.key.protocol.upper()) != (
                sp.port,
                sp.protocol,
            ):
                continue
            empty = [
                (rs, node_of[str(rs.address)])
                for rs in svc.realservers
                if rs.weight > 0
                and str(rs.address) in node_of
                and node_of[str(rs.address)] not in sp.endpoint_nodes
            ]
            if not empty:
                continue
            names = ", ".join(f"{node} ({ipvsadm_rs(rs)})" for rs, node in empty)
            with_endpoints = ", ".join(sorted(sp.endpoint_nodes)) or "none"
            yield Finding(
                id="local-policy-node-without-endpoint",
                severity=Severity.ERROR,
                summary=f"{svc.key}: {sp.ref} has externalTrafficPolicy Local, but {len(empty)} real "
                f"server(s) are nodes without a ready endpoint of it: {names}",
                explanation=(
                    "With externalTrafficPolicy: Local a node delivers the Service's external traffic only "
                    "to its own endpoints, to keep the client's address. A node with none drops it "
                    "(kube-proxy: 'no local endpoints'), or, where the node's proxy ignores the policy, "
                    "forwards it to another node with source NAT, and the client address is lost. The load "
                    f"balancer must send only to the nodes with an endpoint (here: {with_endpoints}); "
                    "kube-proxy's healthCheckNodePort answers 503 on the others (kubelvs checks it by "
                    "default for Local)."
                ),
                evidence=(
                    *(line for rs, _ in empty for line in bundle.rs_evidence(svc.key, rs)[-1:]),
                    f"{kube.source}: {sp.ref} externalTrafficPolicy Local, endpoints on: {with_endpoints}",
                ),
                fix=tuple(
                    line
                    for rs, node in empty
                    for line in remove_rs_fix(bundle, svc.key, rs, f"# {node} has no endpoint of {sp.ref}")
                ),
                subject=str(svc.key),
            )
