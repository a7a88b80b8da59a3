"""nftables data plane: the IPVS semantics (DR, NAT; rr, wrr, sh, mh) on kernels without IPVS."""

from .backend import NftablesBackend

__all__ = ["NftablesBackend"]
