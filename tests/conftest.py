"""Shared fixtures and the Hypothesis profiles.

Every network namespace a test creates carries the project's prefix ``kubelvs-t`` and is
deleted at teardown, also when the test fails.

Hypothesis profile, chosen by the environment variable ``HYPOTHESIS_PROFILE`` (``make`` and
``.ci/run`` set ``ci``, which is also the default; ``scripts/vm-run`` passes it into the VM):

- ``ci``: reproducible. The same examples on every run and every machine (derandomized:
  generated from each test's own name), no example database (examples saved
  by an earlier run would change what the next run tries), and a failure prints the
  failing example plus the ``@reproduce_failure`` blob that replays it.
- ``explore``: for local runs hunting new failures. Random, ten times the examples, and the
  database in ``.hypothesis/`` so a failure found once is replayed first next time.

Both: no deadline (the kernel-backed tests take as long as the kernel and the shared
machine make them) and no "too slow" health check (timing on a loaded machine would make
a test fail or pass by chance). A test's own ``@settings(max_examples=...)`` overrides the
profile's count in both.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from kubelvs.app.state import remove_director_state

from .realkube.cluster import Cluster

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"

NETNS_PREFIX = "kubelvs-t"

HYPOTHESIS_PROFILES = ("ci", "explore")
settings.register_profile(
    "ci",
    derandomize=True,
    database=None,
    print_blob=True,
    deadline=None,
    max_examples=100,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "explore",
    max_examples=1000,
    print_blob=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
_profile = os.environ.get("HYPOTHESIS_PROFILE") or "ci"
if _profile not in HYPOTHESIS_PROFILES:
    raise pytest.UsageError(f"HYPOTHESIS_PROFILE={_profile!r}: use one of {', '.join(HYPOTHESIS_PROFILES)}")
settings.load_profile(_profile)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@pytest.fixture
def make_netns() -> Iterator[Callable[[str], str]]:
    """Factory: ``make_netns("dir")`` creates ``kubelvs-t<random>-dir`` with lo up."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    created: list[str] = []
    token = secrets.token_hex(3)

    def make(role: str = "ns") -> str:
        name = f"{NETNS_PREFIX}{token}-{role}"
        _ip("netns", "add", name)
        created.append(name)
        _ip("-n", name, "link", "set", "lo", "up")
        return name

    try:
        yield make
    finally:
        for name in reversed(created):
            # Processes still inside would keep the namespace alive; kill only ours by PID.
            pids = subprocess.run(
                ["ip", "netns", "pids", name], capture_output=True, text=True
            ).stdout.split()
            for pid in pids:
                subprocess.run(["kill", "-9", pid], capture_output=True)
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
            remove_director_state(name)  # a director a test ran with --netns left its state file


@pytest.fixture
def netns(make_netns: Callable[[str], str]) -> str:
    """One fresh namespace (IPVS tables and nftables rulesets are per namespace)."""
    return make_netns("ns")


# --- the real kube-apiserver (tests/realkube, and the Kubernetes tests that run on both the
# stand-in and the real server): one control plane per session, started on the first test
# that asks for it, stopped at the end even when tests fail.

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
