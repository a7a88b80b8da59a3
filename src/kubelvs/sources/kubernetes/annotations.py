"""The Service annotations kubelvs reads (reference: docs/kubernetes.md)."""

from __future__ import annotations

__all__ = ["FORWARD", "SCHEDULER", "SCHEDULER_FLAGS", "LOAD_BALANCER_IPS", "ADDRESS_POOL", "ALLOW_SHARED_IP"]

#: Forwarding method to the nodes: ``dr`` (default), ``tun`` or ``nat``.
FORWARD = "kubelvs.io/forward"
#: IPVS scheduler (default ``mh``: Maglev hashing, the same choice on every director).
SCHEDULER = "kubelvs.io/scheduler"
#: Comma-separated scheduler flags, e.g. ``mh-port`` or ``mh-fallback``.
SCHEDULER_FLAGS = "kubelvs.io/scheduler-flags"
#: Comma-separated LoadBalancer IPs the Service asks for (wins over spec.loadBalancerIP).
LOAD_BALANCER_IPS = "kubelvs.io/load-balancer-ips"
#: Allocate from this pool (by name) instead of the auto-assign pools.
ADDRESS_POOL = "kubelvs.io/address-pool"
#: Sharing key: Services with the same key may share one IP when their ports do not collide.
ALLOW_SHARED_IP = "kubelvs.io/allow-shared-ip"
