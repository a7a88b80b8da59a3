"""``kubelvs director --from-manifests | --kubernetes`` through the CLI: --dry-run -o json,
--once, the manifests directory watched for edits, a kubeconfig to the stand-in server."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest
import yaml

from kubelvs.app import director as director_app
from kubelvs.app.director import DirectorOptions, start_director
from kubelvs.backends.memory import MemoryBackend
from kubelvs.cli.main import main
from kubelvs.sources.config import Config
from kubelvs.sources.kubernetes.desired import KubernetesSource
from kubelvs.sources.kubernetes.manifests import load_manifests

from . import k8sobjects as k
from .apiserver import ServerThread
from .helpers import settings
from .test_watch import until

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "kubernetes"
CONFIG = EXAMPLES / "director.yaml"
WHOAMI_DIR = EXAMPLES / "whoami"

EXPECTED = {
    "services": [
        {
            "name": "default/whoami:web",
            "vip": "10.240.0.201",
            "port": 80,
            "protocol": "tcp",
            "fwmark": None,
            "scheduler": "mh",
            "flags": ["mh-fallback"],
            "persistence": 0,
            "realservers": [
                {"address": "10.240.0.101", "port": 80, "weight": 1, "forward": "dr"},
                {"address": "10.240.0.102", "port": 80, "weight": 1, "forward": "dr"},
            ],
        }
    ],
    "timeouts": None,
}


def test_dry_run_json_from_the_whoami_manifests(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["director", "-f", str(CONFIG), "--from-manifests", str(WHOAMI_DIR), "--dry-run", "-o", "json"])
    assert rc == 0
    assert json.loads(capsys.readouterr().out) == EXPECTED


def test_dry_run_text_shows_events_and_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    objs = [
        *k.whoami_objects(),
        k.service("lb", type="LoadBalancer"),
        k.service("bad", external_ips=["192.0.2.1"]),
    ]
    (tmp_path / "all.json").write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": objs}))
    rc = main(["director", "-f", str(CONFIG), "--from-manifests", str(tmp_path), "--dry-run"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "TCP 10.240.0.225:80 mh  default/lb:web" in out
    assert "  -> 10.240.0.101:80 dr w=1" in out
    assert (
        "# Warning default/bad ExternalIPNotAllowed: externalIP 192.0.2.1 is outside the allowed ranges"
        in out
    )
    assert "# status default/lb loadBalancer.ingress = 10.240.0.225" in out


def test_typed_list_items_without_kind_and_multi_document_yaml(tmp_path: Path) -> None:
    svc = k.service("whoami", external_ips=["10.240.0.201"])
    del svc["kind"], svc["apiVersion"]
    (tmp_path / "a.yaml").write_text(
        yaml.safe_dump({"kind": "ServiceList", "apiVersion": "v1", "items": [svc]})
    )
    (tmp_path / "b.yml").write_text(
        yaml.safe_dump_all([k.node("n1", "10.240.0.101"), {"kind": "ConfigMap", "metadata": {"name": "x"}}])
    )
    objs = load_manifests(tmp_path)
    assert [o["metadata"]["name"] for o in objs["Service"]] == ["whoami"]
    assert [o["metadata"]["name"] for o in objs["Node"]] == ["n1"]


def test_bad_manifest_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "x.yaml").write_text("items: [unclosed\n")
    rc = main(["director", "-f", str(CONFIG), "--from-manifests", str(tmp_path), "--dry-run"])
    assert rc == 2
    assert f"{tmp_path / 'x.yaml'}:" in capsys.readouterr().err


def test_bad_kubernetes_section_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "owned_cidrs: [10.240.0.0/24]\n"
        "kubernetes:\n  lb_pools: [{name: default, cidrs: [10.240.0.224/28, 10.9.0.0/33]}]\n"
    )
    rc = main(["director", "-f", str(cfg), "--from-manifests", str(WHOAMI_DIR), "--dry-run"])
    assert rc == 2
    assert "kubernetes.lb_pools[0].cidrs[1]: '10.9.0.0/33' is not a network" in capsys.readouterr().err


def test_once_programs_the_backend(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    backend = MemoryBackend()
    monkeypatch.setattr(director_app, "open_backend", lambda name, netns=None: backend)
    state = ["--state-file", str(tmp_path / "state.json")]  # not the host's director state
    rc = main(["director", "-f", str(CONFIG), "--from-manifests", str(WHOAMI_DIR), "--once", *state])
    assert rc == 0
    assert backend.table() == {
        "TCP 10.240.0.201:80": [("10.240.0.101", 80, 1, "dr"), ("10.240.0.102", 80, 1, "dr")]
    }


def test_manifest_directory_edits_converge(tmp_path: Path) -> None:
    for f in WHOAMI_DIR.iterdir():
        shutil.copy(f, tmp_path / f.name)

    async def body() -> None:
        backend = MemoryBackend()
        source = KubernetesSource(Config(), settings=settings(), manifests=tmp_path, poll_seconds=0.05)
        program = await start_director(DirectorOptions(), source, backend=backend)
        stop = asyncio.Event()
        task = asyncio.create_task(program.run(stop))
        await until(lambda: "TCP 10.240.0.201:80" in backend.table())
        doc = yaml.safe_load((tmp_path / "whoami.yaml").read_text())
        doc["items"][0]["spec"]["ports"][0]["port"] = 8080
        (tmp_path / "whoami.yaml").write_text(yaml.safe_dump(doc))
        await until(lambda: list(backend.table()) == ["TCP 10.240.0.201:8080"])
        (tmp_path / "whoami.yaml").write_text("items: [broken\n")  # a bad edit: state kept
        await asyncio.sleep(0.3)
        assert list(backend.table()) == ["TCP 10.240.0.201:8080"]
        nodes = yaml.safe_load((tmp_path / "nodes.yaml").read_text())
        nodes["items"] = nodes["items"][:1]
        (tmp_path / "nodes.yaml").write_text(yaml.safe_dump(nodes))
        doc["items"][0]["spec"]["ports"][0]["port"] = 80
        (tmp_path / "whoami.yaml").write_text(yaml.safe_dump(doc))
        await until(lambda: backend.table() == {"TCP 10.240.0.201:80": [("10.240.0.101", 80, 1, "dr")]})
        stop.set()
        await task
        await program.close()

    asyncio.run(body())


# ---------------------------------------------------------------- against the stand-in via kubeconfig


def test_kubernetes_dry_run_via_kubeconfig(
    api_server: tuple[ServerThread, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    st, kubeconfig = api_server
    for obj in k.whoami_objects():
        st.call(st.server.put, obj)
    rc = main(
        [
            "director",
            "-f",
            str(CONFIG),
            "--kubernetes",
            "--kubeconfig",
            str(kubeconfig),
            "--dry-run",
            "-o",
            "json",
        ]
    )
    assert rc == 0
    assert json.loads(capsys.readouterr().out) == EXPECTED
    assert all(m == "GET" for m, _ in st.server.requests)  # --dry-run wrote nothing
    assert st.server.authorization == {"Bearer t0ken"}  # the kubeconfig's credentials were used


def test_kubernetes_once_programs_and_writes_status(
    api_server: tuple[ServerThread, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    st, kubeconfig = api_server
    for obj in [*k.whoami_objects(), k.service("lb", type="LoadBalancer", created="2026-11-21T00:00:00Z")]:
        st.call(st.server.put, obj)
    backend = MemoryBackend()
    monkeypatch.setattr(director_app, "open_backend", lambda name, netns=None: backend)
    state = ["--state-file", str(tmp_path / "state.json")]  # not the host's director state
    rc = main(
        ["director", "-f", str(CONFIG), "--kubernetes", "--kubeconfig", str(kubeconfig), "--once", *state]
    )
    assert rc == 0
    assert set(backend.table()) == {"TCP 10.240.0.201:80", "TCP 10.240.0.225:80"}
    assert st.server.get("Service", "default", "lb")["status"]["loadBalancer"]["ingress"] == [
        {"ip": "10.240.0.225", "ipMode": "VIP"}
    ]
    lease = st.server.objects["Lease"][("kube-system", "kubelvs-director")]
    assert lease["spec"]["holderIdentity"] == ""  # released on exit


def test_missing_kubeconfig_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(
        ["director", "-f", str(CONFIG), "--kubernetes", "--kubeconfig", str(tmp_path / "nope"), "--dry-run"]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert "cannot load the Kubernetes client config" in err and "nope" in err
