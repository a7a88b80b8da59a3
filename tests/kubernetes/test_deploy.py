"""The shipped manifests parse, and the RBAC grants exactly what the code uses."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from kubelvs.cli.main import build_parser
from kubelvs.roles.node import STATE_DIR
from kubelvs.sources.config import parse_config, to_desired
from kubelvs.sources.kubernetes.api import PATHS
from kubelvs.sources.kubernetes.settings import parse_kubernetes

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
    # Exactly the three kinds the shared list + watch reads; no status, events or Leases.
    assert rules("ClusterRole", "kubelvs-node") == {
        *{("", r, v, "*") for r in ("services", "nodes") for v in ("get", "list", "watch")},
        *{("discovery.k8s.io", "endpointslices", v, "*") for v in ("get", "list", "watch")},
    }


def test_workloads_and_config() -> None:
    (dep,) = docs("director-deployment.yaml")
    spec = dep["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == "kubelvs-director" and spec["hostNetwork"] is True
    assert spec["containers"][0]["command"][:3] == ["kubelvs", "director", "--kubernetes"]
    (ds,) = docs("node-daemonset.yaml")
    assert (
        ds["kind"] == "DaemonSet" and ds["spec"]["template"]["spec"]["serviceAccountName"] == "kubelvs-node"
    )
    (cm,) = docs("config.yaml")
    config = parse_config(yaml.safe_load(cm["data"]["config.yaml"]))
    s = parse_kubernetes(config.kubernetes, to_desired(config).ownership)
    assert s.pools[0].name == "default"
    unit = (DEPLOY / "kubelvs-director.service").read_text()
    assert "ExecStart=/usr/local/bin/kubelvs director --kubernetes" in unit


def _expand(arg: str, values: dict[str, str]) -> str:
    """The kubelet's $(VAR) expansion of a container's command."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: values.get(m.group(1), m.group(0)), arg)


def test_node_daemonset_command_is_the_cli_contract() -> None:
    (ds,) = docs("node-daemonset.yaml")
    spec = ds["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    command = [_expand(a, {"NODE_NAME": "worker-1"}) for a in container["command"]]
    assert command[0] == "kubelvs"
    args = build_parser(command[1:]).parse_args(command[1:])  # the real parser: unknown flags fail here
    assert (args.command, args.kubernetes, args.node_name, args.kubeconfig) == (
        "node",
        True,
        "worker-1",
        None,
    )
    assert not (args.once or args.dry_run or args.revert or args.vip or args.from_manifests)
    # The config file is the ConfigMap's key, mounted where -f points.
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    (cm,) = docs("config.yaml")
    assert (
        args.file.parent.as_posix() == mounts["config"]["mountPath"] and mounts["config"]["readOnly"] is True
    )
    assert volumes["config"]["configMap"]["name"] == cm["metadata"]["name"]
    assert args.file.name in cm["data"]
    # The agent's record of what it set outlives the container (the host's directory).
    assert args.state_dir == STATE_DIR
    assert mounts["state"]["mountPath"] == STATE_DIR.as_posix()
    assert volumes["state"]["hostPath"]["path"] == STATE_DIR.as_posix()
    # The host's network: VIPs on its lo; privileged for NET_ADMIN and a writable /proc/sys.
    assert spec["hostNetwork"] is True and container["securityContext"] == {"privileged": True}
    assert {"operator": "Exists"} in spec["tolerations"]
    # Its ServiceAccount is bound to the read-only ClusterRole only.
    bindings = [
        d
        for d in docs("rbac.yaml")
        if d["kind"] in ("ClusterRoleBinding", "RoleBinding")
        and any(s["name"] == spec["serviceAccountName"] for s in d["subjects"])
    ]
    assert [(b["kind"], b["roleRef"]["name"]) for b in bindings] == [("ClusterRoleBinding", "kubelvs-node")]


def test_ha_configs_and_unit() -> None:
    """The HA examples are valid configs for the Kubernetes source, and the unit's
    command line is the real parser's."""
    for name, key in (("ha/config-vrrp.yaml", "vrrp"), ("ha/config-bgp.yaml", "bgp")):
        (cm,) = docs(name)
        config = parse_config(yaml.safe_load(cm["data"]["config.yaml"]))
        assert getattr(config, key) is not None, name
        parse_kubernetes(config.kubernetes, to_desired(config).ownership)
    unit = (DEPLOY / "ha/kubelvs-director-vrrp.service").read_text()
    (line,) = [x for x in unit.splitlines() if x.startswith("ExecStart=")]
    command = line.removeprefix("ExecStart=").split()
    args = build_parser(command[1:]).parse_args(command[1:])
    assert (args.command, args.kubernetes, args.vrrp_priority) == ("director", True, 150)
