"""What the director said to its users (logs with ``reason``: its Events' twins)."""

from __future__ import annotations

import pytest


def said(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str, str]]:
    """(reason, service, message) of every log line that carries a ``reason``."""
    return [
        (vars(r)["reason"], vars(r)["service"], r.getMessage()) for r in caplog.records if "reason" in vars(r)
    ]
