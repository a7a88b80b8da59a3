"""Pure diff of desired against observed state into ordered operations (no I/O)."""

from .ops import *  # noqa: F403
from .ops import __all__ as _ops_all
from .plan import *  # noqa: F403
from .plan import __all__ as _plan_all

__all__ = [*_ops_all, *_plan_all]
