"""Fixtures of the Kubernetes source tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from .apiserver import ServerThread


@pytest.fixture
def api_server(tmp_path: Path) -> Iterator[tuple[ServerThread, Path]]:
    with ServerThread() as st:
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "stand-in", "cluster": {"server": st.server.url}}],
                    "users": [{"name": "director", "user": {"token": "t0ken"}}],
                    "contexts": [{"name": "c", "context": {"cluster": "stand-in", "user": "director"}}],
                    "current-context": "c",
                }
            )
        )
        yield st, kubeconfig
