"""The sysctls a director needs, by data plane and kernel (pure; the same rules kube-proxy
and kube-router apply, see docs/config.md)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from .types import Forward, RealServer, ServiceKey, VirtualService, last_by_identity

__all__ = ["ACTIVE_ACTIVE_IPVS", "RecommendedSysctls", "kernel_version", "recommended_sysctls"]

#: IPVS on directors that share flows (BGP ECMP): a director that gets a flow another
#: director started (the router re-hashed it when a director went away) takes it up
#: from any packet, not only a SYN (sloppy_*), and ``mh`` sends it to the same node.
ACTIVE_ACTIVE_IPVS = {"net.ipv4.vs.sloppy_tcp": 1, "net.ipv4.vs.sloppy_sctp": 1}


def kernel_version(release: str) -> tuple[int, int]:
    """``6.1.0-56-amd64`` -> (6, 1)."""
    parts = release.split(".")
    try:
        return int(parts[0]), int("".join(c for c in parts[1] if c.isdigit()) or 0)
    except (IndexError, ValueError):
        return (0, 0)


def recommended_sysctls(
    backend: str, kernel: tuple[int, int], services: Iterable[VirtualService]
) -> dict[str, int]:
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


class RecommendedSysctls:
    """``recommended_sysctls`` kept up to date per changed service.

    They depend on the services only through "does any real server use NAT", and
    answering that by scanning every real server (100,000 at 10,000 Services, and all
    of them whenever none uses NAT) cost about 60 ms on every reconcile. So the keys of
    the services that use NAT are kept, and only those services are looked at again."""

    def __init__(self, backend: str, kernel: tuple[int, int]) -> None:
        self.backend = backend
        self.kernel = kernel
        self.nat: set[ServiceKey] = set()

    def __call__(
        self, services: Mapping[ServiceKey, VirtualService], changed: Iterable[ServiceKey] | None
    ) -> dict[str, int]:
        """``changed``: the keys that changed since the previous call (None: any may have)."""
        if changed is None:
            self.nat = {k for k, vs in services.items() if _uses_nat(vs)}
        else:
            for k in changed:
                vs = services.get(k)
                if vs is not None and _uses_nat(vs):
                    self.nat.add(k)
                else:
                    self.nat.discard(k)
        return recommended_sysctls(self.backend, self.kernel, (services[k] for k in self.nat))


def _uses_nat(vs: VirtualService) -> bool:
    return _nat_among(vs.realservers)


@last_by_identity
def _nat_among(realservers: tuple[RealServer, ...]) -> bool:
    return any(rs.forward is Forward.NAT for rs in realservers)
