"""nftables data plane: the IPVS semantics (DR, TUN, NAT; rr, wrr, sh, mh) on kernels without IPVS.

The modules and what each does: docs/nftables.md, "Code".
"""

from .backend import NftablesBackend

__all__ = ["NftablesBackend"]
