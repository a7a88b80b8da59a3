"""Gather a bundle from the running host (or one network namespace of it).

``live_texts`` reads the direct sources: /proc/net/ip_vs*, /proc/sys, /proc/net/netstat,
netlink (IPVS timeouts, interfaces and addresses). It shells out only where the kernel
offers no direct source to a Python process (``nft``, ``kubectl``).

``collect`` writes a bundle directory: the real command outputs (``ipvsadm -Ln`` ...)
when the tools are installed, the direct sources for the rest. A missing tool or a
failing command is skipped, never fatal; ``collect-errors.txt`` says what was skipped.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from collections.abc import Callable

from ..kernel.netns import entered
from .bundle import Bundle

__all__ = ["COMMANDS", "collect", "live_bundle", "live_texts"]

#: bundle file -> command (run inside the namespace)
COMMANDS: dict[str, list[str]] = {
    "ipvsadm-Ln.txt": ["ipvsadm", "-Ln"],
    "ipvsadm-Ln-stats.txt": ["ipvsadm", "-Ln", "--stats", "--exact"],
    "ipvsadm-Lnc.txt": ["ipvsadm", "-Lnc"],
    "ipvsadm-timeout.txt": ["ipvsadm", "-L", "--timeout"],
    "ipvsadm-Sn.txt": ["ipvsadm", "-Sn"],
    "sysctl.txt": ["sysctl", "-a"],
    "netstat-s.txt": ["netstat", "-s"],
    "ip-addr.txt": ["ip", "-d", "addr"],
    "ip-route.txt": ["ip", "route", "show", "table", "all"],
    "ip-rule.txt": ["ip", "rule"],
    "ip-neigh-proxy.txt": ["ip", "-6", "neigh", "show", "proxy"],
    "uname.txt": ["uname", "-r"],
    "nft.json": ["nft", "-j", "list", "ruleset"],
    "kubectl.json": [
        "kubectl",
        "get",
        "svc,endpoints,endpointslices,nodes",
        "-A",
        "-o",
        "json",
        "--request-timeout=10s",
    ],
}
_PROC = {
    "proc-net-ip_vs.txt": "ip_vs",
    "proc-net-ip_vs_conn.txt": "ip_vs_conn",
    "proc-net-netstat.txt": "netstat",
    "proc-net-snmp.txt": "snmp",
}
_IFA_F_DEPRECATED = 0x20  # linux/if_addr.h
_ARPHRD = {
    1: "ether",
    772: "loopback",
    768: "ipip",
    769: "tunnel6",
    776: "sit",
    778: "gre",
    823: "ip6gre",
    65534: "none",
    65535: "void",
    280: "can",
}
_SCOPE = {0: "global", 200: "site", 253: "link", 254: "host", 255: "nowhere"}
_IFF = [
    (0x1, "UP"),
    (0x2, "BROADCAST"),
    (0x8, "LOOPBACK"),
    (0x10, "POINTOPOINT"),
    (0x80, "NOARP"),
    (0x100, "PROMISC"),
    (0x1000, "MULTICAST"),
    (0x10000, "LOWER_UP"),
]


def _read(path: str) -> str | None:
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _sysctl_walk() -> str:
    """``sysctl -a`` for net.* and kernel.osrelease, read from /proc/sys directly."""
    lines = []
    release = _read("/proc/sys/kernel/osrelease")
    if release:
        lines.append(f"kernel.osrelease = {release.strip()}")
    base = "/proc/sys/"
    for root, dirs, files in os.walk(base + "net"):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            value = _read(path)
            if value is None:
                continue  # write-only (route/flush) or not permitted
            # as sysctl(8): path parts joined by dots, dots inside a part (eth0.100) become slashes
            key = ".".join(p.replace(".", "/") for p in path[len(base) :].split("/"))
            lines.append(f"{key} = {' '.join(value.split())}")
    return "\n".join(lines) + "\n"


def _interfaces_json() -> str | None:
    try:
        from pyroute2 import IPRoute

        from ..formats.iproute import Address, Interface, format_ip_addr_json
    except ImportError:
        return None
    import ipaddress

    with IPRoute() as ipr:
        links = ipr.get_links()
        addrs = ipr.get_addr()
    by_index: dict[int, Interface] = {}
    for link in links:
        info = link.get("IFLA_LINKINFO")
        kind = info.get("IFLA_INFO_KIND") if info else ""
        flags = link["flags"]
        by_index[link["index"]] = Interface(
            name=link.get("IFLA_IFNAME"),
            index=link["index"],
            flags=tuple(n for bit, n in _IFF if flags & bit),
            link_type=_ARPHRD.get(link["ifi_type"], str(link["ifi_type"])),
            kind=kind or "",
            mac=link.get("IFLA_ADDRESS") or "",
        )
    for a in addrs:
        iface = by_index.get(a["index"])
        local = a.get("IFA_LOCAL") or a.get("IFA_ADDRESS")
        if iface is None or not local:
            continue
        iface.addresses.append(
            Address(
                ipaddress.ip_interface(f"{local}/{a['prefixlen']}"),
                _SCOPE.get(a["scope"], str(a["scope"])),
                a.get("IFA_LABEL") or "",
                deprecated=bool((a.get("IFA_FLAGS") or a["flags"]) & _IFA_F_DEPRECATED),
            )
        )
    return format_ip_addr_json(list(by_index.values()))


def _ipvs_timeouts() -> str | None:
    if not os.path.exists("/proc/thread-self/net/ip_vs"):
        return None
    try:
        from ..backends.ipvs import wire
        from ..backends.ipvs.genl import GenlSocket
        from ..formats.ipvsadm_list import format_timeout

        sock = GenlSocket("IPVS")
        try:
            (config,) = sock.request(wire.Cmd.GET_CONFIG)
            return format_timeout(wire.parse_config_reply(config))
        finally:
            sock.close()
    except Exception:
        return None


def _run(argv: list[str], timeout: float = 30) -> tuple[str | None, str]:
    if shutil.which(argv[0]) is None:
        return None, f"{argv[0]}: not installed"
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, errors="replace")
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"{' '.join(argv)}: {exc}"
    if done.returncode != 0 and not done.stdout.strip():
        return None, f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()[:200]}"
    return done.stdout, ""


def _kube_reachable() -> bool:
    return bool(
        os.environ.get("KUBECONFIG")
        or os.path.exists(os.path.expanduser("~/.kube/config"))
        or os.environ.get("KUBERNETES_SERVICE_HOST")
    )


def live_texts(netns: str | None = None, *, kubectl: bool | None = None) -> dict[str, str]:
    """Bundle texts from the direct sources of the running kernel (in ``netns``)."""
    texts: dict[str, str] = {}
    with entered(netns):
        for name, proc in _PROC.items():
            text = _read(f"/proc/thread-self/net/{proc}")
            if text is not None:
                texts[name] = text
        texts["sysctl.txt"] = _sysctl_walk()
        timeouts = _ipvs_timeouts()
        if timeouts:
            texts["ipvsadm-timeout.txt"] = timeouts
        addr = _interfaces_json()
        if addr:
            texts["ip-addr.txt"] = addr
        texts["uname.txt"] = os.uname().release + "\n"
        proxies, _ = _run(COMMANDS["ip-neigh-proxy.txt"])
        if proxies is not None:  # empty is a fact too: no proxy entries
            texts["ip-neigh-proxy.txt"] = proxies
        nft, _ = _run(COMMANDS["nft.json"])
        if nft:
            texts["nft.json"] = nft
    if kubectl if kubectl is not None else _kube_reachable():
        kube, _ = _run(COMMANDS["kubectl.json"])
        if kube:
            texts["kubectl.json"] = kube
    return texts


def live_bundle(netns: str | None = None, *, kubectl: bool | None = None) -> Bundle:
    return Bundle(live_texts(netns, kubectl=kubectl), origin=f"live{':' + netns if netns else ''}")


def collect(
    directory: str,
    *,
    netns: str | None = None,
    role: str | None = None,
    kubectl: bool | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> list[str]:
    """Write a bundle to ``directory``; returns the file names written."""
    os.makedirs(directory, exist_ok=True)
    written: list[str] = []
    skipped: list[str] = []

    def write(name: str, text: str) -> None:
        with open(os.path.join(directory, name), "w") as f:
            f.write(text)
        written.append(name)
        log(f"wrote {name}")

    use_kubectl = kubectl if kubectl is not None else _kube_reachable()
    with entered(netns):
        for name, argv in COMMANDS.items():
            if name == "kubectl.json" and not use_kubectl:
                continue
            if name.startswith("ipvsadm") and not os.path.exists("/proc/thread-self/net/ip_vs"):
                skipped.append(f"{' '.join(argv)}: this kernel has no IPVS")
                continue
            text, why = _run(argv, timeout=120 if name == "ipvsadm-Lnc.txt" else 30)
            if text is None:
                skipped.append(why)
            else:
                write(name, text)
        for name, proc in _PROC.items():
            text = _read(f"/proc/thread-self/net/{proc}")
            if text is not None:
                write(name, text)
        if "sysctl.txt" not in written:
            write("sysctl.txt", _sysctl_walk())
        if "ipvsadm-timeout.txt" not in written:
            timeouts = _ipvs_timeouts()
            if timeouts:
                write("ipvsadm-timeout.txt", timeouts)
        if "ip-addr.txt" not in written:
            addr = _interfaces_json()
            if addr:
                write("ip-addr.txt", addr)
    if "uname.txt" not in written:
        write("uname.txt", os.uname().release + "\n")
    conf = []
    for path in ["/etc/sysctl.conf", *sorted(glob.glob("/etc/sysctl.d/*.conf"))]:
        text = _read(path)
        if text is not None:
            conf.append(f"# file: {path}\n{text}")
    if conf:
        write("sysctl-conf.txt", "".join(conf))
    if role:
        write("role.txt", role + "\n")
    if skipped:
        write("collect-errors.txt", "".join(s + "\n" for s in skipped))
    return written
