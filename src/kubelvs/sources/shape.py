"""Shape checks of loaded YAML/JSON at the edge: types, unknown and missing keys,
bounds, into dataclasses.

Why not pydantic: a one-shot ``kubelvs apply`` spent more than half of its start-up
importing pydantic and building the schemas of five small models (about 1.6 s of a
4 s start on the VM tier's emulated CPU, more than ``ipvsadm -R`` needs for 1,000
services). These checks are a few small functions, strict (no "80" for 80, no
``true`` for 1: YAML already types its values), and report every problem with its
path, e.g. ``services[0].realservers[1].weight: must be an integer, got '2'``.

A ``Record`` maps keys to checks; a check takes the value and returns it converted
or raises ``Invalid``. Nested records and lists carry the path down, so a problem deep
in the file names exactly where it is. A key's path is only built when its value has
a problem (a 10,000-service file is 110,000 records); list items pass theirs down.

A wrong file can hold a problem per line (a 50 MB one had 804,545): problems are
collected in a ``model.ErrorList``, which keeps the first ``MAX_ERRORS`` and counts
the rest, and once one is found nothing more is built (the result is thrown away
anyway). Values are quoted in messages at most ``_SHOWN`` characters long.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Mapping
from dataclasses import MISSING, fields
from typing import Any, Generic, TypeVar

from ..errors import FieldError
from ..model.validate import ErrorList, shown

__all__ = [
    "Invalid",
    "Record",
    "at",
    "boolean",
    "bounded",
    "choice",
    "integer",
    "list_of",
    "mapping_of",
    "number",
    "optional",
    "string",
]

T = TypeVar("T")

#: A check: the value in, the converted value out, or ``Invalid`` with the reason.
#: Checks that hold other checks (records, lists) get the path and the error list too.
Check = Callable[[Any], Any]


class Invalid(Exception):
    """The reason a value does not fit (the caller adds the path)."""


class _Nested:
    """A check of a container: reports problems of its items itself, by path."""

    def check(self, value: Any, path: str, errors: list[FieldError]) -> Any:
        raise NotImplementedError


def at(path: str, key: str | int) -> str:
    """``services`` + 0 -> ``services[0]``; ``services[0]`` + ``vip`` -> ``services[0].vip``."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _key(key: Any) -> str:
    """A key of the user's mapping as a path part: a short printable string as it is,
    anything else as ``_describe`` shows a value (YAML keys may be numbers, null, lists)."""
    if isinstance(key, str) and len(key) <= 64 and key.isprintable():
        return key
    return _describe(key)


def _describe(value: Any) -> str:
    """The value as the YAML said it: 'text', 80, true, null, or the kind of container
    (never the container itself: it may be huge, or nested deeper than repr can go)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return shown(value) if isinstance(value, str | int | float) else type(value).__name__


def integer(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise Invalid(f"must be an integer, got {_describe(value)}")
    return value


def number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Invalid(f"must be a number, got {_describe(value)}")
    try:
        result = float(value)
    except OverflowError:  # an integer beyond any float
        raise Invalid(f"must be a finite number, got {_describe(value)}") from None
    if not math.isfinite(result):  # .nan compares false with every bound; .inf is no duration
        raise Invalid(f"must be a finite number, got {_describe(value)}")
    return result


def bounded(
    check: Check, *, minimum: float | None = None, maximum: float | None = None, above: float | None = None
) -> Check:
    """``check``, then the limits: ``minimum``/``maximum`` inclusive, ``above`` exclusive."""

    def within(value: Any) -> Any:
        checked = check(value)
        if minimum is not None and checked < minimum:
            raise Invalid(f"must be at least {minimum}, got {_describe(value)}")
        if maximum is not None and checked > maximum:
            raise Invalid(f"must be at most {maximum}, got {_describe(value)}")
        if above is not None and checked <= above:
            raise Invalid(f"must be greater than {above}, got {_describe(value)}")
        return checked

    return within


def string(value: Any) -> str:
    if not isinstance(value, str):
        raise Invalid(f"must be a string, got {_describe(value)}")
    return value


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise Invalid(f"must be true or false, got {_describe(value)}")
    return value


def choice(*allowed: Any) -> Check:
    """One of ``allowed`` (the values of an enum class, or literals)."""
    if len(allowed) == 1 and isinstance(allowed[0], type) and issubclass(allowed[0], enum.Enum):
        members = {m.value: m for m in allowed[0]}
    else:
        members = {a: a for a in allowed}
    listing = ", ".join(str(a) for a in members)

    def check(value: Any) -> Any:
        try:
            member = members[value]
        except (KeyError, TypeError):  # TypeError: unhashable (a list or a mapping)
            raise Invalid(f"must be one of {listing}, got {_describe(value)}") from None
        # 4.0 and True hash like 4 and 1: equal is not enough, as elsewhere no coercion.
        expected = type(member.value if isinstance(member, enum.Enum) else member)
        if not isinstance(value, expected) or (isinstance(value, bool) and expected is not bool):
            raise Invalid(f"must be one of {listing}, got {_describe(value)}")
        return member

    return check


def optional(check: Check | _Nested) -> Check | _Nested:
    """``check``, or null."""
    if isinstance(check, _Nested):
        return _OptionalNested(check)
    return lambda value: None if value is None else check(value)


class _OptionalNested(_Nested):
    def __init__(self, inner: _Nested) -> None:
        self.inner = inner

    def check(self, value: Any, path: str, errors: list[FieldError]) -> Any:
        return None if value is None else self.inner.check(value, path, errors)


class list_of(_Nested):
    """A list whose items all pass ``item``; a tuple comes out."""

    def __init__(self, item: Check | _Nested) -> None:
        self.item = item

    def check(self, value: Any, path: str, errors: list[FieldError]) -> tuple[Any, ...]:
        if not isinstance(value, list | tuple):
            raise Invalid(f"must be a list, got {_describe(value)}")
        item = self.item
        if isinstance(item, _Nested):  # e.g. the real servers of a service: inlined, it runs per item
            out = []
            bad = False
            for i, v in enumerate(value):
                at_i = f"{path}[{i}]"
                try:
                    out.append(item.check(v, at_i, errors))
                except Invalid as exc:
                    errors.append(FieldError(at_i, str(exc)))
                    bad = True
                except _Reported:
                    bad = True
            if bad:
                raise _Reported
            return tuple(out)
        try:  # the common case first: every item fits
            return tuple(item(v) for v in value)
        except Invalid:
            for i, v in enumerate(value):
                try:
                    item(v)
                except Invalid as exc:
                    errors.append(FieldError(f"{path}[{i}]", str(exc)))
            raise _Reported from None


class mapping_of(_Nested):
    """A mapping of string keys to values that pass ``item``; a dict comes out."""

    def __init__(self, item: Check | _Nested) -> None:
        self.item = item

    def check(self, value: Any, path: str, errors: list[FieldError]) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            raise Invalid(f"must be a mapping, got {_describe(value)}")
        out = {}
        bad = False
        for key, v in value.items():
            if not isinstance(key, str):
                errors.append(FieldError(at(path, _key(key)), "keys must be strings"))
                bad = True
                continue
            item = self.item
            try:
                if isinstance(item, _Nested):
                    out[key] = item.check(v, at(path, _key(key)), errors)
                else:
                    out[key] = item(v)
            except Invalid as exc:
                errors.append(FieldError(at(path, _key(key)), str(exc)))
                bad = True
            except _Reported:
                bad = True
        if bad:
            raise _Reported
        return out


class Record(_Nested, Generic[T]):
    """A mapping with known keys, into the dataclass ``cls``: every key of
    ``checks`` is a field of ``cls``; a field without a default is required."""

    def __init__(self, cls: type[T], checks: Mapping[str, Check | _Nested]) -> None:
        self.cls = cls
        self.checks = dict(checks)
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        assert names >= self.checks.keys(), f"{cls.__name__} lacks {self.checks.keys() - names}"
        self.required = frozenset(
            f.name
            for f in fields(cls)  # type: ignore[arg-type]
            if f.init and f.default is MISSING and f.default_factory is MISSING
        )
        self.known = frozenset(self.checks)
        self.plain = {k: c for k, c in self.checks.items() if not isinstance(c, _Nested)}

    def check(self, value: Any, path: str, errors: list[FieldError]) -> T | None:
        # The ABC check is slow, and YAML gives dicts: test for a dict first.
        if type(value) is not dict and not isinstance(value, Mapping):
            raise Invalid(f"must be a mapping of keys, got {_describe(value)}")
        bad = False
        keys = value.keys()
        if not keys <= self.known:
            for key in value:  # in the file's order
                if key not in self.known:
                    errors.append(
                        FieldError(
                            at(path, _key(key)), f"unknown key (known: {', '.join(sorted(self.known))})"
                        )
                    )
            bad = True
        if not self.required <= keys:
            for key in sorted(self.required - keys):
                errors.append(FieldError(at(path, key), "required"))
            bad = True
        kwargs = {}
        plain = self.plain
        for key, v in value.items():
            # One loop, the plain checks called directly: this runs once per real
            # server of the file, 100,000 times for 10,000 services.
            try:
                check = plain.get(key)
                if check is not None:
                    kwargs[key] = check(v)
                elif key in self.known:
                    kwargs[key] = self.checks[key].check(v, at(path, key), errors)  # type: ignore[union-attr]
            except Invalid as exc:
                errors.append(FieldError(at(path, key), str(exc)))
                bad = True
            except _Reported:
                bad = True
        if bad:
            raise _Reported
        if errors:  # the document already failed elsewhere: what is built here would be thrown away
            return None
        return self.cls(**kwargs)

    def parse(self, value: Any, path: str = "") -> tuple[T | None, list[FieldError]]:
        """Check a whole document (or the section at ``path``): the value and no
        problems, or None and the problems (the first ``MAX_ERRORS``, then one line
        counting the rest: see ``model.ErrorList``)."""
        errors = ErrorList()
        try:
            result: T | None = self.check(value, path, errors)
        except Invalid as exc:
            errors.append(FieldError(path or "(top level)", str(exc)))
            result = None
        except _Reported:
            result = None
        return (None if errors else result), errors.listing()


class _Reported(Exception):
    """A nested value had problems, already in the error list by path."""
