"""``kubelvs explain`` on one director: what its data plane says of a flow."""

from __future__ import annotations

from typing import Any

from ..formats.explain import explanation
from ..model import ServiceKey
from .base import Backend

__all__ = ["explain_flow"]


def explain_flow(backend: Backend, client: str, client_port: int | None, key: ServiceKey) -> dict[str, Any]:
    """The entry of the connection state that decides the flow (it wins), and the
    scheduler's choice for a new one, as ``formats.explain``'s document."""
    entry = backend.connection_of(key, client, client_port)
    guess = backend.predict(key, client, client_port)
    shown = client if client_port is None else f"{client}:{client_port}"
    return explanation(backend.name, shown, key, entry, guess)
