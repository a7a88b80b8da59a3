"""Run every check over a bundle (or a site of bundles) and order the findings.

Every file of the bundle is parsed first (``Bundle.parse_all``), so a file that cannot
be read is reported whichever checks run; the ids it leaves unknown come from
``inputs.py``. A check that raises is a bug in a check (no input may make one raise:
the parsers hand the checks well-typed values only); it becomes a check-failed finding
whose ids are unknown, never a traceback.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

from ..model import Forward
from . import checks_conns, checks_dr, checks_ipvs, checks_kernel, checks_policy, checks_site, checks_source
from .bundle import Bundle
from .findings import Finding, Severity
from .inputs import input_findings

__all__ = ["CHECKS", "REPORTS", "SITE_CHECKS", "analyse", "analyse_site"]

_SYN_CAUSES = frozenset({"rp-filter-strict", "ip-forward-off", "conntrack-near-full"})

Check = Callable[[Bundle], Iterable[Finding]]

#: Checks that need only the bundle, in report order of equal severity.
CHECKS: tuple[Check, ...] = (
    checks_ipvs.check_kube_sync,
    checks_policy.check_local_policy,
    checks_kernel.check_rp_filter,
    checks_kernel.check_ip_forward,
    checks_conns.check_vip_source,
    checks_source.check_ipv6_vip_source,
    checks_ipvs.check_dr_port_mapping,
    checks_kernel.check_tw_recycle,
    checks_kernel.check_paws,
    checks_ipvs.check_conn_table,
    checks_kernel.check_conntrack,
    checks_kernel.check_conn_reuse,
    checks_kernel.check_expire_nodest,
    checks_kernel.check_keepalive,
    checks_ipvs.check_weight_zero,
    checks_ipvs.check_hash_fallback,
    checks_conns.check_drained_still_used,
    checks_conns.check_persistence_templates,
)

#: check -> the finding ids it reports (unknown when it fails).
REPORTS: Mapping[str, tuple[str, ...]] = {
    "check_kube_sync": ("stale-realserver", "missing-realserver", "missing-virtual-service"),
    "check_local_policy": ("local-policy-node-without-endpoint",),
    "check_rp_filter": ("rp-filter-strict",),
    "check_ip_forward": ("ip-forward-off",),
    "check_ipv6_vip_source": ("director-ipv6-vip-source",),
    "check_dr_port_mapping": ("dr-port-mapping",),
    "check_tw_recycle": ("tw-recycle-enabled",),
    "check_paws": ("paws-rejects",),
    "check_conn_table": ("tcpfin-timeout-long", "timewait-heavy"),
    "check_conntrack": ("conntrack-near-full",),
    "check_conn_reuse": ("conn-reuse-mode",),
    "check_expire_nodest": ("expire-nodest-conn-off",),
    "check_keepalive": ("ipvs-timeout-below-keepalive",),
    "check_weight_zero": ("weight-zero-leftover",),
    "check_hash_fallback": ("hash-without-fallback",),
    "check_vip_source": ("vip-as-client-source",),
    "check_drained_still_used": ("weight-zero-still-used",),
    "check_persistence_templates": ("persistence-template-stale",),
    "check_dr_realserver": (
        "dr-arp-ignore",
        "dr-arp-announce",
        "local-vip-loop",
        "dr-vip-not-on-realserver",
        "dr-ipv6-vip-on-lan",
        "dr-ipv6-vip-proxy-ndp",
    ),
    "check_syn_recv": ("syn-recv-stuck",),
    "check_directors_agree": ("directors-disagree",),
    "check_vip_arp": ("vip-arp-conflict",),
    "check_dr_gateway": ("dr-director-is-gateway",),
}

#: Checks across the hosts of a site: findings by host.
SITE_CHECKS: tuple[Callable[[Mapping[str, Bundle]], dict[str, list[Finding]]], ...] = (
    checks_site.check_directors_agree,
    checks_site.check_vip_arp,
    checks_site.check_dr_gateway,
)


def _guarded(name: str, run: Callable[[], Iterable[Finding]]) -> Iterator[Finding]:
    """A check that raises becomes a finding, never a traceback: the report goes on."""
    try:
        yield from list(run())
    except Exception as exc:
        where = traceback.extract_tb(exc.__traceback__)[-1]
        ids = REPORTS.get(name, ())
        yield Finding(
            id="check-failed",
            severity=Severity.WARNING,
            summary=f"check {name} failed: {type(exc).__name__}: {str(exc)[:200]}",
            explanation="A bug in kubelvs doctor: please report it with the bundle. The other checks ran; "
            "this one's findings are unknown (not checked): " + (", ".join(ids) or name) + ".",
            evidence=(f"{where.filename.rsplit('/', 1)[-1]}:{where.lineno}",),
            subject=name,
            unknown=ids,
        )


def analyse(
    bundle: Bundle, *, dr_vips: Iterable[str] = (), remote: Mapping[str, Sequence[Finding]] | None = None
) -> list[Finding]:
    """Every finding for one host, errors first. ``dr_vips``: VIPs a director sends to this
    host in DR/TUN mode; ``remote``: findings of the hosts owning real-server addresses,
    by address (both from ``analyse_site``)."""
    bundle.parse_all()
    findings: list[Finding] = []
    for check in CHECKS:
        findings.extend(_guarded(check.__name__, lambda c=check: c(bundle)))  # type: ignore[misc]
    vips = tuple(dr_vips)
    findings.extend(
        _guarded("check_dr_realserver", lambda: checks_dr.check_dr_realserver(bundle, dr_vips=vips))
    )
    syn = list(
        _guarded("check_syn_recv", lambda: checks_dr.check_syn_recv(bundle, findings, remote=remote or {}))
    )
    if any(f.id == "syn-recv-stuck" for f in syn):
        # A cause of connections hanging right now is breaking traffic: raise it to error.
        findings = [
            dataclasses.replace(f, severity=Severity.ERROR) if f.id in _SYN_CAUSES else f for f in findings
        ]
    findings.extend(syn)
    findings.extend(input_findings(bundle))
    findings.sort(key=Finding.sort_key)
    return findings


def analyse_site(bundles: Mapping[str, Bundle]) -> dict[str, list[Finding]]:
    """Analyse several hosts together: a director's DR/TUN real servers are matched to the
    host bundles that own their addresses, so those hosts are checked for the VIPs."""
    owner: dict[ipaddress.IPv4Address | ipaddress.IPv6Address, str] = {}
    for name, b in bundles.items():
        for address in b.local_addresses:
            if not address.is_loopback:
                owner.setdefault(address, name)
    vips: dict[str, list[str]] = {name: [] for name in bundles}
    for name, b in bundles.items():
        for svc in b.services or []:
            if svc.key.address is None:
                continue
            for rs in svc.realservers:
                host = owner.get(rs.address)
                if (
                    rs.forward in (Forward.DR, Forward.TUN)
                    and host is not None
                    and host != name
                    and str(svc.key.address) not in vips[host]
                ):
                    vips[host].append(str(svc.key.address))
    # Real-server hosts first, so a director's SYN_RECV diagnosis can name their problems.
    results: dict[str, list[Finding]] = {}
    order = sorted(bundles, key=lambda n: bool(bundles[n].services))
    for name in order:
        remote = {str(a): results[h] for a, h in owner.items() if h != name and h in results}
        results[name] = analyse(bundles[name], dr_vips=vips[name], remote=remote)
    for check in SITE_CHECKS:
        for name, extra in _site_check(check, bundles).items():
            results[name] = sorted([*results[name], *extra], key=Finding.sort_key)
    return {name: results[name] for name in bundles}


def _site_check(
    check: Callable[[Mapping[str, Bundle]], dict[str, list[Finding]]], bundles: Mapping[str, Bundle]
) -> dict[str, list[Finding]]:
    """A site check's findings by host; one that raises is a check-failed finding on every host."""
    found: dict[str, list[Finding]] = {}

    def run() -> Iterable[Finding]:
        found.update(check(bundles))
        return ()

    failed = list(_guarded(check.__name__, run))
    return {name: failed for name in bundles} if failed else found
