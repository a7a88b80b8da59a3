"""The offline source: the JSON/YAML that ``kubectl get svc,endpointslices,nodes -A -o yaml``
prints (a ``List``), or single objects, multi-document YAML, JSON; any number of files
in one directory. The directory is polled for changes; a file that does not parse is
reported and the last good objects are kept (the kernel keeps its state).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from ...errors import ParseError
from ...formats.textfile import read_text_file
from .tracker import KINDS, Store

__all__ = ["directory_stamp", "load_manifests", "watch_manifests"]

log = logging.getLogger("kubelvs.kubernetes.manifests")

SUFFIXES = (".yaml", ".yml", ".json")


def _documents(path: Path) -> Iterator[Any]:
    # The same reader as the config file: size limit, UTF-8 only, no NUL (ParseError).
    text = read_text_file(path)
    if path.suffix == ".json":
        try:
            yield json.loads(text)
        except ValueError as exc:
            raise ParseError(str(path), getattr(exc, "lineno", None), str(exc)) from exc
        except RecursionError:
            raise ParseError(str(path), None, "nested too deeply") from None
        return
    try:
        yield from yaml.safe_load_all(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ParseError(
            str(path), mark.line + 1 if mark else None, str(getattr(exc, "problem", exc))
        ) from exc
    except RecursionError:
        raise ParseError(str(path), None, "nested too deeply") from None


def _objects(doc: Any, list_kind: str | None = None) -> Iterator[Mapping[str, Any]]:
    if not isinstance(doc, Mapping):
        return
    kind = doc.get("kind") or (
        list_kind[: -len("List")] if list_kind and list_kind.endswith("List") else None
    )
    if kind and kind.endswith("List") and isinstance(doc.get("items"), list):
        for item in doc["items"]:
            yield from _objects(item, kind)
        return
    if kind in KINDS:
        yield {**doc, "kind": kind}


def load_manifests(directory: Path) -> dict[str, list[Mapping[str, Any]]]:
    """Every Service, EndpointSlice and Node in the directory's files (sorted by name)."""
    out: dict[str, list[Mapping[str, Any]]] = {k: [] for k in KINDS}
    if not directory.is_dir():
        raise ParseError(str(directory), None, "not a directory")
    for path in sorted(p for p in directory.iterdir() if p.suffix in SUFFIXES and p.is_file()):
        for doc in _documents(path):
            for obj in _objects(doc):
                out[str(obj["kind"])].append(obj)
    return out


def directory_stamp(directory: Path) -> tuple[tuple[str, int, int], ...]:
    try:
        return tuple(
            sorted(
                (p.name, p.stat().st_mtime_ns, p.stat().st_size)
                for p in directory.iterdir()
                if p.suffix in SUFFIXES
            )
        )
    except OSError:
        return ()


def load_into(store: Store, directory: Path) -> int:
    objects = load_manifests(directory)
    return sum(store.replace(kind, objects[kind]) for kind in KINDS)


async def watch_manifests(store: Store, directory: Path, *, poll: float, stop: asyncio.Event) -> None:
    """Reload the directory whenever a file changes; keep the last good objects on errors."""
    stamp: tuple[tuple[str, int, int], ...] | None = None
    while not stop.is_set():
        new = directory_stamp(directory)
        if new != stamp:
            stamp = new
            try:
                changes = load_into(store, directory)
                if changes:
                    log.info("%s: %d object change(s)", directory, changes)
            except ParseError as exc:
                log.error("%s; keeping the last good objects", exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), poll)
