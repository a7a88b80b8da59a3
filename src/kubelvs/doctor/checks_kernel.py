"""Checks on kernel settings and counters (sysctl -a, netstat, uname, conntrack)."""

from __future__ import annotations

import re
from collections.abc import Iterator

from ..model import Forward, hostport
from .bundle import Bundle
from .findings import Finding, Severity

__all__ = [
    "DEFAULTS",
    "check_conn_reuse",
    "check_conntrack",
    "check_expire_nodest",
    "check_ip_forward",
    "check_keepalive",
    "check_paws",
    "check_rp_filter",
    "check_tw_recycle",
    "sysctl_w",
    "tunnel_like",
]

# Interfaces that carry tunnelled or asymmetric LVS traffic: IPIP/GRE/VXLAN tunnels
# (kube-router's tun-<ip>, tunl0: decapsulated packets keep the client's source, whose route
# back leaves through the uplink), and kube-router's kube-bridge and kube-dummy-if (with DSR
# its pods answer from the VIP, so those replies enter kube-bridge with a source routed
# elsewhere). Other bridges (docker0, cni0, kubenet's cbr0, br-*) are not: the pods or VMs
# behind them answer from their own addresses, routed back through the same bridge, so
# strict rp_filter there drops nothing of LVS's (the lab's cbr0 after the node agent's fix,
# tests/doctor/test_lab_bundles.py). A bridge that is a host's uplink is an uplink.
_TUNNEL_NAME = re.compile(
    r"^(tunl\d*|tun[-\d]|ipip|ip6tnl|gre|gretap|erspan|sit\d|vxlan|flannel|kube-bridge|kube-dummy-if|"
    r"wg\d|geneve|cilium_|vxlan\.calico)"
)
_TUNNEL_LINK = {"ipip", "gre", "tunnel6", "sit", "ip6tnl", "none", "ipip6", "gre6"}
_TUNNEL_KIND = {"ipip", "gre", "gretap", "vxlan", "ip6tnl", "sit", "geneve", "wireguard", "ip6gre"}


def sysctl_w(name: str, value: int) -> str:
    return f"sysctl -w {name}={value}"


def _conf_name(iface: str, key: str) -> str:
    # sysctl(8) wants dots inside an interface name written as slashes.
    return f"net.ipv4.conf.{iface.replace('.', '/')}.{key}"


def tunnel_like(bundle: Bundle, name: str) -> str:
    """Why ``name`` is a tunnel/bridge interface ("" when it is not)."""
    for iface in bundle.interfaces or []:
        if iface.name == name:
            if iface.kind in _TUNNEL_KIND:
                return iface.kind
            if iface.link_type in _TUNNEL_LINK:
                return f"link/{iface.link_type}"
    if _TUNNEL_NAME.match(name):
        return (
            "tunnel"
            if name.startswith(("tun", "ipip", "gre", "ip6tnl", "sit", "vxlan", "flannel", "wg", "geneve"))
            else "bridge/virtual"
        )
    return ""


def check_tw_recycle(bundle: Bundle) -> Iterator[Finding]:
    value = bundle.sysctl("net.ipv4.tcp_tw_recycle")
    if value:
        yield Finding(
            id="tw-recycle-enabled",
            severity=Severity.ERROR,
            summary="net.ipv4.tcp_tw_recycle = 1",
            explanation=(
                "With tw_recycle the kernel drops SYNs whose TCP timestamp is older than the last one seen "
                "from the same source address. Clients behind one NAT (or SNATed by a director) share an "
                "address but not a clock, so some of them cannot connect at all. "
                "Linux removed the option in 4.12."
            ),
            evidence=tuple(bundle.sysctl_evidence("net.ipv4.tcp_tw_recycle", "net.ipv4.tcp_timestamps")),
            fix=(
                sysctl_w("net.ipv4.tcp_tw_recycle", 0),
                "sed -i '/tcp_tw_recycle/d' /etc/sysctl.conf /etc/sysctl.d/*.conf",
            ),
            subject="sysctl",
        )
    conf = bundle.sysctl_conf
    if conf and "net.ipv4.tcp_tw_recycle" in conf.values and not value:
        kernel = bundle.kernel
        newer = kernel is not None and kernel >= (4, 12)
        configured = conf.int_value("net.ipv4.tcp_tw_recycle")
        if kernel is not None and newer:
            yield Finding(
                id="tw-recycle-enabled",
                severity=Severity.INFO,
                summary=(
                    "sysctl config sets net.ipv4.tcp_tw_recycle, which kernel "
                    f"{kernel[0]}.{kernel[1]} no longer has"
                ),
                explanation=(
                    "The setting is obsolete (removed in Linux 4.12): it does nothing here, and 'sysctl -p' "
                    "reports an unknown key, which can hide the other settings' errors. It was usually added "
                    "from advice that also breaks NAT'ed clients on older kernels; remove it."
                ),
                evidence=(conf.evidence("net.ipv4.tcp_tw_recycle", "sysctl-conf.txt"),),
                fix=("sed -i '/tcp_tw_recycle/d' /etc/sysctl.conf /etc/sysctl.d/*.conf",),
                subject="sysctl-conf",
            )
        elif configured:
            yield Finding(
                id="tw-recycle-enabled",
                severity=Severity.WARNING,
                summary=(
                    "sysctl config sets net.ipv4.tcp_tw_recycle = 1 (applied at the next boot or sysctl -p)"
                ),
                explanation=(
                    "Once applied, clients behind NAT whose timestamps are behind another client's are "
                    "refused (their SYNs are dropped silently)."
                ),
                evidence=(conf.evidence("net.ipv4.tcp_tw_recycle", "sysctl-conf.txt"),),
                fix=("sed -i '/tcp_tw_recycle/d' /etc/sysctl.conf /etc/sysctl.d/*.conf",),
                subject="sysctl-conf",
            )


def check_paws(bundle: Bundle) -> Iterator[Finding]:
    found = bundle.counters
    if found is None:
        return
    counters, source = found
    names = ("PAWSEstab", "PAWSActive", "PAWSPassive")
    values = {n: counters.get("TcpExt", n) or 0 for n in names}
    total = sum(values.values())
    if total < 100:
        return
    nat = bundle.nat_evidence()
    recycle = bundle.sysctl("net.ipv4.tcp_tw_recycle")
    ev = [counters.evidence("TcpExt", n, source) for n in names if values[n]]
    ev += nat[:2]
    ev += bundle.sysctl_evidence(
        "net.ipv4.tcp_timestamps", "net.ipv4.tcp_tw_recycle", "net.ipv4.tcp_tw_reuse"
    )
    fix = []
    if recycle:
        fix.append(sysctl_w("net.ipv4.tcp_tw_recycle", 0))
    fix += [
        sysctl_w("net.ipv4.tcp_timestamps", 0) + "   # on the host doing NAT; costs PAWS and RTT samples",
        "# or stop SNAT of many clients to one address (DR/TUN keep client addresses)",
    ]
    yield Finding(
        id="paws-rejects",
        severity=Severity.WARNING if nat else Severity.INFO,
        summary=f"{total} TCP packets rejected by timestamp checks (PAWS): "
        + ", ".join(f"{n} {v}" for n, v in values.items() if v),
        explanation=(
            "The kernel silently dropped these segments because their TCP timestamp went backwards. Behind "
            "NAT, different clients share one address with unrelated timestamp clocks, so their segments "
            "look like old duplicates: connections stall and retransmit, or never establish."
            + ("" if nat else " No sign of NAT on this host; check whether its clients come through NAT.")
        ),
        evidence=tuple(ev),
        fix=tuple(fix),
        subject="tcp",
    )


def check_rp_filter(bundle: Bundle) -> Iterator[Finding]:
    if bundle.sysctls is None:
        return
    names = set(bundle.sysctls.interfaces()) | {i.name for i in bundle.interfaces or []}
    all_value = bundle.sysctl("net.ipv4.conf.all.rp_filter") or 0
    strict = []
    for name in sorted(names):
        why = tunnel_like(bundle, name)
        if not why:
            continue
        own = bundle.sysctl(_conf_name(name, "rp_filter"))
        if own is None and name not in bundle.sysctls.interfaces():
            continue  # interface only in ip addr, not in this sysctl capture (grep'ed): unknown
        effective = max(all_value, own or 0)
        if effective == 1:
            strict.append((name, own, why))
    if not strict:
        return
    counters = bundle.counters
    rpf = 0
    if counters:
        rpf = (counters[0].get("TcpExt", "IPReversePathFilter") or 0) + (
            counters[0].get("IpExt", "IPReversePathFilter") or 0
        )
    ev = bundle.sysctl_evidence("net.ipv4.conf.all.rp_filter") + bundle.sysctl_evidence(
        *[_conf_name(n, "rp_filter") for n, _, _ in strict]
    )
    if rpf and counters:
        ev.append(counters[0].evidence("TcpExt", "IPReversePathFilter", counters[1]))
    fix = []
    if all_value == 1:
        fix.append(sysctl_w("net.ipv4.conf.all.rp_filter", 0) + "   # 'all' is max()ed with every interface")
    fix += [sysctl_w(_conf_name(n, "rp_filter"), 0) for n, own, _ in strict if own]
    if all_value == 1:
        others = [
            n
            for n in bundle.sysctls.interfaces()
            if bundle.sysctl(_conf_name(n, "rp_filter")) == 1 and n not in {s[0] for s in strict}
        ]
        fix += [
            sysctl_w(_conf_name(n, "rp_filter"), 2) + "   # keep loose spoofing protection"
            for n in others[:8]
        ]
    fix.append("# persist the same lines in /etc/sysctl.d/90-lvs.conf")
    listed = ", ".join(f"{n} ({why}, {'all=1' if own != 1 else 'own=1'})" for n, own, why in strict[:10])
    yield Finding(
        id="rp-filter-strict",
        severity=Severity.ERROR if rpf else Severity.WARNING,
        summary=(
            f"strict reverse-path filtering (effective rp_filter 1) on {len(strict)} "
            f"tunnel/bridge interface(s): {listed}"
        ),
        explanation=(
            "Packets LVS sends through a tunnel or bridge come back, or arrive, on an interface that is not "
            "the route back to their source. Strict rp_filter drops them without a trace: connections "
            "through the director hang in SYN_RECV and clients time out while ping still works. The "
            "effective value is the larger of conf.all and the interface's own."
            + (f" The kernel counted {rpf} such drops (IPReversePathFilter)." if rpf else "")
        ),
        evidence=tuple(ev),
        fix=tuple(fix),
        subject="rp_filter",
    )


#: Kernel defaults a check may assume when the input lacks the setting (Documentation/
#: networking/ipvs-sysctl.rst, ip-sysctl.rst): a finding that holds under the default is
#: reported as likely, with the command that decides it.
DEFAULTS = {
    "net.ipv4.vs.conn_reuse_mode": 1,
    "net.ipv4.vs.expire_nodest_conn": 0,
    "net.ipv4.vs.expire_quiescent_template": 0,
    "net.ipv4.tcp_keepalive_time": 7200,
}


def setting_or_default(
    bundle: Bundle, name: str, assumed: list[str], to_confirm: list[str], where: str = ""
) -> int:
    """A sysctl from the input, else its kernel default (noted in ``assumed``)."""
    value = bundle.sysctl(name)
    if value is not None:
        return value
    default = DEFAULTS[name]
    assumed.append(f"{name} is the kernel default {default}")
    to_confirm.append(f"sysctl {name}" + (f"   # {where}" if where else ""))
    return default


def _uses_ipvs(bundle: Bundle) -> bool:
    """The input shows IPVS in use: services, connection entries, or ipvsadm's timeouts."""
    return (
        bool(bundle.ipvs_services) or bool(bundle.conns and bundle.conns.rows) or bundle.timeouts is not None
    )


def check_conn_reuse(bundle: Bundle) -> Iterator[Finding]:
    kernel = bundle.kernel
    if kernel is not None and kernel >= (5, 9):
        return
    assumed: list[str] = []
    to_confirm: list[str] = []
    if bundle.sysctl("net.ipv4.vs.conn_reuse_mode") is None and (kernel is None or not _uses_ipvs(bundle)):
        return  # neither the setting nor an old kernel using IPVS: nothing to go on
    value = setting_or_default(bundle, "net.ipv4.vs.conn_reuse_mode", assumed, to_confirm)
    if value != 1:
        return
    if kernel is None:
        assumed.append("the kernel is older than 5.9")
        to_confirm.append("uname -r")
    version = "an unknown kernel" if kernel is None else f"kernel {kernel[0]}.{kernel[1]}"
    nodest = bundle.sysctl("net.ipv4.vs.expire_nodest_conn")
    quiescent = bundle.sysctl("net.ipv4.vs.expire_quiescent_template")
    yield Finding(
        id="conn-reuse-mode",
        severity=Severity.WARNING,
        summary=f"net.ipv4.vs.conn_reuse_mode = 1 on {version} (< 5.9)",
        explanation=(
            "Before 5.9 both settings of conn_reuse_mode hurt, in different ways. With 1 (this host), when "
            "a client reuses a source port whose old IPVS entry still exists, IPVS drops the SYN to expire "
            "the entry: the client retransmits after one second, and busy clients (or a benchmark) see 1 s "
            "or 3 s latency spikes and low throughput on new connections (kubernetes #81775, #70747). With "
            "0 (what kube-proxy and kube-router set on these kernels) the SYN is not dropped, but it "
            "follows the old entry to its real server, also one being drained (weight 0) or already "
            "deleted: during rolling updates new connections land on terminating pods. expire_nodest_conn=1"
            " makes the entry of a deleted real server expire at the first packet (the connection is then "
            "scheduled anew), and expire_quiescent_template=1 does the same for persistence templates of a "
            "weight-0 real server; neither helps with a real server that is still there at weight 0. Kernel"
            " 5.9 fixed the 1 s drop, so that 1, the default, is right there."
            + (
                f" Here expire_nodest_conn = {nodest} and expire_quiescent_template = {quiescent}."
                if nodest is not None and quiescent is not None
                else ""
            )
        ),
        evidence=(
            *bundle.sysctl_evidence("net.ipv4.vs.conn_reuse_mode"),
            *(
                [f"uname.txt: {bundle.texts.get('uname.txt', '').strip() or 'kernel.osrelease'}"]
                if kernel
                else []
            ),
        ),
        fix=(
            "# best: a kernel >= 5.9, and keep the default 1",
            "# else trade the 1 s delays for the drained-server risk, as kube-proxy does:",
            sysctl_w("net.ipv4.vs.conn_reuse_mode", 0),
            sysctl_w("net.ipv4.vs.expire_nodest_conn", 1),
            sysctl_w("net.ipv4.vs.expire_quiescent_template", 1),
        ),
        subject="ipvs",
    ).assume(assumed, to_confirm)


def check_keepalive(bundle: Bundle) -> Iterator[Finding]:
    """The IPVS tcp timeout against TCP keep-alive. The timeout line alone is enough to go
    on (ipvsadm printed it: IPVS is in use); keep-alive then is the kernel default."""
    timeouts = bundle.timeouts
    if timeouts is None or bundle.ipvs_services == [] or bundle.services_source == "nftables":
        return  # an empty IPVS table, or the kubelvs nftables one: nothing of IPVS's to forget
    assumed: list[str] = []
    to_confirm: list[str] = []
    where = "on the clients and the real servers: keep-alive is theirs"
    keepalive = setting_or_default(bundle, "net.ipv4.tcp_keepalive_time", assumed, to_confirm, where)
    if timeouts.tcp >= keepalive:
        return
    yield Finding(
        id="ipvs-timeout-below-keepalive",
        severity=Severity.WARNING,
        summary=f"IPVS tcp timeout {timeouts.tcp} s is shorter than tcp_keepalive_time {keepalive} s",
        explanation=(
            f"An established connection idle for {timeouts.tcp} s is forgotten by IPVS before the first "
            f"keep-alive probe ({keepalive} s) could refresh it. The next packet is rescheduled or reset: "
            "idle database and message-queue connections die after exactly that long (kubernetes #80298)."
        ),
        evidence=(
            f"ipvsadm-timeout.txt: Timeout (tcp tcpfin udp): {timeouts.tcp} {timeouts.tcpfin} {timeouts.udp}",
            *bundle.sysctl_evidence("net.ipv4.tcp_keepalive_time"),
        ),
        fix=(
            f"ipvsadm --set {keepalive + 60} {timeouts.tcpfin} {timeouts.udp}",
            "# or lower keep-alive below it on the clients/servers: "
            f"{sysctl_w('net.ipv4.tcp_keepalive_time', max(timeouts.tcp - 60, 60))}",
        ),
        subject="timeouts",
    ).assume(assumed, to_confirm)


def check_conntrack(bundle: Bundle) -> Iterator[Finding]:
    count = bundle.sysctl("net.netfilter.nf_conntrack_count")
    limit = bundle.sysctl("net.netfilter.nf_conntrack_max") or bundle.sysctl("net.nf_conntrack_max")
    if count is None or limit is None or count < 0 or limit <= 0 or count / limit < 0.75:
        return  # unknown, or no sane table size (a limit of 0 or below is not a setting: a bad capture)
    full = count / limit >= 0.9
    yield Finding(
        id="conntrack-near-full",
        severity=Severity.ERROR if full else Severity.WARNING,
        summary=f"conntrack table {count}/{limit} ({100 * count // limit}%) full",
        explanation=(
            "When the table is full the kernel drops the first packet of every new connection "
            "('nf_conntrack: table full, dropping packet'): new connections through this host fail at random "
            "while old ones work."
        ),
        evidence=tuple(
            bundle.sysctl_evidence(
                "net.netfilter.nf_conntrack_count", "net.netfilter.nf_conntrack_max", "net.nf_conntrack_max"
            )
        ),
        fix=(
            sysctl_w("net.netfilter.nf_conntrack_max", limit * 2),
            sysctl_w("net.netfilter.nf_conntrack_tcp_timeout_time_wait", 30),
        ),
        subject="conntrack",
    )


#: The forwarding switch of each family: IPv4's, and IPv6's (``all`` turns every interface
#: into a router; there is no separate global one).
FORWARDING = {4: "net.ipv4.ip_forward", 6: "net.ipv6.conf.all.forwarding"}


def check_ip_forward(bundle: Bundle) -> Iterator[Finding]:
    """ip-forward-off, for each family whose NAT real servers' replies must be forwarded."""
    if not bundle.services:
        return
    local = bundle.local_addresses
    for family, name in FORWARDING.items():
        if bundle.sysctl(name) != 0:
            continue
        nat = [
            (svc, rs)
            for svc in bundle.services
            for rs in svc.realservers
            if rs.forward is Forward.NAT and rs.address.version == family and rs.address not in local
        ]
        if not nat:
            continue
        svc, rs = nat[0]
        yield Finding(
            id="ip-forward-off",
            severity=Severity.ERROR,
            summary=f"{name} = 0 on a NAT director ({len(nat)}{' IPv6' if family == 6 else ''} Masq real "
            f"server(s), e.g. {hostport(rs.address, rs.port)})",
            explanation=(
                "In NAT mode the real servers' replies come back through the director, which must forward "
                "them to the client. With forwarding off they are dropped: clients send SYNs and never get "
                "an answer."
            ),
            evidence=(*bundle.sysctl_evidence(name), *bundle.rs_evidence(svc.key, rs)[-1:]),
            fix=(sysctl_w(name, 1), f"echo '{name} = 1' > /etc/sysctl.d/90-lvs-forward.conf"),
            subject="forward" if family == 4 else "forward6",
        )


def check_expire_nodest(bundle: Bundle) -> Iterator[Finding]:
    if not bundle.ipvs_services:
        return
    assumed: list[str] = []
    to_confirm: list[str] = []
    if setting_or_default(bundle, "net.ipv4.vs.expire_nodest_conn", assumed, to_confirm) != 0:
        return
    yield Finding(
        id="expire-nodest-conn-off",
        severity=Severity.WARNING,
        summary="net.ipv4.vs.expire_nodest_conn = 0 on a host with IPVS services",
        explanation=(
            "When a real server is deleted, its existing connections stay in the IPVS table and their "
            "packets are dropped until the entry times out (15 min for TCP): clients hang instead of getting "
            "a reset and reconnecting. UDP flows to a removed pod (DNS!) stay black-holed while the client "
            "keeps its port."
        ),
        evidence=tuple(bundle.sysctl_evidence("net.ipv4.vs.expire_nodest_conn")),
        fix=(
            sysctl_w("net.ipv4.vs.expire_nodest_conn", 1),
            sysctl_w("net.ipv4.vs.expire_quiescent_template", 1),
        ),
        subject="ipvs",
    ).assume(assumed, to_confirm)
