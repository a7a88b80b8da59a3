"""The Service annotations kubelvs reads (reference: docs/kubernetes.md)."""

from __future__ import annotations

__all__ = [
    "ADDRESS_POOL",
    "ALLOW_SHARED_IP",
    "FORWARD",
    "HEALTH_CHECK",
    "HEALTH_MODE",
    "HEALTH_PATH",
    "HEALTH_PORT",
    "LOAD_BALANCER_IPS",
    "SCHEDULER",
    "SCHEDULER_FLAGS",
]

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

#: The real servers' health check: ``default`` (kube-proxy's /healthz on port 10256 for
#: externalTrafficPolicy Cluster, the Service's healthCheckNodePort for Local), ``none``,
#: ``tcp``, ``http`` or ``https`` (on the node's address; port and path below).
HEALTH_CHECK = "kubelvs.io/health-check"
#: The port a ``tcp``/``http``/``https`` check probes (default: the real server's port).
HEALTH_PORT = "kubelvs.io/health-port"
#: The path of an ``http``/``https`` check (default ``/healthz``).
HEALTH_PATH = "kubelvs.io/health-path"
#: ``direct`` (default: the node's own address) or ``vip`` (a TCP handshake with the VIP,
#: sent to the node the way the director forwards: DR to its MAC, TUN inside IPIP).
HEALTH_MODE = "kubelvs.io/health-mode"
