"""How the load-balancing table is shown: ``status -o json`` and the ipvsadm-like table.

The JSON shape is shared by every command that prints a table (``status``,
``director --dry-run -o json``):
``{"services": [{"name", "vip", "port", "protocol", "scheduler", "realservers":
[{"address", "port", "weight", "forward", "active_conns", "inactive_conns", ...}]}],
"timeouts": {"tcp", "tcpfin", "udp"}}``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from ..formats.director_state import health_of
from ..model import LBState, ObservedState, ServiceKey

__all__ = ["FORWARD_NAMES", "director_lines", "status_document", "status_table"]

#: ipvsadm's names of the forwarding methods.
FORWARD_NAMES = {"nat": "Masq", "dr": "Route", "tun": "Tunnel", "local": "Local"}


def status_document(
    state: LBState,
    names: Mapping[ServiceKey, str],
    *,
    counters: bool = True,
    director: Mapping[str, Any] | None = None,  # the running director's state file (health)
) -> dict[str, Any]:
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
            health = health_of(director, key, rs)
            if health is not None:
                entry["health"] = dict(health)
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


def status_table(
    state: ObservedState, names: Mapping[ServiceKey, str], director: Mapping[str, Any] | None = None
) -> str:
    """Like ``ipvsadm -Ln --stats`` plus the Weight/ActiveConn/InActConn columns of ``-Ln``,
    and each checked real server's health when a director runs (``up 3m``, ``down 12s``)."""
    now = time.time()
    lines = [
        "Prot LocalAddress:Port Scheduler Flags                       Name",
        "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn      Conns     InPkts    "
        "OutPkts    InBytes   OutBytes",
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
                f"  -> {rs.key!s:<28} {FORWARD_NAMES[str(rs.forward)]:<7} {rs.weight:<6} "
                f"{st.active_conns if st else 0:<10} {st.inactive_conns if st else 0:<9} "
                f"{st.conns if st else 0:>10} {st.in_packets if st else 0:>10} "
                f"{st.out_packets if st else 0:>10} {st.in_bytes if st else 0:>10} "
                f"{st.out_bytes if st else 0:>10}" + _health_text(health_of(director, key, rs), now)
            )
    if state.timeouts:
        t = state.timeouts
        lines.append(f"Timeout (tcp tcpfin udp): {t.tcp} {t.tcpfin} {t.udp}")
    return "\n".join(lines) + "\n"


def _health_text(health: Mapping[str, Any] | None, now: float) -> str:
    if health is None:
        return ""
    return f"  {health.get('status')} {_age(now - float(health.get('since') or now))}"


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"


def director_lines(state: Mapping[str, Any]) -> str:
    """What the running director could not do, below the kernel's table (its state file)."""
    lines = [f"Director (pid {state.get('pid')}, {state.get('backend')}, {state.get('source')}):"]
    failing = state.get("failing") or []
    drains = state.get("drains") or []
    if not failing and not drains and not state.get("held_deletions"):
        lines.append("  everything desired is programmed")
    now = time.time()
    for d in drains:
        conns = d.get("connections")
        left = f"{conns} connection(s) left" if conns is not None else "connections unknown"
        lines.append(
            f"  draining {d['service']} -> {d['realserver']}: {left}, for {_age(now - float(d['since']))}"
        )
    for f in failing:
        lines.append(
            f"  failing {f['service']}: {f['operation']}: {f['reason']} "
            f"(attempt {f['attempts']}, retried with backoff)"
        )
    held = state.get("held_deletions")
    if held:
        lines.append(f"  {held['message']}: {', '.join(held['services'])}")
    vrrp = state.get("vrrp")
    if vrrp is not None:
        roles = ", ".join(
            f"{name} {i['state']} for {_age(now - float(i['since']))}"
            for name, i in (vrrp.get("instances") or {}).items()
        )
        running = f"keepalived pid {vrrp['pid']}" if vrrp.get("running") else "keepalived not running"
        lines.append(f"  vrrp: {roles or 'no virtual router yet'} ({running})")
    bgp = state.get("bgp")
    if bgp is not None:
        sessions = ", ".join(f"{peer} {st}" for peer, st in (bgp.get("sessions") or {}).items())
        running = f"bird pid {bgp['pid']}" if bgp.get("running") else "bird not running"
        announced = ", ".join(bgp.get("announced") or []) or "nothing"
        lines.append(f"  bgp: announcing {announced}; sessions: {sessions or 'none yet'} ({running})")
    return "\n".join(lines) + "\n"
