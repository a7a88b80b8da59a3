"""``kubelvs explain`` across a lab's directors: each director's answer for one flow, and
whether they agree (with ECMP any of them may receive the flow's next packet)."""

from __future__ import annotations

from typing import Any, cast

from ..backends import BackendName, open_backend
from ..backends.explain import explain_flow
from ..formats.explain import site
from ..model import ServiceKey
from .spec import LabInfo

__all__ = ["explain_directors"]


def explain_directors(info: LabInfo, client: str, client_port: int | None, key: ServiceKey) -> dict[str, Any]:
    docs = {}
    for name, netns in info.directors.items():
        with open_backend(cast(BackendName, info.backend), netns=netns) as backend:
            docs[name] = explain_flow(backend, client, client_port, key)
    return site(docs)
