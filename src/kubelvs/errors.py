"""The errors kubelvs raises. This module imports nothing from kubelvs.

    KubelvsError                  base: every error a user can see
    +-- ConfigError               bad desired state; carries every FieldError found
    +-- ParseError                input in a format we read (ipvsadm, YAML) we could not parse
    +-- BackendError              a kernel data plane could not be read or programmed
    |   +-- BackendUnavailable    the kernel has no such data plane (no ip_vs, no nft)
    |   +-- ApplyError            one operation of a plan failed; names the operation
    |   +-- PartialApplyError     some operations failed, every other one was applied
    +-- CapabilityError           the desired state needs a kernel feature the backend lacks
    +-- KernelError               an address, link, route, neighbour or sysctl could not be
    |                             read or changed (the kernel-interface layer)
    +-- NodeError                 the node agent could not configure (or read) this node
    +-- LabError                  a lab (network-namespace topology) could not be built or used

Errors carry fields, not just text, so the CLI and tests can tell them apart.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ApplyError",
    "BackendError",
    "BackendUnavailable",
    "CapabilityError",
    "ConfigError",
    "FieldError",
    "KernelError",
    "KubelvsError",
    "LabError",
    "NodeError",
    "ParseError",
    "PartialApplyError",
]


class KubelvsError(Exception):
    """Base class of every error kubelvs reports to a user."""


@dataclass(frozen=True)
class FieldError:
    """One problem with one field of the desired state, e.g. ``services[0].realservers[1].port``."""

    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}"


class ConfigError(KubelvsError):
    """The desired state is invalid. Nothing was changed."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))


class ParseError(KubelvsError):
    """Input in a format we read could not be parsed."""

    def __init__(self, source: str, line: int | None, reason: str) -> None:
        self.source = source
        self.line = line
        self.reason = reason
        where = f"{source}:{line}" if line is not None else source
        super().__init__(f"{where}: {reason}")


class BackendError(KubelvsError):
    """A kernel data plane could not be read or programmed."""


class BackendUnavailable(BackendError):
    """The kernel has no such data plane here (for example no ip_vs module)."""


class ApplyError(BackendError):
    """An operation of a plan failed (the kernel refused it, or it was skipped because an
    operation it depends on failed).

    ``index`` is the operation's position in the plan, ``operation`` its text. On its
    own it means the backend stopped there; inside a ``PartialApplyError`` it is one of
    several failures of a plan whose other operations were applied.
    """

    def __init__(self, index: int, operation: str, reason: str, errno: int | None = None) -> None:
        self.index = index
        self.operation = operation
        self.reason = reason
        self.errno = errno
        super().__init__(f"operation {index + 1} failed: {operation}: {reason}")


class PartialApplyError(BackendError):
    """Some operations of a plan failed; every other operation was applied.

    ``failures`` lists every operation that was NOT applied (refused by the kernel, or
    skipped because an earlier operation of the same service failed), each with its
    index in the plan; all the others were applied exactly. So the state the kernel is
    in is known: the plan minus the failed operations.
    """

    def __init__(self, failures: list[ApplyError], total: int) -> None:
        self.failures = sorted(failures, key=lambda f: f.index)
        self.total = total
        applied = total - len(self.failures)
        lines = [f"{applied} of {total} operation(s) applied; {len(self.failures)} not applied:"]
        lines += [f"  {f}" for f in self.failures]
        super().__init__("\n".join(lines))

    @property
    def failed_indexes(self) -> frozenset[int]:
        return frozenset(f.index for f in self.failures)


class CapabilityError(KubelvsError):
    """The desired state needs something the chosen backend or kernel cannot do."""

    def __init__(self, problems: list[FieldError]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class KernelError(KubelvsError):
    """An address, link, route, neighbour or sysctl could not be read or changed."""


class NodeError(KubelvsError):
    """The node agent could not configure (or read) this node."""


class LabError(KubelvsError):
    """A lab (network-namespace topology) could not be built, used or removed."""
