"""The sysctls a director needs, by data plane and kernel (pure; the same rules kube-proxy
and kube-router apply, see docs/config.md)."""

from __future__ import annotations

from collections.abc import Iterable

from .types import Forward, VirtualService

__all__ = ["recommended_sysctls", "kernel_version"]


def kernel_version(release: str) -> tuple[int, int]:
    """``6.1.0-56-amd64`` -> (6, 1)."""
    parts = release.split(".")
    try:
        return int(parts[0]), int("".join(c for c in parts[1] if c.isdigit()) or 0)
    except (IndexError, ValueError):
        return (0, 0)


def recommended_sysctls(backend: str, kernel: tuple[int, int], services: Iterable[VirtualService]) -> dict[str, int]:
    """Director sysctls for ``backend`` ("ipvs" or "nftables") on a kernel of version ``kernel``.

    - ``ip_forward=1`` when any real server uses NAT: the director routes the replies.
    - IPVS ``expire_nodest_conn=1``: connections to a deleted real server end at once
      instead of black-holing until their timeout.
    - IPVS ``expire_quiescent_template=1``: persistence templates to a weight-0 real
      server expire, so draining really drains persistent clients.
    - IPVS ``conn_reuse_mode=0`` only on kernels before 5.9, where mode 1 delays a new
      SYN on a reused port by one second (kubernetes #81775); 5.9 fixed it.
    """
    out: dict[str, int] = {}
    if any(rs.forward is Forward.NAT for svc in services for rs in svc.realservers):
        out["net.ipv4.ip_forward"] = 1
    if backend == "ipvs":
        out["net.ipv4.vs.expire_nodest_conn"] = 1
        out["net.ipv4.vs.expire_quiescent_template"] = 1
        if kernel < (5, 9):
            out["net.ipv4.vs.conn_reuse_mode"] = 0
    return out
