"""Fixtures of the nftables backend tests."""

from __future__ import annotations

import pytest

from kubelvs.backends.nftables import NftablesBackend

from .links import prepare


@pytest.fixture
def nsb(netns: str) -> tuple[str, NftablesBackend]:
    """A fresh namespace with a DR link (links.prepare), and a backend in it."""
    prepare(netns)
    return netns, NftablesBackend(netns=netns)
