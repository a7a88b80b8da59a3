"""How the load-balancing table is shown: ``status -o json`` and the ipvsadm-like table.

The JSON shape is shared by every command that prints a table (``status``,
``director --dry-run -o json``):
``{"services": [{"name", "vip", "port", "protocol", "scheduler", "realservers":
[{"address", "port", "weight", "forward", "active_conns", "inactive_conns", ...}]}],
"timeouts": {"tcp", "tcpfin", "udp"}}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..model import LBState, ObservedState, ServiceKey

__all__ = ["status_document", "status_table", "FORWARD_NAMES"]

#: ipvsadm's names of the forwarding methods.
FORWARD_NAMES = {"nat": "Masq", "dr": "Route", "tun": "Tunnel", "local": "Local"}


def status_document(state: LBState, names: Mapping[ServiceKey, str], *, counters: bool = True) -> dict[str, Any]:
    stats = state.stats if isinstance(state, ObservedState) else {}
    services = []
    for key in sorted(state.services, key=ServiceKey.sort_key):
        svc = state.services[key]
        realservers = []
        for rs in svc.realservers:
            entry: dict[str, Any] = {
                "address": str(rs.address),
                "port": rs.port,
                "weight": rs.weight,
                "forward": str(rs.forward),
            }
            if counters:
                st = stats.get((key, rs.key))
                entry.update(
                    active_conns=st.active_conns if st else 0,
                    inactive_conns=st.inactive_conns if st else 0,
                    conns=st.conns if st else 0,
                    in_packets=st.in_packets if st else 0,
                    out_packets=st.out_packets if st else 0,
                    in_bytes=st.in_bytes if st else 0,
                    out_bytes=st.out_bytes if st else 0,
                )
            realservers.append(entry)
        services.append(
            {
                "name": names.get(key, svc.name),
                "vip": str(key.address) if key.address is not None else None,
                "port": key.port,
                "protocol": str(key.protocol),
                "fwmark": key.fwmark or None,
                "scheduler": svc.scheduler,
                "flags": sorted(svc.flags),
                "persistence": svc.persistence,
                "realservers": realservers,
            }
        )
    t = state.timeouts
    return {
        "services": services,
        "timeouts": {"tcp": t.tcp, "tcpfin": t.tcpfin, "udp": t.udp} if t else None,
    }


def status_table(state: ObservedState, names: Mapping[ServiceKey, str]) -> str:
    """Like ``ipvsadm -Ln --stats`` plus the Weight/ActiveConn/InActConn columns of ``-Ln``."""
    lines = [
        "Prot LocalAddress:Port Scheduler Flags                       Name",
        "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn      Conns     InPkts    OutPkts    InBytes   OutBytes",
    ]
    for key in sorted(state.services, key=ServiceKey.sort_key):
        svc = state.services[key]
        proto = "FWM " if key.fwmark else f"{key.protocol.upper():<4} "
        where = str(key.fwmark) if key.fwmark else str(key).split(" ", 1)[1]
        flags = []
        if svc.persistence:
            flags.append(f"persistent {svc.persistence}")
        if svc.flags:
            flags.append("(" + ",".join(sorted(svc.flags)) + ")")
        head = f"{proto}{where} {svc.scheduler} {' '.join(flags)}".rstrip()
        name = names.get(key, svc.name)
        lines.append(f"{head:<57} {name}".rstrip())
        for rs in svc.realservers:
            st = state.stats.get((key, rs.key))
            lines.append(
                f"  -> {str(rs.key):<28} {FORWARD_NAMES[str(rs.forward)]:<7} {rs.weight:<6} "
                f"{st.active_conns if st else 0:<10} {st.inactive_conns if st else 0:<9} "
                f"{st.conns if st else 0:>10} {st.in_packets if st else 0:>10} {st.out_packets if st else 0:>10} "
                f"{st.in_bytes if st else 0:>10} {st.out_bytes if st else 0:>10}"
            )
    if state.timeouts:
        t = state.timeouts
        lines.append(f"Timeout (tcp tcpfin udp): {t.tcp} {t.tcpfin} {t.udp}")
    return "\n".join(lines) + "\n"
