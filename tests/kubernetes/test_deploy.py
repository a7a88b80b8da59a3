"""The shipped manifests parse, and the RBAC grants exactly what the code uses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from kubelvs.sources.config import parse_config
from kubelvs.sources.kubernetes.api import PATHS
from kubelvs.sources.kubernetes.settings import parse_kubernetes
from kubelvs.sources.config import to_desired

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]


def rules(kind: str, name: str) -> set[tuple[str, str, str, str]]:
    """{(apiGroup, resource, verb, resourceName or '*')}"""
    (role,) = [d for d in docs("rbac.yaml") if d["kind"] == kind and d["metadata"]["name"] == name]
    out = set()
    for r in role["rules"]:
        for g in r["apiGroups"]:
            for res in r["resources"]:
                for v in r["verbs"]:
                    for n in r.get("resourceNames", ["*"]):
                        out.add((g, res, v, n))
    return out


def test_director_rbac_is_the_minimum() -> None:
    assert rules("ClusterRole", "kubelvs-director") == {
        *{("", r, v, "*") for r in ("services", "nodes") for v in ("get", "list", "watch")},
        *{("discovery.k8s.io", "endpointslices", v, "*") for v in ("get", "list", "watch")},
        ("", "services/status", "patch", "*"),
        ("", "events", "create", "*"),
    }
    assert rules("Role", "kubelvs-director-lease") == {
        ("coordination.k8s.io", "leases", "create", "*"),
        ("coordination.k8s.io", "leases", "get", "kubelvs-director"),
        ("coordination.k8s.io", "leases", "update", "kubelvs-director"),
    }
    assert set(PATHS) == {"Service", "EndpointSlice", "Node"}  # nothing else is read


def test_node_agent_only_reads() -> None:
    assert {v for _, _, v, _ in rules("ClusterRole", "kubelvs-node")} == {"get", "list", "watch"}


def test_workloads_and_config() -> None:
    (dep,) = docs("director-deployment.yaml")
    spec = dep["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == "kubelvs-director" and spec["hostNetwork"] is True
    assert spec["containers"][0]["command"][:3] == ["kubelvs", "director", "--kubernetes"]
    (ds,) = docs("node-daemonset.yaml")
    assert ds["kind"] == "DaemonSet" and ds["spec"]["template"]["spec"]["serviceAccountName"] == "kubelvs-node"
    (cm,) = docs("config.yaml")
    config = parse_config(yaml.safe_load(cm["data"]["config.yaml"]))
    s = parse_kubernetes(config.kubernetes, to_desired(config).ownership)
    assert s.pools[0].name == "default"
    unit = (DEPLOY / "kubelvs-director.service").read_text()
    assert "ExecStart=/usr/local/bin/kubelvs director --kubernetes" in unit
