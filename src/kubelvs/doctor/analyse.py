"""Run every check over a bundle (or a site of bundles) and order the findings."""

from __future__ import annotations

import dataclasses
import ipaddress
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

from ..model import Forward
from . import checks_dr, checks_ipvs, checks_kernel
from .bundle import Bundle
from .findings import Finding, Severity

__all__ = ["analyse", "analyse_site", "CHECKS"]

_SYN_CAUSES = frozenset({"rp-filter-strict", "ip-forward-off", "conntrack-near-full"})

Check = Callable[[Bundle], Iterable[Finding]]

#: Checks that need only the bundle, in report order of equal severity.
CHECKS: tuple[Check, ...] = (
    checks_ipvs.check_kube_sync,
    checks_kernel.check_rp_filter,
    checks_kernel.check_ip_forward,
    checks_ipvs.check_dr_port_mapping,
    checks_kernel.check_tw_recycle,
    checks_kernel.check_paws,
    checks_ipvs.check_conn_table,
    checks_kernel.check_conntrack,
    checks_kernel.check_conn_reuse,
    checks_kernel.check_expire_nodest,
    checks_kernel.check_keepalive,
    checks_ipvs.check_weight_zero,
)


def _guarded(name: str, run: Callable[[], Iterable[Finding]]) -> Iterator[Finding]:
    """A check that crashes on odd input becomes a finding, never a traceback."""
    try:
        yield from list(run())
    except Exception as exc:  # noqa: BLE001 - the report must go on
        where = traceback.extract_tb(exc.__traceback__)[-1]
        yield Finding(
            id="check-failed",
            severity=Severity.INFO,
            summary=f"check {name} could not run on this input: {type(exc).__name__}: {exc}",
            explanation="Part of the input did not look as expected; the other checks ran.",
            evidence=(f"{where.filename.rsplit('/', 1)[-1]}:{where.lineno}",),
            subject=name,
        )


def analyse(bundle: Bundle, *, dr_vips: Iterable[str] = (),
            remote: Mapping[str, Sequence[Finding]] | None = None) -> list[Finding]:
    """Every finding for one host, errors first. ``dr_vips``: VIPs a director sends to this
    host in DR/TUN mode; ``remote``: findings of the hosts owning real-server addresses,
    by address (both from ``analyse_site``)."""
    findings: list[Finding] = []
    for check in CHECKS:
        findings.extend(_guarded(check.__name__, lambda c=check: c(bundle)))  # type: ignore[misc]
    vips = tuple(dr_vips)
    findings.extend(_guarded("check_dr_realserver", lambda: checks_dr.check_dr_realserver(bundle, dr_vips=vips)))
    syn = list(_guarded("check_syn_recv", lambda: checks_dr.check_syn_recv(bundle, findings, remote=remote or {})))
    if any(f.id == "syn-recv-stuck" for f in syn):
        # A cause of connections hanging right now is breaking traffic: raise it to error.
        findings = [dataclasses.replace(f, severity=Severity.ERROR) if f.id in _SYN_CAUSES else f for f in findings]
    findings.extend(syn)
    _ = bundle.role  # parse role.txt so its problems are reported
    if bundle.problems:
        by_file: dict[str, list[str]] = {}
        for p in bundle.problems:
            by_file.setdefault(p.split(":", 1)[0], []).append(p)
        for name, problems in by_file.items():
            findings.append(
                Finding(
                    id="input-unparsed",
                    severity=Severity.INFO,
                    summary=f"{name}: {len(problems)} part(s) could not be read; analysed the rest",
                    explanation="Truncated or unexpected lines were skipped. Re-capture with the command named "
                    "in the bundle's file list (numeric output: ipvsadm -Ln / -Lnc) for a complete analysis.",
                    evidence=tuple(problems[:5]),
                    subject=name,
                )
            )
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
                if rs.forward in (Forward.DR, Forward.TUN) and host is not None and host != name:
                    if str(svc.key.address) not in vips[host]:
                        vips[host].append(str(svc.key.address))
    # Real-server hosts first, so a director's SYN_RECV diagnosis can name their problems.
    results: dict[str, list[Finding]] = {}
    order = sorted(bundles, key=lambda n: bool(bundles[n].services))
    for name in order:
        remote = {str(a): results[h] for a, h in owner.items() if h != name and h in results}
        results[name] = analyse(bundles[name], dr_vips=vips[name], remote=remote)
    return {name: results[name] for name in bundles}
