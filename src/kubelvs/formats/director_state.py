"""Reading the running director's state document (its state file: ``app/state.py``
writes it) for what ``kubelvs status`` and ``kubelvs top`` show next to the kernel."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..model import RealServer, ServiceKey

__all__ = ["health_of"]


def health_of(
    director: Mapping[str, Any] | None, key: ServiceKey, rs: RealServer
) -> Mapping[str, Any] | None:
    """A real server's health from the running director's state: status, since, detail.
    The state names each service's check; the probe's name is derived from it and the
    real server as the director names its targets (``roles.health.TargetKey``)."""
    health = (director or {}).get("health") or {}
    index = (health.get("services") or {}).get(str(key))
    checks = health.get("checks") or []
    if not isinstance(index, int) or not 0 <= index < len(checks):
        return None
    check = checks[index]
    port = check.get("port") or rs.port or key.port
    if check.get("mode") == "vip" and key.address is not None and str(rs.forward) in ("dr", "tun"):
        vip_port = check.get("port") or key.port
        name = f"{check.get('kind')} {key.address}:{vip_port} via {rs.address} ({rs.forward})"
    else:
        name = f"{check.get('kind')} {rs.address}:{port}"
    found = (health.get("targets") or {}).get(name)
    return found if isinstance(found, Mapping) else None
