"""What each finding needs from a bundle, and the input-unparsed findings (doctor layer).

A bundle file that could not be read must never make the doctor say "healthy": a check
whose input is missing finds nothing. So every finding id names the inputs it is
decided from (``NEEDS``), each input the files it comes from, in the order they are
tried (``INPUTS``). An input is *incomplete* when the file it was read from was read
only in part (the lines skipped could have held what a check looks for: a service
``ipvsadm -L`` printed with a host name, a Service with a field of the wrong type), or
when no file gave it and one of its files was present but could not be read (wholly,
or in part: nft.json's kubelvs table among entries of the wrong shape). An absent file
is neither: every file is optional, and the checks say what they do without it. The
ids that need an incomplete input are *unknown*: listed on the input-unparsed finding
of the file that caused it, which is then a warning. A second choice read whole is
preferred to a first one read in part (``Bundle._best``), so a truncated ``ipvsadm -Ln``
beside a complete ``/proc/net/ip_vs`` leaves nothing unknown.

Only inputs that decide whether a finding exists are listed; ones that only raise its
severity or sharpen its explanation (the drop counters for rp-filter-strict, the signs
of NAT for paws-rejects, the causes ranked in syn-recv-stuck) are not.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ..model import SCHED_FLAGS
from .bundle import FILES, Bundle
from .findings import FINDING_IDS, Finding, Severity

__all__ = ["INPUTS", "NEEDS", "Input", "input_findings", "unknown_by_file"]


@dataclass(frozen=True)
class Input:
    """A fact the checks read, the files it comes from, and the file the bundle read it
    from ("" when none did, or when it came whole from elsewhere)."""

    what: str
    files: tuple[str, ...]
    source: Callable[[Bundle], str]
    available: Callable[[Bundle], bool]


_IPVS_FILES = ("ipvsadm-Ln.txt", "proc-net-ip_vs.txt", "ipvsadm-Sn.txt")


def _no_hashing(bundle: Bundle) -> bool:
    """Whether the listing (from /proc/net/ip_vs, which does not show scheduler flags) has
    no sh or mh service, whose flags would matter."""
    listing = bundle.listing
    return listing is not None and all(s.scheduler not in SCHED_FLAGS for s in listing.services)


def _file(name: str, view: str) -> Callable[[Bundle], str]:
    return lambda b: name if getattr(b, view) is not None else ""


INPUTS: Mapping[str, Input] = {
    "lb-table": Input(
        "the load balancer's table",
        (*_IPVS_FILES, "nft.json"),
        lambda b: b.ipvs_source or ("nft.json" if b.services is not None else ""),
        lambda b: b.services is not None,
    ),
    "ipvs-table": Input(
        "the IPVS table", _IPVS_FILES, lambda b: b.ipvs_source, lambda b: b.ipvs_services is not None
    ),
    "ipvs-listing": Input(
        "the IPVS listing with its connection counts",
        _IPVS_FILES[:2],
        lambda b: b.listing_source,
        lambda b: b.listing is not None,
    ),
    "ipvs-flags": Input(
        "the IPVS scheduler flags",
        _IPVS_FILES[:1],
        lambda b: b.listing_source if b.listing_source == "ipvsadm-Ln.txt" else "",
        lambda b: b.listing_source == "ipvsadm-Ln.txt" or _no_hashing(b),
    ),
    "conns": Input(
        "the IPVS connection table",
        ("ipvsadm-Lnc.txt", "proc-net-ip_vs_conn.txt"),
        lambda b: b.conns_source,
        lambda b: b.conns is not None,
    ),
    "timeouts": Input(
        "the IPVS timeouts",
        ("ipvsadm-timeout.txt",),
        _file("ipvsadm-timeout.txt", "timeouts"),
        lambda b: b.timeouts is not None,
    ),
    "sysctls": Input(
        "the running sysctls",
        ("sysctl.txt",),
        _file("sysctl.txt", "sysctls"),
        lambda b: b.sysctls is not None,
    ),
    "sysctl-conf": Input(
        "the sysctl configuration",
        ("sysctl-conf.txt",),
        _file("sysctl-conf.txt", "sysctl_conf"),
        lambda b: b.sysctl_conf is not None,
    ),
    "counters": Input(
        "the TCP counters",
        ("proc-net-netstat.txt", "netstat-s.txt"),
        lambda b: b.counters[1] if b.counters else "",
        lambda b: b.counters is not None,
    ),
    # uname.txt holds one word: read, it is whole (else kernel.osrelease of sysctl.txt stands in)
    "kernel": Input("the kernel version", ("uname.txt",), lambda b: "", lambda b: b.kernel is not None),
    "interfaces": Input(
        "the interfaces and addresses",
        ("ip-addr.txt",),
        _file("ip-addr.txt", "interfaces"),
        lambda b: b.interfaces is not None,
    ),
    "proxy-neighbours": Input(
        "the IPv6 proxy neighbour entries",
        ("ip-neigh-proxy.txt",),
        _file("ip-neigh-proxy.txt", "proxy_neighbours"),
        lambda b: b.proxy_neighbours is not None,
    ),
    "kube": Input(
        "the Kubernetes services and endpoints",
        ("kubectl.json", "kubectl.yaml"),
        lambda b: b.kube.source if b.kube else "",
        lambda b: b.kube is not None,
    ),
}

#: finding id -> the inputs that decide whether it is found.
NEEDS: Mapping[str, tuple[str, ...]] = {
    "stale-realserver": ("lb-table", "kube", "interfaces"),
    "rp-filter-strict": ("sysctls", "interfaces"),
    "local-vip-loop": ("interfaces", "sysctls", "kube", "lb-table"),
    "dr-vip-not-on-realserver": ("interfaces", "kube", "lb-table"),
    "dr-arp-ignore": ("interfaces", "sysctls"),
    "dr-ipv6-vip-on-lan": ("interfaces", "kube"),
    "dr-ipv6-vip-proxy-ndp": ("proxy-neighbours", "sysctls", "interfaces", "kube"),
    "dr-arp-announce": ("interfaces", "sysctls"),
    "dr-port-mapping": ("lb-table",),
    "ip-forward-off": ("sysctls", "lb-table", "interfaces"),
    "director-ipv6-vip-source": ("lb-table", "interfaces"),
    "syn-recv-stuck": ("conns",),
    "missing-realserver": ("lb-table", "kube", "interfaces"),
    "missing-virtual-service": ("lb-table", "kube"),
    "tw-recycle-enabled": ("sysctls", "sysctl-conf", "kernel"),
    "paws-rejects": ("counters",),
    "tcpfin-timeout-long": ("conns", "timeouts"),  # timeouts: else the kernel's, as likely
    "timewait-heavy": ("conns",),
    "conntrack-near-full": ("sysctls",),
    "conn-reuse-mode": ("sysctls", "kernel"),
    "expire-nodest-conn-off": ("sysctls", "ipvs-table"),
    "ipvs-timeout-below-keepalive": ("timeouts", "sysctls", "ipvs-table"),
    "weight-zero-leftover": ("ipvs-listing", "conns"),
    "hash-without-fallback": ("ipvs-flags",),
    "vip-as-client-source": ("conns",),
    "local-policy-node-without-endpoint": ("lb-table", "kube"),
    "weight-zero-still-used": ("ipvs-listing", "conns"),
    "persistence-template-stale": ("ipvs-listing", "conns"),
}


def _in_report_order(ids: set[str]) -> tuple[str, ...]:
    return tuple(sorted(ids, key=FINDING_IDS.index))


def unknown_by_file(bundle: Bundle) -> dict[str, tuple[str, ...]]:
    """File with problems -> the finding ids it leaves unknown (empty when the facts the
    checks need were read: from the rest of it, or from another file of the bundle)."""
    out: dict[str, set[str]] = {name: set() for name in [*bundle.unreadable, *bundle.bad_lines]}
    for key, source in INPUTS.items():
        ids = {fid for fid, needs in NEEDS.items() if key in needs}
        if source.available(bundle):
            used = source.source(bundle)
            culprits = [used] if used in bundle.bad_lines else []  # read in part
        else:
            culprits = [f for f in source.files if f in bundle.unreadable or f in bundle.bad_lines]
        for name in culprits:
            out[name] |= ids
    return {name: _in_report_order(ids) for name, ids in out.items()}


def input_findings(bundle: Bundle) -> list[Finding]:
    """One input-unparsed finding per file with problems: a warning when the file could
    not be read at all and checks needed it (they are unknown), info otherwise."""
    unknown = unknown_by_file(bundle)
    by_file: dict[str, list[str]] = {}
    for p in bundle.problems:
        by_file.setdefault(p.split(":", 1)[0], []).append(p)
    out = []
    for name in sorted(set(bundle.bad_lines) | set(bundle.unreadable), key=_file_order):
        problems = by_file.get(name, [])
        produced_by = FILES.get(name, "")
        fix = _recapture(name)
        if name in bundle.unreadable:
            ids = unknown[name]
            checks = (
                " These checks need it and did not run: their result is unknown, not healthy: "
                + ", ".join(ids)
                + "."
                if ids
                else " No check depends on it alone: another file of the bundle gave the same facts, or "
                "no check reads it."
            )
            out.append(
                Finding(
                    id="input-unparsed",
                    severity=Severity.WARNING if ids else Severity.INFO,
                    summary=f"{name} could not be read: {bundle.unreadable[name]}",
                    explanation=f"Nothing in it could be used: it is not what {produced_by or 'its command'} "
                    "prints, or it is cut short, binary or empty of data." + checks,
                    evidence=tuple(problems[:5]),
                    fix=fix,
                    subject=name,
                    unknown=ids,
                )
            )
            continue
        count = bundle.bad_lines.get(name, len(problems))
        ids = unknown[name]
        out.append(
            Finding(
                id="input-unparsed",
                severity=Severity.WARNING if ids else Severity.INFO,
                summary=f"{name}: {count} part(s) could not be read; analysed the rest",
                explanation="Truncated or unexpected lines were skipped. Re-capture with the command named "
                "in the bundle's file list (numeric output: ipvsadm -Ln / -Lnc) for a complete analysis."
                + (
                    " The skipped lines could hold what these checks look for: beyond what the rest "
                    f"shows, their result is unknown, not healthy: {', '.join(ids)}."
                    if ids
                    else ""
                ),
                evidence=tuple(problems[:5]),
                fix=_recapture(name) if ids else (),
                subject=name,
                unknown=ids,
            )
        )
    return out


def _recapture(name: str) -> tuple[str, ...]:
    """The command that writes ``name`` again on the host it came from."""
    produced_by = FILES.get(name, "")
    if name == "role.txt":
        return ("echo director > role.txt   # or node, or both",)
    if name == "sysctl-conf.txt":
        return ("cat /etc/sysctl.conf /etc/sysctl.d/*.conf > sysctl-conf.txt",)
    if not produced_by:
        return ()
    command = f"cat {produced_by}" if produced_by.startswith("/") else produced_by
    return (f"{command} > {name}   # on that host; or all files at once: kubelvs doctor collect DIR",)


def _file_order(name: str) -> tuple[int, str]:
    names = list(FILES)
    return (names.index(name) if name in names else len(names), name)
