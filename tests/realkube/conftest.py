"""The real kube-apiserver tier: one control plane per test session (started on the first
test that asks for it, stopped at the end, even when tests fail), emptied of the tests'
objects before each test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .cluster import Cluster

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"

#: What each test may have created; emptied before the next (the RBAC objects stay).
_COLLECTIONS = (
    "/api/v1/namespaces/default/services",
    "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices",
    "/api/v1/nodes",
    "/api/v1/namespaces/default/events",
    "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases",
    "/api/v1/namespaces/default/configmaps",
)


@pytest.fixture(scope="session")
def kube_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    directory = tmp_path_factory.mktemp("kube")
    try:
        cluster = Cluster.up(directory)
    except BaseException:
        Cluster(directory, 0, 0, 0, "").down()
        raise
    try:
        yield cluster
    finally:
        cluster.down()


@pytest.fixture
def kube(kube_cluster: Cluster) -> Cluster:
    kube_cluster.start()  # a test that stopped the API server may have failed before restarting it
    for path in _COLLECTIONS:
        if path.endswith("/services"):  # Services have no deletecollection
            for item in kube_cluster.call("GET", path)["items"]:
                if item["metadata"]["name"] != "kubernetes":
                    kube_cluster.call("DELETE", f"{path}/{item['metadata']['name']}")
        else:
            kube_cluster.call("DELETE", path)
    return kube_cluster


@pytest.fixture(scope="session")
def rbac(kube_cluster: Cluster) -> None:
    """deploy/rbac.yaml applied for real, once (it stays: a namespace cannot be deleted
    without kube-controller-manager's namespace controller, and the cluster goes at the end)."""
    kube_cluster.apply_manifest(DEPLOY / "rbac.yaml")
