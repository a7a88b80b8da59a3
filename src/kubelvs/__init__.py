"""kubelvs: LVS (IPVS) and nftables load balancing for Kubernetes Services on bare metal."""

__version__ = "0.1.0"
__all__ = ["__version__"]
