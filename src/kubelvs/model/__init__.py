"""The desired/observed load-balancing state and its validation (no I/O)."""

from .flows import *  # noqa: F403
from .flows import __all__ as _flows_all
from .health import *  # noqa: F403
from .health import __all__ as _health_all
from .sysctls import *  # noqa: F403
from .sysctls import __all__ as _sysctls_all
from .types import *  # noqa: F403
from .types import __all__ as _types_all
from .validate import *  # noqa: F403
from .validate import __all__ as _validate_all

__all__ = [*_types_all, *_flows_all, *_health_all, *_sysctls_all, *_validate_all]
