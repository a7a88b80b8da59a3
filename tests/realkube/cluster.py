"""A real kube-apiserver and etcd for the tests, started by ``scripts/kube-up`` (built once
by ``scripts/kube-build`` into ~/.cache/kubelvs) in a temporary directory, on free ports of
127.0.0.1, and stopped by ``scripts/kube-down`` (only the PIDs it started).

``Cluster.call`` is the tests' own small REST client (urllib), deliberately not the
product's: what the tests set up and read back does not depend on the code under test."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kubelvs.sources.kubernetes.api import API_VERSIONS, KubeApi

from ..kubernetes.apiserver import free_port

ROOT = Path(__file__).resolve().parents[2]
#: deploy/rbac.yaml's ServiceAccounts live here.
SA_NAMESPACE = "kubelvs-system"
Obj = dict[str, Any]


class ApiStatus(Exception):
    """A non-2xx answer: its code and the Status object's reason/message."""

    def __init__(self, code: int, body: Obj) -> None:
        self.code = code
        self.reason = str(body.get("reason", ""))
        super().__init__(f"{code} {self.reason}: {body.get('message', '')}")


@dataclass
class Cluster:
    dir: Path
    port: int
    etcd_port: int
    peer_port: int
    admin_token: str

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def kubeconfig(self) -> Path:
        return self.dir / "admin.kubeconfig"

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "KUBELVS_KUBE_DIR": str(self.dir),
            "KUBE_APISERVER_PORT": str(self.port),
            "ETCD_CLIENT_PORT": str(self.etcd_port),
            "ETCD_PEER_PORT": str(self.peer_port),
            # etcd tells the API server's watch cache its revision every second (default 10
            # minutes): a quiet collection's cache then moves on with the cluster's writes, and
            # its watches get bookmarks past their resourceVersion (test_watch.py).
            "ETCD_ARGS": "--watch-progress-notify-interval=1s",
        }

    # --- processes -------------------------------------------------------------------------
    @classmethod
    def up(cls, directory: Path) -> Cluster:
        cluster = cls(directory, free_port(), free_port(), free_port(), "")
        cluster.start()
        cluster.admin_token = (directory / "tokens.csv").read_text().split(",", 1)[0]
        return cluster

    def start(self) -> None:
        """kube-up: starts whichever of etcd and kube-apiserver is not running."""
        done = subprocess.run([str(ROOT / "scripts/kube-up")], env=self.env(), capture_output=True, text=True)
        if done.returncode != 0:
            log = (self.dir / "kube-apiserver.log").read_text()[-3000:] if self.dir.exists() else ""
            raise RuntimeError(f"kube-up failed:\n{done.stdout}\n{done.stderr}\n{log}")

    def down(self) -> None:
        subprocess.run([str(ROOT / "scripts/kube-down"), "--purge"], env=self.env(), check=True)

    def kill_apiserver(self) -> None:
        """SIGKILL to the kube-apiserver kube-up started (etcd stays), as in a crash.

        Not SIGTERM: a real kube-apiserver then stops listening at once but keeps the open
        watches (silent) until its shutdown timeout, about a minute later."""
        pid = int((self.dir / "kube-apiserver.pid").read_text())
        assert Path(f"/proc/{pid}/exe").resolve().name == "kube-apiserver"
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        (self.dir / "kube-apiserver.pid").unlink()

    # --- REST --------------------------------------------------------------------------------
    def call(
        self,
        method: str,
        path: str,
        body: Obj | None = None,
        *,
        token: str | None = None,
        content_type: str = "application/json",
    ) -> Obj:
        req = urllib.request.Request(
            self.url + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={
                "Authorization": f"Bearer {token or self.admin_token}",
                "Content-Type": content_type,
                "Accept": "application/json",
            },
        )
        ctx = ssl.create_default_context(cafile=str(self.dir / "ca.crt"))
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=30) as resp:
                data: Obj = json.loads(resp.read())
                return data
        except urllib.error.HTTPError as err:
            raw = err.read()
            try:
                status = json.loads(raw)
            except ValueError:
                status = {"message": raw.decode(errors="replace")}
            raise ApiStatus(err.code, status) from None

    def create(self, obj: Obj) -> Obj:
        return self.call("POST", collection_path(obj), obj)

    def create_all(self, objs: list[Obj]) -> None:
        """Builder objects (tests/kubernetes/k8sobjects.py) created as a client would. A
        Node's status is written through its status subresource, as the kubelet does."""
        for obj in objs:
            created = self.create(for_create(obj))
            if (
                obj["kind"] == "Node"
                and created.get("status", {}).get("conditions") != obj["status"]["conditions"]
            ):
                self.merge_patch(f"/api/v1/nodes/{obj['metadata']['name']}/status", {"status": obj["status"]})

    def merge_patch(self, path: str, body: Obj) -> Obj:
        return self.call("PATCH", path, body, content_type="application/merge-patch+json")

    def apply_manifest(self, path: Path) -> None:
        """Creates every object of a multi-document YAML file (as ``kubectl create -f``)."""
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                self.create(doc)

    def token_for(self, namespace: str, service_account: str) -> str:
        """A bound token of a ServiceAccount, from the TokenRequest API."""
        answer = self.call(
            "POST",
            f"/api/v1/namespaces/{namespace}/serviceaccounts/{service_account}/token",
            {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {"expirationSeconds": 3600},
            },
        )
        return str(answer["status"]["token"])

    def kubeconfig_for(self, token: str, path: Path) -> Path:
        """A kubeconfig with only ``token`` as identity (the CA of this cluster)."""
        ca = base64.b64encode((self.dir / "ca.crt").read_bytes()).decode()
        path.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [
                        {"name": "c", "cluster": {"server": self.url, "certificate-authority-data": ca}}
                    ],
                    "users": [{"name": "u", "user": {"token": token}}],
                    "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                    "current-context": "c",
                }
            )
        )
        return path

    def etcd_compact(self) -> int:
        """Compacts etcd's history up to its current revision (through etcd's JSON gateway);
        returns that revision. Watches from an older resourceVersion then get 410 Gone."""

        def post(path: str, body: Obj) -> Obj:
            req = urllib.request.Request(
                f"http://127.0.0.1:{self.etcd_port}{path}", data=json.dumps(body).encode(), method="POST"
            )
            with urllib.request.urlopen(req, timeout=30) as resp:
                data: Obj = json.loads(resp.read())
                return data

        key = base64.b64encode(b"/").decode()
        revision = int(post("/v3/kv/range", {"key": key, "limit": 1})["header"]["revision"])
        post("/v3/kv/compaction", {"revision": str(revision), "physical": True})
        return revision


class RealApi:
    """The stand-in server's test interface (``put``/``get``/``delete``/``stop``/``start``,
    tests/kubernetes/stack.py's ``ApiUnderTest``) on the real server, so that the same test
    runs on both."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    def _path(self, kind: str, namespace: str, name: str) -> str:
        probe = {"apiVersion": API_VERSIONS[kind], "kind": kind, "metadata": {"namespace": namespace or None}}
        return f"{collection_path(probe)}/{name}"

    def put(self, obj: Obj) -> Obj:
        meta = obj["metadata"]
        try:
            current = self.get(obj["kind"], meta.get("namespace", ""), meta["name"])
        except ApiStatus as err:
            if err.code != 404:
                raise
            self.cluster.create_all([obj])
            return self.get(obj["kind"], meta.get("namespace", ""), meta["name"])
        if meta.get("uid") != current["metadata"]["uid"]:
            raise ValueError(f"put: {meta['name']} exists; update the object got from the server")
        return self.cluster.call("PUT", self._path(obj["kind"], meta.get("namespace", ""), meta["name"]), obj)

    def get(self, kind: str, namespace: str, name: str) -> Obj:
        return self.cluster.call("GET", self._path(kind, namespace, name))

    def delete(self, kind: str, namespace: str, name: str) -> None:
        self.cluster.call("DELETE", self._path(kind, namespace, name))

    async def stop(self) -> None:
        await asyncio.to_thread(self.cluster.kill_apiserver)

    async def start(self) -> None:
        await asyncio.to_thread(self.cluster.start)

    async def client(self) -> KubeApi:
        return await KubeApi.connect(self.cluster.kubeconfig)


_PLURAL = {
    "Service": "services",
    "Node": "nodes",
    "EndpointSlice": "endpointslices",
    "Namespace": "namespaces",
}


def collection_path(obj: Obj) -> str:
    """The REST collection an object is created in, from its apiVersion, kind and namespace."""
    api_version, kind = obj["apiVersion"], obj["kind"]
    plural = _PLURAL.get(kind) or kind.lower() + "s"
    prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    namespace = obj.get("metadata", {}).get("namespace")
    return f"{prefix}/namespaces/{namespace}/{plural}" if namespace else f"{prefix}/{plural}"


#: Fields the API server sets itself (and refuses or overwrites when a client sends them).
_SERVER_FIELDS = ("uid", "resourceVersion", "creationTimestamp", "deletionTimestamp", "generateName")


def for_create(obj: Obj) -> Obj:
    """A builder's object (tests/kubernetes/k8sobjects.py, shaped as the server returns it)
    made into what a client sends: no server-set metadata, no owner (there is none), cluster
    IPs and node ports left to the server's allocators."""
    out: Obj = json.loads(json.dumps(obj))
    meta = out["metadata"]
    for field in _SERVER_FIELDS:
        meta.pop(field, None)
    meta.pop("ownerReferences", None)
    if out["kind"] == "Service":
        spec = out["spec"]
        spec.pop("clusterIP", None)
        spec.pop("clusterIPs", None)
        spec.pop("healthCheckNodePort", None)
        for port in spec["ports"]:
            port.pop("nodePort", None)
        out.pop("status", None)
    return out
